// Steps every panel's browser test shares: a development sign-in with roles (the contrast
// check is in ./contrast.ts).

import type { Page } from "playwright-core";

/** Signs in through the development form as `user` with `roles` and waits until connected. */
export async function signInAsDev(page: Page, url: string, user: string, roles: string[] = []): Promise<void> {
  await page.goto(url);
  const form = page.getByTestId("dev-sign-in");
  await form.getByLabel("User id").fill(user);
  const offered = ["admin", "reviewer", "courier"];
  for (const role of roles.filter((r) => offered.includes(r))) await form.getByLabel(role, { exact: true }).check();
  const others = roles.filter((r) => !offered.includes(r));
  if (others.length) await form.getByLabel("Other roles (comma-separated)").fill(others.join(", "));
  await form.getByRole("button", { name: "Sign in" }).click();
  await page.getByTestId("signed-in-as").filter({ hasText: user }).waitFor();
  await page.getByTestId("connection").filter({ hasText: "Connected" }).waitFor();
}
