// Chart loaders: what a panel draws, read from the series, bands and system endpoints.

import { post, get, qs } from "./api";
import { MAX_ENVELOPES, type Line, type Loader, type PanelSpec } from "./chart";
import { colorOf } from "./util";

export interface ChartRun { id: string; name: string }

/** How many points per line: fewer when there are many lines, so 1,000 runs stay quick. */
export function pointsFor(lines: number, width: number): number {
  if (lines <= 20) return Math.min(1000, Math.max(200, Math.round(width)));
  if (lines <= 100) return 300;
  return Math.max(60, Math.min(200, Math.round(150_000 / lines)));
}

const enc = encodeURIComponent;

/** Lines of runs from POST .../series, one request per panel. */
export function seriesLoader(team: string, project: string, runs: () => ChartRun[]): Loader {
  return async (spec: PanelSpec, stepRange, width) => {
    const chartRuns = runs();
    if (!chartRuns.length) return { lines: [], note: "no runs" };
    const envelope = chartRuns.length <= MAX_ENVELOPES;
    const body: Record<string, unknown> = {
      run_ids: chartRuns.map((r) => r.id), metrics: [spec.metric], points: pointsFor(chartRuns.length, width),
      x: spec.x ?? "step", fields: envelope ? ["x", "y", "min", "max"] : ["x", "y"],
    };
    if (spec.x === "metric") body.x_metric = spec.xMetric;
    if (stepRange) body.step_range = stepRange;
    const answer = await post<{ series: any[] }>(`/projects/${enc(team)}/${enc(project)}/series`, body);
    const names = new Map(chartRuns.map((r) => [r.id, r.name]));
    const lines: Line[] = answer.series.map((s) => ({
      key: s.run_id, label: names.get(s.run_id) ?? s.run_id, color: colorOf(s.run_id),
      x: s.x, y: s.y, lo: s.min, hi: s.max,
    }));
    return { lines };
  };
}

/** System metrics of a few runs (GET .../system per run; there is no project-wide endpoint). */
export function systemLoader(team: string, project: string, runs: () => ChartRun[], limit = 20): Loader {
  return async (spec, _range, width) => {
    const all = runs();
    const chosen = all.slice(0, limit);
    const answers = await Promise.all(chosen.map((r) =>
      get<{ series: any[] }>(`/runs/${enc(team)}/${enc(project)}/${enc(r.id)}/system` +
        qs({ names: spec.metric, points: Math.min(1000, Math.max(100, Math.round(width))) }))
        .then((a) => ({ run: r, series: a.series[0] }))));
    const relative = spec.x === "relative";
    const lines: Line[] = answers.filter((a) => a.series && a.series.time.length).map(({ run, series }) => ({
      key: run.id, label: run.name, color: colorOf(run.id),
      x: relative ? series.time.map((t: number) => t - series.time[0]) : series.time,
      y: series.mean, lo: series.min, hi: series.max,
    }));
    return { lines, note: all.length > limit ? `first ${limit} of ${all.length} runs` : undefined };
  };
}
