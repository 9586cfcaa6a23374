// A project's sweeps (docs/sweeps.md): the list, and a sweep's page: its state with the controls
// that change it, its configuration, agents and best run, the metric over its runs with the best
// so far, its runs (a stopped one with the reason) and their parallel coordinates. While the sweep
// can still start or end runs, the page polls it and redraws what changed.

import uPlot from "uplot";
import { get, patch, qs } from "../api";
import type { Answer } from "../answers";
import { dangerDialog } from "../confirm";
import { errorBox, guarded, h, replace } from "../dom";
import { navigate, projectNav } from "../nav";
import { fetchColumns } from "../panels/common";
import { type Brush, type ParallelPanel, parallelPanel } from "../panels/parallel";
import { whoami } from "../session";
import { colorOf, flatten, fmtAgo, fmtNum, fmtTime } from "../util";

const enc = encodeURIComponent;
const POLL_MS = 5000;
/** The runs a sweep's table and chart show (the API's page size); more are in the workspace. */
const MAX_RUNS = 1000;

type SweepList = Answer<"/projects/{team}/{project}/sweeps">;
type Sweep = Answer<"/projects/{team}/{project}/sweeps/{sweep}">;
type RunRow = Answer<"/projects/{team}/{project}/runs">["runs"][number];
type Alerts = Answer<"/projects/{team}/{project}/alerts">;
/** The sweep's metric, as its configuration has it (`metric: {name, goal}`). */
interface Metric { name: string; goal: "minimize" | "maximize" }

const runHref = (team: string, project: string, runId: string) =>
  `/projects/${enc(team)}/${enc(project)}/runs/${enc(runId)}`;
const sweepsBase = (team: string, project: string) => `/projects/${enc(team)}/${enc(project)}/sweeps`;
const stateBadge = (state: string) => h("span", { className: `state state-${state}` }, state);
/** Sweep states in which no run starts any more (a running one may still end: see the poll). */
const ENDED = new Set(["finished", "canceled"]);

export async function sweepsPage(root: HTMLElement, [team, project, sweepId]: string[], signal?: AbortSignal): Promise<(() => void) | void> {
  root.append(projectNav(team, project, "sweeps"));
  if (sweepId) return sweepPage(root, team, project, sweepId, signal);
  const { sweeps, total } = await get<SweepList>(`${sweepsBase(team, project)}${qs({ limit: 200 })}`, signal);
  if (!sweeps.length) {
    root.append(h("h2", null, "Sweeps"), startHint(team, project));
    root.dataset.ready = "1";
    return;
  }
  root.append(h("h2", null, "Sweeps ", h("span.muted", null, String(total))),
    h("table.grid.sweeps", null,
      h("thead", null, h("tr", null, ["name", "id", "method", "metric", "state", "runs", "created"].map((c) => h("th", null, c)))),
      h("tbody", null, sweeps.map((s) => h("tr", { dataset: { sweep: s.sweep_id } },
        h("td", null, h("a", { href: `${sweepsBase(team, project)}/${enc(s.sweep_id)}` }, s.name || s.sweep_id)),
        h("td", null, h("code", null, s.sweep_id)), h("td", null, s.method),
        h("td", null, s.metric ? `${s.metric.name} ${s.metric.goal === "maximize" ? "↑" : "↓"}` : ""), h("td", null, stateBadge(s.state)),
        h("td.num", null, s.run_count), h("td.nowrap", null, fmtTime(s.created_at)))))));
  if (total > sweeps.length) root.append(h("p.muted", null, `the newest ${sweeps.length} of ${total} sweeps`));
  root.dataset.ready = "1";
}

/** How to start a sweep: the CLI's two commands (docs/sweeps.md). */
function startHint(team: string, project: string): HTMLElement {
  return h("div.muted.sweep-hint", null,
    h("p", null, "No sweeps yet. A sweep searches hyperparameters: write its configuration (W&B's format) and start it, ",
      "then run agents on as many machines as you like:"),
    h("pre", null, `runstream sweep sweep.yaml --project ${project}\nrunstream agent ${team}/${project}/SWEEP_ID --count 20`),
    h("p", null, "or from Python: ", h("code", null, "runstream.sweep(config, project=...)"), " and ",
      h("code", null, "runstream.agent(sweep_id, function=train)"), "."));
}

