import assert from "node:assert/strict";
import { test } from "node:test";

import { refreshDelay, tokenExpiry } from "../../src/token.js";

function jwt(payload: object): string {
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(payload)}.c2lnbmF0dXJl`;
}

test("exp is read from the payload without verifying the token", () => {
  assert.equal(tokenExpiry(jwt({ sub: "alice", exp: 1_800_000_000 })), 1_800_000_000);
  // base64url characters (- and _) and a payload needing padding
  assert.equal(tokenExpiry(jwt({ sub: "ü?>", exp: 1_800_000_001, x: "~~~" })), 1_800_000_001);
  assert.equal(tokenExpiry(jwt({ sub: "alice" })), undefined);
  assert.equal(tokenExpiry("not a token"), undefined);
  assert.equal(tokenExpiry("a.%%%.c"), undefined);
});

test("a refresh is scheduled the margin before expiry", () => {
  const now = 1_000_000_000_000;
  const exp = now / 1000 + 3600; // an hour left
  assert.equal(refreshDelay(exp, now, 30_000), 3_570_000);
});

test("a short-lived token is refreshed at half its remaining life, an expired one at once", () => {
  const now = 1_000_000_000_000;
  assert.equal(refreshDelay(now / 1000 + 10, now, 30_000), 5_000);
  assert.equal(refreshDelay(now / 1000 - 5, now, 30_000), 0);
  assert.equal(refreshDelay(undefined, now, 30_000), undefined);
});
