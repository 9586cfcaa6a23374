// A panel of one of the kinds beyond lines, as the workspace and reports place it: a head (title,
// move, remove), the runs' columns (or the importance answer) fetched for the current filter,
// and the kind's drawing. Specs are plain JSON, saved in views and reports.

import { h } from "../dom";
import { barPanel, type BarSpec } from "./bar";
import { fetchColumns, type RunsColumns, shortField } from "./common";
import { fetchImportance, type ImportanceSpec, importanceTable } from "./importance";
import { fetchLatestMedia, type MediaSpec, MediaView } from "./media";
import { type Brush, type ParallelPanel, parallelPanel, type ParallelSpec } from "./parallel";
import { scatterPanel, type ScatterSpec } from "./scatter";

export type CustomSpec = { id: string; title?: string } & (
  | ({ kind: "parallel" } & ParallelSpec)
  | ({ kind: "scatter" } & ScatterSpec)
  | ({ kind: "bar" } & BarSpec)
  | ({ kind: "importance" } & ImportanceSpec)
  | ({ kind: "media" } & MediaSpec));
export type CustomKind = CustomSpec["kind"];
export const CUSTOM_KINDS: CustomKind[] = ["parallel", "scatter", "bar", "importance", "media"];
export const KIND_LABELS: Record<CustomKind, string> = {
  parallel: "Parallel coordinates", scatter: "Scatter", bar: "Bar", importance: "Parameter importance",
  media: "Media across runs",
};

export function isCustom(spec: { kind?: string }): spec is CustomSpec {
  return (CUSTOM_KINDS as string[]).includes(spec.kind ?? "");
}

/** The fields a spec draws (what its columns request asks for). */
export function fieldsOf(spec: CustomSpec): string[] {
  switch (spec.kind) {
    case "parallel": return [...spec.axes, ...(spec.color ? [spec.color] : [])];
    case "scatter": return [spec.x, spec.y, ...(spec.color ? [spec.color] : [])];
    case "bar": return [spec.value, ...(spec.by ? [spec.by] : [])];
    case "importance": return [spec.metric];
    case "media": return [];
  }
}

export function titleOf(spec: CustomSpec): string {
  if (spec.title) return spec.title;
  switch (spec.kind) {
    case "parallel": return `parallel: ${spec.axes.map(shortField).join(" · ")}`;
    case "scatter": return `${shortField(spec.y)} vs ${shortField(spec.x)}`;
    case "bar": return `${shortField(spec.value)}${spec.by ? ` by ${shortField(spec.by)}` : " per run"}`;
    case "importance": return `importance for ${shortField(spec.metric)}`;
    case "media": return `${spec.key} across runs`;
  }
}

export interface CustomOptions {
  base: string;                                   // /projects/{team}/{project}
  filters: () => Record<string, unknown> | null;  // the runs the panel reads
  limit?: number;
  hidden?: (runId: string) => boolean;
  onBrush?: (brush: Brush) => void;
  onRemove?: () => void;
  onMove?: () => void;
  /** After each draw (the workspace marks parallel-first-render). */
  onDrawn?: () => void;
}

export class CustomPanel {
  readonly el: HTMLElement;
  private body: HTMLElement;
  private status: HTMLElement;
  private ticket = 0;
  private redraw: (() => void) | null = null;
  private parallel: ParallelPanel | null = null;
  private media: MediaView | null = null;
  private controller: AbortController | null = null;

  constructor(public spec: CustomSpec, private opts: CustomOptions) {
    this.status = h("span.panel-status");
    this.body = h("div.panel-body");
    this.el = h("div.panel.custom-panel", { dataset: { kind: spec.kind, panel: spec.id } },
      h("div.panel-head", null,
        h("span.panel-title", null, titleOf(spec)),
        this.status,
        spec.kind === "parallel" && opts.onBrush ? h("button.link.clear-brush", { title: "clear the brushes", onclick: () => this.clearBrush() }, "clear brush") : null,
        opts.onMove ? h("button.link.move", { title: "move earlier", onclick: () => opts.onMove?.() }, "◀") : null,
        opts.onRemove ? h("button.link.remove", { title: "remove panel", onclick: () => opts.onRemove?.() }, "✕") : null),
      this.body);
    // Curves of many runs and a grid of their images need the width: a media panel takes a whole row.
    if (spec.kind === "media") this.el.style.gridColumn = "1 / -1";
  }

  /** Fetches for the current filter and draws (a parallel panel keeps its brushes). */
  async load(): Promise<void> {
    const ticket = ++this.ticket;
    this.controller?.abort();
    const controller = this.controller = new AbortController();
    this.status.textContent = "loading…";
    this.status.classList.remove("bad");
    try {
      const spec = this.spec;
      if (spec.kind === "importance") {
        const answer = await fetchImportance(this.opts.base, spec.metric, this.opts.filters(), controller.signal);
        if (ticket !== this.ticket) return;
        this.body.replaceChildren(importanceTable(answer));
        this.el.dataset.lines = String(answer.runs);
        this.status.textContent = "";
      } else if (spec.kind === "media") {
        const answer = await fetchLatestMedia(this.opts.base, spec, this.opts.filters(), controller.signal);
        if (ticket !== this.ticket) return;
        this.media?.destroy();
        const media = this.media = new MediaView(this.body, this.opts.hidden ?? (() => false));
        this.redraw = () => media.draw();
        await media.load(answer, controller.signal);
        if (ticket !== this.ticket) return;
        this.status.textContent = answer.total > answer.runs.length ? `${answer.runs.length} of ${answer.total} runs` : `${answer.runs.length} runs`;
        this.el.dataset.lines = String(answer.runs.length);
      } else {
        const data: RunsColumns = await fetchColumns(this.opts.base, fieldsOf(spec), this.opts.filters(), this.opts.limit ?? 10_000, controller.signal);
        if (ticket !== this.ticket) return;
        this.status.textContent = data.total > data.run_ids.length ? `${data.run_ids.length} of ${data.total} runs` : `${data.run_ids.length} runs`;
        this.el.dataset.lines = String(data.run_ids.length);
        this.draw(data);
      }
      this.opts.onDrawn?.();
    } catch (err) {
      if (ticket !== this.ticket || controller.signal.aborted) return;
      this.status.textContent = err instanceof Error ? err.message : String(err);
      this.status.classList.add("bad");
    }
  }

  private draw(data: RunsColumns): void {
    const spec = this.spec;
    const hidden = this.opts.hidden ?? (() => false);
    if (spec.kind === "parallel") {
      if (this.parallel) this.parallel.setData(data);
      else this.parallel = parallelPanel(this.body, spec, data, this.opts.onBrush, { hidden });
      this.redraw = this.parallel.redraw;
    } else if (spec.kind === "scatter") this.redraw = scatterPanel(this.body, spec, data, hidden);
    else if (spec.kind === "bar") this.redraw = barPanel(this.body, spec, data, hidden);
  }

  /** Eye toggles: draw again without the hidden runs (no refetch). */
  setVisible(): void {
    this.redraw?.();
  }

  clearBrush(): void {
    this.parallel?.clearBrush();
  }

  destroy(): void {
    this.ticket++;
    this.controller?.abort();
    this.parallel?.destroy();
    this.media?.destroy();
  }
}
