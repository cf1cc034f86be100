// The chat panel in a real browser against a real `herald serve`: two users in one
// conversation see each other type, their messages, reactions, read receipts and presence;
// and the page rides out a restart of the server with no message missing or doubled, and no
// reload.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { ChatMemberChange, createClient, HeraldError, type ChatMessage, type Event, type HeraldClient } from "@herald/client";
import { applyConversationEvent, receiptsByMessage, retryable, type ConversationState } from "../src/chat/conversation.js";
import { applyGroupEvent, type GroupState } from "../src/chat/directory.js";
import type { Page } from "playwright-core";
import { openBrowser, screenshot, type Browser } from "./support/browser.js";
import { lowContrastTexts } from "./support/contrast.js";
import { startHerald, type Herald } from "./support/herald.js";

const LONG = { timeout: 20_000 };

async function signIn(page: Page, url: string, user: string): Promise<void> {
  await page.goto(url);
  const form = page.getByTestId("dev-sign-in");
  await form.getByLabel("User id").fill(user);
  await form.getByRole("button", { name: "Sign in" }).click();
  await page.getByTestId("signed-in-as").filter({ hasText: user }).waitFor();
  await page.getByTestId("connection").filter({ hasText: "Connected" }).waitFor();
}

/** The texts of the conversation's messages on the page, oldest first. */
const texts = (page: Page) => page.getByTestId("message-text").allTextContents();

async function waitForTexts(page: Page, expected: string[]): Promise<void> {
  await page.waitForFunction(
    (expected) => {
      const shown = Array.from(document.querySelectorAll('[data-testid="message-text"]')).map((e) => e.textContent);
      return shown.length === expected.length && shown.every((t, i) => t === expected[i]) && document.querySelectorAll('[data-testid="pending-message"]').length === 0;
    },
    expected,
    LONG,
  );
}

async function connection(page: Page, label: string): Promise<void> {
  await page.getByTestId("connection").filter({ hasText: label }).waitFor(LONG);
}

