// createClient: one API over the edge WebSocket or grpc-web, with the fallback ladder
// (WebSocket → grpc-web streaming → History polling) in "auto" mode, token refresh before
// expiry, a connection state for indicators, load-then-follow and typed service calls.

import {
  create,
  fromJson,
  toJson,
  type DescMethod,
  type DescMethodUnary,
  type DescService,
  type JsonValue,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { createClient as createConnectClient, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import type { BackoffOptions } from "./backoff.js";
import { classifyConnectError, HeraldError } from "./codes.js";
import type { Position } from "./cursor.js";
import {
  GrpcWebDriver,
  PollDriver,
  WsDriver,
  type Driver,
  type DriverHost,
  type DriverOptions,
  type Level,
  type WebSocketConstructor,
} from "./drivers.js";
import { Auth } from "./gen/herald/v1/auth_pb.js";
import { Chat } from "./gen/herald/v1/chat_pb.js";
import { Deployments } from "./gen/herald/v1/deployments_pb.js";
import type { Event, StreamPosition } from "./gen/herald/v1/events_pb.js";
import { Notifications } from "./gen/herald/v1/notifications_pb.js";
import { Orders } from "./gen/herald/v1/orders_pb.js";
import { Reviews } from "./gen/herald/v1/reviews_pb.js";
import { Rooms } from "./gen/herald/v1/rooms_pb.js";
import { LiveFeed, type Apply } from "./livefeed.js";
import { Shared } from "./shared.js";
import { Sub, type SubscribeOptions, type Subscription } from "./subscription.js";
import { refreshDelay, tokenExpiry } from "./token.js";

export type TransportMode = "websocket" | "grpc-web" | "auto";

/**
 * The connection as an indicator shows it: `connected` at first, `reconnecting` after a loss,
 * `resumed` when it came back and every topic resumed from its offset, `reloaded` when some
 * topic could not be resumed (its `onRecoveryFailed` ran: the app had to reload), `closed`
 * after `close()` or a terminal refusal.
 */
export type ConnectionState = "connecting" | "connected" | "reconnecting" | "resumed" | "reloaded" | "closed";

export interface ConnectionStatus {
  state: ConnectionState;
  /** The rung of the ladder in use. */
  transport: Level;
  /** Why the connection ended, when it is `closed` by the server. */
  error?: HeraldError;
}

export interface ClientOptions {
  /** The edge's base URL, for example `http://127.0.0.1:8080`. */
  url: string;
  /** Returns a valid token; called at start, before each expiry and after a refusal. */
  getToken: () => string | Promise<string>;
  /** Default "auto": WebSocket, falling back to grpc-web streaming, then History polling. */
  transport?: TransportMode;
  /** Default: `url` with the ws(s) scheme and the path `/ws`. */
  websocketUrl?: string;
  /** Default `globalThis.WebSocket` (browsers, Node ≥ 22); pass `ws`'s in Node 20. */
  WebSocket?: WebSocketConstructor;
  /** Default: Connect-ES grpc-web over fetch (`@connectrpc/connect-web`) to `url`. */
  grpcWebTransport?: Transport;
  /** Reconnect waits (full jitter): default base 250 ms, cap 30 s. */
  backoff?: BackoffOptions;
  /** Refresh the token this long before `exp` (at most half its remaining life); default 30 s. */
  tokenRefreshMarginMs?: number;
  /** Failed connects in a row, with no success yet, before moving down the ladder; default 3. */
  fallbackAfterFailures?: number;
  /** How often a fallback tries the rungs above it again; default 30 s. */
  liveRetryMs?: number;
  /** History polling: the interval after new events (default 1 s), growing to the max (15 s). */
  pollIntervalMs?: number;
  pollMaxIntervalMs?: number;
  /** A bound on each unary call; default 10 s. */
  callTimeoutMs?: number;
}

export interface CallOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** The unary RPCs of a service as methods. */
export type ServiceClient<S extends DescService> = {
  [K in keyof S["method"] as S["method"][K] extends DescMethodUnary ? K : never]: S["method"][K] extends DescMethodUnary<infer I, infer O>
    ? (request?: MessageInitShape<I>, options?: CallOptions) => Promise<MessageShape<O>>
    : never;
};

/** A read (List, Get, Counts…) that returns the topic's position with its rows. */
export type PositionedRead<R> = () => Promise<R & { position?: StreamPosition | undefined }>;

export interface LiveOptions<R, S> {
  /** The state from the read's response (default: the response itself). */
  initial?: (response: R) => S;
  /** The state after one event: called once per event after the snapshot, in offset order. */
  apply: Apply<S>;
  /** After every applied event. */
  onChange?: (state: S, event: Event) => void;
  /** After a reload (history could not cover the gap; the read ran again). */
  onReload?: (state: S) => void;
  onError?: (error: HeraldError) => void;
  onSignal?: SubscribeOptions["onSignal"];
}

export interface Live<S> {
  /** Resolves with the snapshot's state once the read and the subscription are in place. */
  readonly ready: Promise<S>;
  /** The current state (undefined before the read returned). */
  readonly state: S | undefined;
  readonly subscription: Subscription | undefined;
  /**
   * The ordered change feed: each applied event with the state after it, from the first
   * `next()` on (before that, use `onChange`). A reader 10,000 changes behind gets a
   * `resource_exhausted` error.
   */
  changes(): AsyncIterableIterator<{ event: Event; state: S }>;
  close(): void;
}

export function createClient(options: ClientOptions): HeraldClient {
  return new HeraldClient(options);
}

export class HeraldClient {
  readonly notifications: ServiceClient<typeof Notifications>;
  readonly reviews: ServiceClient<typeof Reviews>;
  readonly orders: ServiceClient<typeof Orders>;
  readonly chat: ServiceClient<typeof Chat>;
  readonly deployments: ServiceClient<typeof Deployments>;
  readonly rooms: ServiceClient<typeof Rooms>;
  readonly auth: ServiceClient<typeof Auth>;

  private readonly mode: TransportMode;
  private readonly wsUrl: string;
  private readonly WebSocketImpl: WebSocketConstructor | undefined;
  private readonly transport: Transport;
  private readonly driverOptions: DriverOptions;
  private readonly topics = new Map<string, Shared>();
  private readonly listeners = new Set<(status: ConnectionStatus) => void>();
  private driver: Driver | undefined;
  private probe: Driver | undefined;
  private probeTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private cachedToken: Promise<string> | undefined;
  private tokenExp: number | undefined;
  private current: ConnectionStatus;
  private reloadedSinceUp = false;
  private closed = false;
  private readonly host: DriverHost;

  constructor(private readonly options: ClientOptions) {
    this.mode = options.transport ?? "auto";
    this.wsUrl = options.websocketUrl ?? websocketUrlOf(options.url);
    this.WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.transport = options.grpcWebTransport ?? createGrpcWebTransport({ baseUrl: options.url });
    this.driverOptions = {
      backoff: options.backoff ?? {},
      fallbackAfterFailures: this.mode === "auto" ? (options.fallbackAfterFailures ?? 3) : Infinity,
      pollIntervalMs: options.pollIntervalMs ?? 1000,
      pollMaxIntervalMs: options.pollMaxIntervalMs ?? 15_000,
    };
    if (this.mode === "websocket" && !this.WebSocketImpl) {
      throw new Error("no WebSocket constructor: pass `WebSocket` (for example `ws`'s) in createClient's options");
    }
    const initial: Level = this.mode === "grpc-web" || !this.WebSocketImpl ? "grpc-web" : "websocket";
    this.current = { state: "connecting", transport: initial };
    this.host = this.makeHost();
    this.notifications = this.service(Notifications);
    this.reviews = this.service(Reviews);
    this.orders = this.service(Orders);
    this.chat = this.service(Chat);
    this.deployments = this.service(Deployments);
    this.rooms = this.service(Rooms);
    this.auth = this.service(Auth);
    this.driver = this.makeDriver(initial);
    this.driver.start();
  }

  /** The connection's state now. */
  get status(): ConnectionStatus {
    return { ...this.current };
  }

  /** Calls `listener` on every change of the connection's state; returns the unsubscribe. */
  onStatus(listener: (status: ConnectionStatus) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Follows `topic`: each event once, in offset order, across reconnects and transport
   * changes. Any number of handles may follow one topic: the transport carries one
   * subscription per topic, and a handle whose `since` is behind it reads the missing range
   * from History before it joins (if that range is gone, that handle alone gets
   * `onRecoveryFailed`). The transport subscription ends with the last handle.
   */
  subscribe(topic: string, handlers: SubscribeOptions = {}): Subscription {
    if (this.closed) throw new Error("the client is closed");
    let shared = this.topics.get(topic);
    if (!shared || !shared.sub.active) {
      const created = new Shared(
        topic,
        async (t, since) => {
          const page = await this.rooms.history({ topic: t, since, limit: 1000 });
          return { events: page.events, position: page.position };
        },
        (s) => {
          s.sub.unsubscribe();
          this.dropShared(s);
        },
      );
      created.sub = new Sub(topic, created, handlers.since, {
        closed: () => this.dropShared(created),
        recoveryFailed: () => {
          this.reloadedSinceUp = true;
          this.setState("reloaded");
        },
        live: () => {},
        history: async (s, since) => {
          const page = await this.rooms.history({ topic: s.topic, since, limit: 1000 });
          return page.events;
        },
      });
      shared = created;
      this.topics.set(topic, shared);
      this.driver?.add(shared.sub);
      this.probe?.add(shared.sub);
    }
    return shared.add(handlers);
  }

  /**
   * Load-then-follow: runs `read` (a List/Get returning `position`), subscribes to `topic`
   * with `since = position`, and applies each later event once, in order, to the state. When
   * history cannot cover the gap the read runs again (`onReload`).
   */
  live<R, S = R>(read: PositionedRead<R>, topic: string, options: LiveOptions<R, S>): Live<S> {
    const initial = options.initial ?? ((response: R) => response as unknown as S);
    const waiting: Array<{ resolve: (item: IteratorResult<{ event: Event; state: S }>) => void; reject: (error: unknown) => void }> = [];
    const queued: Array<{ event: Event; state: S }> = [];
    let feed: LiveFeed<S> | undefined;
    let subscription: Subscription | undefined;
    let done = false;
    // The change feed queues only once someone iterates it, and at most MAX_QUEUED_CHANGES
    // items: a reader that falls that far behind gets an error, like a slow consumer.
    let iterating = false;
    let overflow: HeraldError | undefined;
    const emit = (event: Event) => {
      if (!feed) return;
      const item = { event, state: feed.state };
      options.onChange?.(feed.state, event);
      if (!iterating || overflow) return;
      const next = waiting.shift();
      if (next) next.resolve({ value: item, done: false });
      else if (queued.length < MAX_QUEUED_CHANGES) queued.push(item);
      else {
        overflow = new HeraldError("resource_exhausted", `the change feed's reader fell ${MAX_QUEUED_CHANGES} changes behind; read faster, or use onChange`);
        queued.length = 0;
      }
    };
    const reload = async () => {
      if (!feed || feed.reloading) return;
      feed.beginReload();
      try {
        const response = await read();
        for (const event of feed.reloaded(initial(response), positionOf(response.position))) emit(event);
        options.onReload?.(feed.state);
      } catch (error) {
        options.onError?.(toHeraldError(error));
      }
    };
    const ready = (async () => {
      const response = await read();
      const position = positionOf(response.position);
      feed = new LiveFeed(initial(response), position, options.apply);
      if (done) return feed.state;
      const subscribeOptions: SubscribeOptions = {
        onEvent: (event) => {
          if (feed?.push(event)) emit(event);
        },
        onRecoveryFailed: () => void reload(),
        onError: (error) => options.onError?.(error),
      };
      if (position) subscribeOptions.since = position;
      if (options.onSignal) subscribeOptions.onSignal = options.onSignal;
      subscription = this.subscribe(topic, subscribeOptions);
      await subscription.ready;
      return feed.state;
    })();
    const close = () => {
      done = true;
      subscription?.unsubscribe();
      for (const next of waiting.splice(0)) next.resolve({ value: undefined, done: true });
    };
    const iterator: AsyncIterableIterator<{ event: Event; state: S }> = {
      next: () => {
        iterating = true;
        if (overflow) return Promise.reject(overflow);
        const item = queued.shift();
        if (item) return Promise.resolve({ value: item, done: false });
        if (done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
      },
      return: () => {
        close();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return {
      ready,
      get state() {
        return feed?.state;
      },
      get subscription() {
        return subscription;
      },
      changes: () => iterator,
      close,
    };
  }

  /** A unary RPC of any public service, over the socket when it is the transport in use. */
  async call<I extends DescMethodUnary["input"], O extends DescMethodUnary["output"]>(
    method: DescMethodUnary<I, O>,
    request: MessageInitShape<I> = {} as MessageInitShape<I>,
    options: CallOptions = {},
  ): Promise<MessageShape<O>> {
    const signal = AbortSignal.any([
      AbortSignal.timeout(options.timeoutMs ?? this.options.callTimeoutMs ?? 10_000),
      ...(options.signal ? [options.signal] : []),
    ]);
    const driver = this.driver;
    const overSocket =
      driver instanceof WsDriver && (this.mode === "websocket" || driver.ready);
    if (overSocket) {
      const input = toJson(method.input, create(method.input, request));
      const output = await driver.call(`${method.parent.typeName}/${method.name}`, input, signal);
      return fromJson(method.output, output as JsonValue, { ignoreUnknownFields: true });
    }
    const client = createConnectClient(method.parent, this.transport) as unknown as Record<
      string,
      (request: unknown, options: unknown) => Promise<MessageShape<O>>
    >;
    const run = client[method.localName];
    if (!run) throw new HeraldError("unimplemented", `${method.parent.typeName}/${method.name} is not unary`);
    try {
      return await run(request, { headers: { authorization: `Bearer ${await this.token()}` }, signal });
    } catch (error) {
      throw toHeraldError(error);
    }
  }

  /** The unary RPCs of `service` as methods (`client.service(Orders).get({ id })`). */
  service<S extends DescService>(service: S): ServiceClient<S> {
    const methods: Record<string, unknown> = {};
    for (const method of service.methods as DescMethod[]) {
      if (method.methodKind !== "unary") continue;
      const unary = method as DescMethodUnary;
      methods[method.localName] = (request?: MessageInitShape<DescMethodUnary["input"]>, options?: CallOptions) =>
        this.call(unary, request, options);
    }
    return methods as ServiceClient<S>;
  }

  /** Ends every subscription and the connection. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.probeTimer);
    clearTimeout(this.refreshTimer);
    this.probe?.stop();
    this.driver?.stop();
    this.probe = undefined;
    this.driver = undefined;
    for (const shared of [...this.topics.values()]) {
      for (const handle of [...shared.handles]) handle.unsubscribe();
      shared.sub.unsubscribe();
    }
    this.setState("closed");
  }

  // -------------------------------------------------------------------------------------

  private dropShared(shared: Shared): void {
    if (this.topics.get(shared.topic) !== shared) return;
    this.topics.delete(shared.topic);
    this.driver?.remove(shared.sub);
    this.probe?.remove(shared.sub);
  }

  private setState(state: ConnectionState, error?: HeraldError): void {
    const transport = this.driver?.level ?? this.current.transport;
    if (this.current.state === state && this.current.transport === transport) return;
    if (this.current.state === "closed") return;
    this.current = { state, transport };
    if (error) this.current.error = error;
    for (const listener of this.listeners) listener(this.status);
  }

  /** The current token: cached until it is close to its expiry. */
  private token(): Promise<string> {
    const now = Date.now();
    const margin = this.options.tokenRefreshMarginMs ?? 30_000;
    if (this.cachedToken && (this.tokenExp === undefined || refreshDelay(this.tokenExp, now, margin)! > 0)) {
      return this.cachedToken;
    }
    return this.freshToken();
  }

  /** A new token from getToken(); schedules the next refresh from its `exp`. */
  private freshToken(): Promise<string> {
    const promise = Promise.resolve().then(() => this.options.getToken());
    this.cachedToken = promise;
    promise.then(
      (token) => {
        if (this.cachedToken !== promise || this.closed) return;
        this.tokenExp = tokenExpiry(token);
        this.scheduleRefresh();
      },
      () => {
        if (this.cachedToken === promise) this.cachedToken = undefined;
      },
    );
    return promise;
  }

  private scheduleRefresh(): void {
    clearTimeout(this.refreshTimer);
    const delay = refreshDelay(this.tokenExp, Date.now(), this.options.tokenRefreshMarginMs ?? 30_000);
    if (delay === undefined) return;
    this.refreshTimer = setTimeout(() => {
      this.freshToken().then(
        (token) => {
          this.driver?.tokenRefreshed(token);
          this.probe?.tokenRefreshed(token);
        },
        // getToken failed: try again shortly, the old token may still be valid
        () => {
          this.refreshTimer = setTimeout(() => this.scheduleRefresh(), 1000);
        },
      );
    }, delay);
  }

  private makeDriver(level: Level): Driver {
    if (level === "websocket") {
      return new WsDriver(this.host, this.wsUrl, this.WebSocketImpl!, this.driverOptions);
    }
    if (level === "grpc-web") return new GrpcWebDriver(this.host, this.transport, this.driverOptions);
    return new PollDriver(this.host, this.transport, this.driverOptions);
  }

  private makeHost(): DriverHost {
    return {
      subs: () => [...this.topics.values()].map((shared) => shared.sub),
      sub: (topic) => this.topics.get(topic)?.sub,
      token: () => this.token(),
      freshToken: () => this.freshToken(),
      up: (driver, again) => {
        if (driver === this.probe) {
          // The rung above works again: move up. Topics resume from their cursors on it;
          // what both delivered meanwhile is dropped as duplicates.
          const old = this.driver;
          this.driver = driver;
          this.probe = undefined;
          old?.stop();
          this.reloadedSinceUp = false;
          this.setState("resumed");
          this.scheduleProbe();
          return;
        }
        if (driver !== this.driver) return;
        if (again) {
          if (!this.reloadedSinceUp) this.setState("resumed");
        } else if (this.current.state === "connecting") {
          this.setState("connected");
        } else {
          this.setState("resumed");
        }
        this.reloadedSinceUp = false;
      },
      down: (driver) => {
        if (driver === this.driver) this.setState("reconnecting");
      },
      unreachable: (driver) => {
        driver.stop();
        if (driver === this.probe) {
          this.probe = undefined;
          const above = this.levelsAbove(this.driver?.level ?? "poll").filter((l) => rank(l) > rank(driver.level));
          if (above.length > 0) this.startProbe(above[0]!);
          else this.scheduleProbe();
          return;
        }
        if (driver !== this.driver) return;
        const next: Level = driver.level === "websocket" ? "grpc-web" : "poll";
        this.driver = this.makeDriver(next);
        this.setState("reconnecting");
        this.driver.start();
        this.scheduleProbe();
      },
      fatal: (driver, error) => {
        if (driver === this.probe) {
          this.probe = undefined;
          this.scheduleProbe();
          return;
        }
        if (driver !== this.driver) return;
        for (const shared of [...this.topics.values()]) shared.sub.fail(error);
        this.setState("closed", error);
      },
    };
  }

  private levelsAbove(level: Level): Level[] {
    const ladder: Level[] = this.WebSocketImpl ? ["websocket", "grpc-web", "poll"] : ["grpc-web", "poll"];
    return ladder.filter((l) => rank(l) < rank(level));
  }

  /** On a lower rung, try the top one again after `liveRetryMs`. */
  private scheduleProbe(): void {
    clearTimeout(this.probeTimer);
    const level = this.driver?.level;
    if (this.closed || !level || this.mode !== "auto") return;
    const above = this.levelsAbove(level);
    if (above.length === 0) return;
    this.probeTimer = setTimeout(() => this.startProbe(above[0]!), this.options.liveRetryMs ?? 30_000);
  }

  private startProbe(level: Level): void {
    if (this.closed || this.probe) return;
    this.probe = this.makeDriver(level);
    this.probe.start();
    // grpc-web and poll probes stream the topics; a WebSocket probe subscribes them on auth.
    if (level === "websocket") return;
    // a grpc-web probe without topics never proves itself: consider it up at once
    if (this.topics.size === 0) this.host.up(this.probe, false);
  }
}

/** The most changes `live().changes()` holds for a reader that is behind. */
const MAX_QUEUED_CHANGES = 10_000;

function rank(level: Level): number {
  return level === "websocket" ? 0 : level === "grpc-web" ? 1 : 2;
}

function positionOf(p: StreamPosition | undefined): Position | undefined {
  return p && { offset: p.offset, epoch: p.epoch };
}

function toHeraldError(error: unknown): HeraldError {
  if (error instanceof HeraldError) return error;
  const end = classifyConnectError(error);
  return new HeraldError(end.code, end.message, { ...end, cause: error });
}

/** `http://host:8080` → `ws://host:8080/ws` (https → wss). */
export function websocketUrlOf(url: string): string {
  const u = new URL(url);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  u.pathname = `${u.pathname.replace(/\/$/, "")}/ws`;
  return u.toString();
}
