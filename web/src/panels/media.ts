// A media panel: one media key compared across the runs a workspace's filter (or a report's) selects.
// The latest file each run logged under the key (POST .../media/latest) is drawn together: charts
// (runstream.plot) on one plot through media/chart.ts's drawChart (a PR/ROC/line curve per run in the
// run's colour, bars grouped per run, confusion matrices side by side); images, audio, video and HTML
// as a grid with one cell per run; other kinds (tables, histograms, 3D) as a download per run.

import { BlobUrls, fetchText, post } from "../api";
import type { Answer, RunFile } from "../answers";
import { errorBox, h } from "../dom";
import { audioView } from "../media/audio";
import { type ChartItem, drawChart, parseChart } from "../media/chart";
import { htmlView } from "../media/html";
import { metaOf } from "../media/steps";
import { videoView } from "../media/video";
import { colorOf } from "../util";

/** The panel's spec: the key to compare, and how many runs at most (the API's bound is 100). */
export interface MediaSpec { key: string; runs?: number }

export type LatestMedia = Answer<"/projects/{team}/{project}/media/latest", "post">;
export type RunMedia = LatestMedia["runs"][number];

export const MAX_MEDIA_RUNS = 100;
export const DEFAULT_MEDIA_RUNS = 20;

/** The latest file each selected run logged under the key. */
export function fetchLatestMedia(base: string, spec: MediaSpec, filters: Record<string, unknown> | null,
                                 signal?: AbortSignal): Promise<LatestMedia> {
  const limit = Math.max(1, Math.min(MAX_MEDIA_RUNS, spec.runs ?? DEFAULT_MEDIA_RUNS));
  return post<LatestMedia>(`${base}/media/latest`, { key: spec.key, filters: filters ?? undefined, limit }, signal);
}

/** A run's file as the run page's media views take it (the same fields, without run_id and name). */
const fileOf = (r: RunMedia): RunFile => r as unknown as RunFile;
const labelOf = (r: RunMedia) => r.name || r.run_id;

/**
 * What one media panel has drawn: its runs' files, the charts' parsed JSON (fetched once), and the blob
 * URLs of its images and players. draw() draws again for the visible runs (an eye toggle: no refetch).
 */
export class MediaView {
  private blobs = new BlobUrls();
  private freeChart: () => void = () => {};
  private charts = new Map<string, ChartItem["chart"]>();  // by run id
  private answer: LatestMedia | null = null;
  private unreadable: string[] = [];  // "run: why" for each chart that could not be read
  // Grid cells by run id, built once: an eye toggle shows them again without fetching their files again.
  private cells = new Map<string, HTMLElement>();

  constructor(private body: HTMLElement, private hidden: (runId: string) => boolean) {}

  /**
   * Fetches the charts' JSON (charts only: other files load as their elements are drawn) and draws. A run
   * whose chart cannot be read is left off the plot and named in an error above it; the others are drawn.
   */
  async load(answer: LatestMedia, signal: AbortSignal): Promise<void> {
    const charts = answer.runs.filter((r) => r.media_type === "chart");
    const read = await Promise.allSettled(charts.map(async (r) => parseChart(await fetchText(r.url, signal))));
    if (signal.aborted) return;
    this.charts = new Map();
    this.unreadable = [];
    read.forEach((result, i) => {
      if (result.status === "fulfilled") this.charts.set(charts[i].run_id, result.value);
      else this.unreadable.push(`${labelOf(charts[i])}: ${result.reason instanceof Error ? result.reason.message : String(result.reason)}`);
    });
    this.answer = answer;
    this.draw();
  }

