// The workspace: a runs table paged, sorted, filtered and grouped by the server, and chart
// panels of the runs it selects (or of its groups, as mean ± std bands). Eye toggles and
// colours per run; the layout is saved in this browser, per project and user.

import { get, patch, post, qs } from "../api";
import type { Answer } from "../answers";
import { ChartPanel, type MetricDef, type PanelSpec, stepMetricOf } from "../chart";
import { type ChartRun, seriesLoader, systemLoader } from "../data";
import { errorBox, guarded, h, select } from "../dom";
import { filterBuilder, type FilterRow, RUN_FIELDS, toFilter } from "../filters";
import { navigate, projectNav } from "../nav";
import { userKey } from "../session";
import { afterPaint, colorOf, fmtNum, fmtTime, getPath, loadLocal, saveLocal } from "../util";

/** The key catalog: config, summary, metric and system keys of the project's runs. */
type Catalog = Answer<"/projects/{team}/{project}/keys">;
type RunRow = Answer<"/projects/{team}/{project}/runs">["runs"][number];
type Group = Answer<"/projects/{team}/{project}/runs/groups", "post">["groups"][number];

interface WsState {
  filters: FilterRow[];
  search: string;
  order: string;
  groupBy: string[];
  columns: string[];
  panels: PanelSpec[];
  chartLimit: number;
  hidden: string[];
}

interface GroupRow { key: string; label: string; values: Group["group"]; count: number; run_ids: string[];
                     summary: Group["summary"] }

const PAGE = 50;
let panelSeq = 0;
const newId = () => `p${Date.now().toString(36)}${(panelSeq++).toString(36)}`;

function defaults(catalog: Catalog): WsState {
  return {
    filters: [], search: "", order: "-created_at", groupBy: [], chartLimit: 100, hidden: [],
    columns: [...catalog.config.slice(0, 3).map((k) => `config.${k.key}`), ...catalog.summary.slice(0, 3).map((k) => `summary.${k.key}`)],
    panels: catalog.metric.slice(0, 6).map((k) => ({ id: newId(), metric: k.key, kind: "metric" as const, x: "step" as const, smoothing: 0 })),
  };
}

