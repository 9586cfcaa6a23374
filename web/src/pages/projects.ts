// Projects the caller can see: their team's, and every public one (no key: public only).

import { get } from "../api";
import type { Answer } from "../answers";
import { h } from "../dom";
import { fmtTime } from "../util";

export async function projectsPage(root: HTMLElement): Promise<void> {
  const { projects } = await get<Answer<"/projects">>("/projects");
  root.append(h("h2", null, "Projects"));
  if (!projects.length) {
    root.append(h("p", null, "No projects you can see yet. Log a run (", h("code", null, "runstream demo"),
      ") and reload, or enter an API key (top right) to see your team's private projects."));
    return;
  }
  root.append(h("table.grid.projects", null,
    h("thead", null, h("tr", null, ["project", "runs", "visibility", "created", ""].map((c) => h("th", null, c)))),
    h("tbody", null, projects.map((p) => {
      const base = `/projects/${encodeURIComponent(p.team)}/${encodeURIComponent(p.name)}`;
      return h("tr", null,
        h("td", null, h("a", { href: base }, `${p.team}/${p.name}`), p.description ? h("div.muted", null, p.description) : null),
        h("td.num", null, p.run_count), h("td", null, p.visibility), h("td", null, fmtTime(p.created_at)),
        h("td", null, h("a", { href: `${base}/artifacts` }, "artifacts"), " · ", h("a", { href: `${base}/alerts` }, "alerts"), " · ",
          h("a", { href: `${base}/reports` }, "reports")));
    }))));
}
