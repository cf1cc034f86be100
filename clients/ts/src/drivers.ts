// The three ways the client follows its topics, one rung of the fallback ladder each:
//   WsDriver       one edge WebSocket (JSON protocol) for every subscription and call;
//   GrpcWebDriver  one grpc-web server stream (Rooms/Subscribe) per topic;
//   PollDriver     Rooms/History with the last offset, at an interval that grows while idle.
// Each resumes every topic from its cursor and retries with backoff after a loss; what the
// client does when one cannot connect at all (move down the ladder) is the client's choice.

import { fromJson, type JsonValue } from "@bufbuild/protobuf";
import { createClient as createConnectClient, type Transport } from "@connectrpc/connect";

import { Backoff, type BackoffOptions } from "./backoff.js";
import { classifyCloseCode, classifyConnectError, classifyErrorCode, HeraldError, type Verdict } from "./codes.js";
import { EventSchema, PresenceChangeSchema, SignalSchema, type StreamPosition } from "./gen/herald/v1/events_pb.js";
import { Rooms, SubscribedSchema } from "./gen/herald/v1/rooms_pb.js";
import type { Sub } from "./subscription.js";

export type Level = "websocket" | "grpc-web" | "poll";

/** What a driver needs from the client. */
export interface DriverHost {
  /** The subscriptions to follow now. */
  subs(): Iterable<Sub>;
  sub(topic: string): Sub | undefined;
  /** The current token (a fresh one when it is close to expiry). */
  token(): Promise<string>;
  /** A new token from `getToken()` (after the server said the old one expired). */
  freshToken(): Promise<string>;
  /** The driver is connected (streams for grpc-web / poll); `again` after a loss. */
  up(driver: Driver, again: boolean): void;
  /** The driver lost its connection and is retrying. */
  down(driver: Driver): void;
  /** The driver never connected, `fallbackAfterFailures` times in a row. */
  unreachable(driver: Driver): void;
  /** The driver cannot go on (a terminal code for the whole connection). */
  fatal(driver: Driver, error: HeraldError): void;
}

export interface DriverOptions {
  backoff: BackoffOptions;
  /** Consecutive failures to connect, without ever having connected, before `unreachable`. */
  fallbackAfterFailures: number;
  pollIntervalMs: number;
  pollMaxIntervalMs: number;
}

export interface Driver {
  readonly level: Level;
  start(): void;
  add(sub: Sub): void;
  remove(sub: Sub): void;
  /** A new token: carry on with it without losing a subscription. */
  tokenRefreshed(token: string): void;
  stop(): void;
}

/** Waits `ms`, or less when `signal` aborts. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

const JSON_READ = { ignoreUnknownFields: true } as const;

/** The proto3 JSON of a StreamPosition, for `since`. */
function positionJson(p: StreamPosition | undefined): JsonValue | undefined {
  return p && { offset: p.offset.toString(), epoch: p.epoch };
}

// ---------------------------------------------------------------------------------------
// WebSocket

