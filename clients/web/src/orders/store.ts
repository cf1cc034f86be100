// One order, live: where it stands and how it got there, loaded then followed on `order:<id>`
// with the SDK's live(). The read is `Get`; the subscription starts at offset 0 of the topic's
// epoch, so every change since the order was placed is replayed (the timeline) and then
// followed. Each event carries the order's version after it: the order's fields only move
// forward. The courier's position comes as signals on the same topic (`courier.location`,
// `courier.location_stale`, key `courier`): the server greets a new subscriber with the latest.

import {
  OrderActor,
  OrderStatus,
  type Event,
  type HeraldClient,
  type Live,
  type Order,
  type Signal,
} from "@herald/client";

export interface TimelineEntry {
  status: OrderStatus;
  /** Milliseconds since the epoch. */
  at: number | undefined;
  by: string;
  note: string;
}

export interface OrderView {
  order: Order;
  timeline: TimelineEntry[];
  notes: { at: number | undefined; text: string }[];
}

export interface CourierFix {
  lat: number;
  lng: number;
  accuracyM: number;
  courierId: string;
  /** When the server received it (milliseconds since the epoch). */
  receivedAt: number;
}

export interface CourierTrack {
  fixes: CourierFix[];
  /** The server said the courier went silent (`courier.location_stale`), until the next fix. */
  stale: boolean;
}

const millis = (t: { seconds: bigint; nanos: number } | undefined): number | undefined => (t ? Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6) : undefined);

const ACTORS: Record<OrderActor, string> = {
  [OrderActor.UNSPECIFIED]: "",
  [OrderActor.CUSTOMER]: "customer",
  [OrderActor.ADMIN]: "shop",
  [OrderActor.COURIER]: "courier",
  [OrderActor.SERVICE]: "service",
};

export function money(minor: bigint, currency: string): string {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(Number(minor) / 100);
  } catch {
    return `${(Number(minor) / 100).toFixed(2)} ${currency}`;
  }
}

export function applyOrderEvent(view: OrderView, event: Event): OrderView {
  const body = event.body;
  const newer = (version: bigint) => version > view.order.version;
  switch (body.case) {
    case "orderStatusChanged": {
      const c = body.value;
      const timeline = [...view.timeline, { status: c.status, at: millis(c.at), by: `${c.changedBy}${ACTORS[c.actor] ? ` (${ACTORS[c.actor]})` : ""}`, note: "" }];
      const order = newer(c.version) ? { ...view.order, status: c.status, version: c.version, courierId: c.courierId || view.order.courierId } : view.order;
      return { ...view, order, timeline };
    }
    case "orderCancelled": {
      const c = body.value;
      const timeline = [...view.timeline, { status: OrderStatus.CANCELLED, at: millis(c.at), by: `${c.cancelledBy}${ACTORS[c.actor] ? ` (${ACTORS[c.actor]})` : ""}`, note: c.reason }];
      const order = newer(c.version) ? { ...view.order, status: OrderStatus.CANCELLED, version: c.version, cancelReason: c.reason, cancelledBy: c.actor } : view.order;
      return { ...view, order, timeline };
    }
    case "orderCourierAssigned": {
      const c = body.value;
      const text = c.previousCourierId ? `Courier changed from ${c.previousCourierId} to ${c.courierId}` : `Courier ${c.courierId} assigned`;
      const order = newer(c.version) ? { ...view.order, courierId: c.courierId, version: c.version } : view.order;
      return { ...view, order, notes: [...view.notes, { at: millis(c.at), text }] };
    }
    case "orderPaymentReceived": {
      const p = body.value;
      const paid = p.payment ? money(p.payment.amountMinor, p.payment.currency) : "";
      const text = `Payment of ${paid} received${p.fullyPaid ? ": fully paid" : ""}`;
      const order = newer(p.version) ? { ...view.order, paidMinor: p.paidMinor, version: p.version } : view.order;
      return { ...view, order, notes: [...view.notes, { at: millis(p.payment?.receivedAt), text }] };
    }
    default:
      return view;
  }
}

