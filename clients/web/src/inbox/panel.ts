// The notifications panel: the bell in the header, and in the grid the unread counts by type
// and by priority, all from one live inbox.

import { h, replaceChildren } from "../dom.js";
import { plural, priorityLabel, typeLabel } from "../format.js";
import type { Panel, PanelContext } from "../panels.js";
import { bell } from "./bell.js";
import { InboxStore } from "./store.js";

export function notificationsPanel(context: PanelContext): Panel {
  const store = new InboxStore(context.herald, context.identity.sub, (error) => context.report("The inbox", error));
  const widget = bell(store, context);
  const body = h("div", { class: "panel-body" }, h("p", {}, "Loading…"));
  const section = h("section", { class: "panel", "aria-labelledby": "panel-notifications-title", "data-testid": "panel-notifications" }, h("h2", { id: "panel-notifications-title" }, "Notifications"), body);

  const off = store.subscribe(({ counts }) => {
    if (!counts) return;
    const rows = (items: { label: string; unread: number }[]) =>
      items.length === 0 ? h("p", { class: "muted" }, "None unread") : h("ul", { class: "count-list" }, ...items.map(({ label, unread }) => h("li", {}, h("span", {}, label), h("strong", {}, unread))));
    replaceChildren(
      body,
      h("p", { class: "panel-lead" }, `${plural(counts.unread, "unread notification")} of ${counts.total} in the inbox; ${counts.unseen} not yet seen.`),
      h("h3", {}, "Unread by type"),
      rows(counts.unreadByType.map((c) => ({ label: typeLabel(c.type), unread: c.unread }))),
      h("h3", {}, "Unread by priority"),
      rows(counts.unreadByPriority.map((c) => ({ label: priorityLabel(c.priority), unread: c.unread }))),
    );
  });

  return {
    id: "notifications",
    title: "Notifications",
    header: widget.element,
    section,
    dispose() {
      off();
      widget.dispose();
      store.close();
    },
  };
}
