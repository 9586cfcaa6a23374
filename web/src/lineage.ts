// An artifact version's lineage as a plain SVG graph: producer runs → version → consumer
// runs, a few hops each way, left to right. The graphs are small (tens of nodes), so a
// layered layout by hand (columns by distance from the version, rows ordered by their
// neighbours' rows) reads well without a graph-layout library.

import { navigate } from "./nav";

export interface LineageNode { id: string; kind: string; [field: string]: unknown }
export interface LineageEdge { from: string; to: string; action?: string }
export interface Lineage { nodes: LineageNode[]; edges: LineageEdge[] }

/** What a node shows: a title, a second line, where a click goes, and a colour. */
export interface NodeLook { title: string; sub: string; href?: string; color: string }

const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 176;
const NODE_H = 42;
const COL_GAP = 56;
const ROW_GAP = 14;
const PAD = 12;

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>, ...children: Array<SVGElement | string>): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c);
  return el;
}

const clip = (text: string, n: number) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);

/**
 * Columns: the focus (the version) in column 0; along an edge's direction (a run logs a
 * version, a version is used by a run) one column right, against it one left. Breadth first,
 * so each node sits at its shortest distance from the focus.
 */
export function layers(graph: Lineage, focus: string): Map<string, number> {
  const layer = new Map<string, number>([[focus, 0]]);
  const queue = [focus];
  while (queue.length) {
    const id = queue.shift()!;
    const at = layer.get(id)!;
    for (const e of graph.edges) {
      const [next, step] = e.from === id ? [e.to, 1] : e.to === id ? [e.from, -1] : [null, 0];
      if (next === null || layer.has(next)) continue;
      layer.set(next, at + step);
      queue.push(next);
    }
  }
  for (const n of graph.nodes) if (!layer.has(n.id)) layer.set(n.id, 0); // not connected: beside the focus
  return layer;
}

export function lineageGraph(graph: Lineage, focus: string, look: (n: LineageNode) => NodeLook): SVGSVGElement {
  const layer = layers(graph, focus);
  const nodes = graph.nodes.filter((n) => layer.has(n.id));
  const cols = [...new Set(nodes.map((n) => layer.get(n.id)!))].sort((a, b) => a - b);
  const byCol = new Map<number, LineageNode[]>(cols.map((c) => [c, nodes.filter((n) => layer.get(n.id) === c)]));
  // A node's row: its offset from the middle of the graph, in rows (columns are centred).
  const row = new Map<string, number>();
  // Order each column by the mean row of its neighbours in the columns already placed,
  // outwards from the focus, so edges cross less.
  const order = [0, ...cols.filter((c) => c > 0), ...cols.filter((c) => c < 0).reverse()];
  for (const c of order) {
    const list = byCol.get(c) ?? [];
    const score = new Map(list.map((n) => {
      const rows = graph.edges.flatMap((e) => (e.from === n.id ? [e.to] : e.to === n.id ? [e.from] : []))
        .filter((id) => row.has(id)).map((id) => row.get(id)!);
      return [n.id, rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : 0];
    }));
    list.sort((a, b) => score.get(a.id)! - score.get(b.id)! || a.id.localeCompare(b.id));
    list.forEach((n, i) => row.set(n.id, i - (list.length - 1) / 2));
  }
  const tallest = Math.max(1, ...[...byCol.values()].map((l) => l.length));
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * ROW_GAP;
  const width = PAD * 2 + cols.length * NODE_W + Math.max(0, cols.length - 1) * COL_GAP;
  const pos = new Map<string, { x: number; y: number }>();
  for (const n of nodes) {
    pos.set(n.id, {
      x: PAD + cols.indexOf(layer.get(n.id)!) * (NODE_W + COL_GAP), // columns in order, left to right
      y: (height - NODE_H) / 2 + row.get(n.id)! * (NODE_H + ROW_GAP),
    });
  }
  const root = svg("svg", { class: "lineage", width, height, viewBox: `0 0 ${width} ${height}`,
    "aria-label": "lineage graph" });
  root.append(svg("defs", {}, svg("marker", { id: "lineage-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#94a3b8" }))));
  for (const e of graph.edges) {
    const a = pos.get(e.from);
    const b = pos.get(e.to);
    if (!a || !b) continue;
    const x1 = a.x + NODE_W;
    const y1 = a.y + NODE_H / 2;
    const x2 = b.x;
    const y2 = b.y + NODE_H / 2;
    const bend = Math.max(30, Math.abs(x2 - x1) / 2);
    root.append(svg("path", { class: `edge edge-${e.action ?? ""}`, d: `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`,
      fill: "none", stroke: "#94a3b8", "stroke-width": 1.5, "marker-end": "url(#lineage-arrow)",
      "data-from": e.from, "data-to": e.to }, svg("title", {}, e.action ?? "")));
  }
  for (const n of nodes) {
    const p = pos.get(n.id)!;
    const l = look(n);
    const box = svg("g", { class: `node node-${n.kind}${n.id === focus ? " focus" : ""}`, transform: `translate(${p.x} ${p.y})`,
      "data-id": n.id, "data-kind": n.kind },
      svg("title", {}, `${l.title}\n${l.sub}`),
      svg("rect", { width: NODE_W, height: NODE_H, rx: n.kind === "run" ? 21 : 5 }),
      svg("rect", { class: "bar", width: 5, height: NODE_H - 10, x: n.kind === "run" ? 12 : 6, y: 5, rx: 2, fill: l.color }),
      svg("text", { x: 24, y: 17, class: "title" }, clip(l.title, 22)),
      svg("text", { x: 24, y: 33, class: "sub" }, clip(l.sub, 26)));
    if (l.href && n.id !== focus) {
      const href = l.href;
      const link = svg("a", { href }, box);
      link.addEventListener("click", (event) => { event.preventDefault(); navigate(href); });
      root.append(link);
    } else {
      root.append(box);
    }
  }
  return root;
}
