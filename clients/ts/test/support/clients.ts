// Clients for the integration tests: the SDK over `ws` (Node 20 has no global WebSocket)
// with short backoffs, and a publisher with the `service` role.

import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import WebSocket from "ws";

import { createClient, type ClientOptions, type HeraldClient } from "../../src/index.js";
import type { WebSocketConstructor } from "../../src/drivers.js";
import { after, before } from "node:test";

import { startHerald, type Herald } from "./herald.js";

export const NodeWebSocket = WebSocket as unknown as WebSocketConstructor;

/** A client of `herald` with test-sized waits; `options` override. */
export function client(herald: Herald, getToken: () => string | Promise<string>, options: Partial<ClientOptions> = {}): HeraldClient {
  return createClient({
    url: herald.url,
    getToken,
    WebSocket: NodeWebSocket,
    backoff: { baseMs: 50, capMs: 500 },
    ...options,
  });
}

/** A service-role client over grpc-web, for publishing and domain writes. */
export async function serviceClient(herald: Herald): Promise<HeraldClient> {
  const token = await herald.token("publisher", { roles: ["service"] });
  return client(herald, () => token, { transport: "grpc-web" });
}

/** Publishes `n` events of type `note` with data `{ n }`, one after another. */
export async function publish(publisher: HeraldClient, topic: string, from: number, to: number): Promise<void> {
  for (let n = from; n <= to; n += 1) {
    await publisher.rooms.publish({ topic, type: "note", data: { n } });
  }
}

/**
 * A grpc-web transport behind a "proxy" that buffers responses, so server streams never
 * work while `blocked()` says so (unary calls still do): what drives the client to poll.
 */
export function streamBlockingTransport(url: string, blocked: () => boolean) {
  const interceptor: Interceptor = (next) => async (request) => {
    if (request.stream && blocked()) {
      throw new ConnectError("this proxy does not pass streaming responses", Code.Unavailable);
    }
    return next(request);
  };
  return createGrpcWebTransport({ baseUrl: url, interceptors: [interceptor] });
}

/** An address nothing listens on (a closed port on 127.0.0.1). */
export const UNREACHABLE_WS = "ws://127.0.0.1:9/ws";

/**
 * Starts one `herald serve` for the test file (`before`) with a service-role publisher, and
 * closes every client in the returned list and stops the server after it (`after`).
 */
export function serveForThisFile(started: (herald: Herald, publisher: HeraldClient) => void): HeraldClient[] {
  const clients: HeraldClient[] = [];
  let herald: Herald | undefined;
  before(async () => {
    herald = await startHerald();
    const publisher = await serviceClient(herald);
    clients.push(publisher);
    started(herald, publisher);
  });
  after(async () => {
    for (const c of clients) c.close();
    await herald?.stop();
  });
  return clients;
}
