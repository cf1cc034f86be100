// Chromium from Debian (/usr/bin/chromium, or CHROMIUM_BIN) driven by playwright-core:
// headless, no sandbox, a fresh profile in a temporary directory for each browser.

import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { REPO_ROOT } from "./herald.js";

const CHROMIUM = process.env["CHROMIUM_BIN"] ?? "/usr/bin/chromium";
export const ARTIFACTS = path.join(REPO_ROOT, "clients/web/test-artifacts");

export interface Browser {
  page: Page;
  context: BrowserContext;
  close(): Promise<void>;
}

export async function openBrowser(viewport = { width: 1100, height: 760 }): Promise<Browser> {
  const profile = await mkdtemp(path.join(tmpdir(), "herald-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const errors: string[] = [];
  page.on("pageerror", (error) => errors.push(error.message));
  return {
    page,
    context,
    async close() {
      await context.close();
      await rm(profile, { recursive: true, force: true });
      if (errors.length) throw new Error(`the page threw: ${errors.join("; ")}`);
    },
  };
}

/**
 * Saves a screenshot as a test artifact; with `HERALD_UPDATE_SCREENSHOTS=1`, also to `alsoTo`
 * in the repository (the pictures in docs/), so an ordinary run leaves the checkout clean.
 */
export async function screenshot(page: Page, name: string, alsoTo?: string): Promise<void> {
  await mkdir(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, name) });
  if (alsoTo && process.env.HERALD_UPDATE_SCREENSHOTS === "1") {
    await page.screenshot({ path: path.join(REPO_ROOT, alsoTo) });
  }
}
