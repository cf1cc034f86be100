import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";

import { EventSchema, type Event } from "../../src/gen/herald/v1/events_pb.js";
import { LiveFeed } from "../../src/livefeed.js";

const event = (offset: number, item: string, epoch = "e1") =>
  create(EventSchema, { topic: "user:alice", offset: BigInt(offset), epoch, type: "item.added", data: { item } });
const add = (state: string[], e: Event) => [...state, String(e.data?.["item"])];

test("the snapshot is the state; events after its position are applied once, in order", () => {
  const feed = new LiveFeed(["a", "b"], { offset: 2n, epoch: "e1" }, add);
  // 1 and 2 are in the snapshot already (a subscription replaying from further back)
  const applied = [event(1, "a"), event(2, "b"), event(3, "c"), event(3, "c"), event(4, "d")].map((e) => feed.push(e));
  assert.deepEqual(applied, [false, false, true, false, true]);
  assert.deepEqual(feed.state, ["a", "b", "c", "d"]);
  assert.deepEqual(feed.position, { offset: 4n, epoch: "e1" });
});

test("an empty topic (position 0) applies from the first event", () => {
  const feed = new LiveFeed<string[]>([], { offset: 0n, epoch: "e1" }, add);
  feed.push(event(1, "a"));
  assert.deepEqual(feed.state, ["a"]);
});

test("during a reload events are held; after it, only those after the new snapshot apply", () => {
  const feed = new LiveFeed(["a"], { offset: 1n, epoch: "e1" }, add);
  feed.beginReload();
  assert.equal(feed.push(event(5, "e", "e2")), false);
  assert.equal(feed.push(event(6, "f", "e2")), false);
  assert.deepEqual(feed.state, ["a"]);
  // the new read saw everything up to 5 of the new epoch
  const applied = feed.reloaded(["x", "e"], { offset: 5n, epoch: "e2" });
  assert.deepEqual(applied.map((e) => e.offset), [6n]);
  assert.deepEqual(feed.state, ["x", "e", "f"]);
  assert.equal(feed.reloading, false);
});
