// Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
// Jitter"): the n-th retry waits a uniformly random time in [0, min(cap, base·2ⁿ)], so a
// crowd of clients that lost the same server spreads its reconnects instead of arriving in
// waves. A wait the server asked for (`herald-retry-after-ms`, HTTP `retry-after`) is a floor.

export interface BackoffOptions {
  /** The ceiling of the first wait, in ms (default 250). */
  baseMs?: number;
  /** The largest ceiling, in ms (default 30,000). */
  capMs?: number;
  /** A source of uniform numbers in [0, 1) (default Math.random); tests inject their own. */
  random?: () => number;
}

export class Backoff {
  readonly baseMs: number;
  readonly capMs: number;
  private readonly random: () => number;
  private attempt = 0;

  constructor(options: BackoffOptions = {}) {
    this.baseMs = options.baseMs ?? 250;
    this.capMs = options.capMs ?? 30_000;
    this.random = options.random ?? Math.random;
  }

  /** How many waits were handed out since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  /** The ceiling of the n-th wait: min(cap, base·2ⁿ). */
  ceiling(attempt: number): number {
    // 2^31 already exceeds any sensible cap; stop doubling there to stay finite.
    return Math.min(this.capMs, this.baseMs * 2 ** Math.min(attempt, 31));
  }

  /** The next wait, in ms; `retryAfterMs` (asked for by the server) is a floor. */
  next(retryAfterMs?: number): number {
    const wait = Math.floor(this.random() * this.ceiling(this.attempt));
    this.attempt += 1;
    return Math.max(wait, retryAfterMs ?? 0);
  }

  /** After a success: the next failure starts from the base again. */
  reset(): void {
    this.attempt = 0;
  }
}
