// The chat panel: the user's groups and conversations on the left; the open conversation on
// the right with who is online, its messages (loaded then followed), reactions, read
// receipts, who is typing, and the composer. Enter sends, Shift+Enter starts a new line.

import "./chat.css";
import { ChatConversationKind, HeraldError, type ChatConversationSummary, type ChatMessage } from "@herald/client";
import { h, replaceChildren } from "../dom.js";
import { ago, isoTime } from "../format.js";
import type { Panel, PanelContext } from "../panels.js";
import { ConversationStore, receiptsByMessage, retryable } from "./conversation.js";
import { Directory } from "./directory.js";

/** The reactions offered on every message (others appear once someone uses them). */
const QUICK_REACTIONS = ["👍", "❤️", "😂", "🎉"];
/** How often the composer re-announces typing (the server absorbs more than one per 2 s). */
const TYPING_EVERY_MS = 1_500;
/** The most recent conversations followed live in the background (previews, unread, typing). */
const FOLLOWED = 20;

export function chatPanel(context: PanelContext): Panel {
  const me = context.identity.sub;
  const report = (what: string, error: unknown) => context.report(what, error);
  const directory = new Directory(context.herald, me, report);

  const list = h("div", { class: "chat-list-items" }, h("p", { class: "muted" }, "Loading…"));
  const directUser = h("input", { id: "chat-direct-user", name: "user", required: true, autocomplete: "off", pattern: "[!-~]{1,128}" });
  const directForm = h(
    "form",
    { class: "chat-new", "aria-label": "Start a direct conversation" },
    h("label", { for: "chat-direct-user" }, "Message a user (user id)"),
    h("div", { class: "chat-inline" }, directUser, h("button", { type: "submit" }, "Start")),
  );
  const groupName = h("input", { id: "chat-group-name", name: "name", required: true, maxlength: 100, autocomplete: "off" });
  const groupMembers = h("input", { id: "chat-group-members", name: "members", autocomplete: "off", placeholder: "e.g. bob, carol" });
  const groupForm = h(
    "form",
    { class: "chat-new", "aria-label": "Create a group" },
    h("label", { for: "chat-group-name" }, "New group name"),
    groupName,
    h("label", { for: "chat-group-members" }, "Members (user ids, comma-separated)"),
    groupMembers,
    h("button", { type: "submit" }, "Create group"),
  );
  const nav = h(
    "nav",
    { class: "chat-list", "aria-label": "Conversations" },
    h("h3", {}, "Conversations"),
    list,
    h("details", { class: "chat-create" }, h("summary", {}, "New conversation or group"), directForm, groupForm),
  );

  const title = h("h3", { class: "chat-title", id: "chat-title", "data-testid": "chat-title" }, "No conversation open");
  const people = h("ul", { class: "chat-people", "aria-label": "Members and who is online", "data-testid": "chat-people" });
  // Re-rendered whole on each change, so not a live region itself: new messages of others are
  // announced one by one through the page's live region instead.
  const log = h("ol", { class: "chat-log", role: "log", "aria-live": "off", "aria-labelledby": "chat-title", "data-testid": "chat-log", tabindex: "0" });
  const typingLine = h("p", { class: "chat-typing", "aria-live": "polite", "data-testid": "typing" });
  const input = h("textarea", { id: "chat-input", name: "message", rows: 2, maxlength: 4000, disabled: true, "aria-describedby": "chat-input-help" });
  const sendButton = h("button", { type: "submit", disabled: true }, "Send");
  const composer = h(
    "form",
    { class: "chat-composer", "data-testid": "composer" },
    h("label", { for: "chat-input", id: "chat-input-label" }, "Message"),
    h("div", { class: "chat-inline" }, input, sendButton),
    h("p", { id: "chat-input-help", class: "help" }, "Enter sends; Shift+Enter starts a new line."),
  );
  const view = h("div", { class: "chat-view" }, h("div", { class: "chat-head" }, title, people), log, typingLine, composer);
  const section = h(
    "section",
    { class: "panel chat-panel", "aria-labelledby": "panel-chat-title", "data-testid": "panel-chat" },
    h("h2", { id: "panel-chat-title" }, "Chat"),
    h("div", { class: "chat-layout" }, nav, view),
  );

  /** Followed conversations: the open one and the most recent others. */
  const stores = new Map<bigint, { store: ConversationStore; off: () => void }>();
  let open: ConversationStore | undefined;
  let openSummary: ChatConversationSummary | undefined;
  let typingSentAt = 0;
  let typingOn = false;
  /** The newest message of the open conversation already announced (or there when it opened). */
  let announcedSeq: bigint | undefined;

  const summaryTitle = (s: ChatConversationSummary): string => {
    const c = s.conversation;
    if (!c) return "Conversation";
    if (c.kind === ChatConversationKind.DIRECT) return c.memberIds.filter((u) => u !== me).join(", ") || me;
    const group = directory.groups.find((g) => g.group.id === c.groupId)?.group.name;
    return group ? `${group} · ${c.title}` : c.title;
  };

  const renderList = () => {
    if (!directory.loaded) return;
    const focusKey = list.contains(document.activeElement) ? (document.activeElement as HTMLElement).dataset["key"] : undefined;
    renderListItems();
    if (focusKey) list.querySelector<HTMLElement>(`[data-key="${CSS.escape(focusKey)}"]`)?.focus();
  };

  const renderListItems = () => {
    const items = [...directory.conversations].sort((a, b) => activity(b) - activity(a));
    if (items.length === 0) {
      replaceChildren(list, h("p", { class: "muted" }, "No conversations yet. Start one below."));
      return;
    }
    replaceChildren(
      list,
      h(
        "ul",
        {},
        ...items.map((s) => {
          const id = s.conversation?.id ?? 0n;
          const current = open?.conversationId === id;
          const { last, unread, typing } = live(s);
          const preview = typing.length
            ? `${typing.join(", ")} ${typing.length === 1 ? "is" : "are"} typing…`
            : last
              ? last.deleted
                ? "Message deleted"
                : `${last.authorId === me ? "You" : last.authorId}: ${last.text}`
              : "No messages yet";
          const name = summaryTitle(s);
          return h(
            "li",
            {},
            h(
              "button",
              {
                type: "button",
                class: `chat-conv${current ? " current" : ""}`,
                "aria-current": current ? "true" : undefined,
                "data-testid": "conversation",
                "data-id": String(id),
                "data-key": `conv-${id}`,
                "data-unread": unread,
                "aria-label": `${name}${unread !== "0" ? `, ${unread} unread` : ""}`,
                onclick: () => openConversation(s),
              },
              h("span", { class: "chat-conv-name" }, name, unread !== "0" ? h("span", { class: "chat-unread", "data-testid": "unread", "aria-hidden": "true" }, unread) : null),
              h("span", { class: "chat-conv-preview" }, preview),
            ),
          );
        }),
      ),
    );
  };

  const renderPeople = () => {
    if (!openSummary) {
      replaceChildren(people);
      return;
    }
    const members = directory.membersOf(openSummary);
    const sorted = [...members].sort((a, b) => Number(!online(b)) - Number(!online(a)) || a.localeCompare(b));
    replaceChildren(
      people,
      ...sorted.map((user) => {
        const note = directory.presence.get(user);
        const isOnline = online(user);
        const seen = !isOnline && note?.lastSeen ? `, last seen ${ago(BigInt(Math.floor(Date.parse(note.lastSeen) / 1000)))}` : "";
        return h(
          "li",
          { class: isOnline ? "online" : "offline", "data-testid": "person", "data-user": user, "data-online": String(isOnline) },
          h("span", { class: "presence-dot", "aria-hidden": "true" }),
          user === me ? `${user} (you)` : user,
          h("span", { class: "presence-text" }, isOnline ? " online" : ` offline${seen}`),
        );
      }),
    );
  };

  /** What the list shows of a conversation: from its live store when followed, else from the read. */
  const live = (s: ChatConversationSummary): { last: ChatMessage | undefined; unread: string; typing: string[] } => {
    const store = s.conversation ? stores.get(s.conversation.id)?.store : undefined;
    if (!store?.loaded) return { last: s.lastMessage, unread: String(s.unread), typing: [] };
    const { messages, more } = store.state;
    const unread = messages.filter((m) => m.authorId !== me && !m.deleted && m.seq > store.readSeq).length;
    // Exact when the held page reaches back to the watermark; else at least that many.
    const exact = !more || (messages[0]?.seq ?? 0n) <= store.readSeq + 1n;
    return { last: messages[messages.length - 1] ?? s.lastMessage, unread: `${unread}${exact || unread === 0 ? "" : "+"}`, typing: store.typing };
  };

  const activity = (s: ChatConversationSummary): number => {
    const last = live(s).last ?? s.lastMessage;
    return Number(last?.createTime?.seconds ?? s.conversation?.createTime?.seconds ?? 0n);
  };

  let listScheduled = false;
  const scheduleList = () => {
    if (listScheduled) return;
    listScheduled = true;
    queueMicrotask(() => {
      listScheduled = false;
      renderList();
    });
  };

  /** Follows the most recent conversations (and the open one); lets go of the rest. */
  const follow = () => {
    const wanted = new Set(
      [...directory.conversations]
        .sort((a, b) => activity(b) - activity(a))
        .slice(0, FOLLOWED)
        .flatMap((s) => (s.conversation ? [s.conversation.id] : [])),
    );
    if (open) wanted.add(open.conversationId);
    for (const [id, entry] of stores) {
      if (wanted.has(id)) continue;
      entry.off();
      entry.store.close();
      stores.delete(id);
    }
    for (const summary of directory.conversations) {
      const conversation = summary.conversation;
      if (conversation && wanted.has(conversation.id)) storeFor(summary);
    }
  };

  const storeFor = (summary: ChatConversationSummary): ConversationStore => {
    const conversation = summary.conversation!;
    const existing = stores.get(conversation.id);
    if (existing) return existing.store;
    // A stream refused for good because the user left or was removed: the list is read again.
    const fail = (what: string, error: unknown) => (error instanceof HeraldError && error.code === "permission_denied" ? void directory.refresh() : report(what, error));
    const store = new ConversationStore(context.herald, conversation.id, me, summary.readSeq, (user, note) => directory.notePresence(user, note), fail);
    const off = store.subscribe(() => {
      if (open === store) renderConversation();
      scheduleList();
    });
    stores.set(conversation.id, { store, off });
    if (conversation.kind === ChatConversationKind.DIRECT) void store.ready.then(() => directory.presenceOf(`conv:${conversation.id}`), () => {});
    return store;
  };

  const online = (user: string) => user === me || directory.presence.get(user)?.online === true;

  const renderConversation = () => {
    if (!open) return;
    const store = open;
    const state = store.state;
    const nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
    const focusKey = (document.activeElement as HTMLElement | null)?.dataset?.["key"];
    const readers = receiptsByMessage(state.messages, state.receipts, me);
    const items: HTMLElement[] = [];
    if (!store.loaded) items.push(h("li", { class: "muted" }, "Loading…"));
    else if (state.messages.length === 0 && store.pending.length === 0) items.push(h("li", { class: "muted chat-empty" }, "No messages yet: say hello."));
    if (state.more) items.push(h("li", { class: "muted chat-empty" }, `Showing the newest ${state.messages.length} messages.`));
    for (const m of state.messages) items.push(message(m, readers.get(m.id)));
    for (const p of store.pending) {
      items.push(
        h(
          "li",
          { class: `chat-message mine pending${p.status === "failed" ? " failed" : ""}`, "data-testid": "pending-message" },
          h("p", { class: "chat-meta" }, h("strong", {}, "You"), p.status === "failed" ? ` · not sent: ${p.error ?? "refused"}` : " · sending…"),
          h("p", { class: "chat-text" }, p.text),
          p.status === "failed"
            ? h(
                "div",
                { class: "chat-reactions" },
                h("button", { type: "button", onclick: () => store.retry(p.clientId) }, "Try again"),
                h("button", { type: "button", class: "danger", onclick: () => store.discard(p.clientId) }, "Discard"),
              )
            : null,
        ),
      );
    }
    replaceChildren(log, ...items);
    if (nearBottom) log.scrollTop = log.scrollHeight;
    if (focusKey) log.querySelector<HTMLElement>(`[data-key="${CSS.escape(focusKey)}"]`)?.focus();

    const typists = store.typing;
    typingLine.textContent = typists.length === 0 ? "" : typists.length === 1 ? `${typists[0]} is typing…` : `${typists.slice(0, -1).join(", ")} and ${typists[typists.length - 1]} are typing…`;
    typingLine.dataset["typing"] = typists.join(",");
    if (store.loaded) {
      const newest = state.messages[state.messages.length - 1]?.seq ?? 0n;
      if (announcedSeq !== undefined) {
        for (const m of state.messages) if (m.seq > announcedSeq && m.authorId !== me && !m.deleted) context.announce(`${m.authorId}: ${m.text}`);
      }
      announcedSeq = newest;
    }
    markRead();
  };

  const message = (m: ChatMessage, readers: string[] | undefined): HTMLElement => {
    const mine = m.authorId === me;
    const time = isoTime(m.createTime?.seconds);
    const emoji = [...QUICK_REACTIONS, ...m.reactions.map((r) => r.emoji).filter((e) => !QUICK_REACTIONS.includes(e))];
    return h(
      "li",
      { class: `chat-message${mine ? " mine" : ""}${m.deleted ? " deleted" : ""}`, "data-testid": "message", "data-seq": String(m.seq), "data-author": m.authorId },
      h(
        "p",
        { class: "chat-meta" },
        h("strong", {}, mine ? "You" : m.authorId),
        time ? " · " : "",
        time ? h("time", { datetime: time }, ago(m.createTime?.seconds)) : null,
        m.editTime && !m.deleted ? " · edited" : "",
      ),
      m.deleted ? h("p", { class: "chat-text muted" }, "This message was deleted.") : h("p", { class: "chat-text", "data-testid": "message-text" }, m.text),
      m.deleted
        ? null
        : h(
            "div",
            { class: "chat-reactions", role: "group", "aria-label": "Reactions" },
            ...emoji.map((e) => {
              const r = m.reactions.find((x) => x.emoji === e);
              const count = r?.count ?? 0;
              return h(
                "button",
                {
                  type: "button",
                  class: `reaction${count ? " used" : ""}`,
                  "aria-pressed": String(r?.reacted ?? false),
                  "aria-label": `${r?.reacted ? "Take back" : "React with"} ${e}${count ? ` (${count})` : ""}`,
                  "data-key": `react-${m.id}-${e}`,
                  "data-testid": "reaction",
                  "data-emoji": e,
                  "data-count": String(count),
                  onclick: () => open?.react(m.id, e).catch((error: unknown) => report("Reacting", error)),
                },
                e,
                count ? h("span", { class: "reaction-count" }, count) : null,
              );
            }),
          ),
      readers?.length ? h("p", { class: "chat-receipt", "data-testid": "receipt" }, `Seen by ${readers.join(", ")}`) : null,
    );
  };

  const markRead = () => {
    if (!open?.loaded || document.visibilityState !== "visible") return;
    const messages = open.state.messages;
    for (let i = messages.length - 1; i >= 0; i--) {
      const m = messages[i]!;
      if (m.authorId === me || m.deleted) continue;
      open.markRead(m);
      break;
    }
  };

  const openConversation = (summary: ChatConversationSummary) => {
    const conversation = summary.conversation;
    if (!conversation || open?.conversationId === conversation.id) return;
    stopTyping();
    openSummary = summary;
    open = storeFor(summary);
    announcedSeq = undefined;
    follow();
    const name = summaryTitle(summary);
    title.textContent = name;
    input.disabled = false;
    sendButton.disabled = false;
    composer.querySelector("label")!.textContent = `Message to ${name}`;
    replaceChildren(log);
    renderConversation();
    renderPeople();
    renderList();
  };

  /** The open conversation is gone (the user left or was removed): nothing is open. */
  const closeConversation = () => {
    stopTyping();
    open = undefined;
    openSummary = undefined;
    title.textContent = "No conversation open";
    composer.querySelector("label")!.textContent = "Message";
    input.disabled = true;
    sendButton.disabled = true;
    replaceChildren(log);
    typingLine.textContent = "";
  };

  const stopTyping = () => {
    if (typingOn && open) open.setTyping(false).catch(() => {});
    typingOn = false;
    typingSentAt = 0;
  };

  input.addEventListener("input", () => {
    if (!open) return;
    if (input.value.trim() === "") {
      stopTyping();
      return;
    }
    const now = Date.now();
    if (now - typingSentAt < TYPING_EVERY_MS) return;
    typingSentAt = now;
    typingOn = true;
    open.setTyping(true).catch((error: unknown) => {
      if (!retryable(error)) report("Showing that you type", error);
    });
  });
  input.addEventListener("blur", stopTyping);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });
  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!open || text === "") return;
    open.send(text);
    input.value = "";
    stopTyping();
    context.announce("Message sent");
  });

  directForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const user = directUser.value.trim();
    if (!user) return;
    context.herald.chat
      .createConversation({ with: { case: "directUserId", value: user } })
      .then(async ({ conversation }) => {
        directUser.value = "";
        await directory.refresh();
        const summary = directory.conversations.find((c) => c.conversation?.id === conversation?.id);
        if (summary) openConversation(summary);
      })
      .catch((error: unknown) => report("Starting the conversation", error));
  });
  groupForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = groupName.value.trim();
    const memberIds = groupMembers.value
      .split(",")
      .map((m) => m.trim())
      .filter(Boolean);
    context.herald.chat
      .createGroup({ name, memberIds })
      .then(async ({ group }) => {
        if (!group) return;
        const { conversation } = await context.herald.chat.createConversation({ with: { case: "groupId", value: group.id }, title: "General" });
        groupName.value = "";
        groupMembers.value = "";
        await directory.refresh();
        const summary = directory.conversations.find((c) => c.conversation?.id === conversation?.id);
        if (summary) openConversation(summary);
      })
      .catch((error: unknown) => report("Creating the group", error));
  });

  const onVisible = () => markRead();
  document.addEventListener("visibilitychange", onVisible);
  const offDirectory = directory.subscribe(() => {
    if (openSummary) {
      const id = openSummary.conversation?.id;
      const current = directory.conversations.find((c) => c.conversation?.id === id);
      if (current) openSummary = current;
      else if (directory.loaded) closeConversation();
    }
    follow();
    renderList();
    renderPeople();
    const first = [...directory.conversations].sort((a, b) => activity(b) - activity(a))[0];
    if (!open && first) openConversation(first);
  });
  void directory.refresh();

  return {
    id: "chat",
    title: "Chat",
    section,
    dispose() {
      document.removeEventListener("visibilitychange", onVisible);
      offDirectory();
      for (const { store, off } of stores.values()) {
        off();
        store.close();
      }
      stores.clear();
      directory.close();
    },
  };
}