/** The part of the WebSocket API the client uses (the browser's, or `ws` in Node). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

interface Pending {
  resolve(result: JsonValue): void;
  reject(error: HeraldError): void;
}

export class WsDriver implements Driver {
  readonly level = "websocket";
  private socket: WebSocketLike | undefined;
  private authenticated = false;
  private everConnected = false;
  private failures = 0;
  private authRefusals = 0;
  private stopped = false;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly backoff: Backoff;
  private readonly timers = new Set<ReturnType<typeof setTimeout>>();
  private readonly retries = new Map<Sub, Backoff>();
  private readyWaiters: Array<() => void> = [];

  constructor(
    private readonly host: DriverHost,
    private readonly url: string,
    private readonly WebSocketImpl: WebSocketConstructor,
    private readonly options: DriverOptions,
  ) {
    this.backoff = new Backoff(options.backoff);
  }

  get ready(): boolean {
    return this.authenticated;
  }

  start(): void {
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    const socket = this.socket;
    this.socket = undefined;
    this.authenticated = false;
    if (socket) {
      socket.onclose = null;
      socket.onmessage = null;
      socket.onerror = () => {};
      socket.onopen = null;
      try {
        socket.close(1000, "client closed");
      } catch {
        // closing a socket that never opened
      }
    }
    this.rejectPending(new HeraldError("cancelled", "the client moved to another transport or was closed"));
  }

  add(sub: Sub): void {
    if (this.authenticated) this.subscribe(sub);
  }

  remove(sub: Sub): void {
    this.retries.delete(sub);
    if (this.authenticated) this.request("unsubscribe", { topic: sub.topic }).catch(() => {});
  }

  tokenRefreshed(token: string): void {
    if (!this.authenticated) return; // the next connect authenticates with it
    this.request("refresh", { token }).catch((error: HeraldError) => {
      // A refused refresh: reconnect, which authenticates afresh and resumes every topic.
      if (error.code !== "cancelled") this.socket?.close(1000, `refresh failed: ${error.code}`);
    });
  }

  /** Waits until the socket is authenticated (or `signal` aborts). */
  async whenReady(signal?: AbortSignal): Promise<void> {
    if (this.authenticated) return;
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => reject(new HeraldError("deadline_exceeded", "the WebSocket did not connect in time"));
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      this.readyWaiters.push(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      });
    });
  }

  /** A unary RPC over the socket (`call`), in proto3 JSON. */
  async call(rpc: string, request: JsonValue, signal?: AbortSignal): Promise<JsonValue> {
    await this.whenReady(signal);
    return this.request("call", { rpc, request });
  }

  private later(ms: number, run: () => void): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (!this.stopped) run();
    }, ms);
    this.timers.add(timer);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    let token: string;
    try {
      token = await this.host.token();
    } catch (error) {
      this.lost({ code: 1006, reason: `getToken failed: ${String(error)}` }, false);
      return;
    }
    if (this.stopped) return;
    let socket: WebSocketLike;
    try {
      socket = new this.WebSocketImpl(this.url);
    } catch (error) {
      this.lost({ code: 1006, reason: String(error) }, false);
      return;
    }
    this.socket = socket;
    let authenticated = false;
    socket.onerror = () => {}; // `close` follows with the code
    socket.onmessage = (message) => {
      if (typeof message.data === "string") this.frame(message.data);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = undefined;
      this.authenticated = false;
      this.rejectPending(new HeraldError("unavailable", `the WebSocket closed (${event.code} ${event.reason})`));
      this.lost(event, authenticated);
    };
    socket.onopen = () => {
      this.request("auth", { token }).then(
        () => {
          if (this.socket !== socket) return;
          authenticated = true;
          this.authenticated = true;
          const again = this.everConnected;
          this.everConnected = true;
          this.failures = 0;
          this.authRefusals = 0;
          this.backoff.reset();
          for (const resolve of this.readyWaiters.splice(0)) resolve();
          this.host.up(this, again);
          for (const sub of this.host.subs()) this.subscribe(sub);
        },
        (error: HeraldError) => {
          const verdict = classifyErrorCode(error.code);
          // A refused token is retried once with a fresh one from getToken(); refused again,
          // the client stops and reports instead of knocking forever. (The edge's close 3500
          // may already have been handled: count first.)
          if (verdict === "refresh-token") this.authRefusals += 1;
          if (this.stopped || error.code === "unavailable" || error.code === "cancelled") return;
          if (verdict === "terminal" || this.authRefusals >= 2) {
            this.stopped = true;
            this.host.fatal(this, error);
          } else if (verdict === "refresh-token") {
            this.host.freshToken().catch(() => {});
          }
          socket.close(1000, `auth failed: ${error.code}`);
        },
      );
    };
  }

  /** The socket closed (or never opened): reconnect, fall back, or stop. */
  private lost(event: { code: number; reason: string }, wasAuthenticated: boolean): void {
    if (this.stopped) return;
    for (const sub of this.host.subs()) sub.reconnecting();
    let verdict: Verdict = classifyCloseCode(event.code);
    if (event.code === 3500 && this.authRefusals < 2) {
      // invalid token: a new token may fix it once; the same one would be refused again
      verdict = "refresh-token";
    }
    if (verdict === "terminal") {
      this.stopped = true;
      this.host.fatal(this, new HeraldError("closed", `the WebSocket was closed with ${event.code}: ${event.reason}`, { closeCode: event.code }));
      return;
    }
    if (!wasAuthenticated) {
      this.failures += 1;
      if (!this.everConnected && this.failures >= this.options.fallbackAfterFailures) {
        this.host.unreachable(this);
        return;
      }
    }
    this.host.down(this);
    const reconnect = () => void this.connect();
    const wait = this.backoff.next(event.code === 3504 ? this.backoff.capMs : undefined);
    if (verdict === "refresh-token") {
      this.later(wait, () => void this.host.freshToken().then(reconnect, reconnect));
    } else {
      this.later(wait, reconnect);
    }
  }

  private subscribe(sub: Sub): void {
    const socket = this.socket;
    if (!socket || !sub.active) return;
    const since = sub.since();
    const params: { [key: string]: JsonValue } = { topic: sub.topic };
    const sinceJson = positionJson(since);
    if (sinceJson) params["since"] = sinceJson;
    this.request("subscribe", params).then(
      (result) => {
        this.retries.delete(sub);
        const subscribed = fromJson(SubscribedSchema, result, JSON_READ);
        sub.subscribed(subscribed.position, subscribed.recovered, since);
      },
      (error: HeraldError) => this.subscriptionEnded(sub, socket, classifyErrorCode(error.code), error),
    );
  }

  /** A subscribe was refused or the server ended one subscription (`unsubscribed`). */
  private subscriptionEnded(sub: Sub, socket: WebSocketLike, verdict: Verdict, error: HeraldError): void {
    if (this.socket !== socket || !sub.active || this.host.sub(sub.topic) !== sub) return;
    if (error.code === "already_exists") return; // the socket already carries it
    if (error.code === "cancelled" || error.code === "unavailable" && !this.authenticated) return; // the socket went; it resubscribes on reconnect
    if (verdict === "terminal") {
      sub.fail(error);
      return;
    }
    sub.reconnecting();
    let backoff = this.retries.get(sub);
    if (!backoff) this.retries.set(sub, (backoff = new Backoff(this.options.backoff)));
    const wait = backoff.next(error.retryAfterMs);
    if (verdict === "refresh-token") {
      this.later(wait, () =>
        void this.host
          .freshToken()
          .then((token) => this.request("refresh", { token }))
          .then(
            () => this.subscribe(sub),
            () => socket.close(1000, "refresh failed"),
          ),
      );
    } else {
      this.later(wait, () => this.subscribe(sub));
    }
  }

  private request(method: string, params?: JsonValue): Promise<JsonValue> {
    const socket = this.socket;
    if (!socket || socket.readyState !== 1) {
      return Promise.reject(new HeraldError("unavailable", "the WebSocket is not connected"));
    }
    const id = this.nextId++;
    const frame: { [key: string]: JsonValue } = { id, method };
    if (params !== undefined) frame["params"] = params;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      try {
        socket.send(JSON.stringify(frame));
      } catch (error) {
        this.pending.delete(id);
        reject(new HeraldError("unavailable", `sending failed: ${String(error)}`));
      }
    });
  }

  private rejectPending(error: HeraldError): void {
    for (const pending of this.pending.values()) pending.reject(error);
    this.pending.clear();
  }

  private frame(text: string): void {
    let frame: { [key: string]: JsonValue };
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (typeof frame["id"] === "number") {
      const pending = this.pending.get(frame["id"]);
      if (!pending) return;
      this.pending.delete(frame["id"]);
      const error = frame["error"] as { code?: string; message?: string } | undefined;
      if (error) pending.reject(new HeraldError(error.code ?? "unknown", error.message ?? ""));
      else pending.resolve(frame["result"] ?? {});
      return;
    }
    const ended = frame["unsubscribed"] as { topic?: string; code?: number; reason?: string; message?: string } | undefined;
    if (ended && typeof ended.topic === "string") {
      const sub = this.host.sub(ended.topic);
      const socket = this.socket;
      if (!sub || !socket) return;
      const code = ended.code ?? 0;
      const error = new HeraldError(ended.reason ?? "closed", ended.message ?? "", { closeCode: code });
      this.subscriptionEnded(sub, socket, classifyCloseCode(code), error);
      return;
    }
    const topic = frame["topic"];
    if (typeof topic !== "string") return;
    const sub = this.host.sub(topic);
    if (!sub) return;
    if (frame["event"]) sub.event(fromJson(EventSchema, frame["event"], JSON_READ));
    else if (frame["signal"]) sub.signal(fromJson(SignalSchema, frame["signal"], JSON_READ));
    else if (frame["presence"]) sub.presence(fromJson(PresenceChangeSchema, frame["presence"], JSON_READ));
  }
}

