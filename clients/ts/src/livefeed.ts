// Load-then-follow, the pure part: a snapshot read at `position`, then the topic's events
// after it, applied in order, each exactly once. The client feeds it from a subscription made
// with `since = position`; a reload (after a failed recovery) replaces the snapshot and drops
// whatever the new snapshot already contains.

import type { Event } from "./gen/herald/v1/events_pb.js";
import { TopicCursor, type Position } from "./cursor.js";

export type Apply<S> = (state: S, event: Event) => S;

export class LiveFeed<S> {
  private cursor: TopicCursor;
  private current: S;
  private readonly apply: Apply<S>;
  /** Events that came while a reload was running, applied once it is done. */
  private pending: Event[] | undefined;

  constructor(snapshot: S, position: Position | undefined, apply: Apply<S>) {
    this.current = snapshot;
    this.cursor = new TopicCursor(position);
    this.apply = apply;
  }

  get state(): S {
    return this.current;
  }

  get position(): Position | undefined {
    return this.cursor.position;
  }

  /** Whether a reload is running (events are held until it ends). */
  get reloading(): boolean {
    return this.pending !== undefined;
  }

  /** Applies `event` if it is after the state; returns whether it did. */
  push(event: Event): boolean {
    if (this.pending) {
      this.pending.push(event);
      return false;
    }
    if (this.cursor.accept(event.offset, event.epoch) === "duplicate") return false;
    this.current = this.apply(this.current, event);
    return true;
  }

  /** A reload starts: hold events until `reloaded`. */
  beginReload(): void {
    this.pending ??= [];
  }

  /**
   * The reload's snapshot, read at `position`: it replaces the state, and the events held in
   * the meantime are applied if they are after it. Returns the events applied.
   */
  reloaded(snapshot: S, position: Position | undefined): Event[] {
    const held = this.pending ?? [];
    this.pending = undefined;
    this.current = snapshot;
    this.cursor = new TopicCursor(position);
    return held.filter((event) => this.push(event));
  }
}
