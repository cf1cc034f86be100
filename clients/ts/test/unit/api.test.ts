// The public API's shapes as the README shows them: typed helpers, the generic call, and
// live() over reads whose position sits inside the response. Compiling this file is most of
// the test; it runs against no server (the client is closed at once).

import assert from "node:assert/strict";
import { test } from "node:test";

import { createClient, Notifications, websocketUrlOf, type Event, type HeraldClient } from "../../src/index.js";

function typedUsage(herald: HeraldClient, apply: (s: unknown, e: Event) => unknown) {
  void herald.notifications.list({ limit: 20 });
  void herald.call(Notifications.method.list, { limit: 5 });
  herald.live(() => herald.notifications.list({ limit: 20 }), "user:alice", {
    initial: (page) => page.notifications,
    apply: (list, event) => (event.body.case === "notificationCreated" ? [event.body.value.notification!, ...list] : list),
  });
  void herald.reviews.listPending({ reviewerRole: "reviewer" });
  void herald.chat.listMessages({ conversationId: 7n });
  herald.live(async () => {
    const { order } = await herald.orders.get({ orderId: 42n });
    return { ...order!, position: order!.position };
  }, "order:42", { apply });
  herald.live(async () => {
    const { deployment } = await herald.deployments.get({ deploymentId: 3n });
    return { ...deployment!, position: deployment!.position };
  }, "deployment:3", { apply });
}

test("the WebSocket URL is the edge URL with a ws scheme and /ws", () => {
  assert.equal(websocketUrlOf("http://127.0.0.1:8080"), "ws://127.0.0.1:8080/ws");
  assert.equal(websocketUrlOf("https://herald.example.com/edge/"), "wss://herald.example.com/edge/ws");
});

test("helpers exist for every unary RPC of each service, and streaming RPCs are left out", () => {
  const herald = createClient({ url: "http://127.0.0.1:9", getToken: () => "t", transport: "grpc-web", backoff: { baseMs: 10_000 } });
  try {
    assert.equal(typeof herald.notifications.markAllRead, "function");
    assert.equal(typeof herald.orders.place, "function");
    assert.equal(typeof herald.deployments.finish, "function");
    assert.equal((herald.deployments as Record<string, unknown>)["watch"], undefined);
    assert.equal((herald.rooms as Record<string, unknown>)["subscribe"], undefined);
    // several handles on one topic: both are held, neither throws
    const a = herald.subscribe("room:a");
    const b = herald.subscribe("room:a");
    assert.notEqual(a, b);
    assert.equal(a.topic, b.topic);
    void typedUsage;
  } finally {
    herald.close();
  }
  assert.equal(herald.status.state, "closed");
});
