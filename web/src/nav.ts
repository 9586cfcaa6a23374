// Moving between pages, for the pages themselves. main.ts draws the page of the current
// location on every popstate; navigate asks for the same after a pushState, so pages need
// nothing from main.ts (which imports them).

import { h } from "./dom";

/** Go to a path of the app without reloading (replaceState: no new history entry). */
export function navigate(path: string, replaceState = false): void {
  if (replaceState) history.replaceState(null, "", path); else history.pushState(null, "", path);
  window.dispatchEvent(new PopStateEvent("popstate"));
}

/** The project tabs under the top bar. */
export function projectNav(team: string, project: string, active: string): HTMLElement {
  const base = `/projects/${encodeURIComponent(team)}/${encodeURIComponent(project)}`;
  const tab = (name: string, href: string) => h("a", { href, className: active === name ? "active" : "" }, name);
  return h("nav.tabs", null,
    h("span.crumb", null, h("a", { href: "/" }, "projects"), " / ", `${team}/${project}`),
    tab("workspace", base), tab("sweeps", `${base}/sweeps`), tab("artifacts", `${base}/artifacts`), tab("alerts", `${base}/alerts`),
    tab("reports", `${base}/reports`), tab("settings", `${base}/settings`));
}
