// Who is signed in, and the tokens the SDK asks for. A pasted token is used as it is; a
// development sign-in asks the edge (`POST /dev/token`) for a fresh token each time the SDK
// needs one, so it never expires under the page. Kept in sessionStorage: a reload stays
// signed in, closing the tab signs out.

const STORAGE_KEY = "herald.console.session";

export type SignIn = { kind: "token"; token: string } | { kind: "dev"; sub: string; roles: string[] };

export interface Identity {
  sub: string;
  roles: string[];
  /** Seconds since the epoch; undefined when the token has no `exp`. */
  exp: number | undefined;
}

export interface DevStatus {
  available: boolean;
  reason?: string;
}

export function loadSignIn(): SignIn | undefined {
  try {
    const raw = sessionStorage.getItem(STORAGE_KEY);
    return raw ? (JSON.parse(raw) as SignIn) : undefined;
  } catch {
    return undefined;
  }
}

export function saveSignIn(signIn: SignIn | undefined): void {
  if (signIn) sessionStorage.setItem(STORAGE_KEY, JSON.stringify(signIn));
  else sessionStorage.removeItem(STORAGE_KEY);
}

export async function devStatus(): Promise<DevStatus> {
  try {
    const response = await fetch("/dev/token", { headers: { accept: "application/json" } });
    if (!response.ok) return { available: false, reason: `the server answered ${response.status}` };
    return (await response.json()) as DevStatus;
  } catch {
    return { available: false, reason: "the server cannot be reached" };
  }
}

export async function mintDevToken(sub: string, roles: string[]): Promise<string> {
  const response = await fetch("/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json" },
    body: JSON.stringify({ sub, roles }),
  });
  const body = (await response.json().catch(() => ({}))) as { token?: string; error?: string };
  if (!response.ok || !body.token) throw new Error(body.error ?? `the server answered ${response.status}`);
  return body.token;
}

/** The token the SDK should use now. */
export async function tokenFor(signIn: SignIn): Promise<string> {
  return signIn.kind === "token" ? signIn.token : mintDevToken(signIn.sub, signIn.roles);
}

/**
 * Reads a JWT's claims for display and the user's topic. Not a verification: the server
 * verifies every token; a token it refuses ends the session with its reason.
 */
export function identityOf(token: string): Identity {
  const part = token.split(".")[1];
  if (!part) throw new Error("this is not a JWT: it needs three parts separated by dots");
  let claims: { sub?: unknown; roles?: unknown; exp?: unknown };
  try {
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="));
    claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(json, (c) => c.charCodeAt(0)))) as typeof claims;
  } catch {
    throw new Error("this token's claims cannot be read");
  }
  if (typeof claims.sub !== "string" || claims.sub === "") throw new Error("this token names no user (no `sub` claim)");
  const roles = Array.isArray(claims.roles) ? claims.roles.filter((r): r is string => typeof r === "string") : [];
  const exp = typeof claims.exp === "number" ? claims.exp : undefined;
  if (exp !== undefined && exp * 1000 <= Date.now()) throw new Error("this token has expired");
  return { sub: claims.sub, roles, exp };
}
