// A real `herald serve` (backend and edge) for the integration tests, as tests/web starts it:
// the binary from `cargo build --bin herald`, a fresh data directory, 127.0.0.1 on port 0.
// `restart()` starts it again on the same addresses and data directory (a client resumes
// against the same URL); `kill()` ends it with SIGKILL, like a crash.

import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

// dist/test/support → the repository root
const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../../..");
const HERALD = process.env["HERALD_BIN"] ?? path.join(REPO_ROOT, "target/debug/herald");
const STARTUP_TIMEOUT_MS = 30_000;

export interface Herald {
  readonly url: string;
  readonly httpAddr: string;
  readonly grpcAddr: string;
  readonly dataDir: string;
  /** A token signed with the server's development key. */
  token(sub: string, options?: { roles?: string[]; ttl?: string }): Promise<string>;
  /** SIGKILL: the server dies without closing anything. */
  kill(): Promise<void>;
  /** Starts it again on the same addresses and data directory. */
  restart(): Promise<void>;
  /** Ends it and removes the data directory. */
  stop(): Promise<void>;
}

export async function startHerald(): Promise<Herald> {
  if (!existsSync(HERALD)) {
    throw new Error(`${HERALD} is missing: run \`cargo build --bin herald\` in ${REPO_ROOT} first`);
  }
  const dataDir = await mkdtemp(path.join(tmpdir(), "herald-ts-"));
  let proc = await spawnServe(dataDir, "127.0.0.1:0", "127.0.0.1:0");
  const { grpcAddr, httpAddr } = proc;
  const herald: Herald = {
    url: `http://${httpAddr}`,
    httpAddr,
    grpcAddr,
    dataDir,
    async token(sub, { roles = [], ttl = "1h" } = {}) {
      const args = ["token", "--data-dir", dataDir, "--sub", sub, "--ttl", ttl, ...roles.flatMap((r) => ["--role", r])];
      const { stdout } = await promisify(execFile)(HERALD, args, { timeout: 10_000 });
      const token = stdout.trim();
      assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/, `herald token printed no JWT: ${stdout}`);
      return token;
    },
    async kill() {
      await proc.end("SIGKILL");
    },
    async restart() {
      await proc.end("SIGTERM");
      proc = await spawnServe(dataDir, grpcAddr, httpAddr);
    },
    async stop() {
      await proc.end("SIGTERM");
      await rm(dataDir, { recursive: true, force: true });
    },
  };
  return herald;
}

interface Running {
  grpcAddr: string;
  httpAddr: string;
  end(signal: NodeJS.Signals): Promise<void>;
}

async function spawnServe(dataDir: string, grpcAddr: string, httpAddr: string): Promise<Running> {
  const child: ChildProcess = spawn(
    HERALD,
    ["serve", "--data-dir", dataDir, "--grpc-addr", grpcAddr, "--http-addr", httpAddr, "--log-format", "json"],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const killOnExit = () => child.kill("SIGKILL");
  process.on("exit", killOnExit);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const log: string[] = [];
  let grpc: string | undefined;
  let http: string | undefined;
  const listening = new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stderr! }).on("line", (line) => {
      log.push(line);
      if (log.length > 200) log.shift();
      let entry: { fields?: { message?: string; grpc_addr?: string; http_addr?: string } };
      try {
        entry = JSON.parse(line);
      } catch {
        return;
      }
      const fields = entry.fields ?? {};
      if (fields.message === "herald backend listening") grpc = fields.grpc_addr;
      if (fields.message === "herald edge listening") http = fields.http_addr;
      if (grpc && http) resolve();
    });
    child.once("error", reject);
    void exited.then(() => reject(new Error("herald serve exited before listening")));
  });
  const end = async (signal: NodeJS.Signals) => {
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
    await end("SIGKILL");
    throw new Error(`${(error as Error).message}\n--- herald serve stderr ---\n${log.join("\n")}`, { cause: error });
  } finally {
    clearTimeout(timer);
  }
  return { grpcAddr: grpc!, httpAddr: http!, end };
}

/** Resolves when `check()` holds, polling every 20 ms; rejects with `what` after `ms`. */
export async function until(check: () => boolean, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
