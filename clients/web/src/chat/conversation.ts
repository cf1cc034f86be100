// One open conversation, live: its messages loaded with ListMessages and followed on
// `conv:<id>` with the SDK's live() (snapshot + position, then every message, edit, tombstone,
// reaction summary and read receipt once, in order), and its signals: who is typing, and on a
// direct conversation who went online or offline. Sending goes through an outbox that retries
// with the same client message id, so a message sent while the server is away is created
// once and shown once (when its event arrives).

import {
  HeraldError,
  type ChatMessage,
  type ChatReaction,
  type Event,
  type HeraldClient,
  type Live,
  type Signal,
} from "@herald/client";

export const PAGE_SIZE = 50;
/** A typing indicator with no refresh is dropped after this long (the server stops it at 6 s). */
const TYPING_STALE_MS = 8_000;

export interface ConversationState {
  /** Oldest first. */
  messages: ChatMessage[];
  /** Read watermarks (message seq) of members, as far as receipts were seen. */
  receipts: Record<string, bigint>;
  /** Whether older messages exist than those loaded. */
  more: boolean;
}

export interface PendingMessage {
  clientId: string;
  text: string;
  /** `sending`: a call is out or will be retried; `failed`: refused for good. */
  status: "sending" | "failed";
  error?: string;
}

export interface PresenceNote {
  online: boolean;
  lastSeen?: string;
}

/** How each event changes the conversation; `me` tells the caller's own reaction toggles. */
export function applyConversationEvent(me: string) {
  return (state: ConversationState, event: Event): ConversationState => {
    const body = event.body;
    switch (body.case) {
      case "chatMessageChanged": {
        const message = body.value.message;
        if (!message) return state;
        const at = state.messages.findIndex((m) => m.id === message.id);
        if (at >= 0) {
          const old = state.messages[at]!;
          // Message events carry no reactions: keep the summary, unless it is a tombstone.
          const next = { ...message, reactions: message.deleted ? [] : old.reactions };
          return { ...state, messages: state.messages.map((m, i) => (i === at ? next : m)) };
        }
        const messages = [...state.messages, message].sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
        return { ...state, messages };
      }
      case "chatReactionsChanged": {
        const change = body.value;
        return {
          ...state,
          messages: state.messages.map((m) => {
            if (m.id !== change.messageId) return m;
            const mine = new Set(m.reactions.filter((r) => r.reacted).map((r) => r.emoji));
            if (change.userId === me) {
              if (change.added) mine.add(change.emoji);
              else mine.delete(change.emoji);
            }
            const reactions: ChatReaction[] = change.reactions.map((r) => ({ ...r, reacted: mine.has(r.emoji) }));
            return { ...m, reactions };
          }),
        };
      }
      case "chatReadMoved": {
        const read = body.value;
        const before = state.receipts[read.userId] ?? 0n;
        if (read.seq <= before) return state;
        return { ...state, receipts: { ...state.receipts, [read.userId]: read.seq } };
      }
      default:
        return state;
    }
  };
}

export class ConversationStore {
  private readonly live: Live<ConversationState>;
  private readonly listeners = new Set<() => void>();
  private readonly typists = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly outbox: PendingMessage[] = [];
  private readonly retryTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly offStatus: () => void;
  private closed = false;
  /** The caller's read watermark, moved forward as the page marks messages read. */
  readSeq: bigint;
  readonly ready: Promise<ConversationState>;

  constructor(
    private readonly herald: HeraldClient,
    readonly conversationId: bigint,
    private readonly me: string,
    readSeq: bigint,
    private readonly onPresence: (user: string, note: PresenceNote) => void,
    private readonly onError: (what: string, error: unknown) => void,
  ) {
    this.readSeq = readSeq;
    this.live = herald.live(() => herald.chat.listMessages({ conversationId, pageSize: PAGE_SIZE }), `conv:${conversationId}`, {
      initial: (page): ConversationState => ({ messages: [...page.messages].reverse(), receipts: {}, more: page.nextPageToken !== "" }),
      apply: applyConversationEvent(me),
      onChange: (state) => this.settle(state),
      onReload: (state) => this.settle(state),
      onSignal: (signal) => this.signal(signal),
      onError: (error) => onError("The conversation", error),
    });
    this.ready = this.live.ready.then((state) => {
      this.settle(state);
      return state;
    });
    this.ready.catch((error) => onError("Opening the conversation", error));
    // A message waiting for the server goes out again as soon as the connection is back.
    this.offStatus = herald.onStatus(({ state }) => {
      if (state === "connected" || state === "resumed" || state === "reloaded") this.retryAll();
    });
  }

  get state(): ConversationState {
    return this.live.state ?? { messages: [], receipts: {}, more: false };
  }

  get loaded(): boolean {
    return this.live.state !== undefined;
  }

  /** Who is typing now (not the caller). */
  get typing(): string[] {
    return [...this.typists.keys()];
  }