type JsonObject = NonNullable<Signal["data"]>;
type JsonValue = JsonObject[string];

// Signal data is the proto3 JSON of CourierLocation / LocationStale: read the few fields the
// map needs, and ignore a signal that does not have them.
const num = (value: JsonValue | undefined): number | undefined => (typeof value === "number" && Number.isFinite(value) ? value : undefined);
const obj = (value: JsonValue | undefined): JsonObject | undefined => (value && typeof value === "object" && !Array.isArray(value) ? value : undefined);
const time = (value: JsonValue | undefined): number | undefined => {
  const ms = typeof value === "string" ? Date.parse(value) : NaN;
  return Number.isFinite(ms) ? ms : undefined;
};

export function fixOf(signal: Signal): { fix: CourierFix; stale: boolean } | undefined {
  const data = signal.data;
  if (!data) return undefined;
  const stale = signal.type === "courier.location_stale";
  if (!stale && signal.type !== "courier.location") return undefined;
  const fix = obj(stale ? data["lastFix"] : data["fix"]);
  const lat = num(fix?.["lat"]);
  const lng = num(fix?.["lng"]);
  if (lat === undefined || lng === undefined || Math.abs(lat) > 90 || Math.abs(lng) > 180) return undefined;
  const receivedAt = time(stale ? data["lastReceivedAt"] : data["receivedAt"]) ?? millis(signal.time) ?? Date.now();
  const courierId = typeof data["courierId"] === "string" ? data["courierId"] : signal.publisher;
  return { fix: { lat, lng, accuracyM: num(fix?.["accuracyM"]) ?? 0, courierId, receivedAt }, stale };
}

/** Positions kept for the trail on the map. */
const TRAIL = 200;

export class OrderStore {
  private readonly live: Live<OrderView>;
  private readonly listeners = new Set<(view: OrderView, track: CourierTrack) => void>();
  track: CourierTrack = { fixes: [], stale: false };

  constructor(
    herald: HeraldClient,
    readonly id: bigint,
    onError: (error: unknown) => void,
  ) {
    this.live = herald.live(
      async () => {
        const { order } = await herald.orders.get({ orderId: id });
        if (!order?.order || !order.position) throw new Error(`the server answered no order ${id}`);
        // The whole topic: every change since the order was placed, then live.
        return { order: order.order, position: { ...order.position, offset: 0n } };
      },
      `order:${id}`,
      {
        initial: ({ order }) => ({ order, timeline: [{ status: OrderStatus.PLACED, at: millis(order.createdAt), by: order.customerId, note: "" }], notes: [] }),
        apply: applyOrderEvent,
        onChange: () => this.emit(),
        onReload: () => this.emit(),
        onSignal: (signal) => this.signal(signal),
        onError,
      },
    );
    this.live.ready.then(() => this.emit(), onError);
  }

  get view(): OrderView | undefined {
    return this.live.state;
  }

  subscribe(listener: (view: OrderView, track: CourierTrack) => void): () => void {
    this.listeners.add(listener);
    if (this.live.state) listener(this.live.state, this.track);
    return () => this.listeners.delete(listener);
  }

  close(): void {
    this.live.close();
    this.listeners.clear();
  }

  private signal(signal: Signal): void {
    const read = fixOf(signal);
    if (!read) return;
    const last = this.track.fixes[this.track.fixes.length - 1];
    const fixes = last && last.lat === read.fix.lat && last.lng === read.fix.lng && last.receivedAt === read.fix.receivedAt ? this.track.fixes : [...this.track.fixes, read.fix].slice(-TRAIL);
    this.track = { fixes, stale: read.stale };
    this.emit();
  }

  private emit(): void {
    const view = this.live.state;
    if (!view) return;
    for (const listener of this.listeners) listener(view, this.track);
  }
}
