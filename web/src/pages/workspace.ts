// The workspace: a runs table paged, sorted, filtered and grouped by the server, and panels of
// the runs it selects: line charts (or its groups' mean ± std bands), and parallel coordinates,
// scatter, bar, parameter importance and media panels (web/src/panels/), in sections by metric prefix
// that fold. Eye toggles and colours per run; brushing a parallel-coordinates panel filters the
// table; checked runs open side by side in the run comparer. The layout is saved in this
// browser (per project and user) and as the project's named views, one of them the default.

import { del, get, patch, post, put, qs } from "../api";
import type { Answer } from "../answers";
import { ChartPanel, type MetricDef, type PanelSpec, stepMetricOf } from "../chart";
import { type ChartRun, seriesLoader, systemLoader } from "../data";
import { errorBox, guarded, h, select } from "../dom";
import { filterBuilder, type FilterRow, RUN_FIELDS, toFilter } from "../filters";
import { navigate, projectNav } from "../nav";
import { brushFilter } from "../panels/common";
import { CustomPanel, type CustomKind, type CustomSpec, isCustom, KIND_LABELS } from "../panels/custom";
import { type Brush, brushText } from "../panels/parallel";
import { userKey } from "../session";
import { afterPaint, colorOf, flatten, fmtNum, fmtTime, getPath, loadLocal, saveLocal } from "../util";

/** The key catalog: config, summary, metric and system keys of the project's runs. */
type Catalog = Answer<"/projects/{team}/{project}/keys">;
type RunRow = Answer<"/projects/{team}/{project}/runs">["runs"][number];
type Group = Answer<"/projects/{team}/{project}/runs/groups", "post">["groups"][number];
type ViewList = Answer<"/projects/{team}/{project}/views">;
type View = Answer<"/projects/{team}/{project}/views/{view_id}">;

/** A panel of the layout: a line chart (metric or system) or one of the kinds beyond lines. */
type AnySpec = PanelSpec | CustomSpec;

interface WsState {
  filters: FilterRow[];
  search: string;
  order: string;
  groupBy: string[];
  columns: string[];
  panels: AnySpec[];
  chartLimit: number;
  hidden: string[];
  /** Sections folded shut. */
  folded: string[];
}

interface GroupRow { key: string; label: string; values: Group["group"]; count: number; run_ids: string[];
                     summary: Group["summary"] }

const PAGE = 50;
const COMPARE_MAX = 20;
let panelSeq = 0;
const newId = () => `p${Date.now().toString(36)}${(panelSeq++).toString(36)}`;

/** The section a panel sits in: its metric's prefix (train/…), "system", or "Charts"; "Custom" for the kinds beyond lines. */
function sectionOf(spec: AnySpec): string {
  if (isCustom(spec)) return "Custom";
  if (spec.kind === "system") return "system";
  const slash = spec.metric.indexOf("/");
  return slash > 0 ? spec.metric.slice(0, slash) : "Charts";
}

function defaults(catalog: Catalog): WsState {
  return {
    filters: [], search: "", order: "-created_at", groupBy: [], chartLimit: 100, hidden: [], folded: [],
    columns: [...catalog.config.slice(0, 3).map((k) => `config.${k.key}`), ...catalog.summary.slice(0, 3).map((k) => `summary.${k.key}`)],
    panels: catalog.metric.slice(0, 6).map((k) => ({ id: newId(), metric: k.key, kind: "metric" as const, x: "step" as const, smoothing: 0 })),
  };
}

/** Both filters, or either (AND). */
function and(a: Record<string, unknown> | null, b: Record<string, unknown> | null): Record<string, unknown> | null {
  return a && b ? { $and: [a, b] } : a ?? b;
}

/** The view the page opens: ?view=<id>, else the project's default (none: ?view=none, or no default). */
async function openingView(base: string): Promise<View | null> {
  const asked = new URLSearchParams(location.search).get("view");
  if (asked === "none") return null;
  try {
    return await get<View>(`${base}/views/${encodeURIComponent(asked || "default")}`);
  } catch (err) {
    if (!asked && (err as { status?: number }).status === 404) return null; // no default view
    throw err;
  }
}