// ---------------------------------------------------------------------------------------
// grpc-web streaming

export class GrpcWebDriver implements Driver {
  readonly level = "grpc-web";
  private readonly rooms;
  private readonly streams = new Map<Sub, AbortController>();
  /** Streams superseded by a refresh, kept until their successor is subscribed. */
  private readonly retiring = new Map<AbortController, Sub>();
  private everStreamed = false;
  private failures = 0;
  private stopped = false;
  private isUp = false;

  constructor(
    private readonly host: DriverHost,
    transport: Transport,
    private readonly options: DriverOptions,
  ) {
    this.rooms = createConnectClient(Rooms, transport);
  }

  start(): void {
    for (const sub of this.host.subs()) this.add(sub);
  }

  stop(): void {
    this.stopped = true;
    for (const controller of [...this.streams.values(), ...this.retiring.keys()]) controller.abort();
    this.streams.clear();
    this.retiring.clear();
  }

  add(sub: Sub): void {
    if (this.stopped || this.streams.has(sub)) return;
    const controller = new AbortController();
    this.streams.set(sub, controller);
    void this.follow(sub, controller);
  }

  remove(sub: Sub): void {
    this.streams.get(sub)?.abort();
    this.streams.delete(sub);
    for (const [controller, of] of this.retiring) {
      if (of !== sub) continue;
      controller.abort();
      this.retiring.delete(controller);
    }
  }

