// Several handles on one topic: the transport carries one subscription per topic (`Sub`),
// and each handle the application holds gets every event after its own `since`, once, in
// offset order. A handle whose `since` is behind the shared subscription reads the missing
// range from History first (live events are held meanwhile), then joins; when its range can
// no longer be read (another epoch, retention) that handle alone gets `onRecoveryFailed`.

import { create } from "@bufbuild/protobuf";

import { HeraldError } from "./codes.js";
import type { Position } from "./cursor.js";
import type { Event, PresenceChange, Signal, StreamPosition } from "./gen/herald/v1/events_pb.js";
import { StreamPositionSchema } from "./gen/herald/v1/events_pb.js";
import type { Sub, SubSink, SubscribeOptions, Subscription, SubscriptionState } from "./subscription.js";

/** One page of Rooms/History after `since`: the events and the topic's top. */
export type HistoryPage = (topic: string, since: Position) => Promise<{ events: Event[]; position?: StreamPosition | undefined }>;

/** How many times a handle retries a History page that failed with a transient error. */
const HISTORY_ATTEMPTS = 3;

/** The handles of one topic, fed by its transport subscription. */
export class Shared implements SubSink {
  readonly handles = new Set<Handle>();
  sub!: Sub;

  constructor(
    readonly topic: string,
    private readonly history: HistoryPage,
    private readonly emptied: (shared: Shared) => void,
  ) {}

  /** A new handle: the first one starts at its `since` with the subscription itself. */
  add(options: SubscribeOptions): Handle {
    const first = this.handles.size === 0;
    const handle = new Handle(this, options);
    this.handles.add(handle);
    if (first) handle.startWith(this.sub);
    else handle.join(this.sub, this.history);
    return handle;
  }

  remove(handle: Handle): void {
    if (!this.handles.delete(handle)) return;
    if (this.handles.size === 0) this.emptied(this);
  }

  event(event: Event): void {
    for (const handle of [...this.handles]) handle.event(event);
  }

  signal(signal: Signal): void {
    for (const handle of [...this.handles]) handle.signal(signal);
  }

  presence(change: PresenceChange): void {
    for (const handle of [...this.handles]) handle.presence(change);
  }

  recoveryFailed(resumeAfter: Position | undefined): void {
    for (const handle of [...this.handles]) handle.sharedRecoveryFailed(resumeAfter);
  }

  live(): void {
    for (const handle of [...this.handles]) handle.sharedLive();
  }

  error(error: HeraldError): void {
    for (const handle of [...this.handles]) handle.fail(error);
  }
}

type Phase =
  /** Waiting for the shared subscription's first `subscribed`. */
  | "waiting"
  /** Reading the range between its `since` and the shared subscription from History. */
  | "filling"
  /** Following with the shared subscription. */
  | "joined"
  | "failed"
  | "closed";

/** The handle `subscribe` returns: its own position over the topic's one subscription. */
export class Handle implements Subscription {
  readonly topic: string;
  readonly ready: Promise<void>;
  private cursor: Position | undefined;
  private phase: Phase = "waiting";
  private sub: Sub | undefined;
  /** Live events that came while the handle was filling from History. */
  private held: Event[] = [];
  /** Bumped when a join is abandoned, so its History answers are ignored. */
  private generation = 0;
  private resolveReady!: () => void;
  private rejectReady!: (error: unknown) => void;

  constructor(
    private readonly shared: Shared,
    private readonly options: SubscribeOptions,
  ) {
    this.topic = shared.topic;
    const since = options.since;
    this.cursor = since && { offset: BigInt(since.offset), epoch: since.epoch };
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.ready.catch(() => {});
  }

  get offset(): bigint | undefined {
    return this.cursor?.offset;
  }

  get position(): Position | undefined {
    return this.cursor && { ...this.cursor };
  }

  get state(): SubscriptionState {
    if (this.phase === "failed" || this.phase === "closed") return this.phase;
    if (this.phase !== "joined") return "subscribing";
    const state = this.sub?.state ?? "subscribing";
    return state === "closed" ? "live" : state;
  }

  private get active(): boolean {
    return this.phase !== "failed" && this.phase !== "closed";
  }

  unsubscribe(): void {
    if (!this.active) return;
    this.phase = "closed";
    this.generation += 1;
    this.held = [];
    this.rejectReady(new HeraldError("cancelled", `unsubscribed from ${this.topic}`));
    this.shared.remove(this);
  }

  /** The first handle of a topic: the subscription starts at its `since`, nothing to fill. */
  startWith(sub: Sub): void {
    this.sub = sub;
    this.phase = "joined";
    if (sub.state === "live" || sub.state === "reconnecting") this.sharedLive();
  }

  /** A later handle: joins where the shared subscription stands, filling from History first. */
  join(sub: Sub, history: HistoryPage): void {
    this.sub = sub;
    const generation = this.generation;
    void sub.ready.then(
      () => {
        if (generation === this.generation && this.active) void this.fill(sub, history, generation);
      },
      () => {},
    );
  }

