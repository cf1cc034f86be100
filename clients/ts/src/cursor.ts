// The last position a subscription processed, and the rules that make delivery exactly-once
// for the application: an offset at or below it is a duplicate (a replay after a reconnect,
// or the same event from two transports while the client moves between them); another epoch
// means the history the client followed is gone and it must reload.

/** A point in one topic's stream: offsets are only comparable within one epoch. */
export interface Position {
  offset: bigint;
  epoch: string;
}

/** What to do with an incoming event. */
export type EventVerdict =
  /** The next event: hand it to the application. */
  | "deliver"
  /** At or before the last processed offset: drop it. */
  | "duplicate"
  /** Of another epoch than the last one processed: report a failed recovery, then deliver. */
  | "epoch-changed";

/** What a `subscribed` answer means for the application. */
export type SubscribedVerdict =
  /** Every event after `since` follows (or there was no `since`). */
  | "recovered"
  /** History no longer covers `since`: the application reloads its state. */
  | "recovery-failed";

export class TopicCursor {
  position: Position | undefined;

  constructor(since?: Position) {
    this.position = since && { offset: since.offset, epoch: since.epoch };
  }

  /** Judges one event and, unless it is a duplicate, moves the cursor to it. */
  accept(offset: bigint, epoch: string): EventVerdict {
    const last = this.position;
    if (last !== undefined && epoch === last.epoch && offset <= last.offset) return "duplicate";
    this.position = { offset, epoch };
    if (last !== undefined && epoch !== last.epoch) return "epoch-changed";
    return "deliver";
  }

  /**
   * Judges a `subscribed` answer to a subscribe sent with `since` (the cursor at that time).
   * Without `since` the cursor starts at the topic's top. When history does not cover `since`
   * (`recovered` false, or a top in another epoch) the cursor moves to the top: nothing is
   * replayed, the application reloads, and live events continue after the top.
   */
  subscribed(top: Position | undefined, recovered: boolean, since: Position | undefined): SubscribedVerdict {
    if (since === undefined) {
      if (this.position === undefined && top !== undefined) this.position = { ...top };
      return "recovered";
    }
    if (!recovered || (top !== undefined && top.epoch !== since.epoch)) {
      this.position = top && { ...top };
      return "recovery-failed";
    }
    return "recovered";
  }
}