  /**
   * Each stream carries the token it started with: make before break. A new stream with the
   * new token resumes from the cursor; once it is subscribed the old one is ended. Both may
   * deliver the same events meanwhile; the cursor drops the second copy.
   */
  tokenRefreshed(): void {
    if (this.stopped) return;
    for (const [sub, old] of [...this.streams]) {
      const next = new AbortController();
      this.streams.set(sub, next);
      this.retiring.set(old, sub);
      void this.follow(sub, next, () => {
        old.abort();
        this.retiring.delete(old);
      });
    }
  }

  private async follow(sub: Sub, controller: AbortController, onSubscribed?: () => void): Promise<void> {
    const backoff = new Backoff(this.options.backoff);
    const signal = controller.signal;
    // A stream superseded by a refresh runs on until its successor is subscribed, but is
    // never retried.
    const current = () => this.streams.get(sub) === controller;
    while (!signal.aborted && sub.active) {
      let subscribed = false;
      let verdict: Verdict = "reconnect";
      let retryAfterMs: number | undefined;
      let failure: HeraldError | undefined;
      try {
        const token = await this.host.token();
        const since = sub.since();
        const request = since ? { topic: sub.topic, since } : { topic: sub.topic };
        for await (const response of this.rooms.subscribe(request, { headers: { authorization: `Bearer ${token}` }, signal })) {
          const frame = response.frame;
          switch (frame.case) {
            case "subscribed":
              subscribed = true;
              backoff.reset();
              this.failures = 0;
              this.markUp();
              sub.subscribed(frame.value.position, frame.value.recovered, since);
              onSubscribed?.();
              onSubscribed = undefined;
              break;
            case "event":
              sub.event(frame.value);
              break;
            case "signal":
              sub.signal(frame.value);
              break;
            case "presence":
              sub.presence(frame.value);
              break;
          }
        }
      } catch (error) {
        if (signal.aborted) return;
        const end = classifyConnectError(error);
        verdict = end.verdict;
        retryAfterMs = end.retryAfterMs;
        failure = new HeraldError(end.code, end.message, { ...end, cause: error });
      }
      if (signal.aborted || this.stopped) return;
      if (!current()) {
        this.retiring.delete(controller);
        return;
      }
      if (!subscribed) {
        this.failures += 1;
        if (!this.everStreamed && this.failures >= this.options.fallbackAfterFailures) {
          this.host.unreachable(this);
          return;
        }
      }
      if (verdict === "terminal" && failure) {
        sub.fail(failure);
        this.streams.delete(sub);
        return;
      }
      sub.reconnecting();
      if (this.isUp && this.failures > 0) {
        this.isUp = false;
        this.host.down(this);
      }
      await sleep(backoff.next(retryAfterMs), signal);
      if (verdict === "refresh-token") await this.host.freshToken().catch(() => {});
    }
  }

