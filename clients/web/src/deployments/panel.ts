// The deployment monitor: the signed-in user's deployments (admins: everyone's), optionally of
// one application; the selected one's status, stage bar and progress; and its build log, live,
// with ANSI colours rendered. A form starts a deployment (any signed-in user may create one; a
// build worker then runs it). Until a row is picked, the newest deployment is followed, so one
// started by `herald demo deploy` shows up by itself.
//
// The list has no topic of its own (a deployment's events are on its own `deployment:<id>`),
// so it is read again every few seconds while the page is visible; the selected deployment is
// pushed, never polled.

import { DeploymentStage, DeploymentState, LogStream, type Deployment, type DeploymentStatus } from "@herald/client";
import { h, replaceChildren } from "../dom.js";
import { isoTime, plural } from "../format.js";
import type { Panel, PanelContext } from "../panels.js";
import { reporting } from "../refresh.js";
import { renderAnsi } from "./ansi.js";
import { DeploymentStore, isTerminal, type DeploymentView, type LogEntry } from "./store.js";

const LIST_REFRESH_MS = 3000;
/** Lines kept on the page; older ones are dropped from the view (the server keeps them). */
const MAX_LINES_SHOWN = 20_000;

const STATE_LABELS: Record<DeploymentState, string> = {
  [DeploymentState.UNSPECIFIED]: "Unknown",
  [DeploymentState.PENDING]: "Pending",
  [DeploymentState.RUNNING]: "Running",
  [DeploymentState.SUCCESS]: "Succeeded",
  [DeploymentState.FAILED]: "Failed",
  [DeploymentState.CANCELLED]: "Cancelled",
};

const STAGES: { stage: DeploymentStage; label: string }[] = [
  { stage: DeploymentStage.CLONING, label: "Cloning" },
  { stage: DeploymentStage.BUILDING, label: "Building" },
  { stage: DeploymentStage.DEPLOYING, label: "Deploying" },
];

export const stateLabel = (state: DeploymentState | undefined): string => STATE_LABELS[state ?? DeploymentState.UNSPECIFIED] ?? "Unknown";

function stageLabel(stage: DeploymentStage | undefined): string {
  return STAGES.find((s) => s.stage === stage)?.label ?? "Not started";
}

function durationText(status: DeploymentStatus | undefined): string | undefined {
  const d = status?.duration;
  if (!d) return undefined;
  const total = Number(d.seconds) + d.nanos / 1e9;
  return total < 60 ? `${total.toFixed(1)} s` : `${Math.floor(total / 60)} min ${Math.round(total % 60)} s`;
}

