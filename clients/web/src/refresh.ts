// Reading a list again while nothing announces its changes, the way the deployment and order
// panels keep theirs current.

import { classifyErrorCode, HeraldError } from "@herald/client";

/**
 * Returns `reload`, which runs `read` and reports a failure once until a read succeeds again
 * (a refresh every few seconds must not report every few seconds). A failure of the connection
 * itself is not reported at all: the connection indicator already says "reconnecting", and the
 * next refresh after it comes back succeeds.
 */
export function reporting(read: () => Promise<unknown>, report: (error: unknown) => void): () => Promise<void> {
  let failing = false;
  return () =>
    read().then(
      () => {
        failing = false;
      },
      (error) => {
        const transient = error instanceof HeraldError && classifyErrorCode(error.code) === "reconnect";
        if (!failing && !transient) report(error);
        failing = true;
      },
    );
}