  private markUp(): void {
    if (this.isUp) return;
    this.isUp = true;
    const again = this.everStreamed;
    this.everStreamed = true;
    this.host.up(this, again);
  }
}

// ---------------------------------------------------------------------------------------
// History polling

export class PollDriver implements Driver {
  readonly level = "poll";
  private readonly rooms;
  private readonly loops = new Map<Sub, AbortController>();
  private stopped = false;
  private isUp = false;
  private everUp = false;
  /** A page at most this long; a full page is followed by the next one at once. */
  static readonly PAGE = 500;

  constructor(
    private readonly host: DriverHost,
    transport: Transport,
    private readonly options: DriverOptions,
  ) {
    this.rooms = createConnectClient(Rooms, transport);
  }

  start(): void {
    for (const sub of this.host.subs()) this.add(sub);
  }

  stop(): void {
    this.stopped = true;
    for (const controller of this.loops.values()) controller.abort();
    this.loops.clear();
  }

  add(sub: Sub): void {
    if (this.stopped || this.loops.has(sub)) return;
    const controller = new AbortController();
    this.loops.set(sub, controller);
    void this.poll(sub, controller.signal);
  }

  remove(sub: Sub): void {
    this.loops.get(sub)?.abort();
    this.loops.delete(sub);
  }

  tokenRefreshed(): void {
    // every History call takes the current token
  }

  private async poll(sub: Sub, signal: AbortSignal): Promise<void> {
    const errors = new Backoff(this.options.backoff);
    const idle = new Backoff({ baseMs: this.options.pollIntervalMs, capMs: this.options.pollMaxIntervalMs, random: () => 1 });
    let first = true;
    while (!signal.aborted && sub.active) {
      let wait: number;
      try {
        const headers = { authorization: `Bearer ${await this.host.token()}` };
        const since = sub.since();
        if (!since) {
          // No position yet: start at the topic's top, like a subscribe without `since`.
          const top = await this.rooms.history({ topic: sub.topic, limit: 1 }, { headers, signal });
          sub.subscribed(top.position, true, undefined);
          this.markUp();
          if (sub.since()) continue;
          // no position in the answer: nothing to poll from yet; look again after a while
          await sleep(idle.next(), signal);
          continue;
        }
        const page = await this.rooms.history({ topic: sub.topic, since, limit: PollDriver.PAGE }, { headers, signal });
        if (first) {
          sub.subscribed(page.position, page.position?.epoch === since.epoch || !page.position, since);
          first = false;
        }
        this.markUp();
        errors.reset();
        for (const event of page.events) sub.event(event);
        if (page.events.length >= PollDriver.PAGE) continue;
        if (page.events.length > 0) idle.reset();
        wait = idle.next();
      } catch (error) {
        if (signal.aborted) return;
        const end = classifyConnectError(error);
        if (end.code === "failed_precondition") {
          // History no longer covers the cursor: start again from the top, and reload.
          const top = await this.rooms
            .history({ topic: sub.topic, limit: 1 }, { headers: { authorization: `Bearer ${await this.host.token()}` }, signal })
            .catch(() => undefined);
          if (top) {
            sub.subscribed(top.position, false, sub.since());
            continue;
          }
        }
        if (end.verdict === "terminal") {
          sub.fail(new HeraldError(end.code, end.message, { ...end, cause: error }));
          this.loops.delete(sub);
          return;
        }
        if (end.verdict === "refresh-token") await this.host.freshToken().catch(() => {});
        if (this.isUp) {
          this.isUp = false;
          this.host.down(this);
        }
        wait = errors.next(end.retryAfterMs);
      }
      await sleep(wait, signal);
    }
  }

  private markUp(): void {
    if (this.isUp) return;
    this.isUp = true;
    const again = this.everUp;
    this.everUp = true;
    this.host.up(this, again);
  }
}
