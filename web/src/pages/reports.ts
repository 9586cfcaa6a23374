// Reports: markdown with panels bound to runs or a filter (line charts, and the workspace's
// parallel coordinates, scatter, bar and importance panels); share links that open without an
// account (/share/<token> reads the report with the X-Runstream-Share header).

import { del, get, patch, post, qs, setShareToken } from "../api";
import type { Answer, Report } from "../answers";
import { ChartPanel, type PanelSpec, type XAxis } from "../chart";
import { seriesLoader, type ChartRun } from "../data";
import { errorBox, guarded, h, select } from "../dom";
import { renderMarkdown } from "../markdown";
import { navigate, projectNav } from "../nav";
import { CustomPanel, type CustomSpec, isCustom } from "../panels/custom";
import { fmtTime } from "../util";

const enc = encodeURIComponent;

/**
 * A report's panel spec, as stored in its panels array (free-form objects in the document): a line
 * chart, or (with `kind`) one of the workspace's other kinds, with its own fields.
 */
interface ReportPanel { kind?: string; metric: string; run_ids?: string[]; filters?: unknown; limit?: number; x?: XAxis; x_metric?: string; log?: boolean;
                        smoothing?: number; title?: string }
type Catalog = Answer<"/projects/{team}/{project}/keys">;

export async function reportsPage(root: HTMLElement, [team, project]: string[]): Promise<void> {
  const base = `/projects/${enc(team)}/${enc(project)}`;
  root.append(projectNav(team, project, "reports"));
  const { reports } = await get<Answer<"/projects/{team}/{project}/reports">>(`${base}/reports`);
  const title = h("input", { placeholder: "title of a new report", size: 40, name: "report-title" });
  const message = h("div");
  const create = async () => {
    try {
      const keys = await get<Catalog>(`${base}/keys`);
      const metric = keys.metric[0]?.key;
      const report = await post<Answer<"/projects/{team}/{project}/reports", "post">>(`${base}/reports`, {
        title: title.value.trim() || "Untitled report",
        body: `# ${title.value.trim() || "Untitled report"}\n\nWhat we found.\n\n{{panel 1}}\n`,
        panels: metric ? [{ metric, filters: {}, limit: 100 }] : [],
      });
      navigate(`${base}/reports/${enc(report.id)}`);
    } catch (err) { message.replaceChildren(errorBox(err)); }
  };
  root.append(h("h2", null, "Reports"),
    h("div.row", null, title, h("button.create-report", { onclick: create }, "create report")), message,
    reports.length ? h("table.grid.reports", null,
      h("thead", null, h("tr", null, ["title", "panels", "by", "updated"].map((c) => h("th", null, c)))),
      h("tbody", null, reports.map((r) => h("tr", null,
        h("td", null, h("a", { href: `${base}/reports/${enc(r.id)}` }, r.title)), h("td.num", null, r.panel_count),
        h("td", null, r.created_by ?? ""), h("td", null, fmtTime(r.updated_at))))))
      : h("p.muted", null, "No reports yet."));
}

