// The user's inbox, live: the newest notifications and the counts, loaded then followed on
// `user:<id>` with the SDK's live() (snapshot + position, then every change once, in order).
// The bell and the notifications panel both render from it.

import {
  NotificationChange,
  type HeraldClient,
  type Live,
  type Notification,
  type NotificationCounts,
  type Event,
} from "@herald/client";

/** Notifications the dropdown holds (newest first); older ones are a page further. */
export const PAGE_SIZE = 20;

export interface InboxState {
  notifications: Notification[];
  counts: NotificationCounts | undefined;
}

export function applyInboxEvent(state: InboxState, event: Event): InboxState {
  const body = event.body;
  switch (body.case) {
    case "notificationCreated": {
      const created = body.value.notification;
      if (!created || state.notifications.some((n) => n.id === created.id)) return state;
      return { ...state, notifications: [created, ...state.notifications].slice(0, PAGE_SIZE * 2) };
    }
    case "notificationCounts":
      return { ...state, counts: body.value };
    case "notificationsChanged": {
      const change = body.value;
      // `all` covers everything held (it all came before this event), narrowed by the filter.
      const hit = (n: Notification) =>
        change.all
          ? (change.type === 0 || n.type === change.type) && (change.conversationId === "" || n.context?.conversationId === change.conversationId)
          : change.ids.includes(n.id);
      switch (change.change) {
        case NotificationChange.SEEN:
          return { ...state, notifications: state.notifications.map((n) => (hit(n) ? { ...n, seen: true } : n)) };
        case NotificationChange.READ:
          return { ...state, notifications: state.notifications.map((n) => (hit(n) ? { ...n, seen: true, read: true } : n)) };
        case NotificationChange.ARCHIVED:
        case NotificationChange.SNOOZED:
        case NotificationChange.DELETED:
        case NotificationChange.EXPIRED:
          return { ...state, notifications: state.notifications.filter((n) => !hit(n)) };
        default:
          // UNSNOOZED brings notifications back that this page does not hold: the next load
          // shows them, and the counts frame that follows is already right.
          return state;
      }
    }
    default:
      return state;
  }
}

export class InboxStore {
  private readonly live: Live<InboxState>;
  private readonly listeners = new Set<(state: InboxState) => void>();
  readonly ready: Promise<InboxState>;

  constructor(
    private readonly herald: HeraldClient,
    userId: string,
    onError: (error: unknown) => void,
  ) {
    this.live = herald.live(
      async () => {
        // The list's position is the subscription's start. The counts are read after it:
        // every change after the position is followed by a counts frame, so the last one
        // replayed sets the badge to the database's.
        const page = await herald.notifications.list({ limit: PAGE_SIZE });
        const counts = await herald.notifications.counts({});
        return { ...page, counts: counts.counts, position: page.position };
      },
      `user:${userId}`,
      {
        initial: (read) => ({ notifications: read.notifications, counts: read.counts }),
        apply: applyInboxEvent,
        onChange: (state) => this.emit(state),
        onReload: (state) => this.emit(state),
        onError,
      },
    );
    this.ready = this.live.ready.then((state) => {
      this.emit(state);
      return state;
    });
    this.ready.catch(onError);
  }

  get state(): InboxState {
    return this.live.state ?? { notifications: [], counts: undefined };
  }

  subscribe(listener: (state: InboxState) => void): () => void {
    this.listeners.add(listener);
    if (this.live.state) listener(this.live.state);
    return () => this.listeners.delete(listener);
  }

  markSeen() {
    return this.herald.notifications.markSeen({});
  }
  markRead(id: string) {
    return this.herald.notifications.markRead({ ids: [id] });
  }
  markAllRead() {
    return this.herald.notifications.markAllRead({});
  }
  archive(id: string) {
    return this.herald.notifications.archive({ ids: [id] });
  }
  delete(id: string) {
    return this.herald.notifications.delete({ ids: [id] });
  }

  close(): void {
    this.live.close();
    this.listeners.clear();
  }

  private emit(state: InboxState): void {
    for (const listener of this.listeners) listener(state);
  }
}
