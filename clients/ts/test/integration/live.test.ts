// Load-then-follow: a domain read with its position, then the topic after it, under
// concurrent writers.

import assert from "node:assert/strict";
import { test } from "node:test";

import type { Event, HeraldClient } from "../../src/index.js";
import { NotificationType } from "../../src/index.js";
import { client, serveForThisFile } from "../support/clients.js";
import { until, type Herald } from "../support/herald.js";

let herald: Herald;
let service: HeraldClient;
const clients = serveForThisFile((started, client) => {
  herald = started;
  service = client;
});

interface Inbox {
  ids: string[];
  applied: bigint[];
}

for (const transport of ["websocket", "grpc-web"] as const) {
  test(`live(List, user:…) over ${transport} under concurrent writers: the snapshot plus the feed hold every notification once`, { timeout: 60_000 }, async () => {
    const user = `inbox-${transport}`;
    const token = await herald.token(user);
    const alice = client(herald, () => token, { transport });
    clients.push(alice);

    const WRITERS = 3;
    const EACH = 12;
    let written = 0;
    const write = async (writer: number) => {
      for (let i = 0; i < EACH; i += 1) {
        await service.notifications.create({ userIds: [user], type: NotificationType.SYSTEM, title: `w${writer} #${i}` });
        written += 1;
      }
    };
    const writers = Promise.all(Array.from({ length: WRITERS }, (_, w) => write(w)));
    await until(() => written >= 5, "the first notifications");

    let snapshotPosition: bigint | undefined;
    const view = alice.live(
      async () => {
        const page = await alice.notifications.list({ limit: 50 });
        snapshotPosition = page.position?.offset;
        return page;
      },
      `user:${user}`,
      {
        initial: (page): Inbox => ({ ids: page.notifications.map((n) => n.id), applied: [] }),
        apply: (inbox: Inbox, event: Event) => {
          inbox.applied.push(event.offset);
          if (event.body.case === "notificationCreated") inbox.ids.push(event.body.value.notification!.id);
          return inbox;
        },
      },
    );
    const changes: bigint[] = [];
    void (async () => {
      for await (const change of view.changes()) changes.push(change.event.offset);
    })();
    const initial = await view.ready;
    assert.ok(initial.ids.length >= 5 && initial.ids.length < WRITERS * EACH, `the snapshot was taken mid-way (${initial.ids.length})`);
    await writers;
    await until(() => view.state!.ids.length >= WRITERS * EACH, "every notification in the view").catch((e) => {
      throw new Error(`${e.message}: ${view.state!.ids.length} ids, applied ${view.state!.applied.join(",")}, snapshot at ${snapshotPosition}, subscription ${view.subscription?.state} ${view.subscription?.offset}`);
    });

    const inbox = view.state!;
    assert.equal(new Set(inbox.ids).size, inbox.ids.length, "no notification twice");
    assert.equal(inbox.ids.length, WRITERS * EACH, "no notification missing");
    // the feed starts right after the snapshot and has no gap (each create also writes a
    // `notification.counts` event, so offsets of the topic are all events, in order)
    const start = snapshotPosition! + 1n;
    await until(() => inbox.applied.at(-1) === BigInt(inbox.applied.length) + start - 1n && changes.length === inbox.applied.length, "the feed to settle");
    assert.deepEqual(inbox.applied, inbox.applied.map((_, i) => start + BigInt(i)), "consecutive offsets from the snapshot's position");
    assert.deepEqual(changes, inbox.applied, "the change feed yields the same events in the same order");

    const truth = await alice.notifications.list({ limit: 50 });
    assert.deepEqual(new Set(truth.notifications.map((n) => n.id)), new Set(inbox.ids), "the view equals a fresh read");
    view.close();
    alice.close();
  });
}
