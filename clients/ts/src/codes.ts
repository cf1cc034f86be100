// The code table (proto/herald/v1/codes.proto) as the client reads it: every decision to
// retry or to stop is taken here, from the number range alone, so codes newer than this
// build are classified too.

import { Code, ConnectError } from "@connectrpc/connect";

import { CloseCode } from "./gen/herald/v1/codes_pb.js";

/** Trailer carrying the CloseCode name of a stream or call Herald ended. */
export const CLOSE_CODE_TRAILER = "herald-close-code";
/** Trailers carrying the last position delivered on an ended stream. */
export const OFFSET_TRAILER = "herald-offset";
export const EPOCH_TRAILER = "herald-epoch";
/** Trailer on UNAVAILABLE answers caused by the database: milliseconds to wait. */
export const RETRY_AFTER_TRAILER = "herald-retry-after-ms";

/** What a client does after a stream, a subscription or a socket ended. */
export type Verdict =
  /** Try again with backoff and resume with `since`; nothing is lost. */
  | "reconnect"
  /** Get a fresh token first, then reconnect and resume. */
  | "refresh-token"
  /** Do not retry as is: report to the application. */
  | "terminal";

/**
 * Classifies a close code: 3000–3499 reconnect (3002, token expired, after a fresh token),
 * 3500–3999 terminal. WebSocket codes below 3000 are the transport's: 1002 (protocol error),
 * 1007 (invalid payload) and 1009 (message too big) are bugs of the client and terminal;
 * every other one (1000, 1001, 1006 abnormal closure, 1011, …) is a lost connection.
 */
export function classifyCloseCode(code: number): Verdict {
  if (code === CloseCode.TOKEN_EXPIRED) return "refresh-token";
  if (code >= 3000 && code < 3500) return "reconnect";
  if (code >= 3500 && code < 4000) return "terminal";
  if (code === 1002 || code === 1007 || code === 1009) return "terminal";
  return "reconnect";
}

/** The CloseCode number of a trailer value such as `CLOSE_CODE_SLOW_CONSUMER`, if known. */
export function closeCodeFromName(name: string | null | undefined): number | undefined {
  if (!name) return undefined;
  const key = name.replace(/^CLOSE_CODE_/, "") as keyof typeof CloseCode;
  const value = CloseCode[key];
  return typeof value === "number" ? value : undefined;
}

/**
 * Classifies an error frame code of the WebSocket protocol (`permission_denied`, …) answering
 * a `subscribe`: refusals that the same request would get again are terminal; unavailability,
 * rate limiting and server errors are retried with backoff; `unauthenticated` asks for a
 * fresh token.
 */
export function classifyErrorCode(code: string): Verdict {
  switch (code) {
    case "unauthenticated":
      return "refresh-token";
    case "invalid_argument":
    case "permission_denied":
    case "not_found":
    case "failed_precondition":
    case "resource_exhausted":
    case "unimplemented":
    case "out_of_range":
      return "terminal";
    default:
      // unavailable, rate_limited, internal, deadline_exceeded, aborted, unknown, …
      return "reconnect";
  }
}

/** Why a grpc-web stream or call ended, read from its status and Herald's trailers. */
export interface StreamEnd {
  verdict: Verdict;
  /** The CloseCode Herald sent, when it sent one. */
  closeCode?: number;
  /** The gRPC status, in the WebSocket protocol's spelling (`permission_denied`). */
  code: string;
  message: string;
  /** A wait the server asked for (`herald-retry-after-ms`). */
  retryAfterMs?: number;
}

/** Reads a ConnectError: the close-code trailer first, the gRPC status when there is none. */
export function classifyConnectError(error: unknown): StreamEnd {
  const err = ConnectError.from(error);
  const code = codeName(err.code);
  const closeCode = closeCodeFromName(err.metadata.get(CLOSE_CODE_TRAILER));
  const retry = Number(err.metadata.get(RETRY_AFTER_TRAILER));
  const retryAfterMs = Number.isFinite(retry) && retry > 0 ? retry : undefined;
  let verdict: Verdict;
  if (closeCode !== undefined) {
    verdict = classifyCloseCode(closeCode);
  } else {
    // No trailer: a transport failure (connection refused, reset) or a plain status.
    switch (err.code) {
      case Code.Unauthenticated:
        verdict = "refresh-token";
        break;
      case Code.InvalidArgument:
      case Code.PermissionDenied:
      case Code.NotFound:
      case Code.FailedPrecondition:
      case Code.Unimplemented:
      case Code.OutOfRange:
      case Code.AlreadyExists:
        verdict = "terminal";
        break;
      default:
        verdict = "reconnect";
    }
  }
  const end: StreamEnd = { verdict, code, message: err.rawMessage };
  if (closeCode !== undefined) end.closeCode = closeCode;
  if (retryAfterMs !== undefined) end.retryAfterMs = retryAfterMs;
  return end;
}

/** `Code.PermissionDenied` → `permission_denied`, the spelling of the WebSocket protocol. */
export function codeName(code: Code): string {
  const name = Code[code] ?? "unknown";
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

/** An error a Herald call or subscription ended with. */
export class HeraldError extends Error {
  /** The gRPC status name in the WebSocket protocol's spelling (`permission_denied`). */
  readonly code: string;
  /** The CloseCode, when the server sent one. */
  readonly closeCode: number | undefined;
  readonly retryAfterMs: number | undefined;

  constructor(code: string, message: string, options: { closeCode?: number; retryAfterMs?: number; cause?: unknown } = {}) {
    super(`${code}: ${message}`, { cause: options.cause });
    this.name = "HeraldError";
    this.code = code;
    this.closeCode = options.closeCode;
    this.retryAfterMs = options.retryAfterMs;
  }
}
