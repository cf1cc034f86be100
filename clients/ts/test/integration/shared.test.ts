// Several consumers of one topic in one client, against a real `herald serve`: the transport
// carries one subscription, and each `live()` gets every event after its own snapshot once,
// in order, under concurrent writers, after another consumer left, and across a restart.

import assert from "node:assert/strict";
import { test } from "node:test";

import type { Event, HeraldClient, HistoryResponse, Live } from "../../src/index.js";
import { client, serveForThisFile } from "../support/clients.js";
import { until, type Herald } from "../support/herald.js";

let herald: Herald;
let publisher: HeraldClient;
const clients = serveForThisFile((started, client) => {
  herald = started;
  publisher = client;
});

/** Offsets applied to a view: the snapshot's, then each event's. */
type Offsets = bigint[];

const snapshotOffsets = (page: HistoryResponse): Offsets => page.events.map((e) => e.offset);
const applyOffset = (offsets: Offsets, event: Event): Offsets => [...offsets, event.offset];
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => BigInt(from + i));

/** `writers` publishers writing `each` events to `topic` at once. */
function writeConcurrently(topic: string, writers: number, each: number, counter: { written: number }): Promise<void> {
  return Promise.all(
    Array.from({ length: writers }, async (_, w) => {
      for (let i = 0; i < each; i += 1) {
        await publisher.rooms.publish({ topic, type: "note", data: { w, i } });
        counter.written += 1;
      }
    }),
  ).then(() => {});
}

function view(alice: HeraldClient, topic: string, read: () => Promise<HistoryResponse>): Live<Offsets> {
  return alice.live(read, topic, { initial: snapshotOffsets, apply: applyOffset });
}

for (const transport of ["websocket", "grpc-web"] as const) {
  test(`two live() on one topic over ${transport} from different positions, under concurrent writers: each sees every event once; one closes, the other goes on`, { timeout: 60_000 }, async () => {
    const topic = `user:shared-${transport}`;
    const token = await herald.token(`shared-${transport}`);
    const alice = client(herald, () => token, { transport });
    clients.push(alice);
    const history = () => alice.rooms.history({ topic, limit: 1000 });

    const counter = { written: 0 };
    const writers = writeConcurrently(topic, 3, 15, counter);
    await until(() => counter.written >= 4, "the first events");
    // an old snapshot, behind where the first view's subscription will stand
    const early = await history();
    const first = view(alice, topic, history);
    await first.ready;
    await until(() => counter.written >= early.events.length + 15, "more events after the first view");
    const second = view(alice, topic, async () => early);
    await second.ready;
    const third = view(alice, topic, history);
    await third.ready;
    await writers;

    const total = counter.written;
    for (const [name, v] of [["first", first], ["second", second], ["third", third]] as const) {
      await until(() => v.state!.length >= total, `every event in the ${name} view`).catch((e) => {
        throw new Error(`${e.message}: ${v.state!.length} of ${total}: ${v.state!.join(",")}`);
      });
      assert.deepEqual(v.state, range(1, total), `the ${name} view: offsets 1–${total}, each once, in order`);
    }

    // one consumer leaves: the others follow on, on the same subscription
    first.close();
    assert.equal(first.subscription?.state, "closed");
    await publisher.rooms.publish({ topic, type: "note", data: { after: 1 } });
    await until(() => second.state!.length === total + 1 && third.state!.length === total + 1, "the event after the close");
    assert.deepEqual(second.state, range(1, total + 1));
    assert.deepEqual(third.state, range(1, total + 1));
    assert.equal(second.subscription?.state, "live");
    second.close();
    third.close();
    alice.close();
  });

  test(`two subscribers of one topic over ${transport} both resume across a killed and restarted server`, { timeout: 60_000 }, async () => {
    const topic = `user:shared-resume-${transport}`;
    const token = await herald.token(`shared-resume-${transport}`);
    const alice = client(herald, () => token, { transport });
    clients.push(alice);
    const history = () => alice.rooms.history({ topic, limit: 1000 });
    for (let n = 1; n <= 5; n += 1) await publisher.rooms.publish({ topic, type: "note", data: { n } });
    const early = await history();
    for (let n = 6; n <= 8; n += 1) await publisher.rooms.publish({ topic, type: "note", data: { n } });
    const a = view(alice, topic, history);
    await a.ready;
    const b = view(alice, topic, async () => early);
    await b.ready;
    const failures: number[] = [];
    alice.onStatus((s) => {
      if (s.state === "reloaded") failures.push(1);
    });

    await herald.kill();
    await herald.restart();
    for (let n = 9; n <= 12; n += 1) await publisher.rooms.publish({ topic, type: "note", data: { n } });
    await until(() => a.state!.length === 12 && b.state!.length === 12, "both views after the restart").catch((e) => {
      throw new Error(`${e.message}: a ${a.state!.join(",")}; b ${b.state!.join(",")}`);
    });
    assert.deepEqual(a.state, range(1, 12));
    assert.deepEqual(b.state, range(1, 12));
    assert.deepEqual(failures, [], "a durable topic resumes: no reload");
    a.close();
    b.close();
    alice.close();
  });
}
