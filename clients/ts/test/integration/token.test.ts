// Token refresh before expiry, with the subscriptions kept.

import assert from "node:assert/strict";
import { test } from "node:test";

import type { ConnectionState, HeraldClient } from "../../src/index.js";
import { tokenExpiry } from "../../src/index.js";
import { client, publish, serveForThisFile } from "../support/clients.js";
import { until, type Herald } from "../support/herald.js";

let herald: Herald;
let publisher: HeraldClient;
const clients = serveForThisFile((started, client) => {
  herald = started;
  publisher = client;
});

for (const transport of ["websocket", "grpc-web"] as const) {
  test(`over ${transport}, a token is refreshed through getToken() before it expires and the subscription goes on past the first token's expiry`, { timeout: 60_000 }, async () => {
    const user = `refresh-${transport}`;
    const topic = `user:${user}`;
    const issued: string[] = [];
    const getToken = async () => {
      const token = await herald.token(user, { ttl: "4s" });
      issued.push(token);
      return token;
    };
    const alice = client(herald, getToken, { transport, tokenRefreshMarginMs: 2_000 });
    clients.push(alice);
    const states: ConnectionState[] = [];
    alice.onStatus((s) => states.push(s.state));
    const seen: bigint[] = [];
    const sub = alice.subscribe(topic, { onEvent: (e) => seen.push(e.offset) });
    await sub.ready;
    const firstExpiry = tokenExpiry(issued[0]!)!;

    // Publish until well past the first token's expiry (a wait past a TTL).
    let n = 0;
    while (Date.now() < firstExpiry * 1000 + 2_500) {
      n += 1;
      await publish(publisher, topic, n, n);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await until(() => seen.length === n, `all ${n} events`);

    assert.ok(issued.length >= 2, `getToken() was asked again before expiry (${issued.length} tokens)`);
    assert.deepEqual(seen, Array.from({ length: n }, (_, i) => BigInt(i + 1)), "every event once, in order");
    assert.equal(sub.state, "live");
    // WebSocket: `refresh` on the open socket; grpc-web: a new stream before the old one ends
    assert.deepEqual(states, ["connected"], `the connection never dropped: ${states.join(" → ")}`);
    // and calls use the fresh token
    const me = await alice.auth.whoami({});
    assert.equal(me.userId, user);
    alice.close();
  });
}
