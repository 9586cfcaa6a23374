// Charts logged with runstream.plot (media_type "chart"): one JSON file holding a spec (kind, title,
// field roles -> column names) and a table (columns + rows). drawChart draws one or more of them, of
// one kind, on one panel: one run's chart on the run page, or a chart of several runs (one curve per
// run, bars grouped per run, confusion matrices side by side) on a workspace or report panel.
// Line-like kinds go through uPlot's faceted mode (each series its own x array, in the order logged,
// so PR curves that double back and scatter points with equal x survive); bars, histograms and
// confusion matrices are drawn on a plain canvas.

import uPlot from "uplot";
import { h } from "../dom";
import { fmtNum } from "../util";

export type ChartKind =
  | "line" | "scatter" | "bar" | "histogram" | "line_series" | "confusion_matrix" | "pr_curve" | "roc_curve";

export const CHART_KINDS: readonly ChartKind[] =
  ["line", "scatter", "bar", "histogram", "line_series", "confusion_matrix", "pr_curve", "roc_curve"];

/** The chart's spec: its kind, title and which column plays which role (x, y, stroke, label, value, ...). */
export interface ChartSpec {
  kind: ChartKind;
  title?: string;
  fields: Record<string, string>;
  /** line_series: the x axis' name. */
  xname?: string;
  /** confusion_matrix: the classes in order. */
  class_names?: string[];
}

/** A chart file as runstream.plot writes it. */
export interface ChartFile { spec: ChartSpec; columns: string[]; data: unknown[][] }

/** One chart to draw: a run's (label and colour name the run on a cross-run panel). */
export interface ChartItem { label: string; color: string; chart: ChartFile }

export interface DrawOptions { width?: number; height?: number }

/** Colours for the curves of one chart (a run page shows one run: its classes get these). */
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const LINE_KINDS = new Set<ChartKind>(["line", "scatter", "line_series", "pr_curve", "roc_curve"]);
/** Dash patterns telling a run's curves apart on a cross-run panel, where the colour is the run's. */
const DASHES: number[][] = [[], [6, 3], [2, 2], [8, 3, 2, 3], [12, 4]];

/** A chart file's JSON, checked enough to draw: a clear error (what is wrong) otherwise. */
export function parseChart(text: string): ChartFile {
  let value: unknown;
  try { value = JSON.parse(text); } catch (err) { throw new Error(`the chart file is not JSON: ${String(err)}`); }
  const chart = value as Partial<ChartFile> | null;
  const spec = chart?.spec;
  if (!spec || typeof spec !== "object" || !CHART_KINDS.includes(spec.kind as ChartKind)) {
    throw new Error(`the chart file has no spec.kind runstream draws (one of ${CHART_KINDS.join(", ")})`);
  }
  if (!Array.isArray(chart.columns) || !Array.isArray(chart.data)) throw new Error("the chart file has no columns or data table");
  return { spec: { ...spec, fields: spec.fields ?? {} }, columns: chart.columns, data: chart.data };
}

/** The index of the column playing `role`, or -1 if the spec gives the role no column (optional roles). */
function columnOf(chart: ChartFile, role: string, required = true): number {
  const name = chart.spec.fields[role];
  if (name === undefined || name === null) {
    if (required) throw new Error(`the ${chart.spec.kind} chart's spec names no "${role}" field`);
    return -1;
  }
  const i = chart.columns.indexOf(name);
  if (i < 0) throw new Error(`the chart's "${role}" field is column "${name}", which its table lacks (columns: ${chart.columns.join(", ")})`);
  return i;
}

const num = (v: unknown): number | null => {
  const n = typeof v === "number" ? v : typeof v === "string" && v.trim() !== "" ? Number(v) : NaN;
  return Number.isFinite(n) ? n : null;
};

/**
 * Draws `items` (charts of one kind) into `el`, replacing what it holds. Returns a function that
 * frees what was drawn (uPlot instances). el gets data-chart (the kind), data-series (curves, bars
 * or matrices drawn) and data-drawn once painted.
 */
export function drawChart(el: HTMLElement, items: ChartItem[], options: DrawOptions = {}): () => void {
  el.replaceChildren();
  el.classList.add("chart-view");
  delete el.dataset.drawn;
  if (!items.length) { el.append(h("p.muted", null, "no chart")); return () => {}; }
  const kinds = [...new Set(items.map((i) => i.chart.spec.kind))];
  if (kinds.length > 1) throw new Error(`charts of different kinds (${kinds.join(", ")}) cannot share one panel`);
  const kind = kinds[0];
  el.dataset.chart = kind;
  const title = items.find((i) => i.chart.spec.title)?.chart.spec.title;
  if (title) el.append(h("div.chart-title", null, title));
  const width = options.width ?? Math.max(320, Math.min(el.clientWidth || 560, 900));
  const height = options.height ?? 300;
  if (LINE_KINDS.has(kind)) return lineChart(el, items, kind, width, height);
  if (kind === "bar") barChart(el, items, width);
  else if (kind === "histogram") histogramChart(el, items, width, height);
  else confusionMatrices(el, items, width);
  el.dataset.drawn = "1";
  return () => {};
}