  private async fill(sub: Sub, history: HistoryPage, generation: number): Promise<void> {
    const since = this.cursor;
    const top = sub.position;
    if (!since) {
      // no `since`: start where the subscription stands
      this.cursor = top && { ...top };
      this.joined();
      return;
    }
    if (top && top.epoch !== since.epoch) {
      this.ownRecoveryFailed(top);
      return;
    }
    if (top && since.offset >= top.offset) {
      this.joined();
      return;
    }
    this.phase = "filling";
    // Page History from `since` up to where the subscription stood; live events after it are
    // held meanwhile, and whatever both returned is dropped by offset.
    let after: Position = since;
    for (;;) {
      let page: Awaited<ReturnType<HistoryPage>> | undefined;
      let failure: unknown;
      for (let attempt = 0; attempt < HISTORY_ATTEMPTS && !page; attempt += 1) {
        try {
          page = await history(this.topic, after);
        } catch (error) {
          failure = error;
          if (error instanceof HeraldError && error.code === "failed_precondition") break;
          if (attempt + 1 < HISTORY_ATTEMPTS) await new Promise((resolve) => setTimeout(resolve, 200 * (attempt + 1)));
        }
        if (generation !== this.generation || !this.active) return;
      }
      if (generation !== this.generation || !this.active) return;
      if (!page) {
        // FAILED_PRECONDITION: retention no longer covers `since`; or History kept failing
        this.ownRecoveryFailed(sub.position, failure);
        return;
      }
      const pageTop = page.position;
      const first = page.events[0];
      if ((pageTop && pageTop.epoch !== since.epoch) || (first && first.epoch !== since.epoch)) {
        // history no longer reaches `since`
        this.ownRecoveryFailed(sub.position);
        return;
      }
      for (const event of page.events) this.deliver(event);
      const last = page.events.at(-1);
      const reached = this.cursor && top && this.cursor.offset >= top.offset;
      if (reached || !last) break;
      after = { offset: last.offset, epoch: last.epoch };
    }
    if (top && (!this.cursor || this.cursor.offset < top.offset)) {
      // History ended before the subscription's position: that range is gone
      this.ownRecoveryFailed(sub.position);
      return;
    }
    this.joined();
  }

  /** Joins the shared subscription: the events held meanwhile follow, de-duplicated. */
  private joined(): void {
    const held = this.held;
    this.held = [];
    this.phase = "joined";
    for (const event of held) this.deliver(event);
    this.resolveReady();
  }

  /** This handle's range could not be read: it alone reloads, then follows from `at`. */
  private ownRecoveryFailed(at: Position | undefined, cause?: unknown): void {
    if (cause !== undefined && !(cause instanceof HeraldError && cause.code === "failed_precondition")) {
      console.warn(`@herald/client: History of ${this.topic} failed; the handle reloads`, cause);
    }
    this.cursor = at && { ...at };
    this.joined();
    this.guard(() => this.options.onRecoveryFailed?.({ topic: this.topic, position: this.position }));
  }

  event(event: Event): void {
    if (!this.active) return;
    if (this.phase !== "joined") {
      this.held.push(event);
      return;
    }
    this.deliver(event);
  }

  /** Delivers `event` unless it is at or before the cursor (same epoch). */
  private deliver(event: Event): void {
    const last = this.cursor;
    if (last && event.epoch === last.epoch && event.offset <= last.offset) return;
    this.cursor = { offset: event.offset, epoch: event.epoch };
    this.guard(() => this.options.onEvent?.(event));
  }

  signal(signal: Signal): void {
    if (this.active) this.guard(() => this.options.onSignal?.(signal));
  }

  presence(change: PresenceChange): void {
    if (this.active) this.guard(() => this.options.onPresence?.(change));
  }

  /** The shared subscription got its first `subscribed`. */
  sharedLive(): void {
    if (this.phase !== "joined" || !this.sub) return;
    if (!this.cursor) {
      const top = this.sub.position;
      this.cursor = top && { ...top };
    }
    this.resolveReady();
  }

  /** The shared subscription missed events: every handle that follows it (or fills) reloads. */
  sharedRecoveryFailed(resumeAfter: Position | undefined): void {
    if (!this.active || this.phase === "waiting") return;
    if (this.phase === "filling") {
      this.generation += 1;
      this.held = [];
      this.phase = "joined";
      this.resolveReady();
    }
    this.cursor = resumeAfter && { ...resumeAfter };
    this.guard(() => this.options.onRecoveryFailed?.({ topic: this.topic, position: this.position ?? this.sub?.position }));
  }

  fail(error: HeraldError): void {
    if (!this.active) return;
    this.phase = "failed";
    this.generation += 1;
    this.held = [];
    this.rejectReady(error);
    this.shared.remove(this);
    this.guard(() => this.options.onError?.(error));
  }

  /** The `since` as the proto message (for the first handle's subscription). */
  since(): StreamPosition | undefined {
    const p = this.cursor;
    return p && create(StreamPositionSchema, { offset: p.offset, epoch: p.epoch });
  }

  /** A throwing handler must not break delivery to the others, nor the transport. */
  private guard(run: () => void): void {
    try {
      run();
    } catch (error) {
      console.error(`@herald/client: a handler of ${this.topic} threw`, error);
    }
  }
}
