// The review queue in a real browser against a real `herald serve`: two reviewers see the same
// queue live; when one decides, the request leaves the other's page and their badge drops.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { createClient, ReviewStatus, type Event, type HeraldClient, type Review } from "@herald/client";
import { applyReviewEvent, mayDecide, reviewerRoles, type QueueState } from "../src/reviews/store.js";
import type { Page } from "playwright-core";
import { openBrowser, screenshot, type Browser } from "./support/browser.js";
import { lowContrastTexts } from "./support/contrast.js";
import { startHerald, type Herald } from "./support/herald.js";

async function signIn(page: Page, url: string, user: string, roles: string[]): Promise<void> {
  await page.goto(url);
  const form = page.getByTestId("dev-sign-in");
  await form.getByLabel("User id").fill(user);
  await form.getByLabel("Other roles (comma-separated)").fill(roles.join(", "));
  await form.getByRole("button", { name: "Sign in" }).click();
  await page.getByTestId("signed-in-as").filter({ hasText: user }).waitFor();
  await page.getByTestId("connection").filter({ hasText: "Connected" }).waitFor();
}

/** Waits until the review badge shows `count` (hidden at 0). */
async function reviewBadge(page: Page, count: number): Promise<void> {
  await page.waitForFunction(
    (n) => {
      const el = document.querySelector<HTMLElement>('[data-testid="reviews-count"]');
      return el?.dataset["count"] === String(n) && el.hidden === (n === 0);
    },
    count,
    { timeout: 15_000 },
  );
}

async function requestsShown(page: Page, n: number): Promise<void> {
  await page.waitForFunction((n) => document.querySelectorAll('[data-testid="review"]').length === n, n, { timeout: 15_000 });
}

