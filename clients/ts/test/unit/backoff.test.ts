import assert from "node:assert/strict";
import { test } from "node:test";

import { Backoff } from "../../src/backoff.js";

test("each wait lies in [0, min(cap, base·2ⁿ)) and the ceiling doubles up to the cap", () => {
  const backoff = new Backoff({ baseMs: 100, capMs: 1000, random: () => 0.999999 });
  const waits = Array.from({ length: 8 }, () => backoff.next());
  assert.deepEqual(waits, [99, 199, 399, 799, 999, 999, 999, 999]);
  for (const [n, wait] of waits.entries()) {
    assert.ok(wait >= 0 && wait < backoff.ceiling(n), `wait ${n} = ${wait}`);
  }
});

test("full jitter: the smallest random number gives no wait at all, the others spread uniformly", () => {
  const zero = new Backoff({ baseMs: 100, capMs: 1000, random: () => 0 });
  assert.deepEqual([zero.next(), zero.next(), zero.next()], [0, 0, 0]);
  const real = new Backoff({ baseMs: 100, capMs: 800 });
  for (let i = 0; i < 1000; i += 1) {
    const ceiling = real.ceiling(real.attempts);
    const wait = real.next();
    assert.ok(wait >= 0 && wait < ceiling);
  }
});

test("a wait the server asked for is a floor, and a reset starts from the base again", () => {
  const backoff = new Backoff({ baseMs: 100, capMs: 1000, random: () => 0.5 });
  assert.equal(backoff.next(1000), 1000);
  assert.equal(backoff.next(10), 100);
  backoff.reset();
  assert.equal(backoff.attempts, 0);
  assert.equal(backoff.next(), 50);
});

test("the ceiling stays finite after very many attempts", () => {
  const backoff = new Backoff({ baseMs: 250, capMs: 30_000 });
  assert.equal(backoff.ceiling(10_000), 30_000);
});
