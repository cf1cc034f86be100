// What every panel gets and gives. A panel is fed by the SDK client it is handed; it may put a
// widget in the header (the bell) and a section in the main grid. Panels are listed in
// main.ts; a new job's panel is one more module and one more line there.

import type { HeraldClient } from "@herald/client";
import type { Identity } from "./session.js";

export interface PanelContext {
  herald: HeraldClient;
  identity: Identity;
  /** Shows a short message in the page's live region (screen readers announce it). */
  announce(message: string): void;
  /** Shows an error to the person (never raw data). */
  report(what: string, error: unknown): void;
}

export interface Panel {
  readonly id: string;
  readonly title: string;
  /** A widget for the header, beside the connection indicator. */
  header?: HTMLElement;
  /** The panel's section in the main grid. */
  section?: HTMLElement;
  dispose(): void;
}

export type PanelFactory = (context: PanelContext) => Panel;