export async function workspacePage(root: HTMLElement, [team, project]: string[], signal?: AbortSignal): Promise<() => void> {
  performance.clearMarks("workspace-start");
  performance.clearMeasures("parallel-first-render");
  performance.mark("workspace-start");
  const enc = encodeURIComponent;
  const base = `/projects/${enc(team)}/${enc(project)}`;
  root.append(projectNav(team, project, "workspace"));
  const [catalog, user, view, viewList] = await Promise.all([get<Catalog>(`${base}/keys`), userKey(), openingView(base),
    get<ViewList>(`${base}/views`).catch((): ViewList => ({ views: [] }))]);
  const storageKey = `runstream.workspace.${user}.${team}/${project}`;
  const state: WsState = { ...defaults(catalog), ...(view ? view.spec as Partial<WsState> : loadLocal<Partial<WsState>>(storageKey, {})) };
  state.folded ??= [];
  const save = () => saveLocal(storageKey, state);
  const hidden = new Set(state.hidden);
  const metrics = catalog.metric.map((k) => k.key);
  const fields = [...RUN_FIELDS, ...catalog.config.map((k) => `config.${k.key}`), ...catalog.summary.map((k) => `summary.${k.key}`)];
  // What the new panel kinds may draw: config and summary keys, and the run columns that are values.
  const panelFields = [...catalog.config.map((k) => `config.${k.key}`), ...catalog.summary.map((k) => `summary.${k.key}`),
                       "state", "group", "job_type", "created_at"];
  const filters = () => toFilter(state.filters, state.search);
  // Brushes of parallel-coordinates panels, by panel: the table (and the line charts, which show its
  // first runs) read the workspace's filter AND every brush; the panels themselves read the filter only.
  const brushes = new Map<string, Brush>();
  const tableFilters = () => and(filters(), brushFilter([...brushes.values()].flatMap((b) => b.ranges)));
  /** How many runs the brushes keep, when the panels hold every run (no count request then), else null. */
  const brushedCount = (): number | null => {
    const all = [...brushes.values()];
    if (!all.length || !all.every((b) => b.complete && b.runIds)) return null;
    const [first, ...rest] = all.map((b) => new Set(b.runIds));
    return [...first].filter((id) => rest.every((s) => s.has(id))).length;
  };

  // -- the panels, in sections ---------------------------------------------------------------
  let chartRuns: ChartRun[] = [];
  let groups: GroupRow[] = [];
  let charts: ChartPanel[] = [];
  let customs: CustomPanel[] = [];
  const elOf = new Map<AnySpec, HTMLElement>();
  const sectionsBox = h("div.sections");
  const sections = new Map<string, { el: HTMLDetailsElement; grid: HTMLElement; count: HTMLElement }>();
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

  const section = (name: string) => {
    let s = sections.get(name);
    if (!s) {
      const count = h("span.muted.section-count");
      const el = h("details.section", { open: !state.folded.includes(name), dataset: { section: name } },
        h("summary", null, h("span.section-name", null, name), " ", count));
      const grid = h("div.panels");
      el.append(grid);
      el.addEventListener("toggle", () => {
        state.folded = el.open ? state.folded.filter((f) => f !== name) : [...new Set([...state.folded, name])];
        save();
      });
      s = { el, grid, count };
      sections.set(name, s);
      sectionsBox.append(el);
    }
    return s;
  };
  const recount = () => {
    for (const [name, s] of sections) {
      const n = s.grid.childElementCount;
      if (!n) { s.el.remove(); sections.delete(name); } else s.count.textContent = `(${n})`;
    }
  };
  // Move a panel one place earlier within its section (the layout's order is state.panels').
  const moveEarlier = (spec: AnySpec) => {
    const i = state.panels.indexOf(spec);
    let j = i - 1;
    while (j >= 0 && sectionOf(state.panels[j]) !== sectionOf(spec)) j--;
    if (j < 0) return;
    const other = state.panels[j];
    state.panels[i] = other;
    state.panels[j] = spec;
    elOf.get(other)?.before(elOf.get(spec)!);
    save();
  };
  const removePanel = (spec: AnySpec, panel: ChartPanel | CustomPanel) => {
    state.panels = state.panels.filter((p) => p !== spec);
    save();
    panel.destroy();
    panel.el.remove();
    elOf.delete(spec);
    charts = charts.filter((p) => p !== panel);
    customs = customs.filter((p) => p !== panel);
    if (brushes.delete(spec.id)) void brushChanged();
    recount();
  };

  const makeChart = (spec: PanelSpec) => {
    const system = spec.kind === "system";
    if (state.groupBy.length && !system && spec.x && spec.x !== "step") {
      spec.xUngrouped = spec.x; // bands are by step; the panel gets its own axis back when ungrouped
      spec.x = "step";
    } else if (!state.groupBy.length && spec.xUngrouped) {
      spec.x = spec.xUngrouped;
      delete spec.xUngrouped;
    }
    const panel: ChartPanel = new ChartPanel(spec, {
      loader: (s, r, w) => (system ? sysLoader(s, r, w) : state.groupBy.length ? groupedLoader(s, r, w) : runLoader(s, r, w)),
      hidden: isHidden, metrics, onChange: save,
      xChoices: system ? ["time", "relative"] : state.groupBy.length ? ["step"] : undefined,
      onMove: () => moveEarlier(spec),
      onRemove: () => removePanel(spec, panel),
    });
    charts.push(panel);
    return panel;
  };
  const makeCustom = (spec: CustomSpec) => {
    const panel: CustomPanel = new CustomPanel(spec, {
      base, filters, limit: 10_000, hidden: isHidden,
      onBrush: (brush) => {
        if (brush.ranges.length) brushes.set(spec.id, brush); else brushes.delete(spec.id);
        void brushChanged();
      },
      onMove: () => moveEarlier(spec),
      onRemove: () => removePanel(spec, panel),
      onDrawn: () => {
        if (spec.kind !== "parallel" || performance.getEntriesByName("parallel-first-render").length) return;
        void afterPaint().then(() => performance.measure("parallel-first-render", "workspace-start"));
      },
    });
    customs.push(panel);
    return panel;
  };
  const place = (spec: AnySpec) => {
    const panel = isCustom(spec) ? makeCustom(spec) : makeChart(spec);
    elOf.set(spec, panel.el);
    section(sectionOf(spec)).grid.append(panel.el);
    return panel;
  };
  const drawPanels = () => {
    charts.forEach((p) => p.destroy());
    customs.forEach((p) => p.destroy());
    charts = [];
    customs = [];
    elOf.clear();
    sections.clear();
    // New parallel panels start unbrushed (grouping changed): so does the table.
    brushes.clear();
    chips.replaceChildren();
    sectionsBox.replaceChildren();
    state.panels.forEach(place);
    recount();
  };
  // Each load takes a ticket; an answer to an older one (a slower earlier filter) is dropped.
  let chartTicket = 0;
  let tableTicket = 0;
  let refreshTicket = 0;
  const loadCharts = async (withCustom = true) => {
    const ticket = ++chartTicket;
    const custom = withCustom ? customs.map((p) => p.load()) : [];
    // The runs the line charts show (system panels too, when grouped): the table's first ones.
    const { runs } = await get<Answer<"/projects/{team}/{project}/runs">>(`${base}/runs` + qs({ filters: tableFilters(), order: state.order, limit: state.chartLimit, fields: "name,metrics" }), signal);
    if (ticket !== chartTicket || signal?.aborted) return;
    chartRuns = runs.map((r) => ({ id: r.id, name: r.name || r.id }));
    // A panel the reader left on its default x axis takes the step metric every shown run defines for its
    // metric (define_metric(step_metric=...)), when they all agree; bands are by step, so not when grouped.
    if (!state.groupBy.length && runs.length) {
      const defs: MetricDef[][] = runs.map((r) => r.metrics ?? []);
      let changed = false;
      for (const panel of charts) {
        if (panel.spec.kind === "system") continue;
        const chosen = defs.map((d) => stepMetricOf(d, panel.spec.metric));
        changed = panel.defaultX(chosen.every((c) => c === chosen[0]) ? chosen[0] : null) || changed;
      }
      if (changed) save();
    }
    chartNote.textContent = state.groupBy.length ? `grouped by ${state.groupBy.join(", ")}: mean ± std per group`
      : `charts show the first ${chartRuns.length} runs of the table`;
    await Promise.all([...charts.map((p) => p.load()), ...custom]);
  };

  // -- the table side ---------------------------------------------------------------------
  const status = h("div.ws-status");
  const table = h("table.grid.runs");
  const count = h("span.count");
  const pager = h("span.pager");
  const chips = h("span.chips");
  const selected = new Set<string>();
  const compareButton = h("button.compare", { disabled: true, title: "the checked runs side by side" }, "Compare");
  const comparer = h("section.comparer", { hidden: true });
  let cursors: (string | null)[] = [null];
  let pageIndex = 0;

  const toggle = (keys: string[], show: boolean, refetchGroups: boolean) => {
    performance.clearMarks("toggle-run-start");
    performance.mark("toggle-run-start");
    for (const k of keys) { if (show) hidden.delete(k); else hidden.add(k); }
    state.hidden = [...hidden];
    save();
    if (refetchGroups) {
      void Promise.all(charts.map((p) => p.load()));
    } else {
      for (const p of charts) p.setVisible(keys, show);
    }
    for (const p of customs) p.setVisible();
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
  const picked = () => {
    compareButton.disabled = selected.size < 2;
    compareButton.textContent = selected.size ? `Compare (${selected.size})` : "Compare";
  };
  const checkbox = (run: RunRow) => {
    const box = h("input.select-run", { type: "checkbox", checked: selected.has(run.id), title: "select for the comparer" });
    box.addEventListener("change", () => {
      if (box.checked && selected.size >= COMPARE_MAX) { box.checked = false; return; }
      if (box.checked) selected.add(run.id); else selected.delete(run.id);
      picked();
    });
    return box;
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
    h("td.nowrap", null, checkbox(run), eye([run.id], "show in charts", state.groupBy.length > 0),
      h("span.swatch", { style: { background: colorOf(run.id) } })),
    h("td.name", { className: indent ? "indent" : "" },
      h("a", { href: `${base}/runs/${enc(run.id)}` }, run.name || run.id)),
    h("td", null, h("span", { className: `state state-${run.state}` }, run.state)),
    h("td.nowrap", null, fmtTime(run.created_at)),
    tagsCell(run),
    state.columns.map((c) => h("td.num", null, fmtNum(getPath(c.startsWith("config.") ? run.config : run.summary, c.replace(/^(config|summary)\./, ""))))));

  const loadTable = async (known: number | null = null) => {
    const ticket = ++tableTicket;
    const f = tableFilters();
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
      known ?? get<Answer<"/projects/{team}/{project}/runs/count">>(`${base}/runs/count` + qs({ filters: f }), signal),
    ]);
    if (ticket !== tableTicket || signal?.aborted) return;
    cursors[pageIndex + 1] = page.next_cursor;
    const runs = typeof total === "number" ? total : total.count;
    count.textContent = `${runs} runs`;
    const first = pageIndex * PAGE;
    pager.replaceChildren(
      h("button.link", { disabled: pageIndex === 0, onclick: guarded(status, () => { pageIndex--; return loadTable(); }) }, "‹ prev"),
      ` ${runs ? first + 1 : 0}–${first + page.runs.length} `,
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

  // A brush changed: the chip says what the table is brushed to, the table and line charts follow
  // (measured: "brush", from the end of the drag to the paint of the filtered table).
  const brushChanged = async () => {
    performance.clearMarks("brush-start");
    performance.mark("brush-start");
    const ranges = [...brushes.values()].flatMap((b) => b.ranges);
    chips.replaceChildren(ranges.length ? h("span.chip.brush-chip", { title: `the table shows the runs inside every brushed range: ${brushText(ranges)}` },
      `brush: ${brushText(ranges)} `,
      h("button.link.chip-remove", { title: "clear the brush", onclick: () => customs.forEach((p) => p.clearBrush()) }, "✕")) : "");
    const ticket = ++refreshTicket;
    cursors = [null];
    pageIndex = 0;
    status.replaceChildren();
    try {
      await loadTable(brushedCount());
      if (ticket !== refreshTicket) return;
      await afterPaint();
      performance.measure("brush", "brush-start");
      root.dataset.brushed = String(ranges.length);
      await loadCharts(false);
    } catch (err) {
      if (ticket === refreshTicket && !signal?.aborted) status.replaceChildren(errorBox(err));
    }
  };

  // -- the run comparer -------------------------------------------------------------------
  const compare = async () => {
    const ids = [...selected];
    const { runs } = await get<Answer<"/projects/{team}/{project}/runs">>(`${base}/runs` + qs({ filters: { run_id: { $in: ids } }, limit: ids.length }), signal);
    const values = runs.map((r) => ({
      state: r.state, group: r.group, job_type: r.job_type, created: fmtTime(r.created_at),
      ...Object.fromEntries(Object.entries(flatten(r.config)).map(([k, v]) => [`config.${k}`, v])),
      ...Object.fromEntries(Object.entries(flatten(r.summary)).map(([k, v]) => [`summary.${k}`, v])),
    }) as Record<string, unknown>);
    const keys = [...new Set(values.flatMap((v) => Object.keys(v)))];
    const order = (k: string) => (k.startsWith("config.") ? 1 : k.startsWith("summary.") ? 2 : 0);
    keys.sort((a, b) => order(a) - order(b) || a.localeCompare(b));
    const only = h("input.diff-only", { type: "checkbox" });
    const grid = h("table.grid.compare-table", null,
      h("thead", null, h("tr", null, h("th", null, "key"), runs.map((r) =>
        h("th", null, h("span.swatch", { style: { background: colorOf(r.id) } }), " ", h("a", { href: `${base}/runs/${enc(r.id)}` }, r.name || r.id))))),
      h("tbody", null, keys.map((k) => {
        const texts = values.map((v) => (v[k] === undefined ? "" : typeof v[k] === "string" ? v[k] as string : JSON.stringify(v[k])));
        const differs = texts.some((t) => t !== texts[0]);
        return h("tr", { className: differs ? "differs" : "same", dataset: { key: k } },
          h("th", null, k), values.map((v) => h("td", null, fmtNum(v[k]))));
      })));
    only.addEventListener("change", () => grid.classList.toggle("diff-only", only.checked));
    const differing = grid.querySelectorAll("tr.differs").length;
    comparer.replaceChildren(
      h("div.comparer-head", null, h("b", null, `Comparing ${runs.length} runs`),
        h("span.muted", null, ` ${differing} of ${keys.length} values differ`),
        h("label", null, only, " differences only"),
        h("button.link.comparer-close", { title: "close", onclick: () => { comparer.hidden = true; } }, "✕")),
      h("div.compare-scroll", null, grid));
    comparer.hidden = false;
  };
  compareButton.addEventListener("click", guarded(status, compare));

  // -- saved views -------------------------------------------------------------------------
  let current: View | null = view;
  const views = viewList.views;
  const viewMsg = h("span.view-msg.muted");
  const viewPicker = select([["none", "this browser's layout"], ...views.map((v) => [v.view_id, `${v.name}${v.is_default ? " ★" : ""}`] as [string, string])],
    current?.view_id ?? "none", (id) => navigate(`${base}?view=${enc(id)}`), { className: "view-picker", title: "saved views (★ the default)" });
  const saveAsName = h("input.view-name", { placeholder: "view name", size: 14, hidden: true });
  const saveAsOk = h("button.view-save-as-ok", { hidden: true }, "save");
  const saveView = async () => {
    if (!current) return;
    current = await put<View>(`${base}/views/${enc(current.view_id)}`, { spec: state });
    viewMsg.textContent = `saved “${current.name}”`;
  };
  const saveAs = async () => {
    const name = saveAsName.value.trim();
    if (!name) { saveAsName.focus(); return; }
    const made = await post<View>(`${base}/views`, { name, spec: state });
    navigate(`${base}?view=${enc(made.view_id)}`);
  };
  saveAsOk.addEventListener("click", guarded(status, saveAs));
  saveAsName.addEventListener("keydown", (e) => { if (e.key === "Enter") guarded(status, saveAs)(); });
  const viewsBar = h("div.views", null, "view: ", viewPicker,
    h("button.view-save", { disabled: !current, title: "save the layout into this view", onclick: guarded(status, saveView) }, "Save"),
    h("button.view-save-as", { onclick: () => { saveAsName.hidden = saveAsOk.hidden = false; saveAsName.focus(); } }, "Save as…"),
    saveAsName, saveAsOk,
    h("button.view-default", { disabled: !current || current.is_default, title: "open this view when the project opens",
      onclick: guarded(status, async () => {
        if (!current) return;
        await put(`${base}/views/${enc(current.view_id)}`, { default: true });
        navigate(`${base}?view=${enc(current.view_id)}`, true);
      }) }, "Set as default"),
    h("button.view-delete.danger", { disabled: !current, onclick: guarded(status, async () => {
      if (!current || !confirm(`Delete the view “${current.name}”?`)) return;
      await del(`${base}/views/${enc(current.view_id)}`);
      navigate(`${base}?view=none`);
    }) }, "Delete"),
    viewMsg);

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
  const addSpec = (spec: AnySpec) => {
    state.panels.push(spec);
    save();
    const panel = place(spec);
    recount();
    void panel.load();
  };
  // "Add panel": a new kind asks for its fields (from the key catalog) in a small form.
  const panelForm = h("div.panel-form", { hidden: true });
  const fieldSelect = (cls: string, value: string, optional = false, choices = panelFields) =>
    select([...(optional ? [["", "—"] as [string, string]] : []), ...choices.map((f) => [f, f] as [string, string])], value, () => {}, { className: cls });
  const summaryFields = catalog.summary.map((k) => `summary.${k.key}`);
  const configFields = catalog.config.map((k) => `config.${k.key}`);
  const openForm = (kind: CustomKind) => {
    const inputs: HTMLElement[] = [];
    let make: () => CustomSpec;
    if (kind === "parallel") {
      const axes = h("select.pf-axes", { multiple: true, size: Math.min(8, panelFields.length) },
        panelFields.map((f) => h("option", { value: f, selected: [...configFields.slice(0, 3), ...summaryFields.slice(0, 1)].includes(f) }, f)));
      const color = fieldSelect("pf-color", summaryFields[0] ?? "", true);
      inputs.push(h("label", null, "axes ", axes), h("label", null, "colour by ", color));
      make = () => ({ id: newId(), kind, axes: [...axes.selectedOptions].map((o) => o.value), color: color.value || undefined });
    } else if (kind === "scatter") {
      const x = fieldSelect("pf-x", configFields[0] ?? panelFields[0]);
      const y = fieldSelect("pf-y", summaryFields[0] ?? panelFields[0]);
      const color = fieldSelect("pf-color", "", true);
      const logx = h("input.pf-logx", { type: "checkbox" });
      const logy = h("input.pf-logy", { type: "checkbox" });
      inputs.push(h("label", null, "x ", x, " ", logx, " log"), h("label", null, "y ", y, " ", logy, " log"), h("label", null, "colour by ", color));
      make = () => ({ id: newId(), kind, x: x.value, y: y.value, color: color.value || undefined, logx: logx.checked || undefined, logy: logy.checked || undefined });
    } else if (kind === "bar") {
      const value = fieldSelect("pf-value", summaryFields[0] ?? panelFields[0]);
      const by = fieldSelect("pf-by", "", true);
      const agg = select([["mean", "mean ± std"], ["min", "min"], ["max", "max"]], "mean", () => {}, { className: "pf-agg" });
      inputs.push(h("label", null, "value ", value), h("label", null, "per group of ", by), h("label", null, agg));
      make = () => ({ id: newId(), kind, value: value.value, by: by.value || undefined, agg: agg.value as "mean" | "min" | "max" });
    } else if (kind === "media") {
      // The keys runs logged media under (images, charts, audio, ...), asked for when the form opens.
      const key = h("select.pf-key", null, h("option", { value: "" }, "loading…"));
      const runs = select(["10", "20", "50", "100"].map((v) => [v, `${v} runs`] as [string, string]), "20", () => {}, { className: "pf-runs" });
      get<Answer<"/projects/{team}/{project}/media/keys">>(`${base}/media/keys`).then(({ keys }) => {
        key.replaceChildren(...(keys.length ? keys.map((k) => h("option", { value: k.key },
          `${k.key} (${k.media_types.join(", ")}; ${k.runs} run${k.runs === 1 ? "" : "s"})`)) : [h("option", { value: "" }, "no media logged")]));
      }, (err) => { key.replaceChildren(h("option", { value: "" }, "—")); panelForm.append(errorBox(err)); });
      inputs.push(h("label", null, "media key ", key), h("label", null, "latest of ", runs));
      make = () => ({ id: newId(), kind, key: key.value, runs: Number(runs.value) });
    } else {
      const metric = fieldSelect("pf-metric", summaryFields[0] ?? "", false, summaryFields);
      inputs.push(h("label", null, "metric ", metric));
      make = () => ({ id: newId(), kind, metric: metric.value });
    }
    panelForm.replaceChildren(h("b", null, KIND_LABELS[kind]), ...inputs,
      h("button.pf-add", { onclick: () => {
        const spec = make();
        if (spec.kind === "parallel" && spec.axes.length < 2) { panelForm.append(errorBox("choose two axes or more")); return; }
        if (spec.kind === "media" && !spec.key) { panelForm.append(errorBox("choose a media key (log one with run.log first)")); return; }
        panelForm.hidden = true;
        addSpec(spec);
      } }, "add"),
      h("button.link", { onclick: () => { panelForm.hidden = true; } }, "cancel"));
    panelForm.hidden = false;
  };
  const addPanel = select([["", "+ panel…"], ...Object.entries(KIND_LABELS).map(([k, label]) => [`new:${k}`, `${label}…`] as [string, string]),
                           ...metrics.map((m) => [`metric:${m}`, m] as [string, string]),
                           ...catalog.system.map((k) => [`system:${k.key}`, `system: ${k.key}`] as [string, string])], "", (v) => {
    if (!v) return;
    const [kind, metric] = [v.slice(0, v.indexOf(":")), v.slice(v.indexOf(":") + 1)];
    addPanel.value = "";
    if (kind === "new") { openForm(metric as CustomKind); return; }
    addSpec({ id: newId(), metric, kind: kind as "metric" | "system", x: kind === "system" ? "relative" : "step", smoothing: 0 });
  }, { className: "add-panel", title: "add panel: a line chart of a metric, or parallel coordinates, scatter, bar, importance, media across runs" });
  const saveReport = async () => {
    const f = filters();
    const report = await post<Answer<"/projects/{team}/{project}/reports", "post">>(`${base}/reports`, {
      title: `${project} workspace ${new Date().toLocaleDateString()}`,
      body: `# ${project}\n\nCharts of the runs${f ? " matching the workspace's filter" : ""}.\n`,
      panels: state.panels.filter((p) => p.kind !== "system").map((p) => (isCustom(p)
        ? { ...p, id: undefined, filters: f ?? {}, limit: 10_000 }
        : { metric: p.metric, x: p.xUngrouped ?? p.x, x_metric: p.xMetric, log: p.log, smoothing: p.smoothing, filters: f ?? {}, limit: state.chartLimit })),
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
  root.append(viewsBar, toolbar, panelForm, status, comparer,
    h("div.workspace", null,
      h("section.runs-side", null, h("div.table-head", null, count, chips, compareButton, pager), h("div.table-scroll", null, table)),
      h("section.charts-side", null, h("div.charts-head", null, chartNote), sectionsBox)));

  drawPanels();
  await refresh();
  await afterPaint();
  performance.measure("workspace-first-render", "workspace-start");
  root.dataset.ready = "1";
  return () => {
    charts.forEach((p) => p.destroy());
    customs.forEach((p) => p.destroy());
    document.removeEventListener("click", closeLists);
  };
}
