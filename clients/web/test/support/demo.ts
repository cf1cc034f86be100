// Runs `herald demo <job>` against a test's server: its gRPC address and the development key in
// its data directory. Resolves with the demo's standard output once it exits with 0.

import { spawn } from "node:child_process";
import { HERALD, type Herald } from "./herald.js";

export interface DemoRun {
  /** Lines the demo printed so far. */
  readonly stdout: string[];
  /** Resolves with every line printed when the demo exits with 0; rejects otherwise. */
  readonly done: Promise<string[]>;
  /** Resolves with the first printed line matching `pattern`. */
  line(pattern: RegExp): Promise<RegExpMatchArray>;
}

export function runDemo(herald: Herald, job: string, args: string[] = []): DemoRun {
  const child = spawn(HERALD, ["demo", job, "--server", herald.grpcUrl, "--data-dir", herald.dataDir, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  const killOnExit = () => child.kill("SIGKILL");
  process.on("exit", killOnExit);
  const stdout: string[] = [];
  const stderr: string[] = [];
  const waiting: { pattern: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];
  let partial = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    const parts = (partial + chunk).split("\n");
    partial = parts.pop() ?? "";
    for (const line of parts) {
      stdout.push(line);
      for (const w of waiting.splice(0)) {
        const m = line.match(w.pattern);
        if (m) w.resolve(m);
        else waiting.push(w);
      }
    }
  });
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => stderr.push(chunk));
  const done = new Promise<string[]>((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => {
      process.off("exit", killOnExit);
      if (partial) stdout.push(partial);
      if (code === 0) resolve(stdout);
      else reject(new Error(`herald demo ${job} exited with ${code}\n--- stdout ---\n${stdout.join("\n")}\n--- stderr ---\n${stderr.join("")}`));
    });
  });
  done.catch(() => {});
  return {
    stdout,
    done,
    line(pattern) {
      const seen = stdout.map((l) => l.match(pattern)).find((m) => m);
      if (seen) return Promise.resolve(seen);
      return Promise.race([new Promise<RegExpMatchArray>((resolve) => waiting.push({ pattern, resolve })), done.then(() => Promise.reject(new Error(`herald demo ${job} ended without printing ${pattern}`)))]);
    },
  };
}
