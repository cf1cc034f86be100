// The notification bell: a live unread badge and a dropdown of the newest notifications.
// Opening it marks them seen; each can be read, archived or deleted, and all read at once.
// Keyboard: Enter/Space opens, Escape closes and returns focus to the bell, Tab moves through
// the actions; a click outside closes it.

import type { Notification } from "@herald/client";
import { h, replaceChildren } from "../dom.js";
import { ago, isoTime, plural, priorityLabel, typeLabel } from "../format.js";
import type { PanelContext } from "../panels.js";
import type { InboxState, InboxStore } from "./store.js";

export function bell(store: InboxStore, context: PanelContext): { element: HTMLElement; dispose(): void } {
  const badge = h("span", { class: "badge", "data-testid": "bell-count", "aria-hidden": "true", hidden: true });
  const button = h(
    "button",
    { type: "button", class: "bell-button", "aria-haspopup": "true", "aria-expanded": "false", "aria-controls": "bell-dropdown", "data-testid": "bell" },
    bellIcon(),
    badge,
  );
  const list = h("ul", { class: "bell-list", "aria-label": "Notifications" });
  const markAll = h("button", { type: "button", class: "link-button", "data-testid": "mark-all-read" }, "Mark all read");
  const summary = h("p", { class: "bell-summary" });
  const dropdown = h(
    "div",
    { id: "bell-dropdown", class: "bell-dropdown", role: "region", "aria-label": "Notifications", hidden: true, "data-testid": "bell-dropdown" },
    h("div", { class: "bell-head" }, h("h2", {}, "Notifications"), markAll),
    summary,
    list,
  );
  const element = h("div", { class: "bell" }, button, dropdown);

  let open = false;
  let state: InboxState = store.state;

  const act = (what: string, run: () => Promise<unknown>) => {
    run().catch((error) => context.report(what, error));
  };

  const render = () => {
    const unread = state.counts?.unread ?? 0;
    const unseen = state.counts?.unseen ?? 0;
    badge.textContent = unread > 99 ? "99+" : String(unread);
    badge.hidden = unread === 0;
    badge.dataset["count"] = String(unread);
    button.setAttribute("aria-label", unread === 0 ? "Notifications, none unread" : `Notifications, ${unread} unread`);
    button.classList.toggle("has-unseen", unseen > 0);
    markAll.disabled = unread === 0;
    summary.textContent = state.counts ? `${plural(state.counts.total, "notification")}, ${unread} unread` : "Loading…";
    replaceChildren(list, ...(state.notifications.length === 0 ? [h("li", { class: "empty" }, "No notifications")] : state.notifications.map(item)));
  };

  const item = (n: Notification): HTMLElement => {
    const text = n.content || n.messagePreview;
    const from = n.sender?.displayName || n.sender?.id;
    const time = isoTime(n.createTime?.seconds);
    return h(
      "li",
      { class: `bell-item${n.read ? "" : " unread"}`, "data-testid": "notification", "data-id": n.id },
      h("span", { class: "unread-dot", "aria-hidden": "true" }),
      h(
        "div",
        { class: "bell-item-body" },
        h("p", { class: "bell-item-title" }, n.read ? "" : h("span", { class: "visually-hidden" }, "Unread: "), n.title),
        text ? h("p", { class: "bell-item-text" }, text) : null,
        h(
          "p",
          { class: "bell-item-meta" },
          typeLabel(n.type),
          n.priority >= 3 ? ` · ${priorityLabel(n.priority)}` : "",
          from ? ` · from ${from}` : "",
          time ? " · " : "",
          time ? h("time", { datetime: time }, ago(n.createTime?.seconds)) : null,
        ),
      ),
      h(
        "div",
        { class: "bell-item-actions" },
        n.read ? null : h("button", { type: "button", "aria-label": `Mark “${n.title}” read`, onclick: () => act("Marking read", () => store.markRead(n.id)) }, "Read"),
        h("button", { type: "button", "aria-label": `Archive “${n.title}”`, onclick: () => act("Archiving", () => store.archive(n.id)) }, "Archive"),
        h("button", { type: "button", class: "danger", "aria-label": `Delete “${n.title}”`, onclick: () => act("Deleting", () => store.delete(n.id)) }, "Delete"),
      ),
    );
  };

  const setOpen = (next: boolean, focusBell = false) => {
    open = next;
    // On narrow screens the dropdown is fixed to the viewport, just under the bell.
    if (open) dropdown.style.setProperty("--bell-bottom", `${Math.round(button.getBoundingClientRect().bottom + 8)}px`);
    dropdown.hidden = !open;
    button.setAttribute("aria-expanded", String(open));
    if (open && (state.counts?.unseen ?? 0) > 0) act("Marking seen", () => store.markSeen());
    if (!open && focusBell) button.focus();
  };

  button.addEventListener("click", () => setOpen(!open));
  markAll.addEventListener("click", () =>
    act("Marking all read", async () => {
      const { changed } = await store.markAllRead();
      context.announce(changed === 0 ? "Nothing was unread" : `${plural(changed, "notification")} marked read`);
    }),
  );
  const onKey = (event: KeyboardEvent) => {
    if (open && event.key === "Escape") setOpen(false, true);
  };
  const onPointer = (event: PointerEvent) => {
    if (open && !element.contains(event.target as Node)) setOpen(false);
  };
  document.addEventListener("keydown", onKey);
  document.addEventListener("pointerdown", onPointer);
  const off = store.subscribe((next) => {
    state = next;
    render();
  });
  render();

  return {
    element,
    dispose() {
      off();
      document.removeEventListener("keydown", onKey);
      document.removeEventListener("pointerdown", onPointer);
    },
  };
}

function bellIcon(): SVGSVGElement {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "22");
  svg.setAttribute("height", "22");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22Zm7-6V11a7 7 0 0 0-5.5-6.84V3a1.5 1.5 0 0 0-3 0v1.16A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2Z");
  path.setAttribute("fill", "currentColor");
  svg.appendChild(path);
  return svg;
}
