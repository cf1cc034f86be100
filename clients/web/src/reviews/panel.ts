// The review queue: in the header, a button with the number of requests waiting for the
// signed-in reviewer (beside the bell); in the grid, the pending requests of every role they
// hold, each with Approve and Reject (an optional reason). When another reviewer decides a
// request it leaves every reviewer's page at once, and the badge follows.

import "./reviews.css";
import type { Review } from "@herald/client";
import { h, replaceChildren } from "../dom.js";
import { ago, isoTime, plural } from "../format.js";
import type { Panel, PanelContext } from "../panels.js";
import { mayDecide, reviewerRoles, ReviewStore, type QueueState } from "./store.js";

type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** The reason sent when the reviewer gives none (the server requires one). */
const NO_REASON = "No reason given";

export function reviewsPanel(context: PanelContext): Panel {
  const me = context.identity.sub;
  const roles = reviewerRoles(context.identity.roles);
  // Without a role there is no queue to show: no button, no section.
  if (roles.length === 0) return { id: "reviews", title: "Review queue", dispose() {} };
  const store = new ReviewStore(context.herald, roles, (error) => context.report("The review queue", error));

  const badge = h("span", { class: "badge", "data-testid": "reviews-count", "aria-hidden": "true", hidden: true });
  const button = h("button", { type: "button", class: "reviews-button", "data-testid": "reviews", "aria-controls": "panel-reviews" }, "Reviews", badge);
  const body = h("div", { class: "panel-body" }, h("p", {}, "Loading…"));
  const title = h("h2", { id: "panel-reviews-title", tabindex: "-1" }, "Review queue");
  const section = h("section", { id: "panel-reviews", class: "panel reviews-panel", "aria-labelledby": "panel-reviews-title", "data-testid": "panel-reviews" }, title, body);

  button.addEventListener("click", () => {
    section.scrollIntoView({ block: "start", behavior: "smooth" });
    title.focus({ preventScroll: true });
  });

  /** Which request has its reject form open, and what was typed, kept across re-renders. */
  let rejecting: { id: string; reason: string } | undefined;
  /** The control to focus after the next render (the reason field of a form just opened). */
  let focusNext: string | undefined;
  const busy = new Set<string>();
  let queues: QueueState[] = [];

  const act = (id: string, what: string, run: () => Promise<unknown>, done: string) => {
    busy.add(id);
    render();
    run()
      .then(() => {
        context.announce(done);
        if (rejecting?.id === id) rejecting = undefined;
      })
      .catch((error) => context.report(what, error))
      .finally(() => {
        busy.delete(id);
        render();
      });
  };

  const render = () => {
    const waiting = queues.reduce((sum, q) => sum + q.pending - q.reviews.filter((r) => !mayDecide(r, me)).length, 0);
    badge.textContent = waiting > 99 ? "99+" : String(waiting);
    badge.hidden = waiting === 0;
    badge.dataset["count"] = String(waiting);
    button.setAttribute("aria-label", waiting === 0 ? "Review queue, nothing waiting" : `Review queue, ${plural(waiting, "request")} waiting`);
    if (!store.loaded && queues.length === 0) return;
    const many = queues.length > 1;
    // Re-rendering replaces the elements: the focus stays on the same control (by its key),
    // or on the heading when that control left with its request.
    const focused = body.contains(document.activeElement) ? (document.activeElement as HTMLElement).dataset["key"] ?? "" : undefined;
    replaceChildren(
      body,
      h("p", { class: "panel-lead", "data-testid": "reviews-summary" }, waiting === 0 ? "Nothing waiting for you." : `${plural(waiting, "request")} waiting for you.`),
      ...queues.map((q) => queue(q, many)),
    );
    const key = focusNext ?? focused;
    focusNext = undefined;
    if (key !== undefined) (body.querySelector<HTMLElement>(`[data-key="${CSS.escape(key)}"]`) ?? title).focus();
  };

  const queue = (q: QueueState, titled: boolean): HTMLElement => {
    const shown = q.reviews.length;
    return h(
      "div",
      { class: "review-queue", "data-role": q.role },
      titled ? h("h3", {}, `Role “${q.role}”: ${plural(q.pending, "pending request")}`) : null,
      shown === 0
        ? h("p", { class: "muted" }, "No pending requests.")
        : h("ul", { class: "review-list", "aria-label": `Pending requests for the role ${q.role}` }, ...q.reviews.map(item)),
      q.pending > shown ? h("p", { class: "muted" }, `${plural(q.pending - shown, "older request")} not shown: decide these first.`) : null,
    );
  };

  const item = (r: Review): HTMLElement => {
    const name = r.applicant?.name ?? "Unknown applicant";
    const approvals = r.decisions.filter((d) => d.verdict === 1).length;
    const required = Math.max(1, r.requiredApprovals);
    const own = r.applicant?.userId === me;
    const approvedByMe = r.decisions.some((d) => d.reviewerId === me);
    const time = isoTime(r.createTime?.seconds);
    const isBusy = busy.has(r.id);
    const form = rejecting?.id === r.id ? rejectForm(r, name, isBusy) : null;
    return h(
      "li",
      { class: "review-item", "data-testid": "review", "data-id": r.id },
      h("p", { class: "review-title" }, h("strong", {}, name), " asks for the role ", h("strong", {}, r.requestedRole)),
      h(
        "p",
        { class: "review-meta" },
        r.applicant?.email ?? "",
        r.applicant?.phone ? ` · ${r.applicant.phone}` : "",
        time ? " · " : "",
        time ? h("time", { datetime: time }, ago(r.createTime?.seconds)) : null,
        required > 1 ? ` · ${approvals} of ${required} approvals` : "",
      ),
      r.details && Object.keys(r.details).length ? details(r.details as Record<string, JsonValue>) : null,
      own
        ? h("p", { class: "muted" }, "Your own request: another reviewer decides it.")
        : approvedByMe
          ? h("p", { class: "muted" }, `You approved it; it needs ${plural(required - approvals, "more approval")} by other reviewers.`)
          : form ??
            h(
              "div",
              { class: "review-actions" },
              h(
                "button",
                { type: "button", class: "approve", disabled: isBusy, "data-key": `approve-${r.id}`, "aria-label": `Approve ${name}`, onclick: () => act(r.id, "Approving", () => store.approve(r.id), `Approved ${name}`) },
                "Approve",
              ),
              h(
                "button",
                {
                  type: "button",
                  class: "danger",
                  disabled: isBusy,
                  "aria-label": `Reject ${name}`,
                  "data-key": `reject-${r.id}`,
                  onclick: () => {
                    rejecting = { id: r.id, reason: "" };
                    focusNext = `reason-${r.id}`;
                    render();
                  },
                },
                "Reject",
              ),
            ),
    );
  };

  const rejectForm = (r: Review, name: string, isBusy: boolean): HTMLElement => {
    const fieldId = `reject-reason-${r.id}`;
    const field = h("textarea", { id: fieldId, rows: 2, maxlength: 1000, "data-key": `reason-${r.id}`, placeholder: "Optional" });
    field.value = rejecting?.reason ?? "";
    field.addEventListener("input", () => {
      if (rejecting) rejecting.reason = field.value;
    });
    const form = h(
      "form",
      { class: "reject-form", "aria-label": `Reject ${name}` },
      h("label", { for: fieldId }, "Reason (optional, the applicant sees it)"),
      field,
      h(
        "div",
        { class: "review-actions" },
        h("button", { type: "submit", class: "danger-solid", disabled: isBusy, "data-key": `confirm-${r.id}` }, "Confirm reject"),
        h(
          "button",
          {
            type: "button",
            "data-key": `cancel-${r.id}`,
            onclick: () => {
              rejecting = undefined;
              focusNext = `reject-${r.id}`;
              render();
            },
          },
          "Cancel",
        ),
      ),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const reason = field.value.trim() || NO_REASON;
      act(r.id, "Rejecting", () => store.reject(r.id, reason), `Rejected ${name}`);
    });
    form.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        rejecting = undefined;
        focusNext = `reject-${r.id}`;
        render();
      }
    });
    return form;
  };

  const off = store.subscribe((next) => {
    queues = next;
    if (rejecting && !next.some((q) => q.reviews.some((r) => r.id === rejecting!.id))) rejecting = undefined;
    render();
  });
  render();

  return {
    id: "reviews",
    title: "Review queue",
    header: button,
    section,
    dispose() {
      off();
      store.close();
    },
  };
}

/** A request's details as labelled values: never raw JSON. */
function details(values: Record<string, JsonValue>): HTMLElement {
  return h("dl", { class: "review-details" }, ...Object.entries(values).flatMap(([key, value]) => [h("dt", {}, labelOf(key)), h("dd", {}, describe(value))]));
}

function labelOf(key: string): string {
  const words = key.replace(/[_-]+/g, " ").replace(/([a-z])([A-Z])/g, "$1 $2").trim();
  return words ? words[0]!.toUpperCase() + words.slice(1) : key;
}

function describe(value: JsonValue): string {
  if (value === null) return "—";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number" || typeof value === "string") return String(value);
  if (Array.isArray(value)) return value.map(describe).join(", ");
  return Object.entries(value)
    .map(([k, v]) => `${labelOf(k)}: ${describe(v)}`)
    .join("; ");
}