interface Curve { label: string; color: string; dash: number[]; x: number[]; y: number[]; points: boolean }

/** An item's rows split by its stroke column (one curve per value; one curve if it has none). */
function curvesOf(chart: ChartFile, sortByX: boolean): Array<{ name: string; x: number[]; y: number[] }> {
  const xi = columnOf(chart, "x");
  const yi = columnOf(chart, "y");
  const si = columnOf(chart, "stroke", false);
  const groups = new Map<string, Array<[number, number]>>();
  for (const row of chart.data) {
    const x = num(row[xi]);
    const y = num(row[yi]);
    if (x === null || y === null) continue;
    const name = si < 0 ? "" : String(row[si] ?? "");
    let group = groups.get(name);
    if (!group) groups.set(name, group = []);
    group.push([x, y]);
  }
  return [...groups].map(([name, pts]) => {
    if (sortByX) pts.sort((a, b) => a[0] - b[0]);  // a line table's rows may come in any order
    return { name, x: pts.map((p) => p[0]), y: pts.map((p) => p[1]) };
  });
}

function lineChart(el: HTMLElement, items: ChartItem[], kind: ChartKind, width: number, height: number): () => void {
  const first = items[0].chart;
  const xName = kind === "line_series" ? first.spec.xname || first.spec.fields.x : first.spec.fields.x;
  const yName = first.spec.fields.y;
  const curves: Curve[] = [];
  // PR and ROC curves are drawn in the order computed (a PR curve's recall goes back and forth at ties).
  const sortByX = kind === "line" || kind === "line_series";
  for (const item of items) {
    const groups = curvesOf(item.chart, sortByX);
    groups.forEach((g, gi) => {
      const many = items.length > 1;
      curves.push({
        label: many ? (g.name ? `${item.label} · ${g.name}` : item.label) : (g.name || yName || "y"),
        color: many ? item.color : PALETTE[gi % PALETTE.length],
        dash: many ? DASHES[gi % DASHES.length] : [],
        x: g.x, y: g.y, points: kind === "scatter",
      });
    });
  }
  if (kind === "roc_curve") {
    curves.push({ label: "chance", color: "#aaa", dash: [4, 4], x: [0, 1], y: [0, 1], points: false });
  }
  el.dataset.series = String(curves.length - (kind === "roc_curve" ? 1 : 0));
  if (!curves.some((c) => c.x.length)) { el.append(h("p.muted", null, "the chart's table has no numeric rows")); el.dataset.drawn = "1"; return () => {}; }
  const unit = kind === "pr_curve" || kind === "roc_curve";
  const holder = h("div.chart-plot");
  el.append(holder);
  const pointsPath = uPlot.paths.points!();
  const opts: uPlot.Options = {
    mode: 2,
    width, height,
    legend: { live: false },
    cursor: { drag: { x: true, y: true, uni: 20 }, points: { show: false } },
    scales: {
      x: { time: false, auto: !unit, range: unit ? [0, 1] : undefined },
      y: { auto: !unit, range: unit ? [0, 1.02] : undefined },
    },
    axes: [
      { label: xName, size: 40, values: (_u, ticks) => ticks.map(fmtNum) },
      { label: yName, size: 56, values: (_u, ticks) => ticks.map(fmtNum) },
    ],
    series: [
      {},
      ...curves.map((c): uPlot.Series => ({
        label: c.label,
        stroke: c.color,
        fill: c.points ? c.color : undefined,
        width: c.points ? 1 : 1.6,
        dash: c.dash.length ? c.dash : undefined,
        facets: [{ scale: "x", auto: !unit }, { scale: "y", auto: !unit }],
        paths: c.points ? pointsPath : undefined,
        points: c.points ? { show: false, size: 4 } : { show: false },
      })),
    ],
    hooks: { draw: [() => { el.dataset.drawn = "1"; }] },
  };
  // Faceted data: for each series its own [xs, ys] (index 0, the x series, is unused).
  const data = [null, ...curves.map((c) => [c.x, c.y])] as unknown as uPlot.AlignedData;
  const plot = new uPlot(opts, data, holder);
  return () => plot.destroy();
}

