// The console's shell: the header (title, connection indicator, the panels' header widgets,
// who is signed in), the sign-in view, and the grid of panels. Everything live comes through
// one SDK client; the panels are listed in PANELS.

import "./style.css";
import { createClient, HeraldError, type HeraldClient } from "@herald/client";
import { connectionIndicator } from "./connection.js";
import { h, replaceChildren } from "./dom.js";
import { deploymentsPanel } from "./deployments/panel.js";
import { notificationsPanel } from "./inbox/panel.js";
import { chatPanel } from "./chat/panel.js";
import { ordersPanel } from "./orders/panel.js";
import type { Panel, PanelContext, PanelFactory } from "./panels.js";
import { reviewsPanel } from "./reviews/panel.js";
import { devStatus, identityOf, loadSignIn, saveSignIn, tokenFor, type Identity, type SignIn } from "./session.js";

const PANELS: PanelFactory[] = [notificationsPanel, reviewsPanel, chatPanel, deploymentsPanel, ordersPanel];

/** Roles offered by the development sign-in (any other can be typed). */
const DEV_ROLES = ["admin", "reviewer", "courier"];

const app = document.getElementById("app")!;
const live = h("div", { class: "visually-hidden", role: "status", "aria-live": "polite", "data-testid": "announce" });
const alerts = h("div", { class: "alerts", role: "alert", "data-testid": "alerts" });

let signedIn: { herald: HeraldClient; panels: Panel[]; dispose(): void } | undefined;

function announce(message: string): void {
  live.textContent = message;
}

function report(what: string, error: unknown): void {
  const message = error instanceof HeraldError ? `${error.message}` : error instanceof Error ? error.message : "an unexpected error";
  const item = h("p", { class: "alert" }, `${what} failed: ${message}`, h("button", { type: "button", class: "link-button", "aria-label": "Dismiss", onclick: () => item.remove() }, "Dismiss"));
  alerts.appendChild(item);
}

function header(...right: (HTMLElement | null)[]): HTMLElement {
  return h("header", { class: "top" }, h("h1", { class: "brand" }, "Herald"), h("div", { class: "top-right" }, ...right));
}

async function start(signIn: SignIn): Promise<void> {
  const first = await tokenFor(signIn);
  const identity: Identity = identityOf(first);
  saveSignIn(signIn);
  let initial: string | undefined = first;
  const herald = createClient({
    url: location.origin,
    transport: "auto",
    getToken: async () => {
      const token = initial ?? (await tokenFor(signIn));
      initial = undefined;
      return token;
    },
  });
  const context: PanelContext = { herald, identity, announce, report };
  const panels = PANELS.map((make) => make(context));
  const indicator = connectionIndicator(herald);
  const user = h(
    "div",
    { class: "user" },
    h("span", { class: "user-name", "data-testid": "signed-in-as" }, identity.sub),
    identity.roles.length ? h("span", { class: "user-roles" }, identity.roles.join(", ")) : null,
    h("button", { type: "button", class: "link-button", onclick: signOut }, "Sign out"),
  );
  replaceChildren(
    app,
    header(indicator.element, ...panels.map((p) => p.header ?? null), user),
    alerts,
    h("main", { class: "panels" }, ...panels.map((p) => p.section ?? null)),
    live,
  );
  signedIn = {
    herald,
    panels,
    dispose() {
      for (const panel of panels) panel.dispose();
      indicator.dispose();
      herald.close();
    },
  };
  announce(`Signed in as ${identity.sub}`);
}

function signOut(): void {
  signedIn?.dispose();
  signedIn = undefined;
  saveSignIn(undefined);
  void showSignIn();
}

async function showSignIn(problem?: string): Promise<void> {
  const error = h("p", { class: "form-error", role: "alert", "data-testid": "sign-in-error" }, problem ?? "");
  const fail = (e: unknown) => {
    error.textContent = e instanceof Error ? e.message : "Sign-in failed";
  };

  const tokenField = h("textarea", { id: "token", name: "token", rows: 4, required: true, spellcheck: "false", autocomplete: "off", "aria-describedby": "token-help" });
  const tokenForm = h(
    "form",
    { class: "card", "aria-labelledby": "token-title" },
    h("h2", { id: "token-title" }, "Sign in with a token"),
    h("label", { for: "token" }, "Token (JWT)"),
    tokenField,
    h("p", { id: "token-help", class: "help" }, "A token issued for this server, for example from ", h("code", {}, "herald token --sub alice"), "."),
    h("button", { type: "submit" }, "Sign in"),
  );
  tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = tokenField.value.trim();
    try {
      identityOf(token);
    } catch (e) {
      fail(e);
      return;
    }
    start({ kind: "token", token }).catch(fail);
  });

  const devCard = h("section", { class: "card", "aria-labelledby": "dev-title" }, h("h2", { id: "dev-title" }, "Development sign-in"), h("p", { class: "muted" }, "Checking whether the server is in development mode…"));
  replaceChildren(app, header(), h("main", { class: "sign-in" }, error, devCard, tokenForm), live);

  const status = await devStatus();
  if (!status.available) {
    replaceChildren(devCard, h("h2", { id: "dev-title" }, "Development sign-in"), h("p", { class: "muted", "data-testid": "dev-unavailable" }, `Not available: ${status.reason ?? "the server is not in development mode"}.`));
    return;
  }
  const userField = h("input", { id: "dev-user", name: "user", required: true, value: "alice", autocomplete: "username", pattern: "[!-~]{1,128}", "aria-describedby": "dev-help" });
  const roleBoxes = DEV_ROLES.map((role) => ({ role, box: h("input", { type: "checkbox", id: `dev-role-${role}`, name: "roles", value: role }) }));
  const otherRoles = h("input", { id: "dev-roles", name: "other-roles", placeholder: "e.g. support, ops", autocomplete: "off" });
  const devForm = h(
    "form",
    { "data-testid": "dev-sign-in" },
    h("p", { id: "dev-help", class: "help" }, "This server signs with its development key: pick any user and roles and it issues a token for them."),
    h("label", { for: "dev-user" }, "User id"),
    userField,
    h("fieldset", {}, h("legend", {}, "Roles"), ...roleBoxes.map(({ role, box }) => h("label", { class: "check" }, box, role)), h("label", { for: "dev-roles" }, "Other roles (comma-separated)"), otherRoles),
    h("button", { type: "submit" }, "Sign in"),
  );
  devForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const roles = [
      ...roleBoxes.filter(({ box }) => box.checked).map(({ role }) => role),
      ...otherRoles.value
        .split(",")
        .map((r) => r.trim())
        .filter(Boolean),
    ];
    start({ kind: "dev", sub: userField.value.trim(), roles }).catch(fail);
  });
  replaceChildren(devCard, h("h2", { id: "dev-title" }, "Development sign-in"), devForm);
}

const saved = loadSignIn();
if (saved) {
  start(saved).catch((e: unknown) => {
    saveSignIn(undefined);
    void showSignIn(`Signed out: ${e instanceof Error ? e.message : "the session could not be restored"}`);
  });
} else {
  void showSignIn();
}