export function deploymentsPanel(context: PanelContext): Panel {
  const { herald, identity } = context;
  const isAdmin = identity.roles.includes("admin");

  // --- the list -------------------------------------------------------------------------
  const filter = h("input", { id: "deploy-filter", name: "application", autocomplete: "off", placeholder: "all applications", pattern: "[A-Za-z0-9._\\-]{0,100}" });
  const refresh = h("button", { type: "button", "data-testid": "deploy-refresh" }, "Refresh");
  const list = h("ul", { class: "deploy-list", "aria-label": "Deployments", "data-testid": "deploy-list" });
  const listStatus = h("p", { class: "muted deploy-list-status", role: "status" }, "Loading…");

  // --- the start form -------------------------------------------------------------------
  const appField = h("input", { id: "deploy-app", name: "application", required: true, value: "web-shop", autocomplete: "off", pattern: "[A-Za-z0-9._\\-]{1,100}", "aria-describedby": "deploy-start-help" });
  const refField = h("input", { id: "deploy-ref", name: "ref", required: true, value: "main", autocomplete: "off", pattern: "[!-~]{1,255}" });
  const descField = h("input", { id: "deploy-desc", name: "description", autocomplete: "off", maxlength: 1000 });
  const startForm = h(
    "form",
    { class: "deploy-start", "data-testid": "deploy-start" },
    h("p", { id: "deploy-start-help", class: "help" }, "Creates a pending deployment owned by you; a build worker (a token with the service role) runs it, for example ", h("code", {}, "herald demo deploy"), "."),
    h("div", { class: "deploy-start-fields" }, h("div", {}, h("label", { for: "deploy-app" }, "Application"), appField), h("div", {}, h("label", { for: "deploy-ref" }, "Git ref"), refField), h("div", {}, h("label", { for: "deploy-desc" }, "Description (optional)"), descField)),
    h("button", { type: "submit" }, "Start deployment"),
  );
  const start = h("details", { class: "deploy-start-box" }, h("summary", {}, "Start a deployment"), startForm);

  // --- the selected deployment ----------------------------------------------------------
  const detail = h("div", { class: "deploy-detail", "data-testid": "deploy-detail" }, h("p", { class: "muted" }, "No deployment selected."));

  const section = h(
    "section",
    { class: "panel panel-wide deploy-panel", "aria-labelledby": "panel-deployments-title", "data-testid": "panel-deployments" },
    h("h2", { id: "panel-deployments-title" }, "Deployments"),
    h(
      "div",
      { class: "deploy-layout" },
      h(
        "div",
        { class: "deploy-side" },
        h("div", { class: "deploy-filter" }, h("label", { for: "deploy-filter" }, "Application"), h("div", { class: "row" }, filter, refresh)),
        listStatus,
        list,
        start,
      ),
      detail,
    ),
  );

  let rows: Deployment[] = [];
  let selected: bigint | undefined;
  let pinned = false; // the person picked a row: stop following the newest
  let store: DeploymentStore | undefined;
  let offStore: (() => void) | undefined;
  let disposed = false;

  const liveStatus = (d: Deployment): DeploymentStatus | undefined => (store && store.id === d.id ? (store.view?.status ?? d.status) : d.status);

  const renderList = () => {
    // The rows are drawn anew: keep the keyboard focus on the row that had it.
    const focused = list.contains(document.activeElement) ? (document.activeElement as HTMLElement).dataset["id"] : undefined;
    draw();
    if (focused) list.querySelector<HTMLElement>(`[data-id="${focused}"]`)?.focus();
  };
  const draw = () => {
    if (rows.length === 0) {
      replaceChildren(list, h("li", { class: "empty" }, filter.value ? `No deployments of ${filter.value}.` : "No deployments yet."));
      return;
    }
    replaceChildren(
      list,
      ...rows.map((d) => {
        const status = liveStatus(d);
        const current = d.id === selected;
        return h(
          "li",
          {},
          h(
            "button",
            {
              type: "button",
              class: `deploy-row${current ? " current" : ""}`,
              "aria-pressed": String(current),
              "data-testid": "deploy-row",
              "data-id": String(d.id),
              onclick: () => {
                pinned = true;
                select(d.id);
              },
            },
            h("span", { class: "deploy-row-title" }, `#${d.id} ${d.application}`, h("span", { class: "muted" }, ` @ ${d.gitRef}`)),
            h("span", { class: `state-pill state-${DeploymentState[status?.status ?? 0]?.toLowerCase()}` }, stateLabel(status?.status)),
          ),
        );
      }),
    );
  };

  const loadList = async () => {
    const application = filter.value.trim();
    const page = await herald.deployments.list(application ? { application, pageSize: 30 } : { pageSize: 30 });
    if (disposed) return;
    rows = page.deployments;
    listStatus.textContent = `${plural(rows.length, "deployment")}${isAdmin ? " (everyone’s)" : ""}${application ? ` of ${application}` : ""}`;
    const newest = rows[0];
    if (newest && !pinned && newest.id !== selected) select(newest.id);
    else renderList();
  };
  const reload = reporting(loadList, (error) => context.report("Listing deployments", error));

  refresh.addEventListener("click", () => void reload());
  filter.addEventListener("change", () => {
    pinned = false;
    void reload();
  });
  startForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const description = descField.value.trim();
    herald.deployments
      .create({ application: appField.value.trim(), gitRef: refField.value.trim(), ...(description ? { description } : {}) })
      .then(({ deployment }) => {
        if (!deployment) return;
        context.announce(`Deployment ${deployment.id} created; waiting for a worker`);
        pinned = true;
        rows = [deployment, ...rows.filter((d) => d.id !== deployment.id)];
        select(deployment.id);
        start.open = false;
      })
      .catch((error) => context.report("Starting the deployment", error));
  });

  // --- the detail view ------------------------------------------------------------------
  const title = h("h3", { class: "deploy-title", "data-testid": "deploy-title" });
  const pill = h("span", { class: "state-pill", "data-testid": "deploy-state" });
  const stageBar = h("ol", { class: "stage-bar", "aria-label": "Stages" });
  const progress = h("progress", { id: "deploy-progress", max: 100, value: 0, "data-testid": "deploy-progress" });
  const progressText = h("span", { class: "deploy-progress-text" });
  const message = h("p", { class: "deploy-message", "data-testid": "deploy-message" });
  const problem = h("p", { class: "deploy-error", role: "alert", hidden: true });
  const facts = h("p", { class: "muted deploy-facts" });
  const cancel = h("button", { type: "button", class: "danger", hidden: true }, "Cancel deployment");
  const follow = h("input", { type: "checkbox", id: "deploy-follow", checked: true });
  const log = h("div", { class: "log", role: "log", tabindex: 0, "aria-label": "Build log", "aria-live": "off", "data-testid": "deploy-log" });
  const logStatus = h("p", { class: "muted log-status", "data-testid": "deploy-log-status" });

  let renderedEntries: LogEntry[] | undefined;
  let renderedCount = 0;
  let shownLines = 0;
  let openPiece: HTMLElement | undefined;

  const lineElement = (entry: LogEntry): HTMLElement | undefined => {
    if (entry.kind === "truncated") {
      const t = entry.truncation;
      openPiece = undefined;
      return h("div", { class: "log-line log-truncated", "data-testid": "log-truncated" }, `… lines ${t.firstLine}–${t.lastLine} were dropped to keep the log within ${t.limit} lines …`);
    }
    const line = entry.line;
    if (openPiece) {
      // The previous piece continues in this one: one long line, shown whole.
      openPiece.append(...renderAnsi(line.text));
      if (!line.continues) openPiece = undefined;
      return undefined;
    }
    const text = h("span", { class: "log-text" }, ...renderAnsi(line.text));
    if (line.continues) openPiece = text;
    shownLines += 1;
    return h(
      "div",
      { class: `log-line${line.stream === LogStream.STDERR ? " stderr" : ""}`, "data-testid": "log-line", "data-number": String(line.number) },
      h("span", { class: "log-number", "aria-hidden": "true" }, String(line.number)),
      line.stream === LogStream.STDERR ? h("span", { class: "visually-hidden" }, "error output: ") : null,
      text,
    );
  };

  const renderLog = (view: DeploymentView) => {
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
    if (renderedEntries !== view.entries) {
      log.replaceChildren();
      renderedEntries = view.entries;
      renderedCount = 0;
      shownLines = 0;
      openPiece = undefined;
    }
    const fragment = document.createDocumentFragment();
    for (; renderedCount < view.entries.length; renderedCount++) {
      const element = lineElement(view.entries[renderedCount]!);
      if (element) fragment.appendChild(element);
    }
    log.appendChild(fragment);
    while (log.childElementCount > MAX_LINES_SHOWN) log.firstElementChild?.remove();
    if (follow.checked && atBottom) log.scrollTop = log.scrollHeight;
    const total = view.status?.logLines ?? view.lastLine;
    logStatus.textContent = view.entries.length === 0 ? "No log lines yet." : `${plural(Number(total), "line")}${view.status?.logTruncated ? ", truncated in the middle" : ""}`;
  };

  const renderDetail = (view: DeploymentView) => {
    const { deployment, status } = view;
    const state = status?.status ?? DeploymentState.UNSPECIFIED;
    title.textContent = `#${deployment.id} ${deployment.application} @ ${deployment.gitRef}`;
    pill.textContent = stateLabel(state);
    pill.className = `state-pill state-${DeploymentState[state]?.toLowerCase()}`;
    pill.dataset["state"] = DeploymentState[state] ?? "UNSPECIFIED";
    const reached = status?.stage ?? DeploymentStage.UNSPECIFIED;
    replaceChildren(
      stageBar,
      ...STAGES.map(({ stage, label }) => {
        const done = reached > stage || (state === DeploymentState.SUCCESS && reached >= stage);
        const now = reached === stage && !isTerminal(state);
        const failedHere = reached === stage && (state === DeploymentState.FAILED || state === DeploymentState.CANCELLED);
        const kind = failedHere ? "failed" : done ? "done" : now ? "current" : "todo";
        const word = { failed: state === DeploymentState.CANCELLED ? "cancelled" : "failed", done: "done", current: "in progress", todo: "not reached" }[kind];
        return h("li", { class: `stage stage-${kind}`, "aria-current": now ? "step" : undefined, "data-stage": label.toLowerCase() }, h("span", { class: "stage-label" }, label), h("span", { class: "visually-hidden" }, `: ${word}`));
      }),
    );
    const percent = status?.progress ?? 0;
    progress.value = percent;
    progress.setAttribute("aria-valuetext", `${percent} % (${stageLabel(reached)})`);
    progressText.textContent = `${percent} %`;
    message.textContent = status?.message || (state === DeploymentState.PENDING ? "Waiting for a build worker to start it." : "");
    problem.hidden = !status?.errorMessage;
    problem.textContent = status?.errorMessage ? `${status.errorMessage}${status.exitCode !== undefined ? ` (exit code ${status.exitCode})` : ""}` : "";
    const started = isoTime(status?.startedAt?.seconds);
    const took = durationText(status);
    facts.textContent = [
      `owner ${deployment.owner}`,
      deployment.worker ? `worker ${deployment.worker}` : "",
      started ? `started ${new Date(started).toLocaleTimeString()}` : "",
      took ? `took ${took}` : "",
      state === DeploymentState.CANCELLED && status?.cancelledBy ? `cancelled by ${status.cancelledBy}` : "",
    ]
      .filter(Boolean)
      .join(" · ");
    cancel.hidden = isTerminal(state) || !(isAdmin || deployment.owner === identity.sub);
    renderLog(view);
  };

  cancel.addEventListener("click", () => {
    if (selected === undefined) return;
    herald.deployments.cancel({ deploymentId: selected }).catch((error) => context.report("Cancelling", error));
  });

  let lastState: DeploymentState | undefined;
  const select = (id: bigint) => {
    if (selected === id && store) return;
    offStore?.();
    store?.close();
    selected = id;
    lastState = undefined;
    renderedEntries = undefined;
    log.replaceChildren();
    replaceChildren(
      detail,
      h("div", { class: "deploy-head" }, title, pill),
      stageBar,
      h("div", { class: "deploy-progress" }, h("label", { for: "deploy-progress" }, "Progress"), progress, progressText),
      message,
      problem,
      facts,
      cancel,
      h("div", { class: "log-head" }, h("h4", {}, "Build log"), h("label", { class: "check" }, follow, "Follow the end")),
      log,
      logStatus,
    );
    title.textContent = `#${id}`;
    pill.textContent = "Loading…";
    const current = new DeploymentStore(herald, id, (error) => context.report(`Following deployment ${id}`, error));
    store = current;
    offStore = current.subscribe((view) => {
      renderDetail(view);
      const state = view.status?.status;
      if (state !== lastState) {
        if (lastState !== undefined) context.announce(`Deployment ${id}: ${stateLabel(state).toLowerCase()}`);
        lastState = state;
        renderList();
      }
    });
    renderList();
  };

  const timer = setInterval(() => {
    if (!document.hidden) void reload();
  }, LIST_REFRESH_MS);
  void reload();

  return {
    id: "deployments",
    title: "Deployments",
    section,
    dispose() {
      disposed = true;
      clearInterval(timer);
      offStore?.();
      store?.close();
    },
  };
}