/** Renders a report's body with its panels in place (and the unplaced ones after it). */
async function renderReport(team: string, project: string, report: Report, into: HTMLElement): Promise<Array<ChartPanel | CustomPanel>> {
  const base = `/projects/${enc(team)}/${enc(project)}`;
  const { html, panels: placed } = renderMarkdown(report.body ?? "");
  const body = h("article.markdown");
  body.innerHTML = html; // safe: renderMarkdown escapes every character of the source
  into.replaceChildren(body);
  const specs = (report.panels ?? []) as unknown[] as ReportPanel[];
  const charts: Array<ChartPanel | CustomPanel> = [];
  // A panel reads its run ids, or its filter (none: every run).
  const filtersOf = (p: ReportPanel) => (p.run_ids?.length ? { run_id: { $in: p.run_ids } }
    : p.filters && Object.keys(p.filters as object).length ? p.filters as Record<string, unknown> : null);
  const runCache = new Map<string, Promise<ChartRun[]>>();
  const runsFor = (p: ReportPanel): Promise<ChartRun[]> => {
    const key = JSON.stringify([p.run_ids, p.filters, p.limit]);
    if (!runCache.has(key)) {
      runCache.set(key, get<Answer<"/projects/{team}/{project}/runs">>(`${base}/runs` + qs({ filters: filtersOf(p), limit: Math.min(1000, p.limit ?? 100) }))
        .then((a) => a.runs.map((r) => ({ id: r.id, name: r.name || r.id }))));
    }
    return runCache.get(key)!;
  };
  const leftovers = h("div.panels");
  for (let i = 0; i < specs.length; i++) {
    const p = specs[i];
    const slot = body.querySelector(`[data-panel="${i + 1}"]`);
    if (isCustom(p)) {
      const panel = new CustomPanel({ ...(p as unknown as CustomSpec), id: `r${i}` }, { base, filters: () => filtersOf(p), limit: p.limit });
      charts.push(panel);
      if (slot && placed.includes(i + 1)) slot.replaceWith(panel.el); else leftovers.append(panel.el);
      continue;
    }
    const spec: PanelSpec = { id: `r${i}`, metric: p.metric, x: p.x ?? "step", xMetric: p.x_metric,
                              log: p.log, smoothing: p.smoothing ?? 0,
                              title: p.title ?? `${p.metric}${p.run_ids ? ` · ${p.run_ids.length} runs` : p.filters && Object.keys(p.filters as object).length ? " · filtered runs" : ""}` };
    let runs: ChartRun[] = [];
    const loader = seriesLoader(team, project, () => runs);
    const chart = new ChartPanel(spec, { loader: async (s, r, w) => { runs = await runsFor(p); return loader(s, r, w); },
                                          hidden: () => false, controls: true });
    charts.push(chart);
    if (slot && placed.includes(i + 1)) slot.replaceWith(chart.el); else leftovers.append(chart.el);
  }
  if (leftovers.childElementCount) into.append(leftovers);
  await Promise.all(charts.map((c) => c.load()));
  return charts;
}

