// The web console in a real browser against a real `herald serve`: served by the edge,
// development sign-in, and the notification bell kept live by the SDK.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { createClient, NotificationPriority, NotificationType, type HeraldClient } from "@herald/client";
import type { Page } from "playwright-core";
import { openBrowser, screenshot, type Browser } from "./support/browser.js";
import { lowContrastTexts } from "./support/contrast.js";
import { startHerald, type Herald } from "./support/herald.js";

const badge = (page: Page) => page.getByTestId("bell-count");

async function signInAsDevUser(page: Page, url: string, user: string): Promise<void> {
  await page.goto(url);
  const form = page.getByTestId("dev-sign-in");
  await form.getByLabel("User id").fill(user);
  await form.getByLabel("reviewer").check();
  await form.getByRole("button", { name: "Sign in" }).click();
  await page.getByTestId("signed-in-as").filter({ hasText: user }).waitFor();
  await page.getByTestId("connection").filter({ hasText: "Connected" }).waitFor();
}

/** Waits until the badge shows `count` (hidden at 0). */
async function badgeShows(page: Page, count: number): Promise<void> {
  await page.waitForFunction(
    (n) => {
      const el = document.querySelector<HTMLElement>('[data-testid="bell-count"]');
      return el?.dataset["count"] === String(n) && el.hidden === (n === 0);
    },
    count,
    { timeout: 15_000 },
  );
}

describe("the console in development mode", () => {
  let herald: Herald;
  let service: HeraldClient;
  let browser: Browser;

  before(async () => {
    herald = await startHerald();
    const serviceToken = await herald.token("console-test-notifier", ["service"]);
    service = createClient({ url: herald.url, getToken: () => serviceToken, transport: "grpc-web" });
    browser = await openBrowser();
  });

  after(async () => {
    await browser?.close();
    service?.close();
    await herald?.stop();
  });

  const notify = (user: string, title: string, extra: Record<string, unknown> = {}) =>
    service.notifications.create({ userIds: [user], type: NotificationType.SYSTEM, title, ...extra });

  test("the edge serves the console with content types and caching that fit each file", async () => {
    const index = await fetch(`${herald.url}/`);
    assert.equal(index.status, 200);
    assert.equal(index.headers.get("content-type"), "text/html; charset=utf-8");
    assert.equal(index.headers.get("cache-control"), "no-cache");
    const html = await index.text();
    const script = html.match(/src="(\/assets\/[^"]+\.js)"/)?.[1];
    assert.ok(script, "index.html names its script");
    const asset = await fetch(`${herald.url}${script}`);
    assert.equal(asset.status, 200);
    assert.equal(asset.headers.get("content-type"), "text/javascript; charset=utf-8");
    assert.match(asset.headers.get("cache-control") ?? "", /immutable/);
    assert.equal((await fetch(`${herald.url}/assets/missing.js`)).status, 404);
  });

  test("a dev user's bell counts notifications live and mark all read brings it to zero", async () => {
    const { page } = browser;
    await signInAsDevUser(page, herald.url, "alice");
    await badgeShows(page, 0);

    await notify("alice", "Deploy 42 finished", { content: "Production is on 1.8.0." });
    await badgeShows(page, 1);
    await notify("alice", "Bob mentioned you in #ops", {
      type: NotificationType.USER_MENTIONED,
      sender: { id: "bob", displayName: "Bob" },
      messagePreview: "@alice can you look at the failing build before the release?",
    });
    await notify("alice", "Missed call from Carol", { type: NotificationType.MISSED_CALL, sender: { id: "carol", displayName: "Carol" } });
    await notify("alice", "Weekly report is ready", { priority: NotificationPriority.LOW });
    await badgeShows(page, 4);
    assert.equal(await badge(page).textContent(), "4");

    // Opening the bell shows them, newest first, and marks them seen (not read).
    await page.getByTestId("bell").click();
    const items = page.getByTestId("notification");
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="notification"]').length === 4);
    assert.equal(await items.first().locator(".bell-item-title").textContent(), "Unread: Weekly report is ready");
    await page.waitForFunction(() => !document.querySelector('[data-testid="bell"]')?.classList.contains("has-unseen"));
    await badgeShows(page, 4);
    await screenshot(page, "console-bell.png", "docs/console-bell.png");

    // One read, one archived, one deleted: each is pushed back and the badge follows.
    await page.getByRole("button", { name: "Mark “Weekly report is ready” read" }).click();
    await badgeShows(page, 3);
    await page.getByRole("button", { name: "Archive “Missed call from Carol”" }).click();
    await badgeShows(page, 2);
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="notification"]').length === 3);
    await page.getByRole("button", { name: "Delete “Deploy 42 finished”" }).click();
    await badgeShows(page, 1);
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="notification"]').length === 2);

    await notify("alice", "Release notes published");
    await badgeShows(page, 2);
    await page.getByTestId("mark-all-read").click();
    await badgeShows(page, 0);
    assert.equal(await page.getByRole("button", { name: "Notifications, none unread" }).count(), 1);
    await screenshot(page, "console-bell-all-read.png");

    // The server agrees with the page.
    const userClient = createClient({ url: herald.url, getToken: () => herald.token("alice"), transport: "grpc-web" });
    try {
      const { counts } = await userClient.notifications.counts({});
      assert.equal(counts?.unread, 0);
      assert.equal(counts?.total, 3);
    } finally {
      userClient.close();
    }
  });

  test("the bell works from the keyboard: Enter opens it, Escape closes it and returns focus", async () => {
    const { page } = browser;
    if ((await page.getByTestId("bell").getAttribute("aria-expanded")) === "true") await page.keyboard.press("Escape");
    await page.getByTestId("bell").focus();
    await page.keyboard.press("Enter");
    assert.equal(await page.getByTestId("bell").getAttribute("aria-expanded"), "true");
    assert.equal(await page.getByTestId("bell-dropdown").isVisible(), true);
    await page.keyboard.press("Escape");
    assert.equal(await page.getByTestId("bell").getAttribute("aria-expanded"), "false");
    assert.equal(await page.getByTestId("bell-dropdown").isVisible(), false);
    assert.equal(await page.evaluate(() => document.activeElement?.getAttribute("data-testid")), "bell");
  });

  test("every text on the page meets WCAG AA contrast in the light and dark schemes, dropdown open", async () => {
    const { page } = browser;
    await notify("alice", "One unread, so the dropdown holds both kinds");
    await badgeShows(page, 1);
    await page.getByTestId("bell").click();
    await page.getByTestId("bell-dropdown").waitFor();
    for (const colorScheme of ["light", "dark"] as const) {
      await page.emulateMedia({ colorScheme });
      const { checked, failures } = await page.evaluate(lowContrastTexts);
      assert.ok(checked > 20, `only ${checked} texts were checked`);
      assert.deepEqual(failures, [], colorScheme);
    }
    await page.emulateMedia({ colorScheme: "light" });
    await page.keyboard.press("Escape");
  });

  test("on a phone-sized screen the dropdown fits the width", async () => {
    const phone = await openBrowser({ width: 390, height: 844 });
    try {
      await signInAsDevUser(phone.page, herald.url, "frank");
      await notify("frank", "A notification with a rather long title that has to wrap on a small screen");
      await badgeShows(phone.page, 1);
      await phone.page.getByTestId("bell").click();
      const box = await phone.page.getByTestId("bell-dropdown").boundingBox();
      assert.ok(box && box.x >= 0 && box.x + box.width <= 390, `the dropdown spans ${JSON.stringify(box)}`);
      const scrollWidth = await phone.page.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(scrollWidth <= 390, `the page scrolls sideways (${scrollWidth} px)`);
      await screenshot(phone.page, "console-bell-phone.png");
    } finally {
      await phone.close();
    }
  });

  test("a pasted token signs in as its user", async () => {
    const { page } = browser;
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByLabel("Token (JWT)").fill(await herald.token("dave"));
    await page.getByRole("button", { name: "Sign in" }).last().click();
    await page.getByTestId("signed-in-as").filter({ hasText: "dave" }).waitFor();
    await notify("dave", "Welcome, Dave");
    await badgeShows(page, 1);
  });
});

