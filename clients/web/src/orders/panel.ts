// The order tracker: the orders the signed-in user may see (admins and services all of them,
// couriers those assigned to them, customers their own), and the selected order's status
// timeline with the courier moving on a map the page draws. An admin's list is live on the
// admins' feed (`role:admin`), a courier's on theirs (`user:<courier>`), from List's feed
// position; a customer's is read again every few seconds. The selected order is pushed: its
// durable events and the courier's location signals on `order:<id>`.

import { OrderStatus, type Event, type Order, type OrdersListResponse } from "@herald/client";
import { h, replaceChildren } from "../dom.js";
import { plural } from "../format.js";
import type { Panel, PanelContext } from "../panels.js";
import { reporting } from "../refresh.js";
import { courierMap } from "./map.js";
import { money, OrderStore, type CourierTrack, type OrderView } from "./store.js";

const LIST_REFRESH_MS = 4000;
/** The server calls a courier silent after 30 s without a fix (`orders.location_stale_after`). */
const STALE_AFTER_MS = 30_000;

const STEPS: { status: OrderStatus; label: string }[] = [
  { status: OrderStatus.PLACED, label: "Placed" },
  { status: OrderStatus.ACCEPTED, label: "Accepted" },
  { status: OrderStatus.PREPARING, label: "Preparing" },
  { status: OrderStatus.READY, label: "Ready for pick-up" },
  { status: OrderStatus.OUT_FOR_DELIVERY, label: "Out for delivery" },
  { status: OrderStatus.DELIVERED, label: "Delivered" },
];

export function orderStatusLabel(status: OrderStatus): string {
  if (status === OrderStatus.CANCELLED) return "Cancelled";
  return STEPS.find((s) => s.status === status)?.label ?? "Unknown";
}

const terminal = (status: OrderStatus) => status === OrderStatus.DELIVERED || status === OrderStatus.CANCELLED;
const clock = (ms: number | undefined) => (ms === undefined ? "" : new Date(ms).toLocaleTimeString());

