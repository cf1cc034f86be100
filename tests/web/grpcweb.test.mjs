// grpc-web through the edge, as a browser app would call it: a real `herald serve` process
// (backend and edge) on port 0, and Connect-ES — a third-party client — speaking grpc-web
// over HTTP/1.1 (refusals over HTTP/2 as well; see REFUSAL_VARIANTS). The generated code in
// gen/ comes from proto/ (`npx buf generate`).
//
// Run from tests/web after `cargo build --bin herald`:
//   npm ci && npx buf generate && node --test

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";

import { Auth } from "./gen/herald/v1/auth_pb.js";
import { Edge } from "./gen/herald/v1/edge_pb.js";
import { Rooms } from "./gen/herald/v1/rooms_pb.js";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const HERALD = path.join(REPO_ROOT, "target/debug/herald");

/** How long the server gets to print both "listening" lines. */
const STARTUP_TIMEOUT_MS = 30_000;
/** The bound on every single call in the tests below. */
const CALL_TIMEOUT_MS = 10_000;
/** The bound on every test. */
const TEST_TIMEOUT_MS = 20_000;

/** @type {Awaited<ReturnType<typeof startHerald>>} */
let herald;
/** A plain user (`sub` alice, no roles). */
let aliceToken;
/** A publisher with the `service` role. */
let serviceToken;

before(async () => {
  herald = await startHerald();
  // The development signing key exists once the server started.
  aliceToken = await heraldToken(herald.dataDir, "alice");
  serviceToken = await heraldToken(herald.dataDir, "publisher", ["service"]);
});

after(async () => {
  await herald?.stop();
});

test("a grpc-web subscriber gets `subscribed`, then published events in offset order with their data", { timeout: TEST_TIMEOUT_MS }, async () => {
  const rooms = createClient(Rooms, transport());
  const subscription = new AbortController();
  const signal = AbortSignal.any([subscription.signal, AbortSignal.timeout(CALL_TIMEOUT_MS)]);
  const frames = rooms
    .subscribe({ topic: "room:web" }, { headers: bearer(aliceToken), signal })
    [Symbol.asyncIterator]();
  try {
    const first = await frames.next();
    assert.equal(first.done, false, "the stream ended before its first frame");
    assert.equal(first.value.frame.case, "subscribed", "the first frame must be `subscribed`");
    assert.equal(first.value.frame.value.recovered, true);
    assert.equal(first.value.frame.value.position?.offset, 0n, "room:web must be empty before this test");

    const sent = [1, 2, 3].map((n) => ({
      type: "chat.message",
      data: { text: `hello ${n}`, n, nested: { ok: true, tags: ["a", "b"] } },
    }));
    for (const event of sent) {
      const published = await rooms.publish(
        { topic: "room:web", ...event },
        { headers: bearer(serviceToken), signal: AbortSignal.timeout(CALL_TIMEOUT_MS) },
      );
      assert.ok(published.id, "Publish returns the event's id");
    }

    const received = [];
    while (received.length < sent.length) {
      const next = await frames.next();
      assert.equal(next.done, false, `the stream ended after ${received.length} events`);
      // alice's own presence `join` may arrive between events; this test is about events.
      if (next.value.frame.case === "event") received.push(next.value.frame.value);
    }
    assert.deepEqual(received.map((e) => e.offset), [1n, 2n, 3n]);
    for (const [i, event] of received.entries()) {
      assert.equal(event.topic, "room:web");
      assert.equal(event.type, sent[i].type);
      assert.deepEqual(event.data, sent[i].data);
      assert.equal(event.publisher, "publisher");
      assert.equal(event.epoch, first.value.frame.value.position.epoch);
    }
  } finally {
    subscription.abort();
    await frames.return?.().catch(() => {});
  }
});