describe("the chat panel", () => {
  let herald: Herald;
  let alice: Browser;
  let bob: Browser;
  let cleo: HeraldClient;
  let conversationId: bigint;
  let randomId: bigint;
  const sent: string[] = [];

  before(async () => {
    herald = await startHerald();
    // Alice's group with Bob and Cleo, and its conversation, made through the SDK as Alice.
    const aliceToken = await herald.token("alice");
    const setup = createClient({ url: herald.url, getToken: () => aliceToken, transport: "grpc-web" });
    const { group } = await setup.chat.createGroup({ name: "Ops", memberIds: ["bob", "cleo"] });
    const { conversation } = await setup.chat.createConversation({ with: { case: "groupId", value: group!.id }, title: "Release" });
    conversationId = conversation!.id;
    const random = await setup.chat.createConversation({ with: { case: "groupId", value: group!.id }, title: "Random" });
    randomId = random.conversation!.id;
    setup.close();
    const cleoToken = await herald.token("cleo");
    cleo = createClient({ url: herald.url, getToken: () => cleoToken, transport: "grpc-web" });
    [alice, bob] = await Promise.all([openBrowser({ width: 1100, height: 900 }), openBrowser({ width: 1100, height: 900 })]);
    await Promise.all([signIn(alice.page, herald.url, "alice"), signIn(bob.page, herald.url, "bob")]);
  });

  after(async () => {
    await alice?.close();
    await bob?.close();
    cleo?.close();
    await herald?.stop();
  });

  test("a message typed in one page appears in the other: typing first, then the message, then a read receipt", async () => {
    for (const { page } of [alice, bob]) {
      await page.getByRole("button", { name: /^Ops · Release/ }).click();
      await page.getByTestId("chat-title").filter({ hasText: "Ops · Release" }).waitFor(LONG);
      await page.getByText("No messages yet: say hello.").waitFor(LONG);
    }
    // Each sees the other online.
    await bob.page.locator('[data-testid="person"][data-user="alice"][data-online="true"]').waitFor(LONG);
    await alice.page.locator('[data-testid="person"][data-user="bob"][data-online="true"]').waitFor(LONG);

    const composer = alice.page.getByLabel("Message to Ops · Release");
    await composer.click();
    await composer.pressSequentially("Hello Bob, the release is at 5", { delay: 20 });
    // Bob sees Alice typing before there is any message.
    await bob.page.getByTestId("typing").filter({ hasText: "alice is typing…" }).waitFor(LONG);
    assert.deepEqual(await texts(bob.page), []);

    await composer.press("Enter");
    sent.push("Hello Bob, the release is at 5");
    await waitForTexts(bob.page, sent);
    await bob.page.waitForFunction(() => document.querySelector('[data-testid="typing"]')?.textContent === "", undefined, LONG);
    // Screen readers hear the new message once, through the page's live region.
    await bob.page.getByTestId("announce").filter({ hasText: "alice: Hello Bob, the release is at 5" }).waitFor({ state: "attached", ...LONG });
    // Bob's page had the message on screen: it marked it read, and Alice sees the receipt.
    await alice.page.getByTestId("receipt").filter({ hasText: "Seen by bob" }).waitFor(LONG);
    await waitForTexts(alice.page, sent);

    // Bob answers and reacts; Alice sees both.
    const bobComposer = bob.page.getByLabel("Message to Ops · Release");
    await bobComposer.fill("Thanks, I will be there");
    await bobComposer.press("Enter");
    sent.push("Thanks, I will be there");
    await bob.page.getByTestId("message").first().getByRole("button", { name: "React with 👍" }).click();
    await waitForTexts(alice.page, sent);
    await alice.page.locator('[data-testid="message"]').first().locator('[data-testid="reaction"][data-emoji="👍"][data-count="1"]').waitFor(LONG);
    await bob.page.locator('[data-testid="message"]').first().locator('[data-testid="reaction"][data-emoji="👍"][aria-pressed="true"]').waitFor(LONG);
    await bob.page.getByTestId("receipt").filter({ hasText: "Seen by alice" }).waitFor(LONG);
    assert.doesNotMatch((await alice.page.getByTestId("panel-chat").textContent()) ?? "", /[{}"]/, "no raw JSON");
    await alice.page.getByTestId("panel-chat").scrollIntoViewIfNeeded();
    await screenshot(alice.page, "console-chat.png", "docs/console-chat.png");

    // The server agrees: two messages, the 👍 on the first.
    const { messages } = await cleo.chat.listMessages({ conversationId });
    assert.deepEqual(messages.map((m) => m.text).reverse(), sent);
    assert.deepEqual(messages[1]!.reactions.map((r) => [r.emoji, r.count]), [["👍", 1]]);
  });

  test("another conversation's list entry follows it live: preview and unread count, cleared when opened", async () => {
    await cleo.chat.sendMessage({ conversationId: randomId, text: "Anyone for lunch?" });
    await cleo.chat.sendMessage({ conversationId: randomId, text: "The usual place" });
    const entry = alice.page.locator(`[data-testid="conversation"][data-id="${randomId}"]`);
    await alice.page.locator(`[data-testid="conversation"][data-id="${randomId}"][data-unread="2"]`).waitFor(LONG);
    assert.match((await entry.textContent()) ?? "", /cleo: The usual place/);
    // The list puts the most recently active first.
    assert.equal(await alice.page.getByTestId("conversation").first().getAttribute("data-id"), String(randomId));
    await entry.click();
    await waitForTexts(alice.page, ["Anyone for lunch?", "The usual place"]);
    await alice.page.locator(`[data-testid="conversation"][data-id="${randomId}"][data-unread="0"]`).waitFor(LONG);
    // Bob's page, still on Release, counts them unread until he opens Random.
    await bob.page.locator(`[data-testid="conversation"][data-id="${randomId}"][data-unread="2"]`).waitFor(LONG);
    await alice.page.locator(`[data-testid="conversation"][data-id="${conversationId}"]`).click();
    await waitForTexts(alice.page, sent);
  });

  test("the chat meets WCAG AA contrast in both schemes and fits a phone's width", async () => {
    for (const colorScheme of ["light", "dark"] as const) {
      await alice.page.emulateMedia({ colorScheme });
      const { checked, failures } = await alice.page.evaluate(lowContrastTexts);
      assert.ok(checked > 20, `only ${checked} texts were checked`);
      assert.deepEqual(failures, [], colorScheme);
    }
    await alice.page.emulateMedia({ colorScheme: "light" });

    const phone = await openBrowser({ width: 390, height: 844 });
    try {
      await signIn(phone.page, herald.url, "cleo");
      await phone.page.getByRole("button", { name: /^Ops · Release/ }).click();
      await waitForTexts(phone.page, sent);
      const scrollWidth = await phone.page.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(scrollWidth <= 390, `the page scrolls sideways (${scrollWidth} px)`);
      const composer = phone.page.getByLabel("Message to Ops · Release");
      await composer.fill("On my phone: see you at 5");
      await composer.press("Enter");
      sent.push("On my phone: see you at 5");
      await waitForTexts(alice.page, sent);
      await alice.page.locator('[data-testid="person"][data-user="cleo"][data-online="true"]').waitFor(LONG);
      await screenshot(phone.page, "console-chat-phone.png");
    } finally {
      await phone.close();
    }
    // Cleo closed the page: she goes offline for the others.
    await alice.page.locator('[data-testid="person"][data-user="cleo"][data-online="false"]').waitFor(LONG);
  });

  test("the page survives a restart of herald serve: reconnecting, then every message exactly once, no reload", async () => {
    for (const { page } of [alice, bob]) await page.evaluate(() => ((window as unknown as { stayed: boolean }).stayed = true));

    await herald.stopServer();
    await Promise.all([connection(alice.page, "Reconnecting"), connection(bob.page, "Reconnecting")]);
    await screenshot(alice.page, "console-chat-reconnecting.png");

    // Sent while the server is away: it waits in the page and goes out once it is back.
    const composer = alice.page.getByLabel("Message to Ops · Release");
    await composer.fill("Sent while the server was away");
    await composer.press("Enter");
    await alice.page.getByTestId("pending-message").filter({ hasText: "sending…" }).waitFor(LONG);

    await herald.startServer();
    // Cleo writes at once, likely before the pages are back: they get it by resuming.
    await cleo.chat.sendMessage({ conversationId, text: "Cleo, right after the restart", clientMessageId: "cleo-1" });
    sent.push("Sent while the server was away", "Cleo, right after the restart");
    // The two messages may be committed in either order; the pages show the server's order.
    await Promise.all([connection(alice.page, "Resumed"), connection(bob.page, "Resumed")]);
    const order = async () => (await cleo.chat.listMessages({ conversationId })).messages.map((m) => m.text).reverse();
    await alice.page.waitForFunction(() => document.querySelectorAll('[data-testid="pending-message"]').length === 0, undefined, LONG);
    let expected = await order();
    assert.deepEqual([...expected].sort(), [...sent].sort());
    await Promise.all([waitForTexts(alice.page, expected), waitForTexts(bob.page, expected)]);

    const bobComposer = bob.page.getByLabel("Message to Ops · Release");
    await bobComposer.fill("And after it");
    await bobComposer.press("Enter");
    expected = [...expected, "And after it"];
    await Promise.all([waitForTexts(alice.page, expected), waitForTexts(bob.page, expected)]);
    assert.deepEqual(await order(), expected);

    for (const { page } of [alice, bob]) {
      assert.equal(await page.evaluate(() => (window as unknown as { stayed?: boolean }).stayed), true, "the page was not reloaded");
      assert.notEqual(await page.getByTestId("connection").getAttribute("data-state"), "reloaded");
      assert.deepEqual(await texts(page), expected, "no message missing or doubled");
    }
    await screenshot(alice.page, "console-chat-after-restart.png");
  });

  test("after a kill -9 of herald serve too: the pages resume and nothing acknowledged is lost or doubled", async () => {
    const before = await texts(alice.page);
    await herald.stopServer("SIGKILL");
    await Promise.all([connection(alice.page, "Reconnecting"), connection(bob.page, "Reconnecting")]);
    const composer = bob.page.getByLabel("Message to Ops · Release");
    await composer.fill("Written during the crash");
    await composer.press("Enter");
    await bob.page.getByTestId("pending-message").waitFor(LONG);
    await herald.startServer();
    await Promise.all([connection(alice.page, "Resumed"), connection(bob.page, "Resumed")]);
    const expected = [...before, "Written during the crash"];
    await Promise.all([waitForTexts(alice.page, expected), waitForTexts(bob.page, expected)]);
    const { messages } = await cleo.chat.listMessages({ conversationId });
    assert.deepEqual(messages.map((m) => m.text).reverse(), expected);
    for (const { page } of [alice, bob]) {
      assert.equal(await page.evaluate(() => (window as unknown as { stayed?: boolean }).stayed), true, "the page was not reloaded");
    }
  });

  test("a member removed from the group loses its conversations on the page, with no error shown", async () => {
    const aliceToken = await herald.token("alice");
    const admin = createClient({ url: herald.url, getToken: () => aliceToken, transport: "grpc-web" });
    try {
      const { groups } = await admin.chat.listMyGroups({});
      await admin.chat.removeMember({ groupId: groups[0]!.id, userId: "bob" });
    } finally {
      admin.close();
    }
    await bob.page.getByText("No conversations yet. Start one below.").waitFor(LONG);
    await bob.page.getByTestId("chat-title").filter({ hasText: "No conversation open" }).waitFor(LONG);
    assert.equal(await bob.page.getByTestId("alerts").textContent(), "");
    assert.equal(await bob.page.getByLabel("Message", { exact: true }).isDisabled(), true);
    // Alice's page goes on, without Bob among the members.
    await alice.page.locator('[data-testid="person"][data-user="bob"]').waitFor({ state: "detached", ...LONG });
  });

  test("a direct conversation someone else starts appears at once (chat.added on user:<me>, followed beside the inbox)", async () => {
    // Bob is in no group now: nothing but his own topic can announce it.
    const { conversation } = await cleo.chat.createConversation({ with: { case: "directUserId", value: "bob" } });
    await bob.page.locator(`[data-testid="conversation"][data-id="${conversation!.id}"]`).filter({ hasText: "cleo" }).waitFor(LONG);
    assert.equal(await bob.page.getByTestId("alerts").textContent(), "");
  });
});

describe("how chat events change the page's state", () => {
  // Plain objects of the generated shapes: the rules read fields only.
  const msg = (id: number, author: string, extra: Record<string, unknown> = {}) =>
    ({ id: BigInt(id), seq: BigInt(id), authorId: author, text: `m${id}`, deleted: false, reactions: [], ...extra }) as unknown as ChatMessage;
  const event = (value: Record<string, unknown>) => ({ body: value }) as unknown as Event;
  const changed = (message: ChatMessage) => event({ case: "chatMessageChanged", value: { message } });
  const apply = applyConversationEvent("alice");
  const start: ConversationState = { messages: [msg(1, "bob")], receipts: {}, more: false };

  test("messages land in seq order once; an edit keeps the reactions, a tombstone keeps its place and loses them", () => {
    let state = apply(start, changed(msg(3, "bob")));
    state = apply(state, changed(msg(2, "alice")));
    state = apply(state, changed(msg(3, "bob")));
    assert.deepEqual(state.messages.map((m) => m.seq), [1n, 2n, 3n]);
    state = apply(state, event({ case: "chatReactionsChanged", value: { messageId: 1n, userId: "alice", emoji: "👍", added: true, reactions: [{ emoji: "👍", count: 1, reacted: false }] } }));
    state = apply(state, changed(msg(1, "bob", { text: "edited", version: 2 })));
    assert.deepEqual(state.messages[0]!.reactions.map((r) => [r.emoji, r.count, r.reacted]), [["👍", 1, true]]);
    assert.equal(state.messages[0]!.text, "edited");
    state = apply(state, changed(msg(1, "bob", { text: "", deleted: true })));
    assert.equal(state.messages[0]!.deleted, true);
    assert.deepEqual(state.messages[0]!.reactions, []);
  });

  test("a reaction is the caller's only when the toggle was theirs", () => {
    let state = apply(start, event({ case: "chatReactionsChanged", value: { messageId: 1n, userId: "bob", emoji: "🎉", added: true, reactions: [{ emoji: "🎉", count: 1, reacted: false }] } }));
    assert.equal(state.messages[0]!.reactions[0]!.reacted, false);
    state = apply(state, event({ case: "chatReactionsChanged", value: { messageId: 1n, userId: "alice", emoji: "🎉", added: true, reactions: [{ emoji: "🎉", count: 2, reacted: false }] } }));
    assert.equal(state.messages[0]!.reactions[0]!.reacted, true);
    state = apply(state, event({ case: "chatReactionsChanged", value: { messageId: 1n, userId: "bob", emoji: "🎉", added: false, reactions: [{ emoji: "🎉", count: 1, reacted: false }] } }));
    assert.equal(state.messages[0]!.reactions[0]!.reacted, true);
  });

  test("read receipts only move forward, and show under the newest own message each reader reached", () => {
    const messages = [msg(1, "alice"), msg(2, "bob"), msg(3, "alice"), msg(4, "alice")];
    let state: ConversationState = { messages, receipts: {}, more: false };
    state = apply(state, event({ case: "chatReadMoved", value: { userId: "bob", seq: 3n } }));
    state = apply(state, event({ case: "chatReadMoved", value: { userId: "bob", seq: 2n } }));
    state = apply(state, event({ case: "chatReadMoved", value: { userId: "cleo", seq: 4n } }));
    state = apply(state, event({ case: "chatReadMoved", value: { userId: "alice", seq: 4n } }));
    assert.deepEqual(state.receipts, { bob: 3n, cleo: 4n, alice: 4n });
    assert.deepEqual([...receiptsByMessage(state.messages, state.receipts, "alice")], [
      [3n, ["bob"]],
      [4n, ["cleo"]],
    ]);
  });

  test("members join, change role and leave; refusals are not retried, the rest is", () => {
    const group = { group: { id: 1n }, members: [{ userId: "alice", role: 2 }] } as unknown as GroupState;
    const member = (change: ChatMemberChange, userId: string, role = 1) => event({ case: "chatMemberChanged", value: { change, member: { userId, role } } });
    let state = applyGroupEvent(group, member(ChatMemberChange.JOINED, "bob"));
    state = applyGroupEvent(state, member(ChatMemberChange.ROLE_CHANGED, "bob", 2));
    assert.deepEqual(state.members.map((m) => [m.userId, m.role]), [["alice", 2], ["bob", 2]]);
    state = applyGroupEvent(state, member(ChatMemberChange.REMOVED, "bob"));
    assert.deepEqual(state.members.map((m) => m.userId), ["alice"]);
    assert.equal(retryable(new HeraldError("unavailable", "down")), true);
    assert.equal(retryable(new TypeError("fetch failed")), true);
    assert.equal(retryable(new HeraldError("permission_denied", "not a member")), false);
  });
});