function secondsAgo(ms: number, now: number): string {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  return s < 120 ? `${s} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

/** The list as it stands, and whether the feed announced an order the list does not hold. */
interface Listed {
  orders: Order[];
  missing: boolean;
}

/**
 * The list as the feed changes it: new orders first, status and version moving forward. A
 * courier's feed (`me`) also says when an order becomes theirs (the list is read again for
 * it) or another courier's (it leaves the list).
 */
function applyFeed(me: string | undefined) {
  return (listed: Listed, event: Event): Listed => {
    const orders = listed.orders;
    const body = event.body;
    const update = (id: bigint, version: bigint, change: Partial<Order>) => ({
      ...listed,
      orders: orders.map((o) => (o.id === id && version > o.version ? { ...o, ...change, version } : o)),
    });
    switch (body.case) {
      case "orderPlaced": {
        const placed = body.value.order;
        return placed && !orders.some((o) => o.id === placed.id) ? { ...listed, orders: [placed, ...orders] } : listed;
      }
      case "orderStatusChanged":
        return update(body.value.orderId, body.value.version, { status: body.value.status });
      case "orderCancelled":
        return update(body.value.orderId, body.value.version, { status: OrderStatus.CANCELLED });
      case "orderCourierAssigned": {
        const { orderId, courierId, version } = body.value;
        if (me !== undefined && courierId !== me) return { ...listed, orders: orders.filter((o) => o.id !== orderId) };
        if (me !== undefined && !orders.some((o) => o.id === orderId)) return { ...listed, missing: true };
        return update(orderId, version, { courierId });
      }
      default:
        return listed;
    }
  };
}

/** A fresh read merged into the list: each order at the higher of the two versions. */
function merged(fresh: Order[], current: Order[]): Order[] {
  const known = new Map(current.map((o) => [o.id, o]));
  return fresh.map((o) => {
    const had = known.get(o.id);
    return had && had.version > o.version ? had : o;
  });
}

export function ordersPanel(context: PanelContext): Panel {
  const { herald, identity } = context;
  const roles = identity.roles;
  // Admins follow `role:admin`, couriers `user:<courier>`; other panels of the page follow
  // those topics too (the review queue, the inbox), over the same transport subscription.
  const isAdmin = roles.includes("admin");
  const isCourierOnly = !isAdmin && roles.includes("courier");
  const feedTopic = isAdmin ? "role:admin" : isCourierOnly ? `user:${identity.sub}` : undefined;

  const list = h("ul", { class: "order-list", "aria-label": "Orders", "data-testid": "order-list" });
  const listStatus = h("p", { class: "muted", role: "status" }, "Loading…");
  const detail = h("div", { class: "order-detail", "data-testid": "order-detail" }, h("p", { class: "muted" }, "No order selected."));
  const section = h(
    "section",
    { class: "panel panel-wide order-panel", "aria-labelledby": "panel-orders-title", "data-testid": "panel-orders" },
    h("h2", { id: "panel-orders-title" }, "Orders"),
    h("div", { class: "order-layout" }, h("div", { class: "order-side" }, listStatus, list), detail),
  );

  let orders: Order[] = [];
  let selected: bigint | undefined;
  let pinned = false;
  let store: OrderStore | undefined;
  let offStore: (() => void) | undefined;
  let disposed = false;

  const renderList = () => {
    // The rows are drawn anew: keep the keyboard focus on the row that had it.
    const focused = list.contains(document.activeElement) ? (document.activeElement as HTMLElement).dataset["id"] : undefined;
    draw();
    if (focused) list.querySelector<HTMLElement>(`[data-id="${focused}"]`)?.focus();
  };
  const draw = () => {
    listStatus.textContent = plural(orders.length, "order");
    if (orders.length === 0) {
      replaceChildren(list, h("li", { class: "empty" }, "No orders yet."));
      return;
    }
    const live = store?.view?.order;
    replaceChildren(
      list,
      ...orders.map((o) => {
        const order = live && live.id === o.id && live.version >= o.version ? live : o;
        const current = o.id === selected;
        return h(
          "li",
          {},
          h(
            "button",
            {
              type: "button",
              class: `order-row${current ? " current" : ""}`,
              "aria-pressed": String(current),
              "data-testid": "order-row",
              "data-id": String(o.id),
              onclick: () => {
                pinned = true;
                select(o.id);
              },
            },
            h("span", { class: "order-row-title" }, `Order ${o.id}`, h("span", { class: "muted" }, ` · ${o.customerId}`)),
            h("span", { class: `state-pill order-${OrderStatus[order.status]?.toLowerCase()}` }, orderStatusLabel(order.status)),
          ),
        );
      }),
    );
  };

  const follow = () => {
    // Until a row is picked, follow the newest order still on its way (else the newest).
    const next = orders.find((o) => !terminal(o.status)) ?? orders[0];
    if (next && !pinned && next.id !== selected && (selected === undefined || terminal(store?.view?.order.status ?? OrderStatus.PLACED) || next.id > selected)) select(next.id);
    else renderList();
  };

  const setOrders = (next: Order[]) => {
    if (disposed) return;
    orders = next;
    follow();
    if (isCourierOnly && selected !== undefined) courierDetail(selected);
  };

  const readList = (): Promise<OrdersListResponse> => herald.orders.list({ pageSize: 30 });
  const listedOf = (page: OrdersListResponse): Listed => ({ orders: page.orders.flatMap((entry) => (entry.order ? [entry.order] : [])), missing: false });
  let timer: ReturnType<typeof setInterval> | undefined;
  let feed: { close(): void } | undefined;
  if (feedTopic) {
    let current: Listed | undefined;
    // An order the feed announced but the list lacks (newly assigned to this courier): read
    // the list again and merge it, keeping whichever version of each order is newer.
    const reread = reporting(
      () =>
        readList().then((page) => {
          if (!current) return;
          current.orders = merged(listedOf(page).orders, current.orders);
          setOrders(current.orders);
        }),
      (error) => context.report("Listing orders", error),
    );
    const show = (listed: Listed) => {
      current = listed;
      if (listed.missing) {
        listed.missing = false;
        void reread();
      }
      setOrders(listed.orders);
    };
    const live = herald.live(
      async () => {
        const page = await readList();
        return { ...page, position: page.feedPosition };
      },
      feedTopic,
      {
        initial: listedOf,
        apply: applyFeed(isCourierOnly ? identity.sub : undefined),
        onChange: show,
        onReload: show,
        onError: (error) => context.report("Following the orders", error),
      },
    );
    live.ready.then(show, (error) => context.report("Listing orders", error));
    feed = live;
  } else {
    const reload = reporting(
      () => readList().then((page) => setOrders(listedOf(page).orders)),
      (error) => context.report("Listing orders", error),
    );
    void reload();
    timer = setInterval(() => {
      if (!document.hidden) void reload();
    }, LIST_REFRESH_MS);
  }

  // --- the detail view ------------------------------------------------------------------
  const title = h("h3", { class: "order-title", "data-testid": "order-title" });
  const pill = h("span", { class: "state-pill", "data-testid": "order-state" });
  const timeline = h("ol", { class: "order-timeline", "aria-label": "Status timeline", "data-testid": "order-timeline" });
  const summary = h("p", { class: "order-summary" });
  const notes = h("ul", { class: "order-notes", "aria-label": "Courier and payments" });
  const map = courierMap();
  // Not a live region (it ticks every second); going stale is announced once instead.
  const freshness = h("p", { class: "map-freshness", "data-testid": "courier-freshness" });

  let lastStatus: OrderStatus | undefined;
  const renderFreshness = (track: CourierTrack, status: OrderStatus) => {
    const last = track.fixes[track.fixes.length - 1];
    if (!last) {
      freshness.textContent = status === OrderStatus.OUT_FOR_DELIVERY ? "Waiting for the courier’s first position…" : "The courier’s position shows here while the order is out for delivery.";
      freshness.dataset["stale"] = "false";
      return;
    }
    const now = Date.now();
    const stale = track.stale || now - last.receivedAt >= STALE_AFTER_MS;
    if (stale && freshness.dataset["stale"] === "false") context.announce(`The courier was last seen ${secondsAgo(last.receivedAt, now)}`);
    freshness.dataset["stale"] = String(stale);
    freshness.textContent = stale ? `Last seen ${secondsAgo(last.receivedAt, now)}` : terminal(status) ? `Last position ${secondsAgo(last.receivedAt, now)}` : `Live · updated ${secondsAgo(last.receivedAt, now)}`;
  };

  const renderDetail = (view: OrderView, track: CourierTrack) => {
    const { order } = view;
    title.textContent = `Order ${order.id}`;
    pill.textContent = orderStatusLabel(order.status);
    pill.className = `state-pill order-${OrderStatus[order.status]?.toLowerCase()}`;
    pill.dataset["status"] = OrderStatus[order.status] ?? "UNSPECIFIED";
    const reachedAt = new Map<OrderStatus, { at: number | undefined; by: string }>();
    for (const entry of view.timeline) reachedAt.set(entry.status, { at: entry.at, by: entry.by });
    const cancelled = view.timeline.find((e) => e.status === OrderStatus.CANCELLED);
    const steps = cancelled ? [...STEPS.filter((s) => reachedAt.has(s.status)), { status: OrderStatus.CANCELLED, label: "Cancelled" }] : STEPS;
    replaceChildren(
      timeline,
      ...steps.map(({ status, label }) => {
        const reached = reachedAt.get(status);
        const current = status === order.status;
        const kind = current ? (status === OrderStatus.CANCELLED ? "cancelled" : "current") : reached ? "done" : "todo";
        return h(
          "li",
          { class: `timeline-step step-${kind}`, "aria-current": current ? "step" : undefined, "data-status": OrderStatus[status] ?? "" },
          h("span", { class: "timeline-label" }, label),
          reached?.at !== undefined ? h("span", { class: "timeline-time" }, h("time", { datetime: new Date(reached.at).toISOString() }, clock(reached.at)), reached.by ? ` · ${reached.by}` : "") : h("span", { class: "visually-hidden" }, ": not yet"),
          status === OrderStatus.CANCELLED && cancelled?.note ? h("span", { class: "timeline-note" }, cancelled.note) : null,
        );
      }),
    );
    const items = order.items.map((i) => `${i.quantity} × ${i.name}`).join(", ");
    summary.textContent = `${items} · ${money(order.totalMinor, order.currency)}${order.paidMinor > 0n ? ` (${money(order.paidMinor, order.currency)} paid)` : ""} · to ${order.deliveryAddress}${order.courierId ? ` · courier ${order.courierId}` : ""}`;
    replaceChildren(notes, ...view.notes.map((n) => h("li", {}, n.at !== undefined ? h("time", { datetime: new Date(n.at).toISOString() }, clock(n.at)) : null, ` ${n.text}`)));
    const last = track.fixes[track.fixes.length - 1];
    map.update(track, last ? `courier ${last.courierId} at ${last.lat.toFixed(5)}, ${last.lng.toFixed(5)}` : "");
    renderFreshness(track, order.status);
    if (order.status !== lastStatus) {
      if (lastStatus !== undefined) context.announce(`Order ${order.id}: ${orderStatusLabel(order.status).toLowerCase()}`);
      lastStatus = order.status;
      renderList();
    }
  };

  // order:<id> carries payments and the courier's own position: couriers may not subscribe
  // to it (they follow their deliveries with Orders/Watch in the courier app), so they see the
  // order as their feed keeps it.
  const courierDetail = (id: bigint) => {
    const order = orders.find((o) => o.id === id);
    replaceChildren(
      detail,
      h("div", { class: "order-head" }, h("h3", { class: "order-title", "data-testid": "order-title" }, `Order ${id}`), order ? h("span", { class: `state-pill order-${OrderStatus[order.status]?.toLowerCase()}`, "data-testid": "order-state", "data-status": OrderStatus[order.status] ?? "" }, orderStatusLabel(order.status)) : null),
      order ? h("p", { class: "order-summary" }, `${order.items.map((i) => `${i.quantity} × ${i.name}`).join(", ")} · to ${order.deliveryAddress}`) : null,
      h("p", { class: "muted" }, "The timeline and the map are for the order's customer and the shop."),
    );
  };

  const select = (id: bigint) => {
    if (selected === id && (store || isCourierOnly)) return;
    offStore?.();
    store?.close();
    store = undefined;
    selected = id;
    lastStatus = undefined;
    if (isCourierOnly) {
      courierDetail(id);
      renderList();
      return;
    }
    replaceChildren(
      detail,
      h("div", { class: "order-head" }, title, pill),
      summary,
      timeline,
      h("div", { class: "order-map-box" }, h("h4", {}, "Courier"), map.element, freshness),
      notes,
    );
    title.textContent = `Order ${id}`;
    pill.textContent = "Loading…";
    const current = new OrderStore(herald, id, (error) => context.report(`Following order ${id}`, error));
    store = current;
    offStore = current.subscribe(renderDetail);
    renderList();
  };

  // "N s ago" moves on between fixes.
  const ticker = setInterval(() => {
    const view = store?.view;
    if (view && store) renderFreshness(store.track, view.order.status);
  }, 1000);

  return {
    id: "orders",
    title: "Orders",
    section,
    dispose() {
      disposed = true;
      clearInterval(ticker);
      if (timer) clearInterval(timer);
      feed?.close();
      offStore?.();
      store?.close();
    },
  };
}
