// The order tracker in a real browser against a real `herald serve`: `herald demo shop` drives
// an order from placed to delivered while the page, signed in as the shop's admin, shows the
// status timeline and the courier moving on the page's own SVG map.

import assert from "node:assert/strict";
import { BusinessStatus, CourierStatus, createClient } from "@herald/client";
import { after, before, describe, test } from "node:test";
import { openBrowser, screenshot, type Browser } from "./support/browser.js";
import { signInAsDev } from "./support/console.js";
import { lowContrastTexts } from "./support/contrast.js";
import { runDemo } from "./support/demo.js";
import { startHerald, type Herald } from "./support/herald.js";

const LONG = { timeout: 90_000 };
const LIFECYCLE = ["PLACED", "ACCEPTED", "PREPARING", "READY", "OUT_FOR_DELIVERY", "DELIVERED"];

describe("the order tracker", () => {
  let herald: Herald;
  let browser: Browser;

  before(async () => {
    herald = await startHerald();
    browser = await openBrowser({ width: 1200, height: 1000 });
  });

  after(async () => {
    await browser?.close();
    await herald?.stop();
  });

  test("an order moves through its states on the timeline and the courier marker moves on the map", async () => {
    const { page } = browser;
    await signInAsDev(page, herald.url, "ada", ["admin"]);
    await page.getByTestId("order-list").filter({ hasText: "No orders yet." }).waitFor();

    // Record, in the page, every status the order's pill shows and every marker position.
    await page.evaluate(() => {
      const seen = { statuses: [] as string[], positions: [] as string[] };
      (window as unknown as { __seen: typeof seen }).__seen = seen;
      const look = () => {
        const status = document.querySelector<HTMLElement>('[data-testid="order-state"]')?.dataset["status"];
        if (status && seen.statuses[seen.statuses.length - 1] !== status) seen.statuses.push(status);
        const marker = document.querySelector('[data-testid="courier-marker"]');
        const at = marker?.getAttribute("cx") ? `${marker.getAttribute("cx")},${marker.getAttribute("cy")}` : undefined;
        if (at && seen.positions[seen.positions.length - 1] !== at) seen.positions.push(at);
      };
      new MutationObserver(look).observe(document.body, { subtree: true, childList: true, attributes: true, characterData: true });
    });

    const demo = runDemo(herald, "shop", ["--orders", "1", "--route-fixes", "8", "--fix-interval", "1s", "--pace", "300ms"]);
    // The admin's list is live on role:admin: the placed order appears and is followed.
    await page.locator('[data-testid="order-row"][data-id="1"]').waitFor(LONG);
    await page.getByTestId("order-title").filter({ hasText: "Order 1" }).waitFor(LONG);

    // Out for delivery: the courier's position arrives and moves.
    await page.waitForFunction(() => document.querySelector<HTMLElement>('[data-testid="order-state"]')?.dataset["status"] === "OUT_FOR_DELIVERY", undefined, LONG);
    await page.waitForFunction(() => (window as unknown as { __seen: { positions: string[] } }).__seen.positions.length >= 3, undefined, LONG);
    assert.match((await page.getByTestId("courier-freshness").textContent()) ?? "", /^Live · updated \d+ s ago$/);
    assert.match((await page.getByTestId("order-map").getAttribute("aria-label")) ?? "", /^Map: courier kim at 48\.\d{5}, 2\.\d{5}$/);
    await page.getByTestId("panel-orders").scrollIntoViewIfNeeded();
    await screenshot(page, "console-orders.png", "docs/console-orders.png");

    await page.waitForFunction(() => document.querySelector<HTMLElement>('[data-testid="order-state"]')?.dataset["status"] === "DELIVERED", undefined, LONG);
    await demo.done;

    // The pill only ever moved forward along the lifecycle, ending delivered.
    const seen = await page.evaluate(() => (window as unknown as { __seen: { statuses: string[]; positions: string[] } }).__seen);
    const order = seen.statuses.filter((s) => s !== "UNSPECIFIED").map((s) => LIFECYCLE.indexOf(s));
    assert.ok(order.every((n, i) => n >= 0 && (i === 0 || n > order[i - 1]!)), `statuses in order: ${seen.statuses.join(" → ")}`);
    assert.equal(seen.statuses[seen.statuses.length - 1], "DELIVERED");
    assert.ok(new Set(seen.positions).size >= 3, `the marker moved: ${seen.positions.join(" ")}`);

    // The timeline shows every step with its time and who made it.
    const steps = await page.evaluate(() =>
      Array.from(document.querySelectorAll<HTMLElement>('[data-testid="order-timeline"] li')).map((li) => ({
        status: li.dataset["status"],
        time: li.querySelector("time")?.getAttribute("datetime") ?? "",
        text: li.textContent ?? "",
      })),
    );
    assert.deepEqual(
      steps.map((s) => s.status),
      LIFECYCLE,
    );
    assert.ok(steps.every((s) => s.time !== ""), `every step has a time: ${JSON.stringify(steps)}`);
    const times = steps.map((s) => Date.parse(s.time));
    assert.ok(times.every((t, i) => i === 0 || t >= times[i - 1]!), "the times move forward");
    assert.match(steps[0]!.text, /carol/);
    assert.match(steps[4]!.text, /kim \(courier\)/);
    assert.match(steps[5]!.text, /kim \(courier\)/);
    assert.equal(await page.locator('[data-testid="order-timeline"] [aria-current="step"]').getAttribute("data-status"), "DELIVERED");
    const notes = (await page.locator(".order-notes").textContent()) ?? "";
    assert.match(notes, /Courier kim assigned/);
    assert.match(notes, /Payment of .+ received: fully paid/);
    assert.equal(await page.locator('[data-testid="order-row"][data-id="1"]').filter({ hasText: "Delivered" }).count(), 1);
    assert.equal(await page.locator("svg image, img[src^='http']").count(), 0, "no tiles or external images");

    for (const colorScheme of ["light", "dark"] as const) {
      await page.emulateMedia({ colorScheme });
      const { checked, failures } = await page.evaluate(lowContrastTexts);
      assert.ok(checked > 30, `only ${checked} texts were checked`);
      assert.deepEqual(failures, [], colorScheme);
    }
    await page.emulateMedia({ colorScheme: "light" });
  });

  test("the customer sees her own order, whole; a courier sees his delivery without the map", async () => {
    const customer = await openBrowser();
    try {
      await signInAsDev(customer.page, herald.url, "carol");
      await customer.page.getByTestId("order-state").and(customer.page.locator('[data-status="DELIVERED"]')).waitFor(LONG);
      assert.equal(await customer.page.getByTestId("order-row").count(), 1);
      await customer.page.waitForFunction(() => document.querySelectorAll('[data-testid="order-timeline"] li time').length === 6, undefined, LONG);
      assert.equal(await customer.page.getByTestId("alerts").textContent(), "");
    } finally {
      await customer.close();
    }
    const courier = await openBrowser();
    try {
      await signInAsDev(courier.page, herald.url, "kim", ["courier"]);
      await courier.page.getByTestId("order-state").and(courier.page.locator('[data-status="DELIVERED"]')).waitFor(LONG);
      assert.equal(await courier.page.getByTestId("order-map").count(), 0);
      assert.equal(await courier.page.getByTestId("alerts").textContent(), "", "no refused subscription");
    } finally {
      await courier.close();
    }
  });

  test("a page opened later is greeted by the courier's last position and says how long ago it was seen", async () => {
    const later = await openBrowser({ width: 390, height: 844 });
    try {
      // The page's clock runs on its own from here: forty seconds on, the fix is stale.
      await later.page.clock.install();
      await signInAsDev(later.page, herald.url, "ada", ["admin"]);
      await later.page.getByTestId("order-title").filter({ hasText: "Order 1" }).waitFor(LONG);
      await later.page.waitForFunction(() => document.querySelector('[data-testid="courier-marker"]')?.getAttribute("cx"), undefined, LONG);
      await later.page.clock.fastForward(40_000);
      await later.page.getByTestId("courier-freshness").filter({ hasText: /^Last seen \d+ s ago$/ }).waitFor(LONG);
      await later.page.getByTestId("announce").filter({ hasText: /^The courier was last seen \d+ s ago$/ }).waitFor(LONG);
      const scrollWidth = await later.page.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(scrollWidth <= 390, `the page scrolls sideways (${scrollWidth} px)`);
      await later.page.getByTestId("order-map").scrollIntoViewIfNeeded();
      await screenshot(later.page, "console-orders-phone.png");
    } finally {
      await later.close();
    }
  });

  test("a courier's list is live on user:<courier>: an order assigned to him appears, one reassigned away leaves", async () => {
    const adminToken = await herald.token("dispatch", ["admin"]);
    const admin = createClient({ url: herald.url, getToken: () => adminToken, transport: "grpc-web" });
    const customerToken = await herald.token("dana");
    const customer = createClient({ url: herald.url, getToken: () => customerToken, transport: "grpc-web" });
    const courier = await openBrowser();
    try {
      await admin.orders.setBusinessStatus({ status: BusinessStatus.OPEN, message: "" });
      for (const name of ["lee", "kim"]) {
        const token = await herald.token(name, ["courier"]);
        const c = createClient({ url: herald.url, getToken: () => token, transport: "grpc-web" });
        await c.orders.setCourierStatus({ status: CourierStatus.AVAILABLE });
        c.close();
      }
      // every Orders/List the page sends over its socket
      let lists = 0;
      const sent: string[] = [];
      courier.page.on("websocket", (socket) => {
        socket.on("framesent", (frame) => {
          if (!String(frame.payload).includes('"token"')) sent.push(`> ${String(frame.payload).slice(0, 160)}`);
          if (String(frame.payload).includes("herald.v1.Orders/List")) lists += 1;
        });
        socket.on("framereceived", (frame) => sent.push(`< ${String(frame.payload).slice(0, 160)}`));
      });
      await signInAsDev(courier.page, herald.url, "lee", ["courier"]);
      await courier.page.getByTestId("order-list").filter({ hasText: "No orders yet." }).waitFor(LONG);
      const placed = await customer.orders.place({
        items: [{ sku: "tea", name: "Tea", quantity: 2, unitPriceMinor: 350n }],
        currency: "EUR",
        deliveryAddress: "1 Rue de Rivoli, Paris",
        clientTotalMinor: 700n,
      });
      const id = placed.order!.order!.id;
      // the list is not read again for a courier: the row comes from the feed
      await admin.orders.assignCourier({ orderId: id, courierId: "lee" });
      await courier.page.locator(`[data-testid="order-row"][data-id="${id}"]`).waitFor(LONG);
      await admin.orders.assignCourier({ orderId: id, courierId: "kim" });
      await courier.page.getByTestId("order-list").filter({ hasText: "No orders yet." }).waitFor(LONG);
      // two refresh periods (4 s each) later: the first read and the one for the new
      // assignment (its event carries no order), no periodic reads
      await new Promise((resolve) => setTimeout(resolve, 9_000));
      assert.ok(lists >= 1 && lists <= 2, `the courier's page read the list ${lists} times:\n${sent.join("\n")}`);
      assert.equal(await courier.page.getByTestId("alerts").textContent(), "", "no refused subscription");
    } finally {
      await courier.close();
      admin.close();
      customer.close();
    }
  });
});
