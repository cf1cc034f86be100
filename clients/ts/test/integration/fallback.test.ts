// The fallback ladder in "auto": WebSocket → grpc-web streaming → History polling, and back.

import assert from "node:assert/strict";
import { test } from "node:test";

import type { ConnectionStatus, HeraldClient } from "../../src/index.js";
import { UNREACHABLE_WS, client, publish, serveForThisFile, streamBlockingTransport } from "../support/clients.js";
import { until, type Herald } from "../support/herald.js";

let herald: Herald;
let publisher: HeraldClient;
const clients = serveForThisFile((started, client) => {
  herald = started;
  publisher = client;
});

const consecutive = (n: number) => Array.from({ length: n }, (_, i) => BigInt(i + 1));

test("when the WebSocket cannot connect at all, the client follows over grpc-web streaming", { timeout: 60_000 }, async () => {
  const token = await herald.token("fallback-grpc");
  const alice = client(herald, () => token, { transport: "auto", websocketUrl: UNREACHABLE_WS, fallbackAfterFailures: 2 });
  clients.push(alice);
  const statuses: ConnectionStatus[] = [];
  alice.onStatus((s) => statuses.push(s));
  const seen: bigint[] = [];
  const sub = alice.subscribe("user:fallback-grpc", { onEvent: (e) => seen.push(e.offset) });
  await sub.ready;
  assert.equal(alice.status.transport, "grpc-web");
  await publish(publisher, "user:fallback-grpc", 1, 5);
  await until(() => seen.length === 5, "five events over grpc-web");
  assert.deepEqual(seen, consecutive(5));
  // calls go over grpc-web too
  assert.equal((await alice.auth.whoami({})).userId, "fallback-grpc");
  assert.ok(statuses.some((s) => s.transport === "grpc-web" && (s.state === "connected" || s.state === "resumed")));
  alice.close();
});

test("when neither streams, the client polls History from its last offset, then returns to live streaming as soon as it can", { timeout: 60_000 }, async () => {
  const topic = "user:fallback-poll";
  const token = await herald.token("fallback-poll");
  let streamsBlocked = true;
  const alice = client(herald, () => token, {
    transport: "auto",
    websocketUrl: UNREACHABLE_WS,
    fallbackAfterFailures: 2,
    grpcWebTransport: streamBlockingTransport(herald.url, () => streamsBlocked),
    pollIntervalMs: 50,
    pollMaxIntervalMs: 200,
    liveRetryMs: 300,
  });
  clients.push(alice);
  const transports: string[] = [];
  alice.onStatus((s) => {
    if (transports.at(-1) !== s.transport) transports.push(s.transport);
  });
  const seen: bigint[] = [];
  const sub = alice.subscribe(topic, { onEvent: (e) => seen.push(e.offset) });
  await sub.ready;
  await until(() => alice.status.transport === "poll", "the client to poll");
  await publish(publisher, topic, 1, 5);
  await until(() => seen.length === 5, "five events by polling");

  // the proxy lets streams through again: the next probe moves the client back up
  streamsBlocked = false;
  await until(() => alice.status.transport === "grpc-web", "the client to stream again");
  await publish(publisher, topic, 6, 10);
  await until(() => seen.length >= 10, "ten events");
  assert.deepEqual(seen, consecutive(10), "each event once, in order, across the switch");
  assert.deepEqual(transports.slice(-2), ["poll", "grpc-web"]);
  alice.close();
});

test("the client polls a topic that already has history from its `since`, and a topic with none from its top", { timeout: 60_000 }, async () => {
  const topic = "user:poll-since";
  await publish(publisher, topic, 1, 4);
  const token = await herald.token("poll-since");
  const alice = client(herald, () => token, {
    transport: "auto",
    websocketUrl: UNREACHABLE_WS,
    fallbackAfterFailures: 1,
    grpcWebTransport: streamBlockingTransport(herald.url, () => true),
    pollIntervalMs: 50,
    pollMaxIntervalMs: 200,
    liveRetryMs: 60_000,
  });
  clients.push(alice);
  const resumed: bigint[] = [];
  const fresh: bigint[] = [];
  const a = alice.subscribe(topic, { since: { offset: 2n, epoch: (await publisher.rooms.history({ topic, limit: 1 })).position!.epoch }, onEvent: (e) => resumed.push(e.offset) });
  const b = alice.subscribe("room:poll-fresh", { onEvent: (e) => fresh.push(e.offset) });
  await Promise.all([a.ready, b.ready]);
  await publish(publisher, topic, 5, 5);
  await publish(publisher, "room:poll-fresh", 1, 2);
  await until(() => resumed.length === 3 && fresh.length === 2, "both topics");
  assert.deepEqual(resumed, [3n, 4n, 5n]);
  assert.deepEqual(fresh, [1n, 2n]);
  alice.close();
});