  draw(): void {
    if (!this.answer) return;  // still loading: load() draws
    this.freeChart();
    this.freeChart = () => {};
    const runs = this.answer.runs.filter((r) => !this.hidden(r.run_id));
    this.body.dataset.runs = String(runs.length);
    if (!runs.length) {
      this.body.replaceChildren(h("p.muted", null, this.answer.runs.length ? "every run is hidden" : "no run logged media under this key"));
      return;
    }
    const fail = (err: unknown) => this.body.prepend(errorBox(err));
    // Runs may have logged different kinds under one key: each kind its own part of the panel.
    const byType = new Map<string, RunMedia[]>();
    for (const r of runs) byType.set(r.media_type ?? "file", [...(byType.get(r.media_type ?? "file") ?? []), r]);
    const parts: HTMLElement[] = [];
    for (const [type, group] of byType) {
      if (type === "chart") parts.push(this.chartPart(group));
      else parts.push(this.gridPart(type, group, fail));
    }
    this.body.dataset.types = [...byType.keys()].join(",");
    this.body.replaceChildren(...(this.unreadable.length ? [errorBox(`charts not drawn: ${this.unreadable.join("; ")}`)] : []), ...parts);
  }

  /** Charts of one kind on one plot; several kinds (a key reused for another chart) one plot each. */
  private chartPart(runs: RunMedia[]): HTMLElement {
    const byKind = new Map<string, ChartItem[]>();
    for (const r of runs) {
      const chart = this.charts.get(r.run_id);
      if (!chart) continue;
      const item = { label: labelOf(r), color: colorOf(r.run_id), chart };
      byKind.set(chart.spec.kind, [...(byKind.get(chart.spec.kind) ?? []), item]);
    }
    const part = h("div.media-compare-charts");
    const frees: Array<() => void> = [];
    for (const items of byKind.values()) {
      const holder = h("div.media-compare-chart");
      part.append(holder);
      // Drawn once the holder is in the page: uPlot and the canvases size to its width.
      requestAnimationFrame(() => {
        if (!holder.isConnected) return;
        try {
          frees.push(drawChart(holder, items, { width: Math.max(320, holder.clientWidth - 4), height: 300 }));
        } catch (err) {
          holder.replaceChildren(errorBox(err));
        }
      });
    }
    this.freeChart = () => frees.splice(0).forEach((free) => free());
    return part;
  }

  /** One cell per visible run. */
  private gridPart(type: string, runs: RunMedia[], fail: (err: unknown) => void): HTMLElement {
    const grid = h("div.media-compare-grid", { style: { display: "grid", gap: "8px",
      gridTemplateColumns: `repeat(auto-fill, minmax(${type === "image" ? 140 : 260}px, 1fr))` } });
    for (const r of runs) {
      let cell = this.cells.get(r.run_id);
      if (!cell) this.cells.set(r.run_id, cell = this.cell(type, r, fail));
      grid.append(cell);
    }
    return grid;
  }

  /** A run's cell: its image, player or page, named by the run (in its colour) and the step. */
  private cell(type: string, r: RunMedia, fail: (err: unknown) => void): HTMLElement {
    const f = fileOf(r);
    const caption = metaOf(f).caption;
    let view: HTMLElement;
    if (type === "image") {
      view = this.blobs.image(r.url, { alt: caption ?? r.path }, fail);
      // Styled through the DOM, not a style attribute: the UI's CSP refuses inline styles.
      Object.assign(view.style, { width: "100%", imageRendering: "pixelated" });
    } else if (type === "audio") view = audioView(f, this.blobs, fail);
    else if (type === "video") view = videoView(f, this.blobs, fail);
    else if (type === "html") view = htmlView(f, fail);
    else view = this.blobs.download(r.url, r.path.split("/").pop() || "file", `${type}: ${r.path.split("/").pop()}`, fail);
    return h("figure.media-compare-cell", { dataset: { run: r.run_id, step: String(r.step ?? "") }, style: { margin: "0" } },
      view,
      h("figcaption", null, h("span.swatch", { style: { background: colorOf(r.run_id) } }), ` ${labelOf(r)}`,
        h("span.muted", null, ` · step ${r.step ?? "?"}${caption ? ` · ${caption}` : ""}`)));
  }

  destroy(): void {
    this.freeChart();
    this.blobs.revoke();
  }
}
