// Builds the TypeScript SDK (../ts) when its dist/ is missing, so `npm ci && npm run build`
// here works on a fresh checkout: the console depends on it by a file: dependency.

import { execSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const sdk = fileURLToPath(new URL("../../ts/", import.meta.url));
if (!existsSync(new URL("../../ts/dist/src/index.js", import.meta.url))) {
  console.log("building the TypeScript SDK (clients/ts) first");
  if (!existsSync(new URL("../../ts/node_modules/", import.meta.url))) {
    execSync("npm ci --no-audit --no-fund", { cwd: sdk, stdio: "inherit" });
  }
  execSync("npm run build", { cwd: sdk, stdio: "inherit" });
}