export async function reportPage(root: HTMLElement, [team, project, reportId]: string[]): Promise<() => void> {
  const base = `/projects/${enc(team)}/${enc(project)}`;
  const path = `${base}/reports/${enc(reportId)}`;
  let report = await get<Report>(path);
  root.append(projectNav(team, project, "reports"));
  const view = h("div.report-view");
  const shareBox = h("div.share-box");
  const message = h("div");
  let charts: Array<ChartPanel | CustomPanel> = [];
  const draw = async () => { charts.forEach((c) => c.destroy()); charts = await renderReport(team, project, report, view); };

  const editor = h("div.report-editor", { hidden: true });
  const titleInput = h("input", { value: report.title, size: 50, name: "title" });
  const bodyInput = h("textarea", { rows: 12, cols: 80, name: "body" }, report.body ?? "");
  const panelsInput = h("textarea", { rows: 6, cols: 80, name: "panels" }, JSON.stringify(report.panels ?? [], null, 1));
  const keys = await get<Catalog>(`${base}/keys`).catch((): Catalog => ({ metric: [] }));
  const metricPick = select(keys.metric.map((k) => [k.key, k.key] as [string, string]), keys.metric[0]?.key ?? "", () => {});
  const runIds = h("input", { placeholder: "run ids, comma-separated (empty: a filter)", size: 30 });
  const filterInput = h("input", { placeholder: '{"state": "finished"}', size: 30 });
  const addPanel = () => {
    let panels: unknown[];
    try { panels = JSON.parse(panelsInput.value || "[]"); } catch { message.replaceChildren(errorBox("panels are not valid JSON")); return; }
    if (!Array.isArray(panels)) { message.replaceChildren(errorBox("panels must be a JSON array")); return; }
    const ids = runIds.value.split(",").map((s) => s.trim()).filter(Boolean);
    let filters: unknown = {};
    if (!ids.length && filterInput.value.trim()) {
      try { filters = JSON.parse(filterInput.value); } catch { message.replaceChildren(errorBox("the filter is not valid JSON")); return; }
    }
    panels.push(ids.length ? { metric: metricPick.value, run_ids: ids } : { metric: metricPick.value, filters, limit: 100 });
    panelsInput.value = JSON.stringify(panels, null, 1);
    bodyInput.value += `\n{{panel ${panels.length}}}\n`;
  };
  const save = async () => {
    let panels: unknown;
    try { panels = JSON.parse(panelsInput.value || "[]"); } catch { message.replaceChildren(errorBox("panels are not valid JSON")); return; }
    try {
      report = await patch<Answer<"/projects/{team}/{project}/reports/{report_id}", "patch">>(path, { title: titleInput.value, body: bodyInput.value, panels });
      heading.textContent = report.title;
      editor.hidden = true;
      message.replaceChildren();
      await draw();
    } catch (err) { message.replaceChildren(errorBox(err)); }
  };
  editor.append(h("label.block", null, "title ", titleInput),
    h("label.block", null, "markdown (", h("code", null, "{{panel N}}"), " places the Nth panel) ", bodyInput),
    h("div.row", null, "add panel: ", metricPick, runIds, " or filter ", filterInput, h("button", { onclick: addPanel }, "add")),
    h("label.block", null, "panels (JSON) ", panelsInput),
    h("button.save-report", { onclick: save }, "save"), " ", h("button.link", { onclick: () => { editor.hidden = true; } }, "cancel"));

  const share = async () => {
    try {
      const link = await post<Answer<"/projects/{team}/{project}/reports/{report_id}/share", "post">>(`${path}/share`, {});
      const url = `${location.origin}${link.url}`;
      shareBox.replaceChildren("Read-only link, valid until ", fmtTime(link.expires_at), ": ",
        h("a.share-link", { href: link.url, target: "_blank" }, url), " ",
        h("button.link", { onclick: () => void navigator.clipboard?.writeText(url) }, "copy"));
    } catch (err) { shareBox.replaceChildren(errorBox(err)); }
  };
  const revoke = async () => {
    try {
      report = await del<Answer<"/projects/{team}/{project}/reports/{report_id}/share", "delete">>(`${path}/share`); // answers the report
      shareBox.replaceChildren("Every share link made so far stopped working.");
    } catch (err) { shareBox.replaceChildren(errorBox(err)); }
  };
  const heading = h("h2", null, report.title);
  root.append(heading,
    h("div.row", null,
      h("button.edit-report", { onclick: () => { editor.hidden = !editor.hidden; } }, "edit"),
      h("button.share-report", { onclick: share }, "share link"),
      h("button.link", { onclick: revoke }, "revoke links"),
      h("button.link", { onclick: guarded(message, async () => { if (confirm("Delete this report?")) { await del(path); navigate(`${base}/reports`); } }) }, "delete")),
    shareBox, message, editor, view);
  await draw();
  return () => charts.forEach((c) => c.destroy());
}

/** /share/<token>: the report, read with the share token only (no account, no key). */
export async function sharedReportPage(root: HTMLElement, [token]: string[]): Promise<() => void> {
  setShareToken(token);
  let shared: Answer<"/shared/{token}">;
  try {
    shared = await get<Answer<"/shared/{token}">>(`/shared/${enc(token)}`);
  } catch (err) {
    root.append(h("h2", null, "This link does not work"), errorBox(err));
    return () => setShareToken(null);
  }
  const { report, project } = shared;
  root.append(h("h2.shared-title", null, report.title),
    h("p.muted", null, `${project.team}/${project.name} · shared read-only until ${fmtTime(shared.expires_at)}`));
  const view = h("div.report-view");
  root.append(view);
  const charts = await renderReport(project.team, project.name, report, view);
  return () => { charts.forEach((c) => c.destroy()); setShareToken(null); };
}
