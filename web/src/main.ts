// The app shell: history routes (the server answers index.html for every non-API path),
// the top bar, the API key dialog.

import { getApiKey, setApiKey, setShareToken } from "./api";
import { append, clear, errorBox, h } from "./dom";
import { navigate } from "./nav";
import { alertsPage } from "./pages/alerts";
import { artifactsPage } from "./pages/artifacts";
import { projectSettingsPage } from "./pages/project-settings";
import { projectsPage } from "./pages/projects";
import { reportPage, reportsPage, sharedReportPage } from "./pages/reports";
import { runPage } from "./pages/run";
import { settingsPage } from "./pages/settings";
import { sweepsPage } from "./pages/sweeps";
import { workspacePage } from "./pages/workspace";
import { forgetWhoami, whoami } from "./session";

type Cleanup = (() => void) | void;
/** A page draws into root; signal aborts when the page is left (or a newer render started). */
type Page = (root: HTMLElement, params: string[], signal: AbortSignal) => Cleanup | Promise<Cleanup>;

const P = "([^/]+)";
const ROUTES: Array<[RegExp, Page]> = [
  [/^\/$/, projectsPage],
  [new RegExp(`^/projects/${P}/${P}/?$`), workspacePage],
  [new RegExp(`^/projects/${P}/${P}/runs/${P}/?$`), runPage],
  [new RegExp(`^/projects/${P}/${P}/alerts/?$`), alertsPage],
  [new RegExp(`^/projects/${P}/${P}/artifacts/?$`), artifactsPage],
  [new RegExp(`^/projects/${P}/${P}/artifacts/${P}/?$`), artifactsPage],
  [new RegExp(`^/projects/${P}/${P}/artifacts/${P}/${P}/?$`), artifactsPage],
  [new RegExp(`^/projects/${P}/${P}/sweeps/?$`), sweepsPage],
  [new RegExp(`^/projects/${P}/${P}/sweeps/${P}/?$`), sweepsPage],
  [new RegExp(`^/projects/${P}/${P}/settings/?$`), projectSettingsPage],
  [new RegExp(`^/projects/${P}/${P}/reports/?$`), reportsPage],
  [new RegExp(`^/projects/${P}/${P}/reports/${P}/?$`), reportPage],
  [new RegExp(`^/share/${P}/?$`), sharedReportPage],
  [/^\/settings\/?$/, settingsPage],
];

let cleanup: Cleanup = undefined;

function keyDialog(): void {
  const input = h("input", { type: "password", placeholder: "rs_…", value: getApiKey(), size: 40, name: "api-key" });
  const dialog = h("dialog.key-dialog", null,
    h("form", { method: "dialog" },
      h("h3", null, "API key"),
      h("p", null, "Stored in this browser (localStorage) and sent as a Bearer token. ",
        "On the embedded server, from this machine, none is needed."),
      input,
      h("div.row", null,
        h("button", { value: "save", onclick: () => { setApiKey(input.value.trim()); forgetWhoami(); void render(); } }, "Save"),
        h("button", { value: "clear", onclick: () => { setApiKey(""); forgetWhoami(); void render(); } }, "Forget key"),
        h("button", { value: "cancel" }, "Cancel"))));
  document.body.appendChild(dialog);
  dialog.addEventListener("close", () => dialog.remove());
  dialog.showModal();
}

async function topBar(shared: boolean): Promise<HTMLElement> {
  const bar = h("header.top", null, h("a.brand", { href: "/" }, "runstream"));
  if (shared) {
    append(bar, [h("span.who", null, "shared report (read-only)")]);
    return bar;
  }
  const me = await whoami();
  const label = me.local_admin ? "local admin" : me.user ? `${me.user} · ${me.role} of ${me.team}` : "anonymous";
  append(bar, [h("span.spacer"), h("a", { href: "/settings" }, "settings"),
    h("span.who", { title: "who the server says you are" }, label),
    h("button.link", { onclick: keyDialog }, getApiKey() ? "change key" : "API key")]);
  return bar;
}

let generation = 0;
let leaving: AbortController | null = null;

async function render(): Promise<void> {
  // A newer render makes this one stale: after each await it stops and undoes what it started.
  const mine = ++generation;
  leaving?.abort();
  leaving = new AbortController();
  const signal = leaving.signal;
  if (typeof cleanup === "function") cleanup();
  cleanup = undefined;
  const app = document.getElementById("app")!;
  const path = location.pathname;
  const shared = path.startsWith("/share/");
  setShareToken(null);
  const bar = await topBar(shared);
  if (mine !== generation) return;
  clear(app);
  const main = h("main");
  app.append(bar, main);
  for (const [pattern, page] of ROUTES) {
    const m = path.match(pattern);
    if (!m) continue;
    let done: Cleanup = undefined;
    try {
      done = await page(main, m.slice(1).map(decodeURIComponent), signal);
    } catch (err) {
      if (mine === generation) main.append(errorBox(err));
    }
    if (mine !== generation) { if (typeof done === "function") done(); return; }
    cleanup = done;
    return;
  }
  main.append(h("h2", null, "Not found"), h("p", null, "No page here. ", h("a", { href: "/" }, "Projects")));
}

// Same-site links navigate without reloading; downloads and new tabs keep the browser's way.
document.addEventListener("click", (event) => {
  const a = (event.target as Element).closest?.("a");
  if (!a || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  const href = a.getAttribute("href");
  if (!href || !href.startsWith("/") || href.startsWith("//") || href.startsWith("/api/") ||
      a.hasAttribute("download") || a.target) return;
  event.preventDefault();
  navigate(href);
});
window.addEventListener("popstate", () => void render());
void render();
