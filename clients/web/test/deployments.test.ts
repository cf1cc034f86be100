// The deployment monitor in a real browser against a real `herald serve`: a build run by
// `herald demo deploy` followed live to its end, and one started from the page's form and run
// by a worker written here, whose log holds markup and escape sequences.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { createClient, DeploymentState, LogStream, type HeraldClient, type LogLine } from "@herald/client";
import type { Page } from "playwright-core";
import { parseAnsi, stripAnsi } from "../src/deployments/ansi.js";
import { openBrowser, screenshot, type Browser } from "./support/browser.js";
import { signInAsDev } from "./support/console.js";
import { lowContrastTexts } from "./support/contrast.js";
import { runDemo } from "./support/demo.js";
import { startHerald, type Herald } from "./support/herald.js";

const LONG = { timeout: 60_000 };

/** Escape sequences removed, independently of the page's parser. */
const plain = (text: string) => text.replace(/\x1b\[[0-9;]*m/g, "");

async function deploymentState(page: Page, state: keyof typeof DeploymentState, id: bigint): Promise<void> {
  await page.waitForFunction(
    ([want, id]) => {
      const title = document.querySelector('[data-testid="deploy-title"]')?.textContent ?? "";
      return title.startsWith(`#${id} `) && document.querySelector<HTMLElement>('[data-testid="deploy-state"]')?.dataset["state"] === want;
    },
    [state, String(id)] as const,
    LONG,
  );
}

/** Every line of the deployment as stored, read from the topic's history by its owner. */
async function storedLines(client: HeraldClient, id: bigint): Promise<LogLine[]> {
  const { deployment } = await client.deployments.get({ deploymentId: id });
  const lines: LogLine[] = [];
  let since = { offset: 0n, epoch: deployment!.position!.epoch };
  for (;;) {
    const page = await client.rooms.history({ topic: `deployment:${id}`, since, limit: 1000 });
    for (const event of page.events) if (event.body.case === "deploymentLogs") lines.push(...event.body.value.lines);
    const last = page.events[page.events.length - 1];
    if (!last) return lines;
    since = { offset: last.offset, epoch: last.epoch };
  }
}

/** The lines the page shows: number and text. */
const shownLines = (page: Page) =>
  page.evaluate(() =>
    Array.from(document.querySelectorAll<HTMLElement>('[data-testid="log-line"]')).map((el) => ({
      number: el.dataset["number"] ?? "",
      text: el.querySelector(".log-text")?.textContent ?? "",
      stderr: el.classList.contains("stderr"),
    })),
  );

describe("the ANSI reader of log lines", () => {
  test("colours, bold and reset become styled runs; other escapes and control bytes are dropped", () => {
    assert.deepEqual(parseAnsi("\x1b[1;32m   Compiling\x1b[0m tokio"), [
      { text: "   Compiling", style: { bold: true, fg: { palette: 2 } } },
      { text: " tokio", style: {} },
    ]);
    assert.deepEqual(parseAnsi("\x1b[33mwarn\x1b[39m plain \x1b[91;44mX\x1b[m"), [
      { text: "warn", style: { fg: { palette: 3 } } },
      { text: " plain ", style: {} },
      { text: "X", style: { fg: { palette: 9 }, bg: { palette: 4 } } },
    ]);
    assert.deepEqual(parseAnsi("\x1b[38;5;196mred\x1b[38;2;1;2;3mrgb"), [
      { text: "red", style: { fg: { rgb: "rgb(255, 0, 0)" } } },
      { text: "rgb", style: { fg: { rgb: "rgb(1, 2, 3)" } } },
    ]);
    assert.equal(stripAnsi("\x1b]0;window title\x07\x1b[2Kdone\x1b[1G\r\x07!"), "done!");
    assert.equal(stripAnsi("<b>not markup</b>"), "<b>not markup</b>");
  });
});

describe("the deployment monitor", () => {
  let herald: Herald;
  let browser: Browser;
  let admin: HeraldClient;

  before(async () => {
    herald = await startHerald();
    const adminToken = await herald.token("console-test-admin", ["admin"]);
    admin = createClient({ url: herald.url, getToken: () => adminToken, transport: "grpc-web" });
    browser = await openBrowser({ width: 1200, height: 900 });
  });

  after(async () => {
    await browser?.close();
    admin?.close();
    await herald?.stop();
  });

  test("a deployment run by `herald demo deploy` shows every log line, in colour, and ends in success", async () => {
    const { page } = browser;
    await signInAsDev(page, herald.url, "ops", ["admin"]);
    await page.getByTestId("deploy-list").filter({ hasText: "No deployments yet." }).waitFor();

    const demo = runDemo(herald, "deploy", ["--lines", "300", "--duration", "5s", "--start-after", "1s"]);
    const id = BigInt((await demo.line(/^created deployment (\d+)/))[1]!);
    // The page lists it within a refresh and follows it (nothing is picked yet).
    await deploymentState(page, "RUNNING", id);
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="log-line"]').length > 20, undefined, LONG);
    await screenshot(page, "console-deployments-running.png");
    await deploymentState(page, "SUCCESS", id);
    const printed = (await demo.done).join("\n");
    const total = Number(printed.match(/deployment \d+ succeeded: (\d+) log lines/)?.[1]);
    assert.equal(total, 300);

    // Every line the worker sent, once, in order, with its text and stream.
    const stored = await storedLines(admin, id);
    assert.equal(stored.length, total);
    await page.waitForFunction((n) => document.querySelectorAll('[data-testid="log-line"]').length >= n, total, LONG);
    const shown = await shownLines(page);
    assert.deepEqual(
      shown,
      stored.map((line) => ({ number: String(line.number), text: plain(line.text), stderr: line.stream === LogStream.STDERR })),
    );
    assert.ok(shown.every((line) => !line.text.includes("\x1b") && !/\[[0-9;]*m/.test(line.text)), "no escape sequence is shown");

    // Colours are rendered: the compile lines' bold green, the warnings' yellow.
    const compiling = page.getByTestId("log-line").filter({ hasText: "Compiling" }).first().locator(".ansi-fg-2.ansi-bold");
    assert.equal((await compiling.textContent())?.trim(), "Compiling");
    assert.equal(await compiling.evaluate((el) => getComputedStyle(el).fontWeight), "700");
    assert.ok((await page.locator('[data-testid="deploy-log"] .ansi-fg-3').count()) > 0, "a yellow warning");

    // The status: every stage done, 100 %, the worker's last message.
    assert.equal(await page.getByTestId("deploy-progress").evaluate((el) => (el as HTMLProgressElement).value), 100);
    assert.equal(await page.getByTestId("deploy-message").textContent(), "live in production");
    assert.equal(await page.locator(".stage-bar .stage-done").count(), 3);
    assert.match((await page.getByTestId("deploy-log-status").textContent()) ?? "", /^300 lines$/);
    const row = page.locator(`[data-testid="deploy-row"][data-id="${id}"]`);
    assert.equal(await row.getAttribute("aria-pressed"), "true");
    await row.filter({ hasText: "Succeeded" }).waitFor();
    await page.getByTestId("panel-deployments").scrollIntoViewIfNeeded();
    await screenshot(page, "console-deployments.png", "docs/console-deployments.png");

    for (const colorScheme of ["light", "dark"] as const) {
      await page.emulateMedia({ colorScheme });
      const { checked, failures } = await page.evaluate(lowContrastTexts);
      assert.ok(checked > 300, `only ${checked} texts were checked`);
      assert.deepEqual(failures, [], colorScheme);
    }
    await page.emulateMedia({ colorScheme: "light" });
  });

  test("a deployment started from the page is followed as a worker runs it; log text is never markup", async () => {
    const { page } = browser;
    await page.getByText("Start a deployment").click();
    await page.getByLabel("Application", { exact: true }).last().fill("billing-api");
    await page.getByLabel("Git ref").fill("v2.4.0");
    await page.getByLabel("Description (optional)").fill("from the console");
    await page.getByRole("button", { name: "Start deployment" }).click();
    await page.getByTestId("deploy-title").filter({ hasText: "billing-api @ v2.4.0" }).waitFor();
    const id = BigInt(((await page.getByTestId("deploy-title").textContent()) ?? "").match(/^#(\d+)/)![1]!);
    await deploymentState(page, "PENDING", id);
    assert.match((await page.getByTestId("deploy-message").textContent()) ?? "", /Waiting for a build worker/);

    const workerToken = await herald.token("console-test-worker", ["service"]);
    const worker = createClient({ url: herald.url, getToken: () => workerToken, transport: "grpc-web" });
    try {
      await worker.deployments.start({ deploymentId: id });
      await worker.deployments.report({ deploymentId: id, stage: 2, progress: 40, message: "building" });
      const texts = ["<img src=x onerror=\"window.__injected = 1\">", "\x1b[1;31merror\x1b[0m: <script>window.__injected = 2</script>", "\x1b]0;a title\x07\x1b[2Kcleared"];
      await worker.deployments.appendLogBatch({ chunk: { deploymentId: id, lines: texts.map((text) => ({ text, stream: LogStream.STDERR })) } });
      await page.waitForFunction(() => document.querySelectorAll('[data-testid="log-line"]').length === 3, undefined, LONG);
      const shown = await shownLines(page);
      assert.deepEqual(
        shown.map((l) => l.text),
        ["<img src=x onerror=\"window.__injected = 1\">", "error: <script>window.__injected = 2</script>", "cleared"],
      );
      assert.equal(await page.locator('[data-testid="deploy-log"] img, [data-testid="deploy-log"] script').count(), 0);
      assert.equal(await page.evaluate(() => (window as { __injected?: number }).__injected), undefined);
      assert.equal(await page.locator('[data-testid="deploy-log"] .ansi-fg-1.ansi-bold').textContent(), "error");
      assert.equal(await page.getByTestId("deploy-progress").evaluate((el) => (el as HTMLProgressElement).value), 40);
      assert.equal(await page.locator(".stage-bar .stage-current").getAttribute("data-stage"), "building");

      await worker.deployments.finish({ deploymentId: id, result: DeploymentState.FAILED, errorMessage: "tests failed", exitCode: 101 });
      await deploymentState(page, "FAILED", id);
      await page.getByRole("alert").filter({ hasText: "tests failed (exit code 101)" }).waitFor();
    } finally {
      worker.close();
    }
    await screenshot(page, "console-deployments-failed.png");
  });

  test("the list works from the keyboard: Tab to a deployment, Enter follows it", async () => {
    const { page } = browser;
    const first = page.locator('[data-testid="deploy-row"][data-id="1"]');
    await first.focus();
    await page.keyboard.press("Enter");
    await deploymentState(page, "SUCCESS", 1n);
    assert.equal(await page.locator('[data-testid="deploy-row"][data-id="1"]').getAttribute("aria-pressed"), "true");
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="log-line"]').length === 300, undefined, LONG);
    // The list is drawn again on every refresh; the focus stays on the row.
    await page.evaluate(() => {
      (document.activeElement as HTMLElement & { drawnBefore?: boolean }).drawnBefore = true;
      document.querySelector<HTMLElement>('[data-testid="deploy-refresh"]')!.click();
    });
    await page.waitForFunction(() => !(document.querySelector('[data-testid="deploy-row"][data-id="1"]') as (Element & { drawnBefore?: boolean }) | null)?.drawnBefore, undefined, LONG);
    assert.equal(await page.evaluate(() => (document.activeElement as HTMLElement | null)?.dataset["id"]), "1");
    // The log is focusable, so it scrolls from the keyboard.
    await page.getByTestId("deploy-log").focus();
    assert.equal(await page.evaluate(() => document.activeElement?.getAttribute("data-testid")), "deploy-log");
  });

  test("on a phone-sized screen the monitor fits the width", async () => {
    const phone = await openBrowser({ width: 390, height: 844 });
    try {
      await signInAsDev(phone.page, herald.url, "ops", ["admin"]);
      await phone.page.waitForFunction(() => document.querySelectorAll('[data-testid="log-line"]').length > 0, undefined, LONG);
      const scrollWidth = await phone.page.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(scrollWidth <= 390, `the page scrolls sideways (${scrollWidth} px)`);
      await phone.page.getByTestId("panel-deployments").scrollIntoViewIfNeeded();
      await screenshot(phone.page, "console-deployments-phone.png");
    } finally {
      await phone.close();
    }
  });
});