export async function workspacePage(root: HTMLElement, [team, project]: string[], signal?: AbortSignal): Promise<() => void> {
  performance.clearMarks("workspace-start");
  performance.mark("workspace-start");
  const enc = encodeURIComponent;
  const base = `/projects/${enc(team)}/${enc(project)}`;
  root.append(projectNav(team, project, "workspace"));
  const [catalog, user] = await Promise.all([get<Catalog>(`${base}/keys`), userKey()]);
  const storageKey = `runstream.workspace.${user}.${team}/${project}`;
  const state: WsState = { ...defaults(catalog), ...loadLocal<Partial<WsState>>(storageKey, {}) };
  const save = () => saveLocal(storageKey, state);
  const hidden = new Set(state.hidden);
  const metrics = catalog.metric.map((k) => k.key);
  const fields = [...RUN_FIELDS, ...catalog.config.map((k) => `config.${k.key}`), ...catalog.summary.map((k) => `summary.${k.key}`)];
  const filters = () => toFilter(state.filters, state.search);

  // -- the chart side ---------------------------------------------------------------------
  let chartRuns: ChartRun[] = [];
  let groups: GroupRow[] = [];
  let panels: ChartPanel[] = [];
  const grid = h("div.panels");
  const chartNote = h("span.muted");
  const isHidden = (key: string) => hidden.has(key);
  const runLoader = seriesLoader(team, project, () => chartRuns);
  const sysLoader = systemLoader(team, project, () => chartRuns);
  // Grouped charts draw each group's band from its visible runs (so a run's eye takes it out).
  const groupedLoader: typeof runLoader = async (spec, range, width) => {
    const body: Record<string, unknown> = { metric: spec.metric, points: Math.min(1000, Math.max(100, width)),
      groups: Object.fromEntries(groups.map((g) => [g.key, g.run_ids.filter((id) => !hidden.has(id))])
        .filter(([, ids]) => ids.length)) };
    if (range) body.step_range = range;
    if (!Object.keys(body.groups as object).length) return { lines: [] };
    const answer = await post<Answer<"/projects/{team}/{project}/bands", "post">>(`${base}/bands`, body);
    const labels = new Map(groups.map((g) => [g.key, g.label]));
    return {
      note: "mean ± std per group",
      lines: answer.groups.map((g) => ({
        key: g.group, label: labels.get(g.group) ?? g.group, color: colorOf(g.group), x: g.x, y: g.mean,
        lo: g.mean.map((m, i) => (m == null || g.std[i] == null ? null : m - g.std[i])),
        hi: g.mean.map((m, i) => (m == null || g.std[i] == null ? null : m + g.std[i])),
      })),
    };
  };

  const makePanel = (spec: PanelSpec) => {
    const system = spec.kind === "system";
    if (state.groupBy.length && !system && spec.x && spec.x !== "step") {
      spec.xUngrouped = spec.x; // bands are by step; the panel gets its own axis back when ungrouped
      spec.x = "step";
    } else if (!state.groupBy.length && spec.xUngrouped) {
      spec.x = spec.xUngrouped;
      delete spec.xUngrouped;
    }
    const panel = new ChartPanel(spec, {
      loader: (s, r, w) => (system ? sysLoader(s, r, w) : state.groupBy.length ? groupedLoader(s, r, w) : runLoader(s, r, w)),
      hidden: isHidden, metrics, onChange: save,
      xChoices: system ? ["time", "relative"] : state.groupBy.length ? ["step"] : undefined,
      onMove: () => {
        const i = state.panels.indexOf(spec);
        if (i <= 0) return;
        [state.panels[i - 1], state.panels[i]] = [state.panels[i], state.panels[i - 1]];
        const j = panels.indexOf(panel);
        [panels[j - 1], panels[j]] = [panels[j], panels[j - 1]];
        panels[j].el.before(panel.el);
        save();
      },
      onRemove: () => {
        state.panels = state.panels.filter((p) => p !== spec);
        save();
        panel.destroy();
        panel.el.remove();
        panels = panels.filter((p) => p !== panel);
      },
    });
    return panel;
  };
  const drawPanels = () => {
    panels.forEach((p) => p.destroy());
    panels = state.panels.map(makePanel);
    grid.replaceChildren(...panels.map((p) => p.el));
  };
  // Each load takes a ticket; an answer to an older one (a slower earlier filter) is dropped.
  let chartTicket = 0;
  let tableTicket = 0;
  let refreshTicket = 0;
  const loadCharts = async () => {
    const ticket = ++chartTicket;
    // The runs the charts show (system panels too, when grouped).
    const { runs } = await get<Answer<"/projects/{team}/{project}/runs">>(`${base}/runs` + qs({ filters: filters(), order: state.order, limit: state.chartLimit, fields: "name,metrics" }), signal);
    if (ticket !== chartTicket || signal?.aborted) return;
    chartRuns = runs.map((r) => ({ id: r.id, name: r.name || r.id }));
    // A panel the reader left on its default x axis takes the step metric every shown run defines for its
    // metric (define_metric(step_metric=...)), when they all agree; bands are by step, so not when grouped.
    if (!state.groupBy.length && runs.length) {
      const defs: MetricDef[][] = runs.map((r) => r.metrics ?? []);
      let changed = false;
      for (const panel of panels) {
        if (panel.spec.kind === "system") continue;
        const chosen = defs.map((d) => stepMetricOf(d, panel.spec.metric));
        changed = panel.defaultX(chosen.every((c) => c === chosen[0]) ? chosen[0] : null) || changed;
      }
      if (changed) save();
    }
    chartNote.textContent = state.groupBy.length ? `grouped by ${state.groupBy.join(", ")}: mean ± std per group`
      : `charts show the first ${chartRuns.length} runs of the table`;
    await Promise.all(panels.map((p) => p.load()));
  };

  // -- the table side ---------------------------------------------------------------------
  const status = h("div.ws-status");
  const table = h("table.grid.runs");
  const count = h("span.count");
  const pager = h("span.pager");
  let cursors: (string | null)[] = [null];
  let pageIndex = 0;

  const toggle = (keys: string[], show: boolean, refetchGroups: boolean) => {
    performance.clearMarks("toggle-run-start");
    performance.mark("toggle-run-start");
    for (const k of keys) { if (show) hidden.delete(k); else hidden.add(k); }
    state.hidden = [...hidden];
    save();
    if (refetchGroups) {
      void Promise.all(panels.map((p) => p.load()));
    } else {
      for (const p of panels) p.setVisible(keys, show);
    }
    void afterPaint().then(() => performance.measure("toggle-run", "toggle-run-start"));
  };
  const eye = (keys: string[], title: string, refetch = false) => {
    const on = () => !keys.every((k) => hidden.has(k));
    const button = h("button.eye", { title, "aria-pressed": String(on()), dataset: { keys: keys.join(",") } }, on() ? "◉" : "○");
    button.addEventListener("click", () => {
      const show = !on();
      toggle(keys, show, refetch);
      button.textContent = show ? "◉" : "○";
      button.setAttribute("aria-pressed", String(show));
    });
    return button;
  };

  const tagsCell = (run: RunRow) => {
    const cell = h("td.tags");
    const show = () => {
      cell.replaceChildren(...(run.tags ?? []).map((t) => h("span.tag", null, t)),
        h("button.link.edit-tags", { title: "edit tags", onclick: edit }, "✎"));
    };
    const edit = () => {
      const input = h("input.tag-input", { value: (run.tags ?? []).join(", "), size: 16, placeholder: "tag, tag" });
      const commit = async () => {
        const tags = input.value.split(",").map((t) => t.trim()).filter(Boolean);
        try {
          const updated = await patch<Answer<"/runs/{team}/{project}/{run_id}", "patch">>(`/runs/${enc(team)}/${enc(project)}/${enc(run.id)}`, { tags });
          run.tags = updated.tags;
        } catch (err) { cell.append(errorBox(err)); return; }
        show();
      };
      input.addEventListener("keydown", (e) => { if (e.key === "Enter") void commit(); if (e.key === "Escape") show(); });
      cell.replaceChildren(input, h("button.link", { onclick: commit }, "save"));
      input.focus();
    };
    show();
    return cell;
  };

  const header = () => {
    const sortable = (key: string, label: string) => {
      const active = state.order.slice(1) === key;
      const arrow = active ? (state.order[0] === "-" ? " ▼" : " ▲") : "";
      return h("th.sortable", { title: `sort by ${key}`, dataset: { key }, onclick: () => {
        state.order = (active && state.order[0] === "-" ? "+" : "-") + key;
        save();
        void refresh();
      } }, label + arrow);
    };
    return h("thead", null, h("tr", null,
      h("th", null, ""), sortable("name", "name"), sortable("state", "state"), sortable("created_at", "created"),
      h("th", null, "tags"), state.columns.map((c) => sortable(c, c.replace(/^(config|summary)\./, "")))));
  };
  const runRow = (run: RunRow, indent = false) => h("tr", { dataset: { run: run.id } },
    h("td.nowrap", null, eye([run.id], "show in charts", state.groupBy.length > 0),
      h("span.swatch", { style: { background: colorOf(run.id) } })),
    h("td.name", { className: indent ? "indent" : "" },
      h("a", { href: `${base}/runs/${enc(run.id)}` }, run.name || run.id)),
    h("td", null, h("span", { className: `state state-${run.state}` }, run.state)),
    h("td.nowrap", null, fmtTime(run.created_at)),
    tagsCell(run),
    state.columns.map((c) => h("td.num", null, fmtNum(getPath(c.startsWith("config.") ? run.config : run.summary, c.replace(/^(config|summary)\./, ""))))));

  const loadTable = async () => {
    const ticket = ++tableTicket;
    const f = filters();
    if (state.groupBy.length) {
      const aggregates = state.columns.filter((c) => c.startsWith("summary.")).map((c) => c.slice(8));
      const answer = await post<Answer<"/projects/{team}/{project}/runs/groups", "post">>(`${base}/runs/groups`, { by: state.groupBy, filters: f ?? undefined, aggregates, run_ids: true }, signal);
      if (ticket !== tableTicket || signal?.aborted) return;
      groups = answer.groups.map((g) => {
        const values = state.groupBy.map((k) => g.group[k]);
        return { key: `group:${JSON.stringify(values)}`, label: values.map((v) => (v === null ? "—" : String(v))).join(" / "),
                 values: g.group, count: g.count, run_ids: g.run_ids ?? [], summary: g.summary };
      });
      count.textContent = `${groups.length} groups, ${groups.reduce((n, g) => n + g.count, 0)} runs`;
      pager.replaceChildren();
      const body = h("tbody");
      for (const g of groups) {
        const expand = h("button.link.expand", { title: "show its runs" }, "▸");
        const row = h("tr.group", { dataset: { group: g.label } },
          h("td.nowrap", null, eye([g.key], "show this group in charts"), h("span.swatch", { style: { background: colorOf(g.key) } })),
          h("td.name", { colSpan: 4 }, expand, ` ${g.label} `, h("span.muted", null, `(${g.count} runs)`)),
          state.columns.map((c) => h("td.num", null, c.startsWith("summary.") ? fmtNum(g.summary?.[c.slice(8)]?.mean) : "")));
        body.append(row);
        let open: HTMLElement[] = [];
        expand.addEventListener("click", guarded(status, async () => {
          if (open.length) { open.forEach((r) => r.remove()); open = []; expand.textContent = "▸"; return; }
          expand.textContent = "▾";
          try {
            const { runs } = await get<Answer<"/projects/{team}/{project}/runs">>(`${base}/runs` + qs({ filters: { run_id: { $in: g.run_ids.slice(0, 200) } }, order: state.order, limit: 200 }), signal);
            open = runs.map((r) => runRow(r, true));
            row.after(...open);
          } catch (err) { expand.textContent = "▸"; throw err; }
        }));
      }
      table.replaceChildren(header(), body);
      return;
    }
    const [page, total] = await Promise.all([
      get<Answer<"/projects/{team}/{project}/runs">>(`${base}/runs` + qs({ filters: f, order: state.order, limit: PAGE, cursor: cursors[pageIndex] }), signal),
      get<Answer<"/projects/{team}/{project}/runs/count">>(`${base}/runs/count` + qs({ filters: f }), signal),
    ]);
    if (ticket !== tableTicket || signal?.aborted) return;
    cursors[pageIndex + 1] = page.next_cursor;
    count.textContent = `${total.count} runs`;
    const first = pageIndex * PAGE;
    pager.replaceChildren(
      h("button.link", { disabled: pageIndex === 0, onclick: guarded(status, () => { pageIndex--; return loadTable(); }) }, "‹ prev"),
      ` ${total.count ? first + 1 : 0}–${first + page.runs.length} `,
      h("button.link.next-page", { disabled: !page.next_cursor, onclick: guarded(status, () => { pageIndex++; return loadTable(); }) }, "next ›"));
    table.replaceChildren(header(), h("tbody", null, page.runs.map((r) => runRow(r))));
  };

  const refresh = async () => {
    const ticket = ++refreshTicket;
    cursors = [null];
    pageIndex = 0;
    status.replaceChildren();
    try {
      await loadTable();
      if (ticket !== refreshTicket) return;
      await loadCharts();
    } catch (err) {
      if (ticket === refreshTicket && !signal?.aborted) status.replaceChildren(errorBox(err));
    }
  };

  // -- toolbar ----------------------------------------------------------------------------
  const checklist = (label: string, options: string[], chosen: string[], onChange: (v: string[]) => void, cls: string) => {
    const items = h("div.checklist-items");
    const box = h("details.checklist", { className: cls }, h("summary", null, label), items);
    for (const o of options) {
      const input = h("input", { type: "checkbox", checked: chosen.includes(o), value: o });
      input.addEventListener("change", () => {
        const next = [...box.querySelectorAll<HTMLInputElement>("input:checked")].map((i) => i.value);
        onChange(next);
      });
      items.append(h("label", null, input, " ", o));
    }
    return box;
  };
  const search = h("input.search", { type: "search", placeholder: "search run names", value: state.search });
  search.addEventListener("change", () => { state.search = search.value; save(); void refresh(); });
  const addPanel = select([["", "+ panel…"], ...metrics.map((m) => [`metric:${m}`, m] as [string, string]),
                           ...catalog.system.map((k) => [`system:${k.key}`, `system: ${k.key}`] as [string, string])], "", (v) => {
    if (!v) return;
    const [kind, metric] = [v.slice(0, v.indexOf(":")), v.slice(v.indexOf(":") + 1)];
    const spec: PanelSpec = { id: newId(), metric, kind: kind as "metric" | "system", x: kind === "system" ? "relative" : "step", smoothing: 0 };
    state.panels.push(spec);
    save();
    const panel = makePanel(spec);
    panels.push(panel);
    grid.append(panel.el);
    void panel.load();
    addPanel.value = "";
  }, { className: "add-panel" });
  const saveReport = async () => {
    const f = filters();
    const report = await post<Answer<"/projects/{team}/{project}/reports", "post">>(`${base}/reports`, {
      title: `${project} workspace ${new Date().toLocaleDateString()}`,
      body: `# ${project}\n\nCharts of the runs${f ? " matching the workspace's filter" : ""}.\n`,
      panels: state.panels.filter((p) => p.kind !== "system").map((p) => ({ metric: p.metric, x: p.xUngrouped ?? p.x,
        x_metric: p.xMetric, log: p.log, smoothing: p.smoothing, filters: f ?? {}, limit: state.chartLimit })),
    });
    navigate(`${base}/reports/${enc(report.id)}`);
  };
  const toolbar = h("div.toolbar", null,
    search,
    filterBuilder(state.filters, fields, () => { save(); void refresh(); }),
    checklist("group by", catalog.config.map((k) => `config.${k.key}`), state.groupBy,
      (v) => { state.groupBy = v; save(); drawPanels(); void refresh(); }, "group-by"),
    checklist("columns", fields.filter((f) => f.startsWith("config.") || f.startsWith("summary.")), state.columns,
      (v) => { state.columns = v; save(); guarded(status, loadTable)(); }, "columns"),
    h("label", null, "charts: ", select([["10", "10"], ["100", "100"], ["1000", "1,000"]].map(([v, l]) => [v, `${l} runs`] as [string, string]),
      String(state.chartLimit), (v) => { state.chartLimit = Number(v); save(); guarded(status, loadCharts)(); }, { className: "chart-limit" })),
    h("button.link", { onclick: guarded(status, () => { toggle(chartRuns.map((r) => r.id), true, state.groupBy.length > 0); return loadTable(); }) }, "show all"),
    addPanel,
    h("button", { onclick: guarded(status, saveReport) }, "save as report"));

  // An open checklist closes when the click lands elsewhere.
  const closeLists = (e: Event) => root.querySelectorAll("details.checklist[open]").forEach((d) => {
    if (!d.contains(e.target as Node)) d.removeAttribute("open");
  });
  document.addEventListener("click", closeLists);
  root.append(toolbar, status,
    h("div.workspace", null,
      h("section.runs-side", null, h("div.table-head", null, count, pager), h("div.table-scroll", null, table)),
      h("section.charts-side", null, h("div.charts-head", null, chartNote), grid)));

  drawPanels();
  await refresh();
  await afterPaint();
  performance.measure("workspace-first-render", "workspace-start");
  root.dataset.ready = "1";
  return () => { panels.forEach((p) => p.destroy()); document.removeEventListener("click", closeLists); };
}
