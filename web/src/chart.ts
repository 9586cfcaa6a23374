// One chart panel: uPlot (canvas) drawing many runs' series of one metric.
// Series of different runs share one x array (uPlot's aligned data): the union of their x
// values, or, when that union is too long (wall time of 1,000 runs), a grid of columns
// across the x range, which is finer than the canvas's pixels anyway.

import uPlot from "uplot";
import { h, select } from "./dom";
import { ema, fmtNum, withAlpha } from "./util";

export type XAxis = "step" | "time" | "relative" | "metric";

export interface PanelSpec {
  id: string;
  metric: string;
  kind?: "metric" | "system";
  x?: XAxis;
  /** The panel's own x axis while grouping draws it by step (bands are by step), restored when ungrouped. */
  xUngrouped?: XAxis;
  xMetric?: string;
  /** The x axis came from the runs' define_metric(step_metric=...), not from the reader. */
  xAuto?: boolean;
  /** The reader picked the x axis: definitions no longer change it. */
  xChosen?: boolean;
  log?: boolean;
  smoothing?: number;
  title?: string;
}

/** One line of a chart: a run (or a group's mean), with its optional envelope. */
export interface Line {
  key: string;           // run id or group label: what the eye toggle hides
  label: string;
  color: string;
  x: ArrayLike<number | null>;  // null where no x was logged (another metric as the x axis): left out
  y: ArrayLike<number | null>;
  lo?: ArrayLike<number | null>;  // envelope: bucket min, or mean - std for groups
  hi?: ArrayLike<number | null>;
}

export interface Loaded { lines: Line[]; note?: string }

/** Loads a panel's lines; stepRange is the zoomed step range, null for everything. */
export type Loader = (spec: PanelSpec, stepRange: [number, number] | null, width: number) => Promise<Loaded>;

export interface PanelOptions {
  loader: Loader;
  hidden: (key: string) => boolean;
  metrics?: string[];          // for the x = another metric choice
  onChange?: (spec: PanelSpec) => void;
  onRemove?: () => void;
  onMove?: () => void;         // one place earlier in the layout
  height?: number;
  controls?: boolean;
  xChoices?: XAxis[];
}

/** A run's define_metric spec (GET run's ``metrics``): ``name`` is a metric or an fnmatch glob. */
export interface MetricDef { name: string; step_metric: string | null; goal: string | null; summary: string | null }

/** fnmatch's glob as a RegExp: * anything (slashes too), ? one character, [seq] and [!seq]. */
function globRegExp(glob: string): RegExp {
  let out = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    const close = c === "[" ? glob.indexOf("]", i + 2) : -1;
    if (c === "*") out += "[\\s\\S]*";
    else if (c === "?") out += "[\\s\\S]";
    else if (close > 0) {
      const body = glob.slice(i + 1, close);
      const raw = body.replace(/\\/g, "\\\\");
      out += `[${raw[0] === "!" ? "^" + raw.slice(1) : raw[0] === "^" ? "\\" + raw : raw}]`;
      i = close;
    } else out += c.replace(/[.*+?^${}()|[\]\\\/]/g, "\\$&");
  }
  return new RegExp(`^${out}$`);
}

/** The step metric a run's definitions give a metric: the last matching definition that sets one wins. */
export function stepMetricOf(defs: MetricDef[] | undefined, metric: string): string | null {
  for (const d of [...(defs ?? [])].reverse()) {
    if (d.step_metric && globRegExp(d.name).test(metric)) return d.step_metric;
  }
  return null;
}

/** The x axis of a step metric: wandb's _step and _timestamp are the step and wall-time axes. */
export function xOfStepMetric(stepMetric: string | null): { x: XAxis; xMetric?: string } {
  if (!stepMetric || stepMetric === "_step") return { x: "step" };
  if (stepMetric === "_timestamp") return { x: "time" };
  return { x: "metric", xMetric: stepMetric };
}

const MAX_EXACT_COLUMNS = 4000;
const GRID_COLUMNS = 1500;
/** Beyond this many lines, envelopes only clutter (and cost): the loaders ask for none. */
export const MAX_ENVELOPES = 25;
const MAX_FOCUS = 60;          // focusing a line redraws all of them: only for modest counts

interface Built { data: uPlot.AlignedData; series: uPlot.Series[]; bands: uPlot.Band[]; index: Map<string, number[]>;
                  lines: Line[]; xMin: number; xMax: number }

