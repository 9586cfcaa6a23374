// Parallel coordinates on one canvas: a polyline per run across the chosen fields' axes.
// 10,000 runs must draw in a few tens of ms, so runs are batched by colour bucket (one path and
// one stroke per bucket, not per run) and nothing per run touches the DOM. Dragging along an
// axis brushes a range; several brushed axes combine with AND; a click on an axis clears its brush.

import { h } from "../dom";
import { afterPaint, fmtNum } from "../util";
import { type Axis, axisOf, type BrushRange, colorBuckets, type RunsColumns, shortField, sizeCanvas, ticksOf, valueAt } from "./common";

export interface ParallelSpec { axes: string[]; color?: string }

/**
 * What a brush selects: the ranges (empty: no brush) and the runs inside every one (null: no brush);
 * `complete` when the panel holds every run its filter matches, so runIds are all the runs inside.
 */
export interface Brush { ranges: BrushRange[]; runIds: string[] | null; complete: boolean }

export interface ParallelOptions {
  /** Runs hidden with the eye: not drawn. */
  hidden?: (runId: string) => boolean;
  height?: number;
}

export interface ParallelPanel {
  readonly el: HTMLElement;
  /** New runs (a new filter): brushes are kept, the selection recomputed. */
  setData(data: RunsColumns): void;
  /** Draw again (after eye toggles, or a resize). */
  redraw(): void;
  /** Forget every brush (calls onBrush with no ranges). */
  clearBrush(): void;
  brush(): Brush;
  destroy(): void;
}

const MARGIN = { top: 30, bottom: 16, left: 36, right: 46 };
const HIT = 14; // px either side of an axis where a drag brushes it

/**
 * A parallel-coordinates panel drawn into `el` (which it fills): `spec.axes` are fields of
 * `data.columns` (config.*, summary.*, run columns); `spec.color` colours by a field's value.
 * `onBrush` hears every brush change, once the drag ends.
 */