/** A configuration as YAML, the way sweep files are written: mappings nest, scalars and flat lists inline. */
function toYaml(value: Record<string, unknown>): string {
  const plain = /^[A-Za-z_$/{][\w ./${}@:-]*$/;
  const scalar = (v: unknown) =>
    typeof v === "string" && plain.test(v) && !/^(true|false|null|yes|no|on|off|~)$/i.test(v) && !v.endsWith(" ") ? v : JSON.stringify(v);
  const lines: string[] = [];
  const walk = (obj: Record<string, unknown>, pad: string) => {
    for (const [k, v] of Object.entries(obj)) {
      if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) {
        lines.push(`${pad}${k}:`);
        walk(v as Record<string, unknown>, `${pad}  `);
      } else if (Array.isArray(v) && v.some((x) => x && typeof x === "object")) {
        lines.push(`${pad}${k}:`, ...v.map((x) => `${pad}  - ${JSON.stringify(x)}`));
      } else {
        lines.push(`${pad}${k}: ${Array.isArray(v) ? `[${v.map(scalar).join(", ")}]` : scalar(v)}`);
      }
    }
  };
  walk(value, "");
  return lines.join("\n");
}

interface Param { name: string; constant: boolean }

/** A configuration's parameters by flat (dotted) name, nested `parameters` flattened as the controller does;
 * constants (`value`, `distribution: constant`) are marked: they vary in no run, so no axis shows them. */
function paramsOf(parameters: unknown, prefix = ""): Param[] {
  if (!parameters || typeof parameters !== "object") return [];
  return Object.entries(parameters as Record<string, unknown>).flatMap(([name, spec]) => {
    const s = (spec && typeof spec === "object" ? spec : {}) as Record<string, unknown>;
    if (s.parameters && typeof s.parameters === "object") return paramsOf(s.parameters, `${prefix}${name}.`);
    return [{ name: `${prefix}${name}`, constant: "value" in s || s.distribution === "constant" }];
  });
}

const numeric = (v: unknown): number | null => (typeof v === "number" && Number.isFinite(v) ? v : null);

/** Each run's metric by creation order (points by state) and the best so far (a step line). */
function metricChart(box: HTMLElement, runs: RunRow[], metric: Metric, onPick: (run: RunRow) => void): uPlot | null {
  const values = runs.map((r) => numeric(r.summary?.[metric.name]));
  if (!values.some((v) => v !== null)) {
    replace(box, h("p.muted", null, `No run has logged ${metric.name} yet.`));
    return null;
  }
  const better = (a: number, b: number) => (metric.goal === "maximize" ? a > b : a < b);
  let best: number | null = null;
  const bestSoFar = values.map((v) => (best = v !== null && (best === null || better(v, best)) ? v : best));
  // Points of one colour per kind of ending: stopped (early termination) apart from finished, the rest together.
  const kinds: Array<[string, string, (r: RunRow) => boolean]> = [
    ["finished", "#2563eb", (r) => r.state === "finished"],
    ["stopped", "#ea580c", (r) => r.state === "stopped"],
    ["running", "#0891b2", (r) => r.state === "running"],
    ["other", "#9ca3af", (r) => !["finished", "stopped", "running"].includes(r.state ?? "")],
  ];
  const shown = kinds.filter(([, , is]) => runs.some(is));
  const label = h("div.sweep-chart-label.muted", null, "\u00a0");
  const canvas = h("div");
  replace(box, canvas, label);
  const data: uPlot.AlignedData = [runs.map((_, i) => i + 1), ...shown.map(([, , is]) => values.map((v, i) => (is(runs[i]) ? v : null))),
    bestSoFar];
  const plot = new uPlot({
    width: Math.max(300, box.clientWidth || 700), height: 240,
    scales: { x: { time: false } },
    series: [
      { label: "run" },
      ...shown.map(([name, color]): uPlot.Series => ({ label: name, stroke: color, paths: () => null,
        points: { show: true, size: 8, stroke: color, fill: color } })),
      { label: "best so far", stroke: "#16a34a", width: 2, paths: uPlot.paths.stepped!({ align: 1 }), spanGaps: true,
        points: { show: false } },
    ],
    axes: [
      { stroke: "#666", grid: { stroke: "#eee" }, label: "run (by creation)", values: (_u, ticks) => ticks.map((t) => (Number.isInteger(t) ? String(t) : "")) },
      { stroke: "#666", size: 60, grid: { stroke: "#eee" }, label: metric.name, values: (_u, ticks) => ticks.map((t) => fmtNum(t)) },
    ],
    cursor: { drag: { x: false, y: false }, points: { show: false } },
    legend: { show: true, live: false },
    hooks: {
      setCursor: [(u) => {
        const run = u.cursor.idx === null || u.cursor.idx === undefined ? undefined : runs[u.cursor.idx];
        label.textContent = run ? `#${u.cursor.idx! + 1} ${run.name || run.id} · ${run.state ?? ""} · ${metric.name} ${fmtNum(values[u.cursor.idx!])}` : "\u00a0";
      }],
    },
  }, data, canvas);
  // A click on the chart opens the run under the cursor.
  plot.over.addEventListener("click", () => {
    const i = plot.cursor.idx;
    if (i !== null && i !== undefined && runs[i]) onPick(runs[i]);
  });
  box.dataset.points = String(values.filter((v) => v !== null).length);
  return plot;
}

