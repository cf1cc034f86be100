// Several handles on one topic over one transport subscription: joining ahead, at or behind
// the shared position, filling from History, failures that concern one handle only.

import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";

import { HeraldError } from "../../src/codes.js";
import type { Position } from "../../src/cursor.js";
import { EventSchema, StreamPositionSchema, type Event } from "../../src/gen/herald/v1/events_pb.js";
import { Shared, type HistoryPage } from "../../src/shared.js";
import { Sub, type SubscribeOptions } from "../../src/subscription.js";

const event = (offset: number, epoch = "e1") => create(EventSchema, { topic: "role:admin", offset: BigInt(offset), epoch, type: "t" });
const position = (offset: number, epoch = "e1") => create(StreamPositionSchema, { offset: BigInt(offset), epoch });
const at = (offset: number, epoch = "e1"): Position => ({ offset: BigInt(offset), epoch });
const tick = (ms = 5) => new Promise((resolve) => setTimeout(resolve, ms));

/** A retained stream of `count` events of `epoch`, paged like Rooms/History. */
function retained(count: number, options: { epoch?: string; first?: number; pageSize?: number; calls?: Position[] } = {}): HistoryPage {
  const epoch = options.epoch ?? "e1";
  const first = options.first ?? 1;
  return async (_topic, since) => {
    options.calls?.push(since);
    await tick(1);
    if (since.epoch !== epoch) return { events: [], position: position(count, epoch) };
    if (since.offset + 1n < BigInt(first)) throw new HeraldError("failed_precondition", "retention no longer covers since");
    const events: Event[] = [];
    for (let n = Number(since.offset) + 1; n <= count && events.length < (options.pageSize ?? 1000); n += 1) events.push(event(n, epoch));
    return { events, position: position(count, epoch) };
  };
}

function topic(history: HistoryPage, since?: Position) {
  let emptied = 0;
  const shared = new Shared("role:admin", history, () => (emptied += 1));
  shared.sub = new Sub("role:admin", shared, since, { closed() {}, recoveryFailed() {}, live() {} });
  return { shared, sub: shared.sub, emptied: () => emptied };
}

function recorder(options: SubscribeOptions = {}) {
  const seen: bigint[] = [];
  const failures: Array<bigint | undefined> = [];
  const errors: HeraldError[] = [];
  const handlers: SubscribeOptions = {
    ...options,
    onEvent: (e) => seen.push(e.offset),
    onRecoveryFailed: (info) => failures.push(info.position?.offset),
    onError: (e) => errors.push(e),
  };
  return { handlers, seen, failures, errors };
}

test("a handle whose since is at or after the shared position just joins, with no History read", async () => {
  const calls: Position[] = [];
  const { shared, sub } = topic(retained(10, { calls }), at(4));
  const a = recorder({ since: at(4) });
  const ha = shared.add(a.handlers);
  sub.subscribed(position(4), true, position(4));
  for (const n of [5, 6]) sub.event(event(n));
  const same = recorder({ since: at(6) });
  const ahead = recorder({ since: at(8) });
  const hs = shared.add(same.handlers);
  const hh = shared.add(ahead.handlers);
  await Promise.all([ha.ready, hs.ready, hh.ready]);
  for (const n of [7, 8, 9]) sub.event(event(n));
  assert.deepEqual(a.seen, [5n, 6n, 7n, 8n, 9n]);
  assert.deepEqual(same.seen, [7n, 8n, 9n]);
  assert.deepEqual(ahead.seen, [9n]);
  assert.deepEqual(calls, []);
  assert.equal(hs.state, "live");
  assert.equal(hh.offset, 9n);
});

test("a handle behind reads the range from History in pages, holds live events meanwhile, and gets each once, in order", async () => {
  const calls: Position[] = [];
  const { shared, sub } = topic(retained(10, { calls, pageSize: 3 }));
  const a = recorder();
  shared.add(a.handlers);
  sub.subscribed(position(8), true, undefined);
  const behind = recorder({ since: at(1) });
  const handle = shared.add(behind.handlers);
  assert.equal(handle.state, "subscribing");
  // live events while the handle fills: 9 and 10 are in History too, 11 is not yet
  sub.event(event(9));
  sub.event(event(10));
  await tick(1);
  sub.event(event(11));
  await handle.ready;
  sub.event(event(12));
  assert.deepEqual(a.seen, [9n, 10n, 11n, 12n]);
  assert.deepEqual(behind.seen, [2n, 3n, 4n, 5n, 6n, 7n, 8n, 9n, 10n, 11n, 12n]);
  assert.deepEqual(calls.map((p) => p.offset), [1n, 4n, 7n]);
  assert.deepEqual(behind.failures, []);
  assert.equal(handle.state, "live");
});

