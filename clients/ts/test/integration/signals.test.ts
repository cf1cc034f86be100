// Signals (typing, a courier's position) reach their own handler, on both transports.

import assert from "node:assert/strict";
import { test } from "node:test";

import type { HeraldClient, Signal } from "../../src/index.js";
import { client, serveForThisFile } from "../support/clients.js";
import { until, type Herald } from "../support/herald.js";

let herald: Herald;
const clients = serveForThisFile((started) => {
  herald = started;
});

for (const transport of ["websocket", "grpc-web"] as const) {
  test(`over ${transport}, a typing signal goes to onSignal and never to onEvent`, { timeout: 30_000 }, async () => {
    const topic = `room:signals-${transport}`;
    const bobToken = await herald.token("bob");
    const aliceToken = await herald.token("alice");
    const bob = client(herald, () => bobToken, { transport });
    const alice = client(herald, () => aliceToken, { transport });
    clients.push(bob, alice);
    const signals: Signal[] = [];
    let events = 0;
    const sub = bob.subscribe(topic, { onSignal: (s) => signals.push(s), onEvent: () => (events += 1) });
    await sub.ready;
    await alice.rooms.signal({ topic, type: "typing.start", data: { conversation: "c1" } });
    await until(() => signals.length === 1, "the signal");
    assert.equal(signals[0]!.type, "typing.start");
    assert.equal(signals[0]!.publisher, "alice");
    assert.deepEqual(signals[0]!.data, { conversation: "c1" });
    assert.equal(events, 0);
    assert.equal(sub.offset, 0n, "a signal has no offset and does not move the cursor");
    bob.close();
    alice.close();
  });
}