async function sweepPage(root: HTMLElement, team: string, project: string, sweepId: string, signal?: AbortSignal): Promise<() => void> {
  const path = `${sweepsBase(team, project)}/${enc(sweepId)}`;
  const project_ = `/projects/${enc(team)}/${enc(project)}`;
  const runsQuery = qs({ filters: { sweep: { $eq: sweepId } }, order: "created_at", limit: MAX_RUNS, fields: "name,state,created_at,config,summary" });
  const load = () => Promise.all([get<Sweep>(path, signal), get<Answer<"/projects/{team}/{project}/runs">>(`${project_}/runs${runsQuery}`, signal)]);
  let [sweep, { runs, next_cursor }] = await load();
  // Why a stopped run stopped: the processor's "stopped by sweep" alert of it (rule sweep:<id>, the reason as
  // its text), read from the project's alerts since the sweep began, and only while some run is stopped.
  const reasons = new Map<string, string>();
  const loadReasons = async () => {
    if (!runs.some((r) => r.state === "stopped" && !reasons.has(r.id))) return;
    try {
      const { alerts } = await get<Alerts>(`${project_}/alerts${qs({ since: Math.floor(sweep.created_at), limit: 10_000 })}`, signal);
      for (const a of alerts) if (a.rule_id === `sweep:${sweepId}` && !reasons.has(a.run_id)) reasons.set(a.run_id, a.text);
    } catch { /* the runs still show as stopped, without the why */ }
  };
  await loadReasons();
  const mayChange = await whoami().then((me) => me.local_admin || !!me.user); // anonymous readers only read
  const config = (sweep.config ?? {}) as Record<string, unknown>;
  const metric = (sweep.metric ?? null) as Metric | null;
  const params = paramsOf(config.parameters);

  const status = h("div.sweep-status");
  const stateBox = h("span.sweep-state");
  const controls = h("span.sweep-controls", { style: { display: "inline-flex", gap: "6px", fontSize: "14px", fontWeight: "400", marginLeft: "10px" } });
  const overview = h("div.sweep-overview");
  const agentsBox = h("div.sweep-agents");
  const bestBox = h("div.sweep-best");
  const chartBox = h("div.sweep-chart");
  const runsBox = h("div.sweep-runs");
  const parallelBox = h("div.sweep-parallel");
  let plot: uPlot | null = null;
  let parallel: ParallelPanel | null = null;

  const setState = async (state: string) => {
    await patch(path, { state });
    await refresh();
  };
  const drawHead = () => {
    root.dataset.state = sweep.state;
    replace(stateBox, stateBadge(sweep.state));
    if (!mayChange) return replace(controls);
    const button = (label: string, state: string, title: string) =>
      h("button", { className: `sweep-${label.toLowerCase()}`, title, onclick: guarded(status, () => setState(state)) }, label);
    const s = sweep.state;
    replace(controls,
      s === "running" ? button("Pause", "paused", "hand out no new runs until resumed; running runs go on") : null,
      s === "paused" || s === "stopped" ? button("Resume", "running", "hand out runs again") : null,
      s === "running" || s === "paused" ? button("Stop", "stopped", "no new runs; running runs finish") : null,
      s === "running" || s === "paused" || s === "stopped" ? h("button.danger.sweep-cancel", {
        title: "no new runs; running runs are told to stop",
        onclick: guarded(status, () => dangerDialog({
          title: `Cancel sweep ${sweep.name || sweep.sweep_id}?`,
          body: h("p", null, "No new runs start, and its agents stop the runs still running (they end as ",
            h("i", null, "stopped"), "). A canceled sweep cannot be resumed."),
          action: "Cancel sweep",
          run: () => setState("canceled"),
        })),
      }, "Cancel") : null);
  };
  const drawOverview = () => {
    const counts = Object.entries((sweep.counts ?? {}) as Record<string, number>).filter(([, n]) => n > 0);
    const kv = (rows: Array<[string, unknown]>) => h("table.kv", null, h("tbody", null,
      rows.filter(([, v]) => v !== undefined && v !== null && v !== "")
        .map(([k, v]) => h("tr", null, h("th", null, k), h("td", null, v instanceof Node ? v : fmtNum(v))))));
    replace(overview, kv([
      ["id", h("code", null, sweep.sweep_id)], ["method", sweep.method],
      ["metric", metric ? `${metric.name} (${metric.goal})` : "none"],
      ["runs", `${sweep.run_count}${counts.length ? ` · ${counts.map(([state, n]) => `${n} ${state}`).join(", ")}` : ""}`],
      ["created", `${fmtTime(sweep.created_at)}${sweep.created_by ? ` by ${sweep.created_by}` : ""}`],
      ["updated", fmtTime(sweep.updated_at)],
      ["agent", ENDED.has(sweep.state) ? null : h("code", null, `runstream agent ${team}/${project}/${sweep.sweep_id}`)],
    ]));
  };
  const drawAgents = () => {
    const agents = sweep.agents ?? [];
    replace(agentsBox, agents.length ? h("table.grid.sweep-agents-table", null,
      h("thead", null, h("tr", null, ["agent", "host", "pid", "started", "last heartbeat", "state"].map((c) => h("th", null, c)))),
      h("tbody", null, agents.map((a) => h("tr", { dataset: { agent: a.agent_id } },
        h("td", null, h("code", null, a.agent_id)), h("td", null, a.host), h("td.num", null, a.pid),
        h("td.nowrap", null, fmtTime(a.started_at)), h("td.nowrap", { title: fmtTime(a.heartbeat_at) }, fmtAgo(a.heartbeat_at)),
        h("td", null, stateBadge(a.state))))))
      : h("p.muted", null, "No agent has joined yet. Start one with ", h("code", null, `runstream agent ${team}/${project}/${sweep.sweep_id}`)));
  };
  const drawBest = () => {
    const best = sweep.best;
    replace(bestBox, best && best.run_id
      ? h("p.sweep-best-run", null, h("span.swatch", { style: { background: colorOf(best.run_id) } }), " ",
        h("a", { href: runHref(team, project, best.run_id) }, best.name || best.run_id), " ",
        h("span.muted", null, `${metric?.name ?? "metric"} = `), h("b", null, fmtNum(best.value)))
      : h("p.muted", null, metric ? `No run has logged ${metric.name} yet.` : "The sweep has no metric."));
  };
  const drawRuns = () => {
    const best = sweep.best?.run_id;
    replace(runsBox, runs.length ? h("table.grid.sweep-runs-table", null,
      h("thead", null, h("tr", null, ["#", "run", "state", ...(metric ? [metric.name] : []), ...params.map((p) => p.name), "created"].map((c) => h("th", null, c)))),
      h("tbody", null, runs.map((r, i) => {
        const config = flatten(r.config ?? {});
        const reason = r.state === "stopped" ? reasons.get(r.id) ?? "stopped by the sweep" : "";
        return h("tr", { className: r.id === best ? "best" : "", dataset: { run: r.id, state: r.state ?? "" },
          style: r.id === best ? { background: "#f0fdf4" } : null },
          h("td.num.muted", null, i + 1),
          h("td", null, h("span.swatch", { style: { background: colorOf(r.id) } }), " ", h("a", { href: runHref(team, project, r.id) }, r.name || r.id),
            r.id === best ? h("span.muted", null, " ★ best") : null),
          h("td", null, stateBadge(r.state ?? ""), reason ? h("div.muted.stop-reason", null, reason) : null),
          metric ? h("td.num", null, fmtNum(r.summary?.[metric.name])) : null,
          params.map((p) => h("td.num", null, fmtNum(config[p.name]))),
          h("td.nowrap", null, fmtTime(r.created_at)));
      })))
      : h("p.muted", null, "No runs yet."),
    next_cursor ? h("p.muted", null, `the first ${runs.length} runs; `, h("a", { href: project_ }, "the workspace"), ` lists them all (filter sweep = ${sweepId})`) : null);
    applyBrush();
  };
  const drawChart = () => {
    plot?.destroy();
    plot = metric ? metricChart(chartBox, runs, metric, (r) => navigate(runHref(team, project, r.id))) : null;
    if (!metric) replace(chartBox, h("p.muted", null, "The sweep has no metric to chart."));
  };
  // Parallel coordinates of the sweep's runs: its parameters, then the metric (the colour too). A brush
  // keeps the runs table to the runs inside it; a poll gives the panel new data and keeps the brush.
  const brushNote = h("p.muted.sweep-brush-note");
  let brushed: Set<string> | null = null;
  const applyBrush = () => {
    for (const row of runsBox.querySelectorAll<HTMLElement>("tr[data-run]")) row.hidden = brushed !== null && !brushed.has(row.dataset.run!);
    brushNote.textContent = brushed ? `${brushed.size} of ${runs.length} runs inside the brush (click an axis to clear its brush)` : "";
  };
  const fields = [...params.filter((p) => !p.constant).map((p) => `config.${p.name}`), ...(metric ? [`summary.${metric.name}`] : [])];
  const showParallel = async () => {
    if (fields.length < 2) return replace(parallelBox, h("p.muted", null, "Nothing to draw: fewer than two parameters and metric."));
    const data = await fetchColumns(project_, fields, { sweep: { $eq: sweepId } }, 10_000, signal);
    if (signal?.aborted) return;
    const onBrush = (b: Brush) => {
      brushed = b.runIds ? new Set(b.runIds) : null;
      applyBrush();
    };
    if (!parallel) parallel = parallelPanel(parallelBox, { axes: fields, color: metric ? `summary.${metric.name}` : undefined }, data, onBrush);
    else {
      parallel.setData(data);
      onBrush(parallel.brush());
    }
  };
  const drawParallel = () => showParallel().catch((err) => {
    if (signal?.aborted) return;
    parallel?.destroy();
    parallel = null;
    replace(parallelBox, errorBox(err));
  });

  // What the page showed last, to redraw only what a poll changed.
  const runsKey = () => JSON.stringify(runs.map((r) => [r.id, r.state, r.summary?.[metric?.name ?? ""]]));
  let shownRuns = runsKey();
  const refresh = async () => {
    [sweep, { runs, next_cursor }] = await load();
    status.replaceChildren();
    drawHead(); drawOverview(); drawAgents(); drawBest();
    const now = runsKey();
    if (now === shownRuns) return;
    shownRuns = now;
    await loadReasons();
    drawRuns(); drawChart();
    await drawParallel();
  };

  const section = (title: string, ...body: Array<HTMLElement | string>) => h("section", { className: `sweep-section` }, h("h3", null, title), ...body);
  root.append(
    h("h2.sweep-title", null, `${sweep.name || sweep.sweep_id} `, stateBox, " ", controls),
    status,
    h("div", { style: { display: "grid", gridTemplateColumns: "minmax(320px, 1fr) minmax(320px, 1fr)", gap: "0 28px", alignItems: "start" } },
      h("div", null, section("Overview", overview), section("Best run", bestBox), section("Agents", agentsBox)),
      section("Configuration", h("pre.sweep-config", { style: { background: "#f6f7f9", padding: "8px 10px", borderRadius: "5px", overflow: "auto", maxHeight: "360px" } }, toYaml(config)))),
    section(metric ? `${metric.name} over runs` : "Metric over runs", chartBox),
    section("Parallel coordinates", parallelBox, brushNote),
    section("Runs", runsBox));
  drawHead(); drawOverview(); drawAgents(); drawBest(); drawRuns(); drawChart();
  root.dataset.ready = "1";
  await drawParallel();

  // Poll while runs may still start or end (a paused or stopped sweep may still have running runs).
  const poll = window.setInterval(() => {
    if (document.hidden || signal?.aborted) return;
    if (ENDED.has(sweep.state) && !runs.some((r) => r.state === "running")) return;
    refresh().catch((err) => { if (!signal?.aborted) status.replaceChildren(errorBox(err)); });
  }, POLL_MS);
  return () => {
    window.clearInterval(poll);
    plot?.destroy();
    parallel?.destroy();
  };
}