/** Aligns lines onto one x array and makes uPlot's series, bands and the key -> series index. */
export function build(lines: Line[], spec: PanelSpec, hidden: (key: string) => boolean): Built {
  let total = 0;
  for (const line of lines) total += line.x.length;
  // x may be null where another metric is the x axis and was not logged: such points are left out.
  const ok = (x: number | null): x is number => x !== null && Number.isFinite(x);
  let all = new Float64Array(total);
  let k = 0;
  for (const line of lines) {
    for (let i = 0; i < line.x.length; i++) {
      const x = line.x[i];
      if (ok(x)) all[k++] = x;
    }
  }
  all = all.subarray(0, k);
  all.sort();
  let unique = 0;
  for (let i = 0; i < all.length; i++) if (i === 0 || all[i] !== all[i - 1]) all[unique++] = all[i];
  const xMin = unique ? all[0] : 0;
  const xMax = unique ? all[unique - 1] : 1;
  let xs: number[];
  let column: (x: number) => number;
  if (unique <= MAX_EXACT_COLUMNS) {
    xs = Array.from(all.subarray(0, unique));
    const at = new Map<number, number>();
    xs.forEach((x, i) => at.set(x, i));
    column = (x) => at.get(x)!;
  } else {
    const span = xMax - xMin || 1;
    xs = Array.from({ length: GRID_COLUMNS }, (_, i) => xMin + (span * i) / (GRID_COLUMNS - 1));
    column = (x) => Math.round(((x - xMin) / span) * (GRID_COLUMNS - 1));
  }
  const n = xs.length;
  const smoothing = spec.smoothing ?? 0;
  const log = !!spec.log;
  const place = (line: Line, values: ArrayLike<number | null>): (number | null)[] => {
    const col: (number | null)[] = new Array(n).fill(null);
    for (let i = 0; i < line.x.length; i++) {
      const x = line.x[i];
      if (!ok(x)) continue;
      const v = values[i];
      col[column(x)] = v === null || (log && v <= 0) ? null : v;
    }
    return col;
  };
  const envelopes = lines.length <= MAX_ENVELOPES;
  const data: (number | null)[][] = [xs];
  const series: uPlot.Series[] = [{}];
  const bands: uPlot.Band[] = [];
  const index = new Map<string, number[]>();
  const width = lines.length > 200 ? 1 : lines.length > 20 ? 1.25 : 1.6;
  for (const line of lines) {
    const show = !hidden(line.key);
    const ids: number[] = [];
    if (envelopes && line.lo && line.hi) {
      data.push(place(line, line.hi), place(line, line.lo));
      const hiIdx = series.length;
      series.push({ label: `${line.label} max`, stroke: "transparent", width: 0, points: { show: false }, spanGaps: true, show },
                  { label: `${line.label} min`, stroke: "transparent", width: 0, points: { show: false }, spanGaps: true, show });
      bands.push({ series: [hiIdx, hiIdx + 1], fill: withAlpha(line.color, 0.14) });
      ids.push(hiIdx, hiIdx + 1);
    }
    data.push(place(line, ema(line.y, smoothing)));
    ids.push(series.length);
    // A line of one or two points draws nothing: show its points instead.
    const sparse = line.x.length <= 2;
    series.push({ label: line.label, stroke: line.color, width, spanGaps: true, show,
                  points: sparse ? { show: true, size: 6, fill: line.color } : { show: false } });
    index.set(line.key, ids);
  }
  return { data: data as uPlot.AlignedData, series, bands, index, lines, xMin, xMax };
}

export class ChartPanel {
  readonly el: HTMLElement;
  private body: HTMLElement;
  private status: HTMLElement;
  private tooltip: HTMLElement;
  private plot: uPlot | null = null;
  private built: Built | null = null;
  private range: [number, number] | null = null;
  private loading = 0;
  private resize: ResizeObserver;
  private zoomTimer = 0;
  private settingData = false;
  private xSelect: HTMLSelectElement | null = null;
  private xMetricSelect: HTMLSelectElement | null = null;

  constructor(public spec: PanelSpec, private opts: PanelOptions) {
    this.status = h("span.panel-status");
    this.tooltip = h("div.tooltip", { hidden: true });
    this.body = h("div.panel-body");
    this.el = h("div.panel", { dataset: { metric: spec.metric } },
      h("div.panel-head", null,
        h("span.panel-title", { title: spec.metric }, spec.title ?? spec.metric),
        this.status,
        opts.controls === false ? null : this.controls()),
      this.body, this.tooltip);
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(this.body);
  }

