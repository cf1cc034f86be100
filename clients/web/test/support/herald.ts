// A real `herald serve` for the browser tests, like clients/ts's integration tests start it:
// the binary from `cargo build --bin herald` (or HERALD_BIN), a fresh data directory,
// 127.0.0.1 on port 0, its addresses read from its log.

import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

// test-build/test/support → the repository root
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../../..");
export const HERALD = process.env["HERALD_BIN"] ?? path.join(REPO_ROOT, "target/debug/herald");
const STARTUP_TIMEOUT_MS = 30_000;

export interface Herald {
  readonly url: string;
  /** The backend's gRPC address (`http://127.0.0.1:PORT`), for `herald demo … --server`; a new one after `startServer`. */
  readonly grpcUrl: string;
  /** The server's data directory (its development key signs the demos' tokens). */
  readonly dataDir: string;
  /** A token signed with the key the server verifies with. */
  token(sub: string, roles?: string[]): Promise<string>;
  /** Stops the process (SIGTERM, or `signal`), keeping the data directory; `startServer` starts it again. */
  stopServer(signal?: NodeJS.Signals): Promise<void>;
  /** Starts `herald serve` again on the same data directory and the same HTTP address. */
  startServer(): Promise<void>;
  stop(): Promise<void>;
}

export interface StartOptions {
  /** Verify tokens with this HS256 secret instead of the development key (no development mode). */
  hs256Secret?: string;
}

export async function startHerald(options: StartOptions = {}): Promise<Herald> {
  if (!existsSync(HERALD)) throw new Error(`${HERALD} is missing: run \`cargo build --bin herald\` in ${REPO_ROOT} first`);
  const dataDir = await mkdtemp(path.join(tmpdir(), "herald-web-"));
  const extra = options.hs256Secret ? ["--hs256-secret", options.hs256Secret] : [];
  let serve = await launch(dataDir, "127.0.0.1:0", extra);
  const http = serve.http;
  return {
    url: `http://${http}`,
    get grpcUrl() {
      return `http://${serve.grpc}`;
    },
    dataDir,
    async token(sub, roles = []) {
      const key = options.hs256Secret ? ["--secret", options.hs256Secret] : ["--data-dir", dataDir];
      const { stdout } = await promisify(execFile)(HERALD, ["token", ...key, "--sub", sub, ...roles.flatMap((r) => ["--role", r])], { timeout: 10_000 });
      return stdout.trim();
    },
    async stopServer(signal) {
      await serve.end(signal);
    },
    async startServer() {
      serve = await launch(dataDir, http, extra);
    },
    async stop() {
      await serve.end();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** One `herald serve` process on `dataDir`, its edge on `httpAddr`; resolves once it listens. */
async function launch(dataDir: string, httpAddr: string, extra: string[]): Promise<{ http: string; grpc: string; end(signal?: NodeJS.Signals): Promise<void> }> {
  // Metrics on port 0 too: the development default (9464) is shared by every local server.
  const args = ["serve", "--data-dir", dataDir, "--grpc-addr", "127.0.0.1:0", "--http-addr", httpAddr, "--metrics-addr", "127.0.0.1:0", "--log-format", "json", ...extra];
  const child = spawn(HERALD, args, { stdio: ["ignore", "ignore", "pipe"] });
  const killOnExit = () => child.kill("SIGKILL");
  process.on("exit", killOnExit);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const log: string[] = [];
  let grpc: string | undefined;
  let http: string | undefined;
  const listening = new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stderr }).on("line", (line) => {
      log.push(line);
      if (log.length > 200) log.shift();
      let fields: { message?: string; grpc_addr?: string; http_addr?: string } = {};
      try {
        fields = (JSON.parse(line) as { fields?: typeof fields }).fields ?? {};
      } catch {
        return;
      }
      if (fields.message === "herald backend listening") grpc = fields.grpc_addr;
      if (fields.message === "herald edge listening") http = fields.http_addr;
      if (grpc && http) resolve();
    });
    child.once("error", reject);
    void exited.then(() => reject(new Error("herald serve exited before listening")));
  });
  const end = async (signal: NodeJS.Signals = "SIGTERM") => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill(signal);
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    }
    process.off("exit", killOnExit);
  };
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      listening,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`herald serve did not listen within ${STARTUP_TIMEOUT_MS} ms`)), STARTUP_TIMEOUT_MS);
      }),
    ]);
  } catch (error) {
    await end();
    throw new Error(`${(error as Error).message}\n--- herald serve stderr ---\n${log.join("\n")}`, { cause: error });
  } finally {
    clearTimeout(timer);
  }
  return { http: http!, grpc: grpc!, end };
}
