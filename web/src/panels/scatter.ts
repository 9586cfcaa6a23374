// A scatter plot of runs on one canvas: a point per run at two fields' values, coloured by a third
// (points batched by colour bucket, one fill per bucket). Hovering names the nearest run.

import { h } from "../dom";
import { fmtNum } from "../util";
import { type Axis, axisOf, colorBuckets, numberOf, type RunsColumns, shortField, sizeCanvas, ticksOf } from "./common";

export interface ScatterSpec { x: string; y: string; color?: string; logx?: boolean; logy?: boolean }

const M = { top: 10, right: 14, bottom: 34, left: 58 };

/** Draws `data` into `el`; returns a redraw function (eye toggles, resizes). */
export function scatterPanel(el: HTMLElement, spec: ScatterSpec, data: RunsColumns,
                             hidden: (runId: string) => boolean = () => false, height = 260): () => void {
  const canvas = h("canvas.scatter-canvas");
  const tip = h("div.panel-tip");
  el.replaceChildren(h("div.scatter", null, canvas), tip);
  const col = (f: string) => data.columns[f] ?? new Array(data.run_ids.length).fill(null);
  const ax: Axis = axisOf(spec.x, col(spec.x), !!spec.logx);
  const ay: Axis = axisOf(spec.y, col(spec.y), !!spec.logy);
  const { bucket, colors } = colorBuckets(data, spec.color, 0.75);
  let width = 0;
  const px = (t: number) => M.left + t * (width - M.left - M.right);
  const py = (t: number) => M.top + (1 - t) * (height - M.top - M.bottom);
  const draw = () => {
    width = Math.max(240, el.clientWidth || 500);
    const ctx = sizeCanvas(canvas, width, height);
    ctx.strokeStyle = "#e5e7eb";
    ctx.fillStyle = "#4b5563";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const [t, label] of ticksOf(ax)) {
      ctx.beginPath(); ctx.moveTo(px(t), M.top); ctx.lineTo(px(t), height - M.bottom); ctx.stroke();
      ctx.fillText(label, px(t), height - M.bottom + 3);
    }
    ctx.fillText(shortField(spec.x) + (spec.logx ? " (log)" : ""), (M.left + width - M.right) / 2, height - 14);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const [t, label] of ticksOf(ay)) {
      ctx.beginPath(); ctx.moveTo(M.left, py(t)); ctx.lineTo(width - M.right, py(t)); ctx.stroke();
      ctx.fillText(label, M.left - 4, py(t));
    }
    ctx.save();
    ctx.translate(10, (M.top + height - M.bottom) / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center";
    ctx.fillText(shortField(spec.y) + (spec.logy ? " (log)" : ""), 0, 0);
    ctx.restore();
    const paths = colors.map(() => new Path2D());
    const size = data.run_ids.length > 2000 ? 2 : 4;
    let shown = 0;
    for (let i = 0; i < data.run_ids.length; i++) {
      const [tx, ty] = [ax.pos[i], ay.pos[i]];
      if (Number.isNaN(tx) || Number.isNaN(ty) || hidden(data.run_ids[i])) continue;
      paths[bucket[i]].rect(px(tx) - size / 2, py(ty) - size / 2, size, size);
      shown++;
    }
    paths.forEach((p, b) => { ctx.fillStyle = colors[b]; ctx.fill(p); });
    el.dataset.points = String(shown);
  };
  canvas.addEventListener("mousemove", (e) => {
    const r = canvas.getBoundingClientRect();
    const [mx, my] = [e.clientX - r.left, e.clientY - r.top];
    let best = -1;
    let dist = 64; // within 8 px
    for (let i = 0; i < data.run_ids.length; i++) {
      const d = (px(ax.pos[i]) - mx) ** 2 + (py(ay.pos[i]) - my) ** 2;
      if (d < dist && !hidden(data.run_ids[i])) { dist = d; best = i; }
    }
    const show = (f: string) => fmtNum(numberOf(col(f)[best]) || col(f)[best]);
    tip.textContent = best < 0 ? "" : `${data.names[best] || data.run_ids[best]}: ${shortField(spec.x)} ${show(spec.x)}, ${shortField(spec.y)} ${show(spec.y)}`
      + (spec.color ? `, ${shortField(spec.color)} ${show(spec.color)}` : "");
  });
  draw();
  return draw;
}