/** wandb's bar chart: one horizontal bar per label; on a cross-run panel, each label's bars grouped by run. */
function barChart(el: HTMLElement, items: ChartItem[], width: number): void {
  const labels: string[] = [];
  const values = items.map((item) => {
    const li = columnOf(item.chart, "label");
    const vi = columnOf(item.chart, "value");
    const byLabel = new Map<string, number>();
    for (const row of item.chart.data) {
      const v = num(row[vi]);
      const label = String(row[li] ?? "");
      if (v === null) continue;
      if (!labels.includes(label)) labels.push(label);
      byLabel.set(label, (byLabel.get(label) ?? 0) + v);
    }
    return byLabel;
  });
  const barH = items.length > 1 ? 12 : 18;
  const groupH = barH * items.length + 6;
  const left = Math.min(180, 12 + 7 * Math.max(4, ...labels.map((l) => l.length)));
  const right = 64;
  const canvasH = labels.length * groupH + 28;
  const { canvas, ctx } = hiDpiCanvas(width, canvasH);
  const all = values.flatMap((m) => [...m.values()]);
  const lo = Math.min(0, ...all);
  const hi = Math.max(0, ...all);
  const x = (v: number) => left + ((v - lo) / (hi - lo || 1)) * (width - left - right);
  ctx.font = "12px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  labels.forEach((label, row) => {
    const top = row * groupH + 4;
    ctx.fillStyle = "#333";
    ctx.textAlign = "right";
    ctx.fillText(clip(ctx, label, left - 10), left - 6, top + (barH * items.length) / 2);
    values.forEach((byLabel, i) => {
      const v = byLabel.get(label);
      if (v === undefined) return;
      const y = top + i * barH;
      ctx.fillStyle = items.length > 1 ? items[i].color : PALETTE[0];
      const x0 = x(Math.min(0, v));
      ctx.fillRect(x0, y + 1, Math.max(1, x(Math.max(0, v)) - x0), barH - 2);
      ctx.fillStyle = "#555";
      ctx.textAlign = "left";
      ctx.fillText(fmtNum(v), x(Math.max(0, v)) + 4, y + barH / 2);
    });
  });
  axisLine(ctx, x, lo, hi, labels.length * groupH + 6);
  el.dataset.series = String(items.length);
  el.append(canvas, legendOf(items) ?? "");
}

/** Histograms of a value column, binned here on common bins; several runs' bars overlaid, see-through. */
function histogramChart(el: HTMLElement, items: ChartItem[], width: number, height: number): void {
  const samples = items.map((item) => {
    const vi = columnOf(item.chart, "value");
    return item.chart.data.map((row) => num(row[vi])).filter((v): v is number => v !== null);
  });
  const all = samples.flat();
  if (!all.length) { el.append(h("p.muted", null, "the chart's table has no numeric values")); return; }
  let lo = all[0];
  let hi = all[0];
  for (const v of all) { if (v < lo) lo = v; if (v > hi) hi = v; }
  if (hi === lo) { lo -= 0.5; hi += 0.5; }
  const bins = Math.max(5, Math.min(50, Math.ceil(Math.sqrt(Math.max(...samples.map((s) => s.length))))));
  const counts = samples.map((s) => {
    const c = new Array<number>(bins).fill(0);
    for (const v of s) c[Math.min(bins - 1, Math.floor(((v - lo) / (hi - lo)) * bins))]++;
    return c;
  });
  const max = Math.max(1, ...counts.flat());
  const { canvas, ctx } = hiDpiCanvas(width, height);
  const [left, right, top, bottom] = [48, 12, 8, 34];
  const x = (v: number) => left + ((v - lo) / (hi - lo)) * (width - left - right);
  const y = (c: number) => height - bottom - (c / max) * (height - top - bottom);
  counts.forEach((c, i) => {
    ctx.globalAlpha = items.length > 1 ? 0.55 : 1;
    ctx.fillStyle = items.length > 1 ? items[i].color : PALETTE[0];
    c.forEach((count, b) => {
      if (!count) return;
      const x0 = x(lo + ((hi - lo) * b) / bins);
      const x1 = x(lo + ((hi - lo) * (b + 1)) / bins);
      ctx.fillRect(x0 + 0.5, y(count), Math.max(1, x1 - x0 - 1), height - bottom - y(count));
    });
  });
  ctx.globalAlpha = 1;
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#555";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  ctx.fillText(String(max), left - 4, y(max));
  ctx.fillText("0", left - 4, y(0));
  axisLine(ctx, x, lo, hi, height - bottom);
  ctx.textAlign = "center";
  ctx.fillStyle = "#374151";
  ctx.fillText(items[0].chart.spec.fields.value, (left + width - right) / 2, height - bottom + 17);
  el.dataset.series = String(items.length);
  el.append(canvas, legendOf(items) ?? "");
}

