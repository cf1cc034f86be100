// Token lifetime: the client reads `exp` from the JWT's payload (without verifying it: the
// server verifies) and asks `getToken()` for a fresh one before it expires.

/** The `exp` claim (seconds since the epoch) of a JWT, or undefined when it has none. */
export function tokenExpiry(token: string): number | undefined {
  const payload = token.split(".")[1];
  if (!payload) return undefined;
  try {
    const json = JSON.parse(decodeBase64Url(payload)) as { exp?: unknown };
    return typeof json.exp === "number" && Number.isFinite(json.exp) ? json.exp : undefined;
  } catch {
    return undefined;
  }
}

function decodeBase64Url(text: string): string {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/**
 * How long to wait before refreshing a token that expires at `expSeconds`: `marginMs` before
 * expiry, but never more than half of the time left (a 10 s token is refreshed after 5 s),
 * and never a negative wait. Undefined when there is no expiry: nothing to schedule.
 */
export function refreshDelay(expSeconds: number | undefined, nowMs: number, marginMs: number): number | undefined {
  if (expSeconds === undefined) return undefined;
  const left = expSeconds * 1000 - nowMs;
  if (left <= 0) return 0;
  return Math.max(0, left - Math.min(marginMs, left / 2));
}