export function parallelPanel(el: HTMLElement, spec: ParallelSpec, data: RunsColumns,
                              onBrush?: (brush: Brush) => void, opts: ParallelOptions = {}): ParallelPanel {
  const canvas = h("canvas.parallel-canvas");
  const wrap = h("div.parallel", null, canvas);
  el.replaceChildren(wrap);
  const height = opts.height ?? 280;
  let axes: Axis[] = [];
  let buckets: ReturnType<typeof colorBuckets> = { bucket: new Uint8Array(0), colors: [] };
  // Brushes by axis index, as places on the axis (0 bottom .. 1 top).
  const brushes = new Map<number, [number, number]>();
  let width = 0;
  let frame = 0;
  // Every shown run in faint grey, drawn once per data, size and eye toggle: a brushed redraw (each move of
  // a drag) copies it and strokes only the runs inside the brush over it.
  let greyLayer: HTMLCanvasElement | null = null;

  const xOf = (i: number) => MARGIN.left + (axes.length > 1 ? (i * (width - MARGIN.left - MARGIN.right)) / (axes.length - 1) : (width - MARGIN.left - MARGIN.right) / 2);
  const yOf = (t: number) => MARGIN.top + (1 - t) * (height - MARGIN.top - MARGIN.bottom);
  const tOf = (y: number) => Math.min(1, Math.max(0, 1 - (y - MARGIN.top) / (height - MARGIN.top - MARGIN.bottom)));

  const setData = (next: RunsColumns) => {
    data = next;
    greyLayer = null;
    axes = spec.axes.map((f) => axisOf(f, data.columns[f] ?? new Array(data.run_ids.length).fill(null)));
    buckets = colorBuckets(data, spec.color, data.run_ids.length > 2000 ? 0.22 : data.run_ids.length > 200 ? 0.4 : 0.75);
    el.dataset.runs = String(data.run_ids.length);
    draw();
  };

  /** Whether run i lies inside every brush. */
  const inside = (i: number) => {
    for (const [a, [lo, hi]] of brushes) {
      const t = axes[a].pos[i];
      if (!(t >= lo && t <= hi)) return false;
    }
    return true;
  };

  const draw = () => {
    const was = width;
    width = Math.max(240, el.clientWidth || 600);
    if (width !== was) greyLayer = null;
    const ctx = sizeCanvas(canvas, width, height);
    const n = data.run_ids.length;
    const hidden = opts.hidden;
    const xs = axes.map((_, i) => xOf(i));
    const top = MARGIN.top;
    const span = height - MARGIN.top - MARGIN.bottom;
    const trace = (path: Path2D, i: number) => {
      let pen = false;
      for (let a = 0; a < axes.length; a++) {
        const t = axes[a].pos[i];
        if (Number.isNaN(t)) { pen = false; continue; } // a missing value breaks the line there
        const y = top + (1 - t) * span;
        if (pen) path.lineTo(xs[a], y); else path.moveTo(xs[a], y);
        pen = true;
      }
    };
    ctx.lineWidth = 1;
    if (brushes.size) { // every run faint grey underneath, then each colour bucket's runs inside the brush
      if (!greyLayer) {
        greyLayer = document.createElement("canvas");
        const grey = sizeCanvas(greyLayer, width, height);
        const all = new Path2D();
        for (let i = 0; i < n; i++) if (!hidden?.(data.run_ids[i])) trace(all, i);
        grey.lineWidth = 1;
        grey.strokeStyle = "rgba(160, 160, 160, 0.12)";
        grey.stroke(all);
      }
      ctx.drawImage(greyLayer, 0, 0, width, height);
    }
    const paths: Path2D[] = buckets.colors.map(() => new Path2D());
    let shown = 0;
    for (let i = 0; i < n; i++) {
      if (hidden?.(data.run_ids[i]) || (brushes.size && !inside(i))) continue;
      shown++;
      trace(paths[buckets.bucket[i]], i);
    }
    paths.forEach((p, b) => { ctx.strokeStyle = buckets.colors[b]; ctx.stroke(p); });
    el.dataset.selected = String(shown);
    // Where the axes are, for scripts that brush (the browser tests, bench/ui.py).
    canvas.dataset.axisX = xs.map(Math.round).join(",");
    canvas.dataset.axisY = `${Math.round(yOf(1))},${Math.round(yOf(0))}`;
    // Axes, their labels and ticks, and the brushes.
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    axes.forEach((axis, a) => {
      const x = xs[a];
      ctx.strokeStyle = "#555";
      ctx.beginPath();
      ctx.moveTo(x, yOf(1));
      ctx.lineTo(x, yOf(0));
      ctx.stroke();
      const brush = brushes.get(a);
      if (brush) {
        ctx.fillStyle = "rgba(37, 99, 235, 0.18)";
        ctx.strokeStyle = "rgba(37, 99, 235, 0.9)";
        ctx.fillRect(x - 8, yOf(brush[1]), 16, yOf(brush[0]) - yOf(brush[1]));
        ctx.strokeRect(x - 8, yOf(brush[1]), 16, yOf(brush[0]) - yOf(brush[1]));
      }
      ctx.fillStyle = "#1d2327";
      ctx.textAlign = a === 0 ? "left" : a === axes.length - 1 ? "right" : "center";
      ctx.font = "600 11.5px system-ui, sans-serif";
      ctx.fillText(shortField(axis.field) + (axis.log ? " (log)" : ""), a === 0 ? x - 8 : a === axes.length - 1 ? x + 8 : x, 12);
      ctx.font = "11px system-ui, sans-serif";
      ctx.textAlign = "left";
      for (const [t, label] of ticksOf(axis)) {
        ctx.fillStyle = "rgba(255, 255, 255, 0.75)";
        const w = ctx.measureText(label).width;
        ctx.fillRect(x + 3, yOf(t) - 6, w + 2, 12);
        ctx.fillStyle = "#4b5563";
        ctx.fillText(label, x + 4, yOf(t));
      }
    });
  };

  const brush = (): Brush => {
    const ranges: BrushRange[] = [];
    for (const [a, [lo, hi]] of [...brushes].sort((x, y) => x[0] - y[0])) {
      const axis = axes[a];
      if (axis.numeric) ranges.push({ field: axis.field, lo: valueAt(axis, lo), hi: valueAt(axis, hi) });
      else ranges.push({ field: axis.field, values: axis.catValues.filter((_, k) => { const t = axis.cats.length > 1 ? k / (axis.cats.length - 1) : 0.5; return t >= lo && t <= hi; }) });
    }
    const complete = data.total <= data.run_ids.length;
    if (!ranges.length) return { ranges, runIds: null, complete };
    const runIds: string[] = [];
    for (let i = 0; i < data.run_ids.length; i++) if (inside(i)) runIds.push(data.run_ids[i]);
    return { ranges, runIds, complete };
  };
  const changed = () => {
    const b = brush();
    el.dataset.brushed = String(b.ranges.length);
    onBrush?.(b);
  };

  // Brushing: a drag along an axis sets its range (live while dragging; onBrush once it ends).
  let dragging: { axis: number; from: number } | null = null;
  const local = (e: PointerEvent) => { const r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  const schedule = () => { if (!frame) frame = requestAnimationFrame(() => { frame = 0; draw(); }); };
  canvas.addEventListener("pointerdown", (e) => {
    const [x, y] = local(e);
    const a = axes.findIndex((_, i) => Math.abs(xOf(i) - x) <= HIT);
    if (a < 0) return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    dragging = { axis: a, from: y };
  });
  canvas.addEventListener("pointermove", (e) => {
    const [x, y] = local(e);
    if (!dragging) {
      canvas.style.cursor = axes.some((_, i) => Math.abs(xOf(i) - x) <= HIT) ? "ns-resize" : "default";
      return;
    }
    if (Math.abs(y - dragging.from) < 3) return;
    const [a, b] = [tOf(y), tOf(dragging.from)];
    brushes.set(dragging.axis, [Math.min(a, b), Math.max(a, b)]);
    schedule();
  });
  const end = (e: PointerEvent) => {
    if (!dragging) return;
    const [, y] = local(e);
    if (Math.abs(y - dragging.from) < 3) brushes.delete(dragging.axis); // a click clears the axis's brush
    else {
      const [a, b] = [tOf(y), tOf(dragging.from)];
      brushes.set(dragging.axis, [Math.min(a, b), Math.max(a, b)]);
    }
    dragging = null;
    // Measured: "brush-panel", from the end of the drag to the paint of the panel redrawn with the brush.
    performance.clearMarks("brush-panel-start");
    performance.mark("brush-panel-start");
    draw();
    void afterPaint().then(() => performance.measure("brush-panel", "brush-panel-start"));
    changed();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.title = "drag along an axis to brush a range; click an axis to clear its brush";

  let lastWidth = 0;
  const resize = new ResizeObserver(() => {
    const w = el.clientWidth;
    if (w && Math.abs(w - lastWidth) > 2) { lastWidth = w; schedule(); }
  });
  resize.observe(el);
  setData(data);
  el.dataset.axes = spec.axes.map(shortField).join(",");

  return {
    el: wrap,
    setData,
    redraw: () => { greyLayer = null; draw(); }, // what is hidden may have changed
    clearBrush: () => { if (brushes.size) { brushes.clear(); draw(); changed(); } },
    brush,
    destroy: () => { resize.disconnect(); cancelAnimationFrame(frame); },
  };
}

/** A brush's ranges as a short text (the workspace's chip). */
export function brushText(ranges: BrushRange[]): string {
  return ranges.map((r) => ("values" in r ? `${shortField(r.field)} ∈ {${r.values.map(String).join(", ")}}`
    : `${shortField(r.field)} ${fmtNum(r.lo)}–${fmtNum(r.hi)}`)).join(", ");
}
