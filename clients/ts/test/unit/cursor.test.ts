import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";

import { TopicCursor } from "../../src/cursor.js";
import { EventSchema, StreamPositionSchema } from "../../src/gen/herald/v1/events_pb.js";
import { Sub, type SubscribeOptions } from "../../src/subscription.js";

const event = (offset: number, epoch = "e1") => create(EventSchema, { topic: "user:alice", offset: BigInt(offset), epoch, type: "t" });
const position = (offset: number, epoch = "e1") => create(StreamPositionSchema, { offset: BigInt(offset), epoch });

/** A transport subscription delivering straight to one set of handlers. */
function makeSub(topic: string, options: SubscribeOptions, hooks: ConstructorParameters<typeof Sub>[3]): Sub {
  const sub: Sub = new Sub(
    topic,
    {
      event: (e) => {
        try {
          options.onEvent?.(e);
        } catch (error) {
          console.error(error);
        }
      },
      signal: (s) => options.onSignal?.(s),
      presence: (c) => options.onPresence?.(c),
      recoveryFailed: () => options.onRecoveryFailed?.({ topic, position: sub.position }),
      live: () => {},
      error: (e) => options.onError?.(e),
    },
    options.since,
    hooks,
  );
  return sub;
}

function recordingSub(since?: { offset: bigint; epoch: string }) {
  const seen: bigint[] = [];
  const failures: Array<bigint | undefined> = [];
  const sub = makeSub(
    "user:alice",
    { onEvent: (e) => seen.push(e.offset), onRecoveryFailed: (info) => failures.push(info.position?.offset), ...(since ? { since } : {}) },
    { closed() {}, recoveryFailed() {}, live() {} },
  );
  return { sub, seen, failures };
}

test("events at or below the last offset are dropped: a replay after a reconnect delivers each event once", () => {
  const { sub, seen, failures } = recordingSub();
  sub.subscribed(position(0), true, undefined);
  for (const n of [1, 2, 3, 4, 5]) sub.event(event(n));
  // the connection dropped after 5 was processed; the resubscribe sends since = 5 …
  const since = sub.since();
  assert.equal(since?.offset, 5n);
  sub.subscribed(position(8), true, since);
  // … and a transport that replays from further back (or a second transport) is harmless
  for (const n of [4, 5, 6, 7, 8, 6]) sub.event(event(n));
  assert.deepEqual(seen, [1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n]);
  assert.deepEqual(failures, []);
  assert.equal(sub.offset, 8n);
});

test("recovered = false reports a failed recovery and continues after the topic's top", () => {
  const { sub, seen, failures } = recordingSub({ offset: 40n, epoch: "e1" });
  sub.subscribed(position(3, "e2"), false, sub.since());
  assert.deepEqual(failures, [3n]);
  assert.deepEqual(sub.position, { offset: 3n, epoch: "e2" });
  sub.event(event(3, "e2"));
  sub.event(event(4, "e2"));
  assert.deepEqual(seen, [4n]);
});

test("an event of another epoch reports a failed recovery, then is delivered", () => {
  const { sub, seen, failures } = recordingSub();
  sub.subscribed(position(0), true, undefined);
  sub.event(event(1));
  sub.event(event(2));
  sub.event(event(1, "e2"));
  assert.deepEqual(seen, [1n, 2n, 1n]);
  assert.deepEqual(failures, [1n]);
  // and offsets of the new epoch de-duplicate as before
  sub.event(event(1, "e2"));
  assert.deepEqual(seen, [1n, 2n, 1n]);
});

test("a recovered answer whose top is in another epoch than `since` is a failed recovery too", () => {
  const cursor = new TopicCursor({ offset: 9n, epoch: "e1" });
  assert.equal(cursor.subscribed({ offset: 2n, epoch: "e2" }, true, { offset: 9n, epoch: "e1" }), "recovery-failed");
  assert.deepEqual(cursor.position, { offset: 2n, epoch: "e2" });
});

test("without `since` the cursor starts at the top; with it, it stays at `since` while history replays", () => {
  const fresh = new TopicCursor();
  assert.equal(fresh.subscribed({ offset: 7n, epoch: "e1" }, true, undefined), "recovered");
  assert.deepEqual(fresh.position, { offset: 7n, epoch: "e1" });
  const resumed = new TopicCursor({ offset: 3n, epoch: "e1" });
  assert.equal(resumed.subscribed({ offset: 7n, epoch: "e1" }, true, { offset: 3n, epoch: "e1" }), "recovered");
  assert.deepEqual(resumed.position, { offset: 3n, epoch: "e1" });
});

test("a handler that throws does not stop delivery", () => {
  const seen: bigint[] = [];
  const original = console.error;
  console.error = () => {};
  try {
    const sub = makeSub(
      "user:alice",
      {
        onEvent: (e) => {
          seen.push(e.offset);
          if (e.offset === 1n) throw new Error("app bug");
        },
      },
      { closed() {}, recoveryFailed() {}, live() {} },
    );
    sub.subscribed(position(0), true, undefined);
    sub.event(event(1));
    sub.event(event(2));
  } finally {
    console.error = original;
  }
  assert.deepEqual(seen, [1n, 2n]);
});

test("a gap in offsets is filled from History before later events are delivered, in order", async () => {
  const seen: bigint[] = [];
  const asked: bigint[] = [];
  let release!: () => void;
  const fetched = new Promise<void>((resolve) => (release = resolve));
  const sub = makeSub(
    "user:alice",
    { onEvent: (e) => seen.push(e.offset) },
    {
      closed() {},
      recoveryFailed() {},
      live() {},
      history: async (_sub, since) => {
        asked.push(since.offset);
        await fetched;
        return [event(3), event(4), event(5), event(6)];
      },
    },
  );
  sub.subscribed(position(0), true, undefined);
  sub.event(event(1));
  sub.event(event(2));
  sub.event(event(5)); // 3 and 4 were skipped by the transport
  sub.event(event(6));
  sub.event(event(7)); // held while History is asked
  assert.deepEqual(seen, [1n, 2n]);
  release();
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.deepEqual(asked, [2n]);
  assert.deepEqual(seen, [1n, 2n, 3n, 4n, 5n, 6n, 7n]);
});

test("a gap History cannot fill is reported as a failed recovery and delivery goes on", async () => {
  const seen: bigint[] = [];
  let failed = 0;
  const sub = makeSub(
    "room:lobby",
    { onEvent: (e) => seen.push(e.offset), onRecoveryFailed: () => (failed += 1) },
    { closed() {}, recoveryFailed() {}, live() {}, history: async () => [] },
  );
  sub.subscribed(position(0), true, undefined);
  sub.event(event(1));
  sub.event(event(9));
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.deepEqual(seen, [1n, 9n]);
  assert.equal(failed, 1);
});
