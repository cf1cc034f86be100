// The signed-in user's groups and conversations, and who is online. Each group is loaded with
// ListMembers and followed on `group:<id>` with the SDK's live() (members joining and leaving,
// conversations created, and the `chat.presence` signals of its members); the conversation
// list is ListMyConversations, read again when a group says a conversation was created or
// its membership changed, or when `user:<me>` says the user was added to (or removed from) a
// group or a conversation (`chat.added`, `chat.removed`: a direct conversation someone else
// started); `chat.unread` on it keeps the unread counts of the list exact. Who is online starts from Rooms/Presence (who has the group or the
// direct conversation open) and follows the `chat.presence` signals.

import {
  ChatMemberChange,
  type ChatConversationSummary,
  type ChatGroup,
  type ChatMember,
  type Event,
  type HeraldClient,
  type Live,
  type Subscription,
} from "@herald/client";
import type { PresenceNote } from "./conversation.js";

export interface GroupState {
  group: ChatGroup;
  members: ChatMember[];
}

export function applyGroupEvent(state: GroupState, event: Event): GroupState {
  const body = event.body;
  if (body.case !== "chatMemberChanged") return state;
  const member = body.value.member;
  if (!member) return state;
  const others = state.members.filter((m) => m.userId !== member.userId);
  switch (body.value.change) {
    case ChatMemberChange.JOINED:
    case ChatMemberChange.ROLE_CHANGED:
      return { ...state, members: state.members.some((m) => m.userId === member.userId) ? state.members.map((m) => (m.userId === member.userId ? member : m)) : [...state.members, member] };
    case ChatMemberChange.LEFT:
    case ChatMemberChange.REMOVED:
      return { ...state, members: others };
    default:
      return state;
  }
}

export class Directory {
  groups: GroupState[] = [];
  conversations: ChatConversationSummary[] = [];
  totalUnread = 0;
  loaded = false;
  readonly presence = new Map<string, PresenceNote>();
  private readonly lives = new Map<bigint, Live<GroupState>>();
  private readonly listeners = new Set<() => void>();
  private reading: Promise<void> | undefined;
  private again = false;
  private closed = false;
  /** `user:<me>`, shared with the inbox over one transport subscription. */
  private mine: Subscription | undefined;

  constructor(
    private readonly herald: HeraldClient,
    private readonly me: string,
    private readonly onError: (what: string, error: unknown) => void,
  ) {
    this.presence.set(me, { online: true });
  }

  /** Follows `user:<me>` once the first read is in; whatever came in between is read again. */
  private followMine(): void {
    if (this.mine || this.closed) return;
    this.mine = this.herald.subscribe(`user:${this.me}`, {
      onEvent: (event) => this.onMine(event),
      // events were missed: the list is read again
      onRecoveryFailed: () => void this.refresh(),
      onError: (error) => this.onError("Following the conversations", error),
    });
    this.mine.ready.then(
      () => void this.refresh(),
      () => {},
    );
  }

  private onMine(event: Event): void {
    const body = event.body;
    if (body.case === "chatMembershipChanged") {
      void this.refresh();
    } else if (body.case === "chatUnreadChanged") {
      const { conversationId, unread, totalUnread } = body.value;
      this.totalUnread = totalUnread;
      this.conversations = this.conversations.map((c) => (c.conversation?.id === conversationId ? { ...c, unread } : c));
      this.emit();
    }
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Reads the groups and conversations (again); concurrent calls coalesce into one more read. */
  refresh(): Promise<void> {
    if (this.reading) {
      this.again = true;
      return this.reading;
    }
    this.reading = (async () => {
      do {
        this.again = false;
        try {
          await this.read();
        } catch (error) {
          this.onError("Loading the conversations", error);
        }
      } while (this.again && !this.closed);
      this.reading = undefined;
    })();
    return this.reading;
  }

  /** Presence from outside (a direct conversation's signals). */
  notePresence(user: string, note: PresenceNote): void {
    if (user === this.me) return;
    this.presence.set(user, note);
    this.emit();
  }

  /** The members of a conversation's group, or the two users of a direct one. */
  membersOf(summary: ChatConversationSummary): string[] {
    const conversation = summary.conversation;
    if (!conversation) return [];
    if (conversation.groupId !== 0n) return this.groups.find((g) => g.group.id === conversation.groupId)?.members.map((m) => m.userId) ?? [];
    return conversation.memberIds;
  }

  async presenceOf(topic: string): Promise<void> {
    try {
      const { members } = await this.herald.rooms.presence({ topic });
      for (const member of members) if (member.userId !== this.me) this.presence.set(member.userId, { online: true });
      this.emit();
    } catch (error) {
      this.onError("Reading who is online", error);
    }
  }

  close(): void {
    this.closed = true;
    this.mine?.unsubscribe();
    for (const live of this.lives.values()) live.close();
    this.lives.clear();
    this.listeners.clear();
  }

  private async read(): Promise<void> {
    const [{ groups }, page] = await Promise.all([this.herald.chat.listMyGroups({}), this.herald.chat.listMyConversations({ pageSize: 100 })]);
    if (this.closed) return;
    this.conversations = page.conversations;
    this.totalUnread = page.totalUnread;
    const ids = new Set(groups.map((g) => g.id));
    for (const [id, live] of this.lives) {
      if (!ids.has(id)) {
        live.close();
        this.lives.delete(id);
      }
    }
    for (const group of groups) if (!this.lives.has(group.id)) this.follow(group);
    this.groups = groups.map((g) => this.lives.get(g.id)?.state ?? { group: g, members: [] });
    this.loaded = true;
    this.emit();
    this.followMine();
  }

  private follow(group: ChatGroup): void {
    const topic = `group:${group.id}`;
    const live = this.herald.live(() => this.herald.chat.listMembers({ groupId: group.id }), topic, {
      initial: (reply): GroupState => ({ group, members: reply.members }),
      apply: applyGroupEvent,
      onChange: (state, event) => {
        this.groups = this.groups.map((g) => (g.group.id === group.id ? state : g));
        this.emit();
        // A new conversation, or a change of who is in the group: the list is read again.
        if (event.body.case === "chatConversationCreated" || event.body.case === "chatMemberChanged") void this.refresh();
      },
      onReload: (state) => {
        this.groups = this.groups.map((g) => (g.group.id === group.id ? state : g));
        this.emit();
      },
      onSignal: (signal) => {
        if (signal.type !== "chat.presence") return;
        const data = signal.data ?? {};
        const user = typeof data["user_id"] === "string" ? data["user_id"] : signal.publisher;
        const note: PresenceNote = { online: data["online"] === true };
        if (typeof data["last_seen"] === "string") note.lastSeen = data["last_seen"];
        this.notePresence(user, note);
      },
      // Removed from the group (the stream ends after the removal): the list is read again.
      onError: () => {
        this.lives.get(group.id)?.close();
        this.lives.delete(group.id);
        void this.refresh();
      },
    });
    this.lives.set(group.id, live);
    live.ready.then(
      (state) => {
        this.groups = this.groups.map((g) => (g.group.id === group.id ? state : g));
        this.emit();
        return this.presenceOf(topic);
      },
      (error: unknown) => this.onError("Following a group", error),
    );
  }

  private emit(): void {
    for (const listener of this.listeners) listener();
  }
}