  private controls(): HTMLElement {
    const spec = this.spec;
    const changed = (reload: boolean) => {
      this.opts.onChange?.(spec);
      if (reload) void this.load(); else this.scheduleRedraw();
    };
    const xChoices = this.opts.xChoices ?? ["step", "time", "relative", "metric"];
    const xLabels: Record<XAxis, string> = { step: "step", time: "wall time", relative: "relative time", metric: "metric…" };
    const metricChoices = [...new Set([...(this.opts.metrics ?? []), ...(spec.xMetric ? [spec.xMetric] : [])])];
    const xMetric = select(metricChoices.map((m) => [m, m] as [string, string]), spec.xMetric ?? "",
      (v) => { spec.xMetric = v; spec.xChosen = true; delete spec.xAuto; changed(true); },
      { title: "x metric", className: "x-metric" });
    this.xMetricSelect = xMetric;
    xMetric.hidden = spec.x !== "metric";
    const smooth = h("input", { type: "range", min: 0, max: 0.99, step: 0.01, value: String(spec.smoothing ?? 0),
                                title: "EMA smoothing", className: "smoothing" });
    const smoothLabel = h("span.smooth-value", null, (spec.smoothing ?? 0).toFixed(2));
    smooth.addEventListener("input", () => {
      spec.smoothing = Number(smooth.value);
      smoothLabel.textContent = spec.smoothing.toFixed(2);
      changed(false);
    });
    const log = h("input", { type: "checkbox", checked: !!spec.log, className: "log" });
    log.addEventListener("change", () => { spec.log = log.checked; changed(false); });
    this.xSelect = xChoices.length > 1 ? select(xChoices.map((x) => [x, xLabels[x]] as [string, string]), spec.x ?? "step", (v) => {
      spec.x = v as XAxis;
      spec.xChosen = true;
      delete spec.xAuto;
      xMetric.hidden = spec.x !== "metric";
      if (spec.x === "metric" && !spec.xMetric && this.opts.metrics?.length) spec.xMetric = xMetric.value;
      this.range = null;
      changed(true);
    }, { title: "x axis", className: "x-axis" }) : null;
    return h("span.panel-controls", null,
      this.xSelect,
      xMetric,
      h("label", { title: "EMA smoothing" }, "smooth ", smooth, smoothLabel),
      h("label", { title: "log scale" }, log, " log"),
      h("button.link.reset-zoom", { title: "show everything (double-click the chart too)", onclick: () => this.resetZoom() }, "⟲"),
      this.opts.onMove ? h("button.link.move", { title: "move earlier", onclick: () => this.opts.onMove?.() }, "◀") : null,
      this.opts.onRemove ? h("button.link", { title: "remove panel", onclick: () => this.opts.onRemove?.() }, "✕") : null);
  }

  /**
   * The x axis the runs' define_metric(step_metric=...) gives (null: none, or they disagree), unless the
   * reader picked one: a panel on the plain step axis, or on one set this way, follows it. True when it changed.
   */
  defaultX(stepMetric: string | null): boolean {
    const spec = this.spec;
    if (spec.xChosen || !(spec.xAuto || (spec.x ?? "step") === "step")) return false;
    const { x, xMetric } = xOfStepMetric(stepMetric);
    if (x === (spec.x ?? "step") && (x !== "metric" || xMetric === spec.xMetric)) return false;
    spec.x = x;
    if (xMetric) spec.xMetric = xMetric;
    if (stepMetric) spec.xAuto = true; else delete spec.xAuto;
    this.range = null;
    if (this.xSelect) this.xSelect.value = x;
    if (this.xMetricSelect) {
      if (xMetric && ![...this.xMetricSelect.options].some((o) => o.value === xMetric)) {
        this.xMetricSelect.append(h("option", { value: xMetric }, xMetric));
      }
      this.xMetricSelect.value = xMetric ?? this.xMetricSelect.value;
      this.xMetricSelect.hidden = x !== "metric";
    }
    return true;
  }

  /** Fetches the data (for the current zoom) and draws it. */
  async load(): Promise<void> {
    const ticket = ++this.loading;
    this.status.textContent = "loading…";
    try {
      const loaded = await this.opts.loader(this.spec, this.range, this.body.clientWidth || 600);
      if (ticket !== this.loading) return;
      this.status.textContent = loaded.note ?? (loaded.lines.length ? "" : "no data");
      this.lines = loaded.lines;
      this.redraw();
    } catch (err) {
      if (ticket !== this.loading) return;
      this.status.textContent = err instanceof Error ? err.message : String(err);
      this.status.classList.add("bad");
    }
  }

  private lines: Line[] = [];

  private redrawQueued = false;

  /** One redraw per frame however fast a slider moves (a redraw of 1,000 lines is not free). */
  private scheduleRedraw(): void {
    if (this.redrawQueued) return;
    this.redrawQueued = true;
    requestAnimationFrame(() => { this.redrawQueued = false; this.redraw(); });
  }

