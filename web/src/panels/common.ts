// What the panels beyond lines share: the columnar runs they draw (POST .../runs/columns), a
// field's axis (numeric, log or categorical), a continuous colour scale cut into a few buckets
// (so a canvas strokes one path per colour, not one per run), and a canvas sized to its box.

import { post } from "../api";
import type { Answer } from "../answers";
import { fmtNum, hash32 } from "../util";

/** A field's value in a column: numbers, strings, booleans; null where a run has none. */
export type Value = number | string | boolean | null;

/** Runs as columns, one entry per run (the columns endpoint's answer). */
export type RunsColumns = Answer<"/projects/{team}/{project}/runs/columns", "post">;

/** The columns of the runs a filter selects. */
export function fetchColumns(base: string, fields: string[], filters: Record<string, unknown> | null,
                             limit = 10_000, signal?: AbortSignal): Promise<RunsColumns> {
  return post<RunsColumns>(`${base}/runs/columns`, { fields: [...new Set(fields)], filters: filters ?? undefined, limit }, signal);
}

/** A field as people read it: config.lr is "lr", summary.val/loss "val/loss". */
export const shortField = (field: string) => field.replace(/^(config|summary)\./, "");

/** The contract's strings for non-finite numbers: drawn as missing. */
const NON_FINITE = new Set(["NaN", "Infinity", "-Infinity", "nan", "inf", "-inf"]);

/** A number to draw, or NaN (missing, non-finite, or not a number). */
export function numberOf(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) ? v : typeof v === "boolean" ? Number(v) : NaN;
}

export interface Axis {
  field: string;
  numeric: boolean;
  log: boolean;
  min: number;
  max: number;
  /** Categorical axes: the distinct values in order, as text and as given. */
  cats: string[];
  catValues: Value[];
  /** Each run's place on the axis, 0 (bottom/left) to 1, NaN when it has no value. */
  pos: Float64Array;
}

/**
 * A field's axis over a column: numeric when every value is a number (booleans and strings
 * make it ordinal, one place per distinct value, in sorted order). `log` takes positive values only.
 */
export function axisOf(field: string, values: readonly unknown[], log = false): Axis {
  const n = values.length;
  const pos = new Float64Array(n);
  let numeric = true;
  for (const v of values) {
    if (v === null || v === undefined || (typeof v === "number") || (typeof v === "string" && NON_FINITE.has(v))) continue;
    numeric = false;
    break;
  }
  if (numeric) {
    const f = log ? (v: number) => (v > 0 ? Math.log10(v) : NaN) : (v: number) => v;
    let min = Infinity;
    let max = -Infinity;
    for (let i = 0; i < n; i++) {
      const v = f(numberOf(values[i]));
      pos[i] = v;
      if (v < min) min = v;
      if (v > max) max = v;
    }
    if (min > max) { min = 0; max = 1; }
    const span = max - min || 1;
    const pad = max === min ? 0.5 : 0;
    for (let i = 0; i < n; i++) pos[i] = (pos[i] - min) / span + pad;
    return { field, numeric, log, min, max, cats: [], catValues: [], pos };
  }
  const byText = new Map<string, Value>();
  for (const v of values) if (v !== null && v !== undefined) byText.set(String(v), v as Value);
  const cats = [...byText.keys()].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const index = new Map(cats.map((c, i) => [c, i]));
  const step = cats.length > 1 ? 1 / (cats.length - 1) : 0;
  for (let i = 0; i < n; i++) {
    const v = values[i];
    pos[i] = v === null || v === undefined ? NaN : cats.length > 1 ? index.get(String(v))! * step : 0.5;
  }
  return { field, numeric: false, log, min: 0, max: 1, cats, catValues: cats.map((c) => byText.get(c)!), pos };
}

/** The value at a place on a numeric axis (log axes back from log10). */
export function valueAt(axis: Axis, t: number): number {
  const v = axis.min + t * (axis.max - axis.min || 1);
  return axis.log ? 10 ** v : v;
}

/** A few labelled places on an axis: [0..1 place, label]. */
export function ticksOf(axis: Axis, count = 5): Array<[number, string]> {
  if (!axis.numeric) {
    const every = Math.max(1, Math.ceil(axis.cats.length / 12)); // at most a dozen labels
    return axis.cats.flatMap((c, i) => (i % every ? [] : [[axis.cats.length > 1 ? i / (axis.cats.length - 1) : 0.5, c] as [number, string]]));
  }
  if (axis.max === axis.min) return [[0.5, fmtNum(axis.log ? 10 ** axis.min : axis.min)]];
  return Array.from({ length: count }, (_, i) => [i / (count - 1), fmtNum(valueAt(axis, i / (count - 1)))] as [number, string]);
}

/** A range brushed on one axis: numbers from lo to hi, or the categories inside. */
export type BrushRange = { field: string; lo: number; hi: number } | { field: string; values: Value[] };

/** The API's filter document for brushed ranges (all of them: AND), or null when none. */
export function brushFilter(ranges: BrushRange[]): Record<string, unknown> | null {
  const parts = ranges.map((r) => ("values" in r ? { [r.field]: { $in: r.values } } : { [r.field]: { $gte: r.lo, $lte: r.hi } }));
  if (!parts.length) return null;
  return parts.length === 1 ? parts[0] : { $and: parts };
}

// A continuous colour scale (viridis' stops), cut into buckets: a canvas sets its style once per bucket.
const STOPS: Array<[number, number, number]> = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
export const BUCKETS = 24;

export function scaleColor(t: number, alpha = 1): string {
  const x = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x));
  const f = x - i;
  const [r, g, b] = STOPS[i].map((c, k) => Math.round(c + (STOPS[i + 1][k] - c) * f));
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

/**
 * Each run's colour bucket, and the buckets' colours: by a field's place on its axis, else by
 * the run's own colour (its hue, as util.colorOf picks it, rounded into BUCKETS hues).
 */
export function colorBuckets(data: RunsColumns, color: string | undefined, alpha: number):
    { bucket: Uint8Array; colors: string[] } {
  const n = data.run_ids.length;
  const bucket = new Uint8Array(n);
  if (color && data.columns[color]) {
    const axis = axisOf(color, data.columns[color]);
    for (let i = 0; i < n; i++) {
      const t = axis.pos[i];
      bucket[i] = Number.isNaN(t) ? BUCKETS : Math.min(BUCKETS - 1, Math.floor(t * BUCKETS));
    }
    const colors = Array.from({ length: BUCKETS }, (_, b) => scaleColor((b + 0.5) / BUCKETS, alpha));
    colors.push(`rgba(150, 150, 150, ${alpha})`); // no value
    return { bucket, colors };
  }
  for (let i = 0; i < n; i++) bucket[i] = Math.floor((hash32(data.run_ids[i]) % 360) / (360 / BUCKETS));
  const colors = Array.from({ length: BUCKETS }, (_, b) => `hsla(${Math.round((b + 0.5) * (360 / BUCKETS))}, 70%, 46%, ${alpha})`);
  return { bucket, colors };
}

/** A canvas filling its box's width, drawn at the screen's pixel density; returns its context in CSS pixels. */
export function sizeCanvas(canvas: HTMLCanvasElement, width: number, height: number): CanvasRenderingContext2D {
  const dpr = window.devicePixelRatio || 1;
  // Setting a canvas's size reallocates it even when unchanged: a brush's redraws only clear it.
  if (canvas.width !== Math.round(width * dpr)) canvas.width = Math.round(width * dpr);
  if (canvas.height !== Math.round(height * dpr)) canvas.height = Math.round(height * dpr);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d")!;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return ctx;
}
