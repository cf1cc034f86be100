// The connection indicator: the SDK's status in words and a colour, announced politely.

import type { ConnectionState, ConnectionStatus, HeraldClient } from "@herald/client";
import { h } from "./dom.js";

const LABELS: Record<ConnectionState, string> = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  resumed: "Resumed",
  reloaded: "Had to reload",
  closed: "Disconnected",
};

const TITLES: Record<ConnectionState, string> = {
  connecting: "Opening the connection to the server.",
  connected: "Live: changes appear as they happen.",
  reconnecting: "The connection was lost; trying again. Nothing will be missed.",
  resumed: "The connection came back and every view resumed where it was: nothing was missed.",
  reloaded: "The connection came back, but the server no longer had everything that was missed: the views were reloaded.",
  closed: "The server ended the connection.",
};

const TRANSPORTS: Record<string, string> = {
  websocket: "WebSocket",
  "grpc-web": "grpc-web",
  poll: "polling",
};

export function connectionIndicator(herald: HeraldClient): { element: HTMLElement; dispose(): void } {
  const label = h("span", { class: "connection-label" });
  const detail = h("span", { class: "connection-detail" });
  const element = h("div", { class: "connection", role: "status", "aria-live": "polite", "data-testid": "connection" }, h("span", { class: "connection-dot", "aria-hidden": "true" }), label, detail);
  const show = (status: ConnectionStatus) => {
    element.dataset["state"] = status.state;
    label.textContent = LABELS[status.state];
    detail.textContent = status.state === "closed" ? (status.error ? `: ${status.error.message}` : "") : ` · ${TRANSPORTS[status.transport] ?? status.transport}`;
    element.title = TITLES[status.state];
  };
  show(herald.status);
  const off = herald.onStatus(show);
  return { element, dispose: off };
}
