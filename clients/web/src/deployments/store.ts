// One deployment, live: its status and its whole log, loaded then followed on
// `deployment:<id>` with the SDK's live(). The read is `Get` (the deployment and its status);
// the subscription starts at offset 0 of the topic's epoch, so the catch-up replays every log
// chunk so far and then goes live, each event once. Status events at or before Get's position
// are older than Get's status and only the log is taken from them.

import {
  DeploymentState,
  type Deployment,
  type DeploymentStatus,
  type Event,
  type HeraldClient,
  type Live,
  type LogLine,
  type LogTruncation,
} from "@herald/client";

export type LogEntry = { kind: "line"; line: LogLine } | { kind: "truncated"; truncation: LogTruncation };

export interface DeploymentView {
  deployment: Deployment;
  status: DeploymentStatus | undefined;
  /** The log as it arrived; appended in place, replaced (a new array) on a reload. */
  entries: LogEntry[];
  /** The number of the last line held (lines at or below it are not added twice). */
  lastLine: bigint;
  /** The offset Get's status reflects. */
  snapshotOffset: bigint;
}

export const isTerminal = (state: DeploymentState | undefined): boolean =>
  state === DeploymentState.SUCCESS || state === DeploymentState.FAILED || state === DeploymentState.CANCELLED;

export function applyDeploymentEvent(view: DeploymentView, event: Event): DeploymentView {
  const body = event.body;
  switch (body.case) {
    case "deploymentStatus":
      return event.offset > view.snapshotOffset ? { ...view, status: body.value } : view;
    case "deploymentLogs": {
      const logs = body.value;
      if (logs.truncated) view.entries.push({ kind: "truncated", truncation: logs.truncated });
      let lastLine = view.lastLine;
      for (const line of logs.lines) {
        if (line.number <= lastLine) continue;
        view.entries.push({ kind: "line", line });
        lastLine = line.number;
      }
      return { ...view, lastLine };
    }
    default:
      return view;
  }
}

export class DeploymentStore {
  private readonly live: Live<DeploymentView>;
  private readonly listeners = new Set<(view: DeploymentView) => void>();

  constructor(
    herald: HeraldClient,
    readonly id: bigint,
    onError: (error: unknown) => void,
  ) {
    this.live = herald.live(
      async () => {
        const { deployment } = await herald.deployments.get({ deploymentId: id });
        if (!deployment?.position) throw new Error(`the server answered no deployment ${id}`);
        // The whole topic: every log chunk from the first, then live.
        return { deployment, position: { ...deployment.position, offset: 0n } };
      },
      `deployment:${id}`,
      {
        initial: ({ deployment }) => ({
          deployment,
          status: deployment.status,
          entries: [],
          lastLine: 0n,
          snapshotOffset: deployment.position?.offset ?? 0n,
        }),
        apply: applyDeploymentEvent,
        onChange: (view) => this.emit(view),
        onReload: (view) => this.emit(view),
        onError,
      },
    );
    this.live.ready.then((view) => this.emit(view), onError);
  }

  get view(): DeploymentView | undefined {
    return this.live.state;
  }

  subscribe(listener: (view: DeploymentView) => void): () => void {
    this.listeners.add(listener);
    if (this.live.state) listener(this.live.state);
    return () => this.listeners.delete(listener);
  }

  close(): void {
    this.live.close();
    this.listeners.clear();
  }

  private emit(view: DeploymentView): void {
    for (const listener of this.listeners) listener(view);
  }
}
