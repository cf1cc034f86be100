// The WebSocket transport against a scripted edge (no server): resubscribing with the last
// offsets after a drop, de-duplicating the replay, and following `unsubscribed` codes.

import assert from "node:assert/strict";
import { test } from "node:test";

import type { WebSocketLike } from "../../src/drivers.js";
import { createClient, type ConnectionState, type HeraldError } from "../../src/index.js";

type Frame = { id?: number; method?: string; params?: Record<string, unknown> };

/** One scripted edge: records every frame clients send and answers `auth` and `refresh`. */
class FakeEdge {
  sockets: FakeSocket[] = [];
  frames: Frame[] = [];
  subscribeReply: (frame: Frame) => unknown = () => ({ position: { offset: "0", epoch: "e" }, recovered: true });

  get socket(): FakeSocket {
    return this.sockets.at(-1)!;
  }

  receive(socket: FakeSocket, frame: Frame) {
    this.frames.push(frame);
    if (frame.method === "auth" || frame.method === "refresh") {
      socket.push({ id: frame.id, result: { userId: "alice", roles: [] } });
    } else if (frame.method === "subscribe") {
      socket.push({ id: frame.id, result: this.subscribeReply(frame) });
    } else {
      socket.push({ id: frame.id, result: {} });
    }
  }

  event(topic: string, offset: number, epoch = "e") {
    this.socket.push({ topic, offset: String(offset), epoch, event: { topic, offset: String(offset), epoch, type: "t" } });
  }

  subscribes(): Array<{ topic: unknown; since: unknown }> {
    return this.frames.filter((f) => f.method === "subscribe").map((f) => ({ topic: f.params?.["topic"], since: f.params?.["since"] }));
  }
}

let edge: FakeEdge;

class FakeSocket implements WebSocketLike {
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  constructor(readonly url: string) {
    edge.sockets.push(this);
    setTimeout(() => {
      this.readyState = 1;
      this.onopen?.({});
    }, 0);
  }

  send(data: string) {
    const frame = JSON.parse(data) as Frame;
    setTimeout(() => edge.receive(this, frame), 0);
  }