test("unary calls work over grpc-web: Whoami names the caller, History returns what was published", { timeout: TEST_TIMEOUT_MS }, async () => {
  const options = () => ({ headers: bearer(aliceToken), signal: AbortSignal.timeout(CALL_TIMEOUT_MS) });

  const auth = createClient(Auth, transport());
  const me = await auth.whoami({}, options());
  assert.equal(me.userId, "alice");
  assert.deepEqual(me.roles, []);
  assert.ok(me.expiresAt && me.expiresAt.seconds > BigInt(Math.floor(Date.now() / 1000)), "expires_at is in the future");

  // alice may publish to rooms herself (the default policy); a topic of its own keeps this
  // test independent of the others.
  const rooms = createClient(Rooms, transport());
  for (const n of [1, 2]) {
    await rooms.publish({ topic: "room:web-history", type: "note", data: { n } }, options());
  }
  const history = await rooms.history({ topic: "room:web-history" }, options());
  assert.deepEqual(history.events.map((e) => [e.offset, e.type, e.data, e.publisher]), [
    [1n, "note", { n: 1 }, "alice"],
    [2n, "note", { n: 2 }, "alice"],
  ]);
  assert.equal(history.position?.offset, 2n);
});

// Refusals are checked over both HTTP versions. Over HTTP/1.1 Connect-node sends the headers
// first and the body a moment later; the edge reads the whole (small) request before answering,
// so a refusal never cuts the connection under the client's body write.
const REFUSAL_VARIANTS = [{ httpVersion: "2" }, { httpVersion: "1.1" }];

for (const { httpVersion } of REFUSAL_VARIANTS) {
  test(`a call from a disallowed Origin is refused with HTTP 403 (HTTP/${httpVersion})`, { timeout: TEST_TIMEOUT_MS }, async () => {
    const evil = createClient(Auth, transport({ httpVersion, origin: "https://evil.example.com" }));
    const refused = await callError(() =>
      evil.whoami({}, { headers: bearer(aliceToken), signal: AbortSignal.timeout(CALL_TIMEOUT_MS) }),
    );
    // The edge answers a plain HTTP 403 before any gRPC happens; Connect maps the HTTP status.
    assert.equal(refused.code, Code.PermissionDenied, `expected PermissionDenied, got ${refused}`);
    assert.equal(refused.rawMessage, "HTTP 403");
  });

  test(`calls without a token are refused with Unauthenticated, unary and streaming (HTTP/${httpVersion})`, { timeout: TEST_TIMEOUT_MS }, async () => {
    const signal = () => AbortSignal.timeout(CALL_TIMEOUT_MS);

    const auth = createClient(Auth, transport({ httpVersion }));
    const unary = await callError(() => auth.whoami({}, { signal: signal() }));
    assert.equal(unary.code, Code.Unauthenticated, `expected Unauthenticated, got ${unary}`);

    const rooms = createClient(Rooms, transport({ httpVersion }));
    const streaming = await callError(async () => {
      for await (const frame of rooms.subscribe({ topic: "room:web" }, { signal: signal() })) {
        assert.fail(`a subscription without a token received a frame: ${frame.frame.case}`);
      }
    });
    assert.equal(streaming.code, Code.Unauthenticated, `expected Unauthenticated, got ${streaming}`);
  });

  test(`the internal Edge/Follow service is not reachable over grpc-web (HTTP/${httpVersion})`, { timeout: TEST_TIMEOUT_MS }, async () => {
    const edge = createClient(Edge, transport({ httpVersion }));
    async function* requests() {
      yield { action: { case: "open", value: { topic: "room:web" } } };
    }
    const refused = await callError(async () => {
      const options = { headers: bearer(serviceToken), signal: AbortSignal.timeout(CALL_TIMEOUT_MS) };
      for await (const frame of edge.follow(requests(), options)) {
        assert.fail(`Edge/Follow answered a browser with a frame: ${frame.frame.case}`);
      }
    });
    assert.equal(refused.code, Code.Unimplemented, `expected Unimplemented, got ${refused}`);
  });
}