  get pending(): readonly PendingMessage[] {
    return this.outbox;
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  send(text: string): void {
    const entry: PendingMessage = { clientId: crypto.randomUUID(), text, status: "sending" };
    this.outbox.push(entry);
    this.emit();
    void this.attempt(entry, 0);
  }

  retry(clientId: string): void {
    const entry = this.outbox.find((p) => p.clientId === clientId);
    if (!entry) return;
    entry.status = "sending";
    delete entry.error;
    this.emit();
    void this.attempt(entry, 0);
  }

  discard(clientId: string): void {
    const at = this.outbox.findIndex((p) => p.clientId === clientId);
    if (at >= 0) this.outbox.splice(at, 1);
    clearTimeout(this.retryTimers.get(clientId));
    this.retryTimers.delete(clientId);
    this.emit();
  }

  react(messageId: bigint, emoji: string) {
    return this.herald.chat.react({ messageId, emoji });
  }

  setTyping(typing: boolean) {
    return this.herald.chat.setTyping({ conversationId: this.conversationId, typing });
  }

  /** Moves the caller's watermark to `message` when it is past it. */
  markRead(message: ChatMessage): void {
    if (message.seq <= this.readSeq) return;
    const previous = this.readSeq;
    this.readSeq = message.seq;
    this.herald.chat.markRead({ conversationId: this.conversationId, messageId: message.id }).catch((error: unknown) => {
      if (this.readSeq === message.seq) this.readSeq = previous;
      if (!retryable(error)) this.onError("Marking read", error);
    });
  }

  close(): void {
    this.closed = true;
    this.live.close();
    this.offStatus();
    for (const timer of this.typists.values()) clearTimeout(timer);
    for (const timer of this.retryTimers.values()) clearTimeout(timer);
    this.typists.clear();
    this.listeners.clear();
  }

  private async attempt(entry: PendingMessage, tries: number): Promise<void> {
    if (this.closed || entry.status !== "sending") return;
    clearTimeout(this.retryTimers.get(entry.clientId));
    this.retryTimers.delete(entry.clientId);
    try {
      const { message } = await this.herald.chat.sendMessage({ conversationId: this.conversationId, text: entry.text, clientMessageId: entry.clientId });
      // Shown once: the pending line gives way when the message's event arrives (or has).
      if (message && this.state.messages.some((m) => m.id === message.id)) this.dropPending(entry.clientId);
    } catch (error) {
      if (this.closed || !this.outbox.includes(entry)) return;
      if (retryable(error)) {
        const wait = Math.min(15_000, 1_000 * 2 ** tries);
        this.retryTimers.set(
          entry.clientId,
          setTimeout(() => void this.attempt(entry, tries + 1), wait),
        );
      } else {
        entry.status = "failed";
        entry.error = error instanceof Error ? error.message : "refused";
        this.emit();
      }
    }
  }

  private retryAll(): void {
    for (const entry of this.outbox) if (entry.status === "sending" && this.retryTimers.has(entry.clientId)) void this.attempt(entry, 0);
  }

  private dropPending(clientId: string): void {
    const at = this.outbox.findIndex((p) => p.clientId === clientId);
    if (at < 0) return;
    this.outbox.splice(at, 1);
    clearTimeout(this.retryTimers.get(clientId));
    this.retryTimers.delete(clientId);
    this.emit();
  }

  /** After a change: pending lines whose message arrived give way; typists who sent stop. */
  private settle(state: ConversationState): void {
    for (const message of state.messages) {
      if (message.authorId === this.me && message.clientMessageId) {
        const at = this.outbox.findIndex((p) => p.clientId === message.clientMessageId);
        if (at >= 0) {
          this.outbox.splice(at, 1);
          clearTimeout(this.retryTimers.get(message.clientMessageId));
          this.retryTimers.delete(message.clientMessageId);
        }
      }
    }
    const mine = state.receipts[this.me];
    if (mine !== undefined && mine > this.readSeq) this.readSeq = mine;
    const last = state.messages[state.messages.length - 1];
    if (last && last.authorId !== this.me) this.stopTyping(last.authorId, false);
    this.emit();
  }

  private signal(signal: Signal): void {
    const data = signal.data ?? {};
    const user = typeof data["user_id"] === "string" ? data["user_id"] : signal.publisher;
    if (signal.type === "chat.typing") {
      if (user === this.me) return;
      if (data["typing"] === true) {
        clearTimeout(this.typists.get(user));
        this.typists.set(
          user,
          setTimeout(() => this.stopTyping(user), TYPING_STALE_MS),
        );
        this.emit();
      } else {
        this.stopTyping(user);
      }
    } else if (signal.type === "chat.presence") {
      const note: PresenceNote = { online: data["online"] === true };
      if (typeof data["last_seen"] === "string") note.lastSeen = data["last_seen"];
      this.onPresence(user, note);
    }
  }

  private stopTyping(user: string, emit = true): void {
    const timer = this.typists.get(user);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.typists.delete(user);
    if (emit) this.emit();
  }

  private emit(): void {
    for (const listener of this.listeners) listener();
  }
}

const PERMANENT = new Set(["invalid_argument", "permission_denied", "not_found", "failed_precondition", "already_exists", "unauthenticated", "unimplemented"]);

/** Whether a failed call may succeed when tried again (the server was away, busy, …). */
export function retryable(error: unknown): boolean {
  return !(error instanceof HeraldError && PERMANENT.has(error.code));
}

/** For each own message, who has read up to it (shown under the newest one each reader reached). */
export function receiptsByMessage(messages: ChatMessage[], receipts: Record<string, bigint>, me: string): Map<bigint, string[]> {
  const byMessage = new Map<bigint, string[]>();
  const own = messages.filter((m) => m.authorId === me && !m.deleted);
  for (const [user, seq] of Object.entries(receipts)) {
    if (user === me) continue;
    let reached: ChatMessage | undefined;
    for (const m of own) if (m.seq <= seq) reached = m;
    if (!reached) continue;
    byMessage.set(reached.id, [...(byMessage.get(reached.id) ?? []), user].sort());
  }
  return byMessage;
}