describe("the review queue", () => {
  let herald: Herald;
  let service: HeraldClient;
  let alice: Browser;
  let bob: Browser;

  before(async () => {
    herald = await startHerald();
    const token = await herald.token("signup-service", ["service"]);
    service = createClient({ url: herald.url, getToken: () => token, transport: "grpc-web" });
    [alice, bob] = await Promise.all([openBrowser(), openBrowser()]);
  });

  after(async () => {
    await alice?.close();
    await bob?.close();
    service?.close();
    await herald?.stop();
  });

  const submit = (name: string, extra: Record<string, unknown> = {}) =>
    service.reviews.submit({ applicant: { name, email: `${name.toLowerCase().replace(/\W+/g, ".")}@example.com`, phone: "+49 30 1234567" }, requestedRole: "artisan", ...extra });

  test("a reviewer approves in one page: the request leaves the other reviewer's page and the badge drops", async () => {
    await submit("Marie Curie", { details: { shop: "Radium Ceramics", city: "Paris", years: 12 } });
    await Promise.all([signIn(alice.page, herald.url, "alice", ["admin"]), signIn(bob.page, herald.url, "bob", ["admin"])]);
    await Promise.all([reviewBadge(alice.page, 1), reviewBadge(bob.page, 1)]);

    // Submitted while both watch: it appears on both pages.
    await submit("Ada Lovelace");
    await submit("Grace Hopper");
    await Promise.all([reviewBadge(alice.page, 3), reviewBadge(bob.page, 3), requestsShown(alice.page, 3), requestsShown(bob.page, 3)]);
    const details = await bob.page.getByTestId("review").first().locator(".review-details").textContent();
    assert.match(details ?? "", /ShopRadium Ceramics/);
    assert.doesNotMatch(await bob.page.getByTestId("panel-reviews").textContent() ?? "", /[{}"]/, "no raw JSON");
    await screenshot(bob.page, "console-reviews.png", "docs/console-reviews.png");

    // Alice approves; Bob's page loses the request and his badge drops.
    await alice.page.getByRole("button", { name: "Approve Ada Lovelace" }).click();
    await Promise.all([reviewBadge(bob.page, 2), requestsShown(bob.page, 2), reviewBadge(alice.page, 2)]);
    assert.equal(await bob.page.getByRole("button", { name: "Approve Ada Lovelace" }).count(), 0);

    // Bob rejects with a reason, from the keyboard; it leaves Alice's page.
    await bob.page.getByRole("button", { name: "Reject Grace Hopper" }).click();
    await bob.page.getByLabel("Reason (optional, the applicant sees it)").fill("The portfolio link is broken");
    await bob.page.keyboard.press("Tab");
    await bob.page.keyboard.press("Enter");
    await Promise.all([reviewBadge(alice.page, 1), requestsShown(alice.page, 1), reviewBadge(bob.page, 1)]);

    // A rejection without a reason is still a rejection.
    await alice.page.getByRole("button", { name: "Reject Marie Curie" }).click();
    await alice.page.getByRole("button", { name: "Confirm reject" }).click();
    await Promise.all([reviewBadge(alice.page, 0), reviewBadge(bob.page, 0), requestsShown(bob.page, 0)]);
    await bob.page.getByTestId("reviews-summary").filter({ hasText: "Nothing waiting for you." }).waitFor();

    // The server agrees: nothing pending, three decisions by the two reviewers.
    const adminToken = await herald.token("auditor", ["admin"]);
    const auditor = createClient({ url: herald.url, getToken: () => adminToken, transport: "grpc-web" });
    try {
      assert.equal((await auditor.reviews.countPending({})).pending, 0);
      const { decisions } = await auditor.reviews.listDecisions({});
      assert.deepEqual(decisions.map((d) => [d.reviewerId, d.reason]).sort(), [
        ["alice", ""],
        ["alice", "No reason given"],
        ["bob", "The portfolio link is broken"],
      ]);
    } finally {
      auditor.close();
    }
  });

  test("a reviewer's own request is shown but not counted, and cannot be decided by them", async () => {
    await submit("Alice Again", { applicant: { name: "Alice Again", email: "alice@example.com", userId: "alice" } });
    await Promise.all([reviewBadge(bob.page, 1), reviewBadge(alice.page, 0), requestsShown(alice.page, 1)]);
    assert.equal(await alice.page.getByRole("button", { name: "Approve Alice Again" }).count(), 0);
    await alice.page.getByText("Your own request: another reviewer decides it.").waitFor();
    await bob.page.getByRole("button", { name: "Approve Alice Again" }).click();
    await Promise.all([reviewBadge(bob.page, 0), requestsShown(alice.page, 0)]);
  });

  test("the queue works from the keyboard and meets WCAG AA contrast in both schemes, reject form open", async () => {
    await submit("Katherine Johnson", { details: { portfolio: "https://example.com/kj", references: ["NASA", "NACA"], verified: true } });
    await reviewBadge(bob.page, 1);
    const { page } = bob;
    // The header button takes the focus to the queue.
    await page.getByTestId("reviews").focus();
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => document.activeElement?.id === "panel-reviews-title");
    await page.getByRole("button", { name: "Reject Katherine Johnson" }).focus();
    await page.keyboard.press("Enter");
    const reason = page.getByLabel("Reason (optional, the applicant sees it)");
    await reason.waitFor();
    assert.equal(await page.evaluate(() => document.activeElement?.tagName), "TEXTAREA");
    assert.match((await page.getByTestId("review").locator(".review-details").textContent()) ?? "", /ReferencesNASA, NACA.*Verifiedyes/);
    for (const colorScheme of ["light", "dark"] as const) {
      await page.emulateMedia({ colorScheme });
      const { checked, failures } = await page.evaluate(lowContrastTexts);
      assert.ok(checked > 15, `only ${checked} texts were checked`);
      assert.deepEqual(failures, [], colorScheme);
    }
    await page.emulateMedia({ colorScheme: "light" });
    // Escape closes the form without rejecting.
    await page.keyboard.press("Escape");
    await page.getByRole("button", { name: "Approve Katherine Johnson" }).waitFor();
    assert.equal(await page.evaluate(() => document.activeElement?.getAttribute("aria-label")), "Reject Katherine Johnson", "the focus returns to Reject");
    await reviewBadge(bob.page, 1);
    await page.getByRole("button", { name: "Approve Katherine Johnson" }).click();
    await reviewBadge(bob.page, 0);
  });
});

describe("how review events change a queue", () => {
  // Plain objects of the generated shapes: the rules read fields only.
  const review = (id: string, extra: Record<string, unknown> = {}) => ({ id, status: ReviewStatus.PENDING, requiredApprovals: 1, decisions: [], applicant: { name: id, userId: "" }, ...extra }) as unknown as Review;
  const submitted = (r: Review, pending: number) => ({ type: "review.submitted", body: { case: "reviewSubmitted", value: { review: r, pending } } }) as unknown as Event;
  const decided = (r: Review, pending: number) => ({ type: "review.approved", body: { case: "reviewDecided", value: { review: r, pending } } }) as unknown as Event;
  const empty: QueueState = { role: "admin", reviews: [], pending: 0 };

  test("a submission joins the end of the queue once, with the server's count", () => {
    let state = applyReviewEvent(empty, submitted(review("a"), 1));
    state = applyReviewEvent(state, submitted(review("b"), 2));
    state = applyReviewEvent(state, submitted(review("a"), 2));
    assert.deepEqual(state.reviews.map((r) => r.id), ["a", "b"]);
    assert.equal(state.pending, 2);
  });

  test("an approval short of the required ones keeps it; the final decision takes it out", () => {
    let state: QueueState = { role: "admin", reviews: [review("a", { requiredApprovals: 2 }), review("b")], pending: 2 };
    state = applyReviewEvent(state, decided(review("a", { requiredApprovals: 2, decisions: [{ reviewerId: "bob", verdict: 1 }] }), 2));
    assert.equal(state.reviews[0]!.decisions.length, 1);
    assert.equal(mayDecide(state.reviews[0]!, "bob"), false);
    assert.equal(mayDecide(state.reviews[0]!, "alice"), true);
    state = applyReviewEvent(state, decided(review("a", { status: ReviewStatus.APPROVED }), 1));
    assert.deepEqual(state.reviews.map((r) => r.id), ["b"]);
    assert.equal(state.pending, 1);
  });

  test("nobody decides their own request, and services review nothing", () => {
    assert.equal(mayDecide(review("a", { applicant: { name: "A", userId: "alice" } }), "alice"), false);
    assert.deepEqual(reviewerRoles(["admin", "service", "admin", "Not A Role", "ops"]), ["admin", "ops"]);
  });
});
