// Bars of a field: one per run, or one per group (another field's value) with the group's
// mean, min or max and, for the mean, an error bar of ± one standard deviation. On a canvas,
// since a bar per run may be thousands of bars.

import { h } from "../dom";
import { colorOf, fmtNum } from "../util";
import { numberOf, type RunsColumns, shortField, sizeCanvas } from "./common";

export interface BarSpec { value: string; by?: string; agg?: "mean" | "min" | "max" }

export interface Bar { key: string; label: string; value: number; std?: number; count?: number }

/** The bars of a spec over the runs (hidden runs left out): per run in the runs' order, or per group sorted by label. */
export function barsOf(spec: BarSpec, data: RunsColumns, hidden: (runId: string) => boolean): Bar[] {
  const values = data.columns[spec.value] ?? [];
  if (!spec.by) {
    const bars: Bar[] = [];
    data.run_ids.forEach((id, i) => {
      const v = numberOf(values[i]);
      if (!Number.isNaN(v) && !hidden(id)) bars.push({ key: id, label: data.names[i] || id, value: v });
    });
    return bars;
  }
  const by = data.columns[spec.by] ?? [];
  const groups = new Map<string, number[]>();
  data.run_ids.forEach((id, i) => {
    const v = numberOf(values[i]);
    if (Number.isNaN(v) || hidden(id)) return;
    const key = by[i] === null || by[i] === undefined ? "—" : String(by[i]);
    (groups.get(key) ?? groups.set(key, []).get(key)!).push(v);
  });
  return [...groups].sort(([a], [b]) => a.localeCompare(b, undefined, { numeric: true })).map(([key, vs]) => {
    const mean = vs.reduce((s, v) => s + v, 0) / vs.length;
    const std = Math.sqrt(vs.reduce((s, v) => s + (v - mean) ** 2, 0) / vs.length);
    const value = spec.agg === "min" ? Math.min(...vs) : spec.agg === "max" ? Math.max(...vs) : mean;
    return { key, label: key, value, std: (spec.agg ?? "mean") === "mean" ? std : undefined, count: vs.length };
  });
}

const M = { top: 12, right: 12, bottom: 40, left: 58 };

/** Draws the bars into `el`; returns a redraw function. */
export function barPanel(el: HTMLElement, spec: BarSpec, data: RunsColumns,
                         hidden: (runId: string) => boolean = () => false, height = 260): () => void {
  const canvas = h("canvas.bar-canvas");
  const tip = h("div.panel-tip");
  el.replaceChildren(canvas, tip);
  let bars: Bar[] = [];
  let width = 0;
  let slot = 0;
  const draw = () => {
    bars = barsOf(spec, data, hidden);
    el.dataset.bars = String(bars.length);
    width = Math.max(240, el.clientWidth || 500);
    const ctx = sizeCanvas(canvas, width, height);
    if (!bars.length) return;
    let lo = Math.min(0, ...bars.map((b) => b.value - (b.std ?? 0)));
    let hi = Math.max(0, ...bars.map((b) => b.value + (b.std ?? 0)));
    if (lo === hi) { lo -= 1; hi += 1; }
    const y = (v: number) => M.top + ((hi - v) / (hi - lo)) * (height - M.top - M.bottom);
    slot = (width - M.left - M.right) / bars.length;
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#4b5563";
    ctx.strokeStyle = "#e5e7eb";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let k = 0; k <= 4; k++) {
      const v = lo + ((hi - lo) * k) / 4;
      ctx.beginPath(); ctx.moveTo(M.left, y(v)); ctx.lineTo(width - M.right, y(v)); ctx.stroke();
      ctx.fillText(fmtNum(Number(v.toPrecision(3))), M.left - 4, y(v));
    }
    const gap = slot > 6 ? slot * 0.2 : 0;
    bars.forEach((b, i) => {
      const x = M.left + i * slot + gap / 2;
      ctx.fillStyle = colorOf(spec.by ? `group:${b.key}` : b.key);
      ctx.fillRect(x, Math.min(y(b.value), y(0)), Math.max(1, slot - gap), Math.abs(y(0) - y(b.value)));
      if (b.std !== undefined) {
        const cx = x + (slot - gap) / 2;
        ctx.strokeStyle = "#111827";
        ctx.beginPath();
        ctx.moveTo(cx, y(b.value - b.std)); ctx.lineTo(cx, y(b.value + b.std));
        ctx.moveTo(cx - 4, y(b.value - b.std)); ctx.lineTo(cx + 4, y(b.value - b.std));
        ctx.moveTo(cx - 4, y(b.value + b.std)); ctx.lineTo(cx + 4, y(b.value + b.std));
        ctx.stroke();
      }
    });
    // Labels only where they fit.
    if (slot >= 28) {
      ctx.fillStyle = "#374151";
      ctx.textAlign = "center";
      ctx.textBaseline = "top";
      bars.forEach((b, i) => {
        let label = b.label;
        while (label.length > 3 && ctx.measureText(label).width > slot - 2) label = label.slice(0, -2) + "…";
        ctx.fillText(label, M.left + (i + 0.5) * slot, height - M.bottom + 4);
      });
    }
    ctx.fillStyle = "#4b5563";
    ctx.textAlign = "center";
    ctx.fillText(`${spec.by ? `${spec.agg ?? "mean"} of ` : ""}${shortField(spec.value)}${spec.by ? ` by ${shortField(spec.by)}` : " per run"}`,
                 (M.left + width - M.right) / 2, height - 14);
  };
  canvas.addEventListener("mousemove", (e) => {
    const i = Math.floor((e.clientX - canvas.getBoundingClientRect().left - M.left) / (slot || 1));
    const b = bars[i];
    tip.textContent = b ? `${b.label}: ${fmtNum(b.value)}${b.std !== undefined ? ` ± ${fmtNum(b.std)}` : ""}${b.count ? ` (${b.count} runs)` : ""}` : "";
  });
  draw();
  return draw;
}