test("a handle without since starts where the shared subscription stands", async () => {
  const { shared, sub } = topic(retained(5), at(2));
  shared.add(recorder({ since: at(2) }).handlers);
  sub.subscribed(position(5), true, position(2));
  for (const n of [3, 4, 5]) sub.event(event(n));
  const late = recorder();
  const handle = shared.add(late.handlers);
  await handle.ready;
  assert.equal(handle.offset, 5n);
  sub.event(event(6));
  assert.deepEqual(late.seen, [6n]);
});

test("history that no longer reaches the since fails that handle alone: it reloads and follows on", async () => {
  const { shared, sub } = topic(retained(10, { first: 6 }));
  const a = recorder();
  shared.add(a.handlers);
  sub.subscribed(position(10), true, undefined);
  const old = recorder({ since: at(2) });
  const handle = shared.add(old.handlers);
  await handle.ready;
  assert.deepEqual(old.failures, [10n]);
  sub.event(event(11));
  assert.deepEqual(old.seen, [11n]);
  assert.deepEqual(a.seen, [11n]);
  assert.deepEqual(a.failures, []);
});

test("a since of another epoch fails that handle alone", async () => {
  const calls: Position[] = [];
  const { shared, sub } = topic(retained(3, { epoch: "e2", calls }));
  const a = recorder();
  shared.add(a.handlers);
  sub.subscribed(position(3, "e2"), true, undefined);
  const stale = recorder({ since: at(7, "e1") });
  const handle = shared.add(stale.handlers);
  await handle.ready;
  assert.deepEqual(stale.failures, [3n]);
  assert.deepEqual(handle.position, at(3, "e2"));
  assert.deepEqual(calls, []);
  sub.event(event(4, "e2"));
  assert.deepEqual(stale.seen, [4n]);
  assert.deepEqual(a.seen, [4n]);
  assert.deepEqual(a.failures, []);
});

test("a handle joining before the first subscribed waits for it, then fills", async () => {
  const { shared, sub } = topic(retained(6), at(4));
  const a = recorder({ since: at(4) });
  shared.add(a.handlers);
  const b = recorder({ since: at(2) });
  const hb = shared.add(b.handlers);
  sub.subscribed(position(6), true, position(4));
  sub.event(event(5));
  sub.event(event(6));
  await hb.ready;
  sub.event(event(7));
  assert.deepEqual(a.seen, [5n, 6n, 7n]);
  assert.deepEqual(b.seen, [3n, 4n, 5n, 6n, 7n]);
});

test("unsubscribing one handle leaves the others; the subscription ends with the last", async () => {
  const { shared, sub, emptied } = topic(retained(0));
  const a = recorder();
  const b = recorder();
  const ha = shared.add(a.handlers);
  const hb = shared.add(b.handlers);
  sub.subscribed(position(0), true, undefined);
  await Promise.all([ha.ready, hb.ready]);
  sub.event(event(1));
  ha.unsubscribe();
  assert.equal(ha.state, "closed");
  sub.event(event(2));
  assert.deepEqual(a.seen, [1n]);
  assert.deepEqual(b.seen, [1n, 2n]);
  assert.equal(emptied(), 0);
  hb.unsubscribe();
  assert.equal(emptied(), 1);
});

test("signals, presence, failed recoveries and errors of the subscription go to every handle", async () => {
  const { shared, sub } = topic(retained(0), at(1));
  const signals: string[] = [];
  const a = recorder({ since: at(1), onSignal: (s) => signals.push(`a:${s.type}`) });
  const b = recorder({ since: at(1), onSignal: (s) => signals.push(`b:${s.type}`) });
  const ha = shared.add(a.handlers);
  const hb = shared.add(b.handlers);
  // the server restarted with a memory broker: the subscription's since is gone
  sub.subscribed(position(0, "e2"), false, position(1));
  await Promise.all([ha.ready, hb.ready]);
  assert.deepEqual(a.failures, [0n]);
  sub.signal(create((await import("../../src/gen/herald/v1/events_pb.js")).SignalSchema, { type: "typing" }));
  assert.deepEqual(signals, ["a:typing", "b:typing"]);
  sub.event(event(1, "e2"));
  assert.deepEqual(a.seen, [1n]);
  assert.deepEqual(b.seen, [1n]);
  sub.fail(new HeraldError("permission_denied", "no"));
  assert.equal(a.errors.length, 1);
  assert.equal(b.errors.length, 1);
  assert.equal(hb.state, "failed");
});

test("a failed recovery of the subscription while a handle fills makes it reload too", async () => {
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const slow: HistoryPage = async (t, since) => {
    await gate;
    return retained(10)(t, since);
  };
  const { shared, sub } = topic(slow);
  shared.add(recorder().handlers);
  sub.subscribed(position(10), true, undefined);
  const b = recorder({ since: at(3) });
  const hb = shared.add(b.handlers);
  await tick();
  // the connection came back in a new epoch while History was read
  sub.reconnecting();
  sub.subscribed(position(2, "e2"), false, position(10));
  await hb.ready;
  release();
  await tick();
  sub.event(event(3, "e2"));
  assert.deepEqual(b.failures, [2n]);
  assert.deepEqual(b.seen, [3n]);
});