  /** Rebuilds the chart from the loaded lines (smoothing, log scale and axes applied). */
  redraw(): void {
    this.built = build(this.lines, this.spec, this.opts.hidden);
    this.el.dataset.lines = String(this.lines.length);
    this.el.dataset.visible = String(this.lines.filter((l) => !this.opts.hidden(l.key)).length);
    this.plot?.destroy();
    this.plot = null;
    if (!this.lines.length) return;
    const spec = this.spec;
    const width = Math.max(200, this.body.clientWidth || 600);
    const many = this.built.series.length > MAX_FOCUS;
    const opts: uPlot.Options = {
      width, height: this.opts.height ?? 220,
      series: this.built.series,
      bands: this.built.bands,
      legend: { show: false },
      scales: { x: { time: spec.x === "time" }, y: { distr: spec.log ? 3 : 1 } },
      axes: [
        { stroke: "#666", grid: { stroke: "#eee" }, ticks: { stroke: "#ddd" },
          values: spec.x === "time" ? undefined : (_u, ticks) => ticks.map((t) => fmtNum(t)) },
        { stroke: "#666", size: 56, grid: { stroke: "#eee" }, ticks: { stroke: "#ddd" },
          values: (_u, ticks) => ticks.map((t) => fmtNum(t)) },
      ],
      cursor: {
        points: { show: false },
        drag: { x: true, y: false, setScale: true },
        focus: { prox: many ? -1 : 16 },
        bind: { dblclick: () => () => { this.resetZoom(); return null; } },
      },
      focus: { alpha: many ? 1 : 0.35 },
      hooks: {
        setCursor: [(u) => this.showTooltip(u)],
        setScale: [(u, key) => { if (key === "x") this.onScale(u); }],
      },
    };
    this.settingData = true;
    this.plot = new uPlot(opts, this.built.data, this.body);
    this.settingData = false;
    this.el.classList.toggle("zoomed", this.range !== null);
  }

  /** Shows or hides the lines of the given keys (eye toggles): no refetch, no rebuild. */
  setVisible(keys: Iterable<string>, show: boolean): void {
    const plot = this.plot;
    const built = this.built;
    if (!plot || !built) return;
    plot.batch(() => {
      for (const key of keys) for (const i of built.index.get(key) ?? []) {
        if (plot.series[i].show !== show) plot.setSeries(i, { show }, false);
      }
    });
    this.el.dataset.visible = String(built.lines.filter((l) => !this.opts.hidden(l.key)).length);
  }

  private onScale(u: uPlot): void {
    if (this.settingData || !this.built) return;
    const { min, max } = u.scales.x;
    if (min == null || max == null) return;
    const zoomed = min > this.built.xMin || max < this.built.xMax;
    this.el.classList.toggle("zoomed", zoomed || this.range !== null);
    // Zooming into steps fetches finer buckets for just that range; other axes zoom the data at hand.
    if (zoomed && (this.spec.x ?? "step") === "step" && this.spec.kind !== "system") {
      window.clearTimeout(this.zoomTimer);
      this.zoomTimer = window.setTimeout(() => {
        this.range = [Math.floor(min), Math.ceil(max)];
        void this.load();
      }, 150);
    }
  }

  resetZoom(): void {
    if (this.range) {
      this.range = null;
      void this.load();
    } else if (this.plot && this.built) {
      this.plot.setScale("x", { min: this.built.xMin, max: this.built.xMax });
    }
    this.el.classList.remove("zoomed");
  }

  private showTooltip(u: uPlot): void {
    const idx = u.cursor.idx;
    const top = u.cursor.top ?? -1;
    if (idx == null || top < 0 || !this.built) { this.tooltip.hidden = true; return; }
    const yAt = u.posToVal(top, "y");
    const rows: Array<[number, string, string, number]> = [];
    for (let i = 1; i < u.series.length; i++) {
      const s = u.series[i];
      if (!s.show || s.stroke === "transparent") continue;
      const v = u.data[i][idx];
      if (v == null) continue;
      rows.push([Math.abs(v - yAt), String(s.label), String(typeof s.stroke === "function" ? "" : s.stroke), v]);
    }
    rows.sort((a, b) => a[0] - b[0]);
    const x = u.data[0][idx];
    const xText = this.spec.x === "time" ? new Date(x * 1000).toLocaleString() : fmtNum(x);
    this.tooltip.replaceChildren(
      h("div.tip-x", null, `${this.spec.x === "metric" ? this.spec.xMetric : this.spec.x ?? "step"} ${xText}`),
      ...rows.slice(0, 6).map(([, label, color, v]) =>
        h("div", null, h("span.swatch", { style: { background: color } }), ` ${label}: `, h("b", null, fmtNum(v)))));
    this.tooltip.hidden = rows.length === 0;
    const left = (u.cursor.left ?? 0) + 70;
    this.tooltip.style.left = `${Math.min(left, this.body.clientWidth - 180)}px`;
  }

  private fit(): void {
    if (!this.plot) return;
    const width = Math.max(200, this.body.clientWidth);
    if (Math.abs(width - this.plot.width) > 2) this.plot.setSize({ width, height: this.plot.height });
  }

  destroy(): void {
    this.loading++; // a load still in flight draws nothing
    this.resize.disconnect();
    this.plot?.destroy();
    this.plot = null;
  }
}