test("the same call without Origin, or from the edge's own origin, succeeds; the latter gets CORS headers", { timeout: TEST_TIMEOUT_MS }, async () => {
  const options = () => ({ headers: bearer(aliceToken), signal: AbortSignal.timeout(CALL_TIMEOUT_MS) });

  const plain = createClient(Auth, transport());
  assert.equal((await plain.whoami({}, options())).userId, "alice");

  // Same origin: a page served by this host.
  const sameOrigin = `http://${herald.httpAddr}`;
  const own = createClient(Auth, transport({ origin: sameOrigin }));
  let responseHeaders;
  const me = await own.whoami({}, { ...options(), onHeader: (h) => (responseHeaders = h) });
  assert.equal(me.userId, "alice");
  assert.equal(responseHeaders?.get("access-control-allow-origin"), sameOrigin);
  assert.match(responseHeaders?.get("access-control-expose-headers") ?? "", /grpc-status/);
});

// ---------------------------------------------------------------------------------------
// helpers

/**
 * A grpc-web transport to the edge (HTTP/1.1 unless told otherwise), optionally sending an
 * `Origin` header like a browser.
 */
function transport({ origin, httpVersion = "1.1" } = {}) {
  const interceptors = [];
  if (origin) {
    interceptors.push((next) => (request) => {
      request.header.set("origin", origin);
      return next(request);
    });
  }
  return createGrpcWebTransport({
    baseUrl: `http://${herald.httpAddr}`,
    httpVersion,
    interceptors,
  });
}

function bearer(token) {
  return { authorization: `Bearer ${token}` };
}

/** Runs `call`, which must fail, and returns the ConnectError it failed with. */
async function callError(call) {
  try {
    await call();
  } catch (error) {
    return ConnectError.from(error);
  }
  assert.fail("the call succeeded but should have been refused");
}

/** `herald token` for the server's data directory. */
async function heraldToken(dataDir, sub, roles = []) {
  const args = ["token", "--data-dir", dataDir, "--sub", sub, ...roles.flatMap((r) => ["--role", r])];
  const { stdout } = await promisify(execFile)(HERALD, args, { timeout: CALL_TIMEOUT_MS });
  const token = stdout.trim();
  assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/, `herald token printed no JWT: ${stdout}`);
  return token;
}

/**
 * Starts `herald serve` (backend and edge) on port 0 with a fresh data directory and waits
 * for both "listening" log lines. `stop()` ends it (SIGTERM, then SIGKILL) and removes the
 * directory.
 */
async function startHerald() {
  if (!existsSync(HERALD)) {
    throw new Error(`${HERALD} is missing: run \`cargo build --bin herald\` in ${REPO_ROOT} first`);
  }
  const dataDir = await mkdtemp(path.join(tmpdir(), "herald-web-"));
  const child = spawn(
    HERALD,
    ["serve", "--data-dir", dataDir, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-format", "json"],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const killOnExit = () => child.kill("SIGKILL");
  process.on("exit", killOnExit);
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));

  // Kept for error messages; the server's log is not printed otherwise, so the test
  // runner's output ends with its own summary.
  const log = [];
  let grpcAddr;
  let httpAddr;
  const listening = new Promise((resolve, reject) => {
    createInterface({ input: child.stderr }).on("line", (line) => {
      log.push(line);
      if (log.length > 200) log.shift();
      let entry;
      try {
        entry = JSON.parse(line);
      } catch {
        return; // not a log line (for example a panic message); kept in `log`
      }
      const fields = entry.fields ?? {};
      if (fields.message === "herald backend listening") grpcAddr = fields.grpc_addr;
      if (fields.message === "herald edge listening") httpAddr = fields.http_addr;
      if (grpcAddr && httpAddr) resolve();
    });
    child.once("error", reject);
    exited.then(({ code, signal }) =>
      reject(new Error(`herald serve exited (code ${code}, signal ${signal}) before listening`)),
    );
  });

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    }
    process.off("exit", killOnExit);
    await rm(dataDir, { recursive: true, force: true });
  };

  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`herald serve did not log both "listening" lines within ${STARTUP_TIMEOUT_MS} ms`)),
      STARTUP_TIMEOUT_MS,
    );
  });
  try {
    await Promise.race([listening, timeout]);
  } catch (error) {
    await stop();
    throw new Error(`${error.message}\n--- herald serve stderr ---\n${log.join("\n")}`, { cause: error });
  } finally {
    clearTimeout(timer);
  }
  return { grpcAddr, httpAddr, dataDir, log, stop };
}
