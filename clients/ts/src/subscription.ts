// One topic the application follows, whatever carries it: the handlers, the cursor that
// de-duplicates, and the handle's state. Transports call into it; it calls the application.

import { create } from "@bufbuild/protobuf";

import { HeraldError } from "./codes.js";
import { TopicCursor, type Position } from "./cursor.js";
import type { Event, PresenceChange, Signal, StreamPosition } from "./gen/herald/v1/events_pb.js";
import { StreamPositionSchema } from "./gen/herald/v1/events_pb.js";

export type SubscriptionState =
  /** Waiting for the first `subscribed`. */
  | "subscribing"
  /** Following: events arrive as they are published. */
  | "live"
  /** The connection was lost; the client is resuming from the last offset. */
  | "reconnecting"
  /** The server refused it for good (see `onError`); nothing more arrives. */
  | "failed"
  /** `unsubscribe()` was called. */
  | "closed";

/** The first position of a stream whose history no longer covers the client's offset. */
export interface RecoveryFailed {
  topic: string;
  /** The topic's current top: live events continue after it. */
  position: Position | undefined;
}

export interface SubscribeOptions {
  /** Each event once, in offset order. */
  onEvent?: (event: Event) => void;
  /** Ephemeral signals (typing, a courier's position): no offset, never replayed. */
  onSignal?: (signal: Signal) => void;
  /** Presence changes on topics that announce presence. */
  onPresence?: (change: PresenceChange) => void;
  /**
   * History no longer covers the last offset (another epoch, retention, a restarted memory
   * broker): events were missed, so reload the state from its source of truth.
   */
  onRecoveryFailed?: (info: RecoveryFailed) => void;
  /** The subscription ended for good (a terminal code: permission denied, bad topic, …). */
  onError?: (error: HeraldError) => void;
  /** Resume after this position (the last event processed, or a List's `position`). */
  since?: Position | StreamPosition;
}

/** The handle `subscribe` returns. */
export interface Subscription {
  readonly topic: string;
  /** The offset of the last event delivered (or of the top when subscribed without `since`). */
  readonly offset: bigint | undefined;
  readonly position: Position | undefined;
  readonly state: SubscriptionState;
  /** Resolves at the first `subscribed`; rejects if the subscription fails before it. */
  readonly ready: Promise<void>;
  unsubscribe(): void;
}

/**
 * Where a transport subscription delivers: the handles that share it (see shared.ts). Each
 * call happens once per event, in offset order, already de-duplicated.
 */
export interface SubSink {
  event(event: Event): void;
  signal(signal: Signal): void;
  presence(change: PresenceChange): void;
  /**
   * Events were missed; `resumeAfter` is where the stream continues (undefined: with the
   * next event, of another epoch).
   */
  recoveryFailed(resumeAfter: Position | undefined): void;
  /** `ready` resolved: the first `subscribed`. */
  live(): void;
  error(error: HeraldError): void;
}

/** The one subscription per topic that transports carry. */
export class Sub {
  readonly topic: string;
  readonly cursor: TopicCursor;
  state: SubscriptionState = "subscribing";
  readonly ready: Promise<void>;
  private resolveReady!: () => void;
  private rejectReady!: (error: unknown) => void;

  constructor(
    topic: string,
    private readonly sink: SubSink,
    since: Position | StreamPosition | undefined,
    private readonly hooks: {
      closed(sub: Sub): void;
      recoveryFailed(sub: Sub): void;
      live(sub: Sub): void;
      /** The retained events after `since` (Rooms/History), to fill a gap in delivery. */
      history?(sub: Sub, since: Position): Promise<Event[]>;
    },
  ) {
    this.topic = topic;
    this.cursor = new TopicCursor(since && { offset: BigInt(since.offset), epoch: since.epoch });
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    // An unobserved failure is reported through onError, not as an unhandled rejection.
    this.ready.catch(() => {});
  }

  get offset(): bigint | undefined {
    return this.cursor.position?.offset;
  }

  get position(): Position | undefined {
    return this.cursor.position && { ...this.cursor.position };
  }

  get active(): boolean {
    return this.state !== "failed" && this.state !== "closed";
  }

  /** The `since` of the next subscribe request, as the proto message. */
  since(): StreamPosition | undefined {
    const p = this.cursor.position;
    return p && create(StreamPositionSchema, { offset: p.offset, epoch: p.epoch });
  }

  unsubscribe(): void {
    if (!this.active) return;
    this.state = "closed";
    this.rejectReady(new HeraldError("cancelled", `unsubscribed from ${this.topic}`));
    this.hooks.closed(this);
  }

  /** A transport got `subscribed` for a request sent with `since`. */
  subscribed(top: StreamPosition | undefined, recovered: boolean, since: StreamPosition | undefined): void {
    if (!this.active) return;
    const verdict = this.cursor.subscribed(
      top && { offset: top.offset, epoch: top.epoch },
      recovered,
      since && { offset: since.offset, epoch: since.epoch },
    );
    this.state = "live";
    this.resolveReady();
    this.hooks.live(this);
    this.sink.live();
    if (verdict === "recovery-failed") this.recoveryFailed(this.position);
  }

  /**
   * Offsets are consecutive per epoch, so an event more than one past the cursor means the
   * transport skipped some: the client fetches them from History and delivers them first
   * (events arriving meanwhile are held and follow in order). No transport should skip, but
   * the guarantee is the client's to keep.
   */
  event(event: Event): void {
    if (!this.active) return;
    if (this.held) {
      this.held.push(event);
      return;
    }
    const last = this.cursor.position;
    if (last && this.hooks.history && event.epoch === last.epoch && event.offset > last.offset + 1n) {
      this.repair(last, event);
      return;
    }
    this.deliver(event);
  }

  /** Events held while a gap is fetched. */
  private held: Event[] | undefined;

  private repair(last: Position, first: Event): void {
    this.held = [first];
    const history = this.hooks.history!;
    void history(this, last)
      .then(
        (events) => {
          for (const event of events) if (event.offset < first.offset) this.deliver(event);
        },
        () => {},
      )
      .finally(() => {
        const held = (this.held ?? []).sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0));
        this.held = undefined;
        const position = this.cursor.position;
        if (position && position.epoch === last.epoch && position.offset === last.offset) {
          // History had nothing to fill it with: deliver what came, and say events are missing.
          this.recoveryFailed(this.position);
          for (const event of held) this.deliver(event);
          return;
        }
        for (const event of held) this.event(event);
      });
  }

  private deliver(event: Event): void {
    if (!this.active) return;
    const verdict = this.cursor.accept(event.offset, event.epoch);
    if (verdict === "duplicate") return;
    if (verdict === "epoch-changed") this.recoveryFailed(undefined);
    this.sink.event(event);
  }

  signal(signal: Signal): void {
    if (this.active) this.sink.signal(signal);
  }

  presence(change: PresenceChange): void {
    if (this.active) this.sink.presence(change);
  }

  reconnecting(): void {
    if (this.active) this.state = "reconnecting";
  }

  fail(error: HeraldError): void {
    if (!this.active) return;
    this.state = "failed";
    this.rejectReady(error);
    this.hooks.closed(this);
    this.sink.error(error);
  }

  private recoveryFailed(resumeAfter: Position | undefined): void {
    this.hooks.recoveryFailed(this);
    this.sink.recoveryFailed(resumeAfter && { ...resumeAfter });
  }
}