  push(frame: unknown) {
    if (this.readyState === 1) this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** The edge closes (or the network drops) the socket. */
  drop(code: number, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  close() {
    this.readyState = 3;
  }
}

function jwt(exp: number): string {
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "HS256" })}.${part({ sub: "alice", exp })}.sig`;
}

const tick = (ms = 20) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(check: () => boolean, what: string) {
  for (let i = 0; i < 200 && !check(); i += 1) await tick(5);
  assert.ok(check(), `timed out waiting for ${what}`);
}

test("after a drop every topic is resubscribed with its last offset, and the replayed overlap is dropped", async () => {
  edge = new FakeEdge();
  let tokens = 0;
  const herald = createClient({
    url: "http://edge.test",
    getToken: () => jwt(Math.floor(Date.now() / 1000) + 3600 + tokens++),
    transport: "websocket",
    WebSocket: FakeSocket,
    backoff: { baseMs: 1, capMs: 2 },
  });
  try {
    const states: ConnectionState[] = [];
    herald.onStatus((s) => states.push(s.state));
    const user: bigint[] = [];
    const room: bigint[] = [];
    const errors: HeraldError[] = [];
    const a = herald.subscribe("user:alice", { onEvent: (e) => user.push(e.offset) });
    const b = herald.subscribe("room:b", { onEvent: (e) => room.push(e.offset), onError: (e) => errors.push(e) });
    await Promise.all([a.ready, b.ready]);
    assert.equal(edge.sockets[0]!.url, "ws://edge.test/ws");
    for (const n of [1, 2, 3]) edge.event("user:alice", n);
    for (const n of [1, 2]) edge.event("room:b", n);

    edge.socket.drop(1006);
    await until(() => edge.sockets.length === 2 && edge.subscribes().length === 4, "the resubscribes");
    assert.deepEqual(edge.subscribes().slice(2), [
      { topic: "user:alice", since: { offset: "3", epoch: "e" } },
      { topic: "room:b", since: { offset: "2", epoch: "e" } },
    ]);
    await tick();
    for (const n of [2, 3, 4]) edge.event("user:alice", n);
    assert.deepEqual(user, [1n, 2n, 3n, 4n]);
    assert.deepEqual(states, ["connected", "reconnecting", "resumed"]);

    // token expired on one subscription: a new token, `refresh` on the same socket, resubscribe
    edge.socket.push({ unsubscribed: { topic: "user:alice", code: 3002, reason: "token_expired", message: "token expired", offset: "4", epoch: "e" } });
    await until(() => edge.subscribes().length === 5, "the resubscribe after 3002");
    const refresh = edge.frames.filter((f) => f.method === "refresh");
    assert.equal(refresh.length, 1);
    assert.notEqual(refresh[0]!.params?.["token"], edge.frames[0]!.params?.["token"], "a fresh token");
    assert.deepEqual(edge.subscribes()[4], { topic: "user:alice", since: { offset: "4", epoch: "e" } });
    assert.equal(edge.sockets.length, 2, "the socket stayed");

    // removed from the room: terminal, reported once, never retried
    edge.socket.push({ unsubscribed: { topic: "room:b", code: 3501, reason: "permission_denied", message: "removed" } });
    await tick();
    assert.equal(b.state, "failed");
    assert.equal(errors.length, 1);
    assert.equal(errors[0]!.closeCode, 3501);
    assert.equal(edge.subscribes().length, 5);
  } finally {
    herald.close();
  }
});

test("a socket closed with a terminal code stops the client and reports to every subscription", async () => {
  edge = new FakeEdge();
  const herald = createClient({
    url: "http://edge.test",
    getToken: () => jwt(Math.floor(Date.now() / 1000) + 3600),
    transport: "websocket",
    WebSocket: FakeSocket,
    backoff: { baseMs: 1, capMs: 2 },
  });
  const errors: HeraldError[] = [];
  const sub = herald.subscribe("user:alice", { onError: (e) => errors.push(e) });
  await sub.ready;
  edge.socket.drop(3503, "too many sockets");
  await tick();
  assert.equal(sub.state, "failed");
  assert.equal(errors[0]?.closeCode, 3503);
  assert.equal(herald.status.state, "closed");
  assert.equal(edge.sockets.length, 1, "no reconnect");
  herald.close();
});

test("a refusal of a subscribe is terminal for that topic only; unavailability is retried", async () => {
  edge = new FakeEdge();
  let refusals = 0;
  edge.subscribeReply = (frame) => {
    if (frame.params?.["topic"] === "conv:9") return undefined;
    return { position: { offset: "0", epoch: "e" }, recovered: true };
  };
  const original = edge.receive.bind(edge);
  edge.receive = (socket, frame) => {
    if (frame.method === "subscribe" && frame.params?.["topic"] === "conv:9") {
      edge.frames.push(frame);
      socket.push({ id: frame.id, error: { code: "permission_denied", message: "not a member" } });
      return;
    }
    if (frame.method === "subscribe" && frame.params?.["topic"] === "user:alice" && refusals++ < 2) {
      edge.frames.push(frame);
      socket.push({ id: frame.id, error: { code: "unavailable", message: "no backend" } });
      return;
    }
    original(socket, frame);
  };
  const herald = createClient({
    url: "http://edge.test",
    getToken: () => jwt(Math.floor(Date.now() / 1000) + 3600),
    transport: "websocket",
    WebSocket: FakeSocket,
    backoff: { baseMs: 1, capMs: 2 },
  });
  try {
    const denied = herald.subscribe("conv:9");
    const retried = herald.subscribe("user:alice");
    await assert.rejects(denied.ready, /permission_denied/);
    await retried.ready;
    assert.equal(denied.state, "failed");
    assert.equal(retried.state, "live");
    assert.equal(edge.subscribes().filter((s) => s.topic === "user:alice").length, 3);
    assert.equal(herald.status.state, "connected");
  } finally {
    herald.close();
  }
});

test("the token is refreshed on the open socket before its exp, from a new getToken()", async () => {
  edge = new FakeEdge();
  const issued: string[] = [];
  const herald = createClient({
    url: "http://edge.test",
    // 1 s tokens: refreshed at half their remaining life
    getToken: () => {
      const token = jwt(Date.now() / 1000 + 1);
      issued.push(token);
      return token;
    },
    transport: "websocket",
    WebSocket: FakeSocket,
    backoff: { baseMs: 1, capMs: 2 },
  });
  try {
    const sub = herald.subscribe("user:alice");
    await sub.ready;
    const started = Date.now();
    await until(() => edge.frames.some((f) => f.method === "refresh"), "a refresh");
    const elapsed = Date.now() - started;
    assert.ok(elapsed < 1000, `refreshed before expiry (${elapsed} ms)`);
    const refresh = edge.frames.find((f) => f.method === "refresh")!;
    assert.equal(refresh.params?.["token"], issued[1]);
    assert.equal(edge.sockets.length, 1);
    assert.equal(edge.subscribes().length, 1, "the subscription was kept, not redone");
  } finally {
    herald.close();
  }
});

test("a token the edge refuses is retried once with a fresh one, then the client stops and reports", async () => {
  edge = new FakeEdge();
  const original = edge.receive.bind(edge);
  edge.receive = (socket, frame) => {
    if (frame.method === "auth") {
      edge.frames.push(frame);
      socket.push({ id: frame.id, error: { code: "unauthenticated", message: "bad signature" } });
      socket.drop(3500, "invalid token");
      return;
    }
    original(socket, frame);
  };
  let tokens = 0;
  const herald = createClient({
    url: "http://edge.test",
    getToken: () => jwt(Math.floor(Date.now() / 1000) + 3600 + tokens++),
    transport: "websocket",
    WebSocket: FakeSocket,
    backoff: { baseMs: 1, capMs: 2 },
  });
  try {
    const errors: HeraldError[] = [];
    const sub = herald.subscribe("user:alice", { onError: (e) => errors.push(e) });
    await until(() => sub.state === "failed", "the subscription to fail");
    assert.equal(errors[0]?.code, "unauthenticated");
    assert.equal(herald.status.state, "closed");
    const auths = edge.frames.filter((f) => f.method === "auth").map((f) => f.params?.["token"]);
    assert.equal(auths.length, 2, "one retry");
    assert.notEqual(auths[0], auths[1], "with a fresh token");
  } finally {
    herald.close();
  }
});

test("several handles on one topic share one subscribe frame; a handle behind reads History over the socket; the last unsubscribe ends it", async () => {
  edge = new FakeEdge();
  const original = edge.receive.bind(edge);
  const histories: unknown[] = [];
  edge.receive = (socket, frame) => {
    if (frame.method === "call" && frame.params?.["rpc"] === "herald.v1.Rooms/History") {
      edge.frames.push(frame);
      histories.push((frame.params["request"] as Record<string, unknown>)["since"]);
      const events = [2, 3].map((n) => ({ topic: "role:admin", offset: String(n), epoch: "e", type: "t" }));
      socket.push({ id: frame.id, result: { events, position: { offset: "3", epoch: "e" } } });
      return;
    }
    original(socket, frame);
  };
  edge.subscribeReply = () => ({ position: { offset: "3", epoch: "e" }, recovered: true });
  const herald = createClient({
    url: "http://edge.test",
    getToken: () => jwt(Math.floor(Date.now() / 1000) + 3600),
    transport: "websocket",
    WebSocket: FakeSocket,
    backoff: { baseMs: 1, capMs: 2 },
  });
  try {
    const first: bigint[] = [];
    const second: bigint[] = [];
    const a = herald.subscribe("role:admin", { onEvent: (e) => first.push(e.offset) });
    await a.ready;
    const b = herald.subscribe("role:admin", { since: { offset: 1n, epoch: "e" }, onEvent: (e) => second.push(e.offset) });
    await b.ready;
    assert.deepEqual(histories, [{ offset: "1", epoch: "e" }]);
    edge.event("role:admin", 4);
    assert.deepEqual(first, [4n]);
    assert.deepEqual(second, [2n, 3n, 4n]);
    assert.equal(edge.subscribes().length, 1, "one subscribe frame for both handles");

    a.unsubscribe();
    await tick();
    assert.equal(edge.frames.filter((f) => f.method === "unsubscribe").length, 0, "the other handle still follows");
    edge.event("role:admin", 5);
    assert.deepEqual(second, [2n, 3n, 4n, 5n]);
    b.unsubscribe();
    await tick();
    assert.equal(edge.frames.filter((f) => f.method === "unsubscribe").length, 1);
  } finally {
    herald.close();
  }
});