describe("the console outside development mode", () => {
  const secret = "console-test-secret-that-is-long-enough-0123456789";
  let herald: Herald;

  before(async () => {
    herald = await startHerald({ hs256Secret: secret });
  });
  after(async () => {
    await herald?.stop();
  });

  test("the server refuses to mint development tokens, with the reason", async () => {
    const status = await fetch(`${herald.url}/dev/token`);
    assert.deepEqual(await status.json(), {
      available: false,
      reason: "development sign-in is off: this server verifies tokens with configured keys (auth.hs256_secret or auth.public_keys), so paste a token issued for it",
    });
    const minted = await fetch(`${herald.url}/dev/token`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ sub: "mallory", roles: ["admin"] }) });
    assert.equal(minted.status, 403);
    assert.match(((await minted.json()) as { error: string }).error, /development sign-in is off/);
  });

  test("the sign-in page offers only the token and says why", async () => {
    const browser = await openBrowser();
    try {
      await browser.page.goto(herald.url);
      await browser.page.getByTestId("dev-unavailable").waitFor();
      assert.match((await browser.page.getByTestId("dev-unavailable").textContent()) ?? "", /Not available: development sign-in is off/);
      await browser.page.getByLabel("Token (JWT)").fill(await herald.token("erin"));
      await browser.page.getByRole("button", { name: "Sign in" }).click();
      await browser.page.getByTestId("connection").filter({ hasText: "Connected" }).waitFor();
    } finally {
      await browser.close();
    }
  });
});
