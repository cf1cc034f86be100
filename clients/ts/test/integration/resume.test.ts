// Reconnect and resume against a real `herald serve` that is killed and restarted.

import assert from "node:assert/strict";
import { test } from "node:test";

import type { ConnectionState, HeraldClient } from "../../src/index.js";
import { client, publish, serveForThisFile } from "../support/clients.js";
import { until, type Herald } from "../support/herald.js";

let herald: Herald;
let publisher: HeraldClient;
const clients = serveForThisFile((started, client) => {
  herald = started;
  publisher = client;
});

for (const transport of ["websocket", "grpc-web"] as const) {
  test(`a ${transport} subscriber to a durable topic resumes across a killed and restarted server: every event once, in order`, { timeout: 60_000 }, async () => {
    const topic = `user:resume-${transport}`;
    const token = await herald.token(`resume-${transport}`);
    const alice = client(herald, () => token, { transport });
    clients.push(alice);
    const states: ConnectionState[] = [];
    alice.onStatus((s) => states.push(s.state));
    const seen: bigint[] = [];
    const ns: number[] = [];
    const sub = alice.subscribe(topic, {
      onEvent: (e) => {
        seen.push(e.offset);
        ns.push(Number(e.data?.["n"]));
      },
    });
    await sub.ready;
    await publish(publisher, topic, 1, 5);
    await until(() => seen.length === 5, "the first five events");

    await herald.kill();
    await until(() => states.includes("reconnecting"), "the client to notice the loss");
    await herald.restart();
    // published while the subscriber may still be reconnecting: it gets them by resuming
    await publish(publisher, topic, 6, 10);
    await until(() => states.at(-1) === "resumed", "the client to resume");
    await publish(publisher, topic, 11, 15);
    await until(() => seen.length >= 15, "all fifteen events");

    assert.deepEqual(seen, Array.from({ length: 15 }, (_, i) => BigInt(i + 1)), "offsets 1–15, each once");
    assert.deepEqual(ns, Array.from({ length: 15 }, (_, i) => i + 1));
    assert.equal(sub.state, "live");
    assert.equal(sub.offset, 15n);
    assert.ok(!states.includes("reloaded"), `no reload on a durable topic: ${states.join(" → ")}`);
    alice.close();
  });
}

test("a memory-lane room after a restart: recovered = false reports onRecoveryFailed and the state `reloaded`", { timeout: 60_000 }, async () => {
  const topic = "room:ts-memory";
  const token = await herald.token("roomie");
  const bob = client(herald, () => token, { transport: "websocket" });
  clients.push(bob);
  const states: ConnectionState[] = [];
  bob.onStatus((s) => states.push(s.state));
  const seen: Array<[bigint, string]> = [];
  const failures: Array<{ offset: bigint | undefined; epoch: string | undefined }> = [];
  const sub = bob.subscribe(topic, {
    onEvent: (e) => seen.push([e.offset, e.epoch]),
    onRecoveryFailed: (info) => failures.push({ offset: info.position?.offset, epoch: info.position?.epoch }),
  });
  await sub.ready;
  await publish(publisher, topic, 1, 3);
  await until(() => seen.length === 3, "three room events");
  const oldEpoch = seen[0]![1];

  await herald.kill();
  await herald.restart();
  await until(() => failures.length === 1, "onRecoveryFailed");
  assert.equal(states.at(-1), "reloaded");
  assert.notEqual(failures[0]!.epoch, oldEpoch, "the room has a new epoch after the restart");

  await publish(publisher, topic, 4, 4);
  await until(() => seen.length === 4, "the first event of the new epoch");
  assert.equal(seen[3]![1], failures[0]!.epoch);
  assert.equal(seen[3]![0], 1n, "the new epoch starts at offset 1");
  bob.close();
});

test("live() on a memory room runs its read again when the restarted server cannot resume it", { timeout: 60_000 }, async () => {
  const topic = "room:ts-live-reload";
  const token = await herald.token("reloader");
  const carol = client(herald, () => token, { transport: "websocket" });
  clients.push(carol);
  let reads = 0;
  let reloaded = 0;
  const view = carol.live(
    async () => {
      reads += 1;
      return carol.rooms.history({ topic, limit: 1000 });
    },
    topic,
    {
      initial: (page) => page.events.map((e) => Number(e.data?.["n"])),
      apply: (ns: number[], event) => [...ns, Number(event.data?.["n"])],
      onReload: () => (reloaded += 1),
    },
  );
  await view.ready;
  await publish(publisher, topic, 1, 3);
  await until(() => view.state!.length === 3, "three events applied");

  await herald.kill();
  await herald.restart();
  await until(() => reloaded === 1, "the reload");
  assert.equal(reads, 2);
  assert.deepEqual(view.state, [], "the new epoch's history is empty: the state is the new read");
  await publish(publisher, topic, 4, 5);
  await until(() => view.state!.length === 2, "the events after the reload");
  assert.deepEqual(view.state, [4, 5]);
  view.close();
  carol.close();
});
