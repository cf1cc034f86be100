import assert from "node:assert/strict";
import { test } from "node:test";

import { Code, ConnectError } from "@connectrpc/connect";

import { classifyCloseCode, classifyConnectError, classifyErrorCode, closeCodeFromName } from "../../src/codes.js";
import { CloseCode } from "../../src/gen/herald/v1/codes_pb.js";

test("close codes 3000–3499 reconnect, 3002 after a fresh token, 3500–3999 are terminal", () => {
  for (const code of [3000, 3001, 3003, 3004, 3005, 3006, 3499]) assert.equal(classifyCloseCode(code), "reconnect", `${code}`);
  assert.equal(classifyCloseCode(CloseCode.TOKEN_EXPIRED), "refresh-token");
  for (const code of [3500, 3501, 3502, 3503, 3504, 3999]) assert.equal(classifyCloseCode(code), "terminal", `${code}`);
});

test("codes unknown to this build are classified by their range", () => {
  assert.equal(classifyCloseCode(3123), "reconnect");
  assert.equal(classifyCloseCode(3777), "terminal");
});

test("WebSocket codes: a lost connection reconnects, framing and payload errors of the client are terminal", () => {
  for (const code of [1000, 1001, 1005, 1006, 1011, 1012]) assert.equal(classifyCloseCode(code), "reconnect", `${code}`);
  for (const code of [1002, 1007, 1009]) assert.equal(classifyCloseCode(code), "terminal", `${code}`);
});

test("trailer names map to their numbers", () => {
  assert.equal(closeCodeFromName("CLOSE_CODE_SLOW_CONSUMER"), 3001);
  assert.equal(closeCodeFromName("CLOSE_CODE_PERMISSION_DENIED"), 3501);
  assert.equal(closeCodeFromName("CLOSE_CODE_FROM_THE_FUTURE"), undefined);
  assert.equal(closeCodeFromName(null), undefined);
});

test("a grpc-web error is classified by its close-code trailer first, by its status otherwise", () => {
  const slow = new ConnectError("slow", Code.ResourceExhausted, { "herald-close-code": "CLOSE_CODE_SLOW_CONSUMER" });
  assert.deepEqual(classifyConnectError(slow), { verdict: "reconnect", code: "resource_exhausted", message: "slow", closeCode: 3001 });
  const expired = new ConnectError("expired", Code.Unauthenticated, { "herald-close-code": "CLOSE_CODE_TOKEN_EXPIRED" });
  assert.equal(classifyConnectError(expired).verdict, "refresh-token");
  const invalid = new ConnectError("bad token", Code.Unauthenticated, { "herald-close-code": "CLOSE_CODE_INVALID_TOKEN" });
  assert.equal(classifyConnectError(invalid).verdict, "terminal");
  // a plain RESOURCE_EXHAUSTED (too many History calls at once) is retried
  assert.equal(classifyConnectError(new ConnectError("busy", Code.ResourceExhausted)).verdict, "reconnect");
  assert.equal(classifyConnectError(new ConnectError("refused", Code.Unavailable)).verdict, "reconnect");
  assert.equal(classifyConnectError(new ConnectError("no", Code.PermissionDenied)).verdict, "terminal");
  assert.equal(classifyConnectError(new TypeError("fetch failed")).verdict, "reconnect");
});

test("the database's retry-after trailer is read", () => {
  const busy = new ConnectError("db", Code.Unavailable, { "herald-retry-after-ms": "1000" });
  assert.equal(classifyConnectError(busy).retryAfterMs, 1000);
});

test("error frames answering a subscribe: refusals are terminal, unavailability retried", () => {
  for (const code of ["permission_denied", "invalid_argument", "not_found", "resource_exhausted"]) {
    assert.equal(classifyErrorCode(code), "terminal", code);
  }
  for (const code of ["unavailable", "rate_limited", "internal", "deadline_exceeded"]) {
    assert.equal(classifyErrorCode(code), "reconnect", code);
  }
  assert.equal(classifyErrorCode("unauthenticated"), "refresh-token");
});