/** Confusion matrices as heatmaps, one per item side by side: rows the actual class, columns the predicted. */
function confusionMatrices(el: HTMLElement, items: ChartItem[], width: number): void {
  const row = h("div.chart-matrices");
  const size = Math.max(220, Math.min(460, items.length > 1 ? Math.floor(width / Math.min(items.length, 3)) - 16 : width));
  for (const item of items) {
    const ai = columnOf(item.chart, "actual");
    const pi = columnOf(item.chart, "predicted");
    const ci = columnOf(item.chart, "count");
    const classes = item.chart.spec.class_names?.map(String) ?? [];
    const index = new Map(classes.map((c, i) => [c, i]));
    const cells: Array<[number, number, number]> = [];
    const classOf = (v: unknown) => {
      const name = String(v);
      if (!index.has(name)) { index.set(name, classes.length); classes.push(name); }
      return index.get(name)!;
    };
    for (const r of item.chart.data) {
      const count = num(r[ci]);
      if (count !== null) cells.push([classOf(r[ai]), classOf(r[pi]), count]);
    }
    const n = Math.max(1, classes.length);
    const margin = 70;
    const cell = (size - margin - 22) / n;  // room under the matrix for its legend line
    const { canvas, ctx } = hiDpiCanvas(size, size);
    const max = Math.max(1, ...cells.map((c) => c[2]));
    ctx.fillStyle = "#fafafa";
    ctx.fillRect(margin, margin - 8, cell * n, cell * n);
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.font = `${Math.max(9, Math.min(13, cell / 3))}px system-ui, sans-serif`;
    for (const [a, p, count] of cells) {
      const t = count / max;
      ctx.fillStyle = `hsl(215 70% ${96 - t * 60}%)`;
      const cx = margin + p * cell;
      const cy = margin - 8 + a * cell;
      ctx.fillRect(cx, cy, Math.max(cell, 0.5), Math.max(cell, 0.5));
      if (cell >= 22) {
        ctx.fillStyle = t > 0.55 ? "#fff" : "#222";
        ctx.fillText(fmtNum(count), cx + cell / 2, cy + cell / 2);
      }
    }
    ctx.fillStyle = "#333";
    ctx.font = "11px system-ui, sans-serif";
    if (cell >= 10) {
      classes.forEach((c, i) => {
        ctx.textAlign = "right";
        ctx.fillText(clip(ctx, c, margin - 10), margin - 4, margin - 8 + (i + 0.5) * cell);
        ctx.save();
        ctx.translate(margin + (i + 0.5) * cell, margin - 12);
        ctx.rotate(-Math.PI / 4);
        ctx.textAlign = "left";
        ctx.fillText(clip(ctx, c, margin - 10), 0, 0);
        ctx.restore();
      });
    }
    ctx.fillStyle = "#666";
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    ctx.fillText(`rows: actual · columns: predicted · ${n} classes`, 4, size - 2);
    row.append(h("figure.chart-matrix", null, canvas, items.length > 1 ? h("figcaption", null,
      h("span.swatch", { style: { background: item.color } }), ` ${item.label}`) : null));
  }
  el.dataset.series = String(items.length);
  el.append(row);
}

/** A canvas sharp on high-DPI screens: drawn in CSS pixels. */
function hiDpiCanvas(width: number, height: number): { canvas: HTMLCanvasElement; ctx: CanvasRenderingContext2D } {
  const ratio = window.devicePixelRatio || 1;
  const canvas = h("canvas.chart-canvas", { width: Math.round(width * ratio), height: Math.round(height * ratio) });
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d")!;
  ctx.scale(ratio, ratio);
  return { canvas, ctx };
}

/** A number axis along y = `at`, with its two ends and zero (when inside) labelled. */
function axisLine(ctx: CanvasRenderingContext2D, x: (v: number) => number, lo: number, hi: number, at: number): void {
  ctx.strokeStyle = "#999";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(x(lo), at + 0.5);
  ctx.lineTo(x(hi), at + 0.5);
  ctx.stroke();
  ctx.fillStyle = "#555";
  ctx.font = "11px system-ui, sans-serif";
  ctx.textBaseline = "top";
  const ticks = lo < 0 && hi > 0 ? [lo, 0, hi] : [lo, hi];
  ticks.forEach((t, i) => {
    ctx.textAlign = i === 0 ? "left" : i === ticks.length - 1 ? "right" : "center";
    ctx.fillText(fmtNum(t), x(t), at + 4);
  });
}

/** Text cut with an ellipsis to fit `max` pixels. */
function clip(ctx: CanvasRenderingContext2D, text: string, max: number): string {
  if (ctx.measureText(text).width <= max) return text;
  let cut = text;
  while (cut.length > 1 && ctx.measureText(cut + "…").width > max) cut = cut.slice(0, -1);
  return cut + "…";
}

/** The runs' colours, when a panel draws several. */
function legendOf(items: ChartItem[]): HTMLElement | null {
  if (items.length < 2) return null;
  return h("div.chart-legend", null, items.map((i) => h("span", null, h("span.swatch", { style: { background: i.color } }), ` ${i.label} `)));
}
