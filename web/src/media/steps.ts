// A step slider for one media key: the files of the chosen step (one, or a gallery of several in
// the order logged), the latest step first. A step's elements are built when it is first shown and
// kept, so moving back does not fetch again (and a playing video keeps its place).

import type { MediaMeta, RunFile } from "../answers";
import { h } from "../dom";

export const metaOf = (f: RunFile): MediaMeta & Record<string, unknown> => (f.meta ?? {}) as MediaMeta & Record<string, unknown>;

/** Files grouped by step, each group in the order logged (meta.index). */
export function byStep(files: RunFile[]): Map<number, RunFile[]> {
  const groups = new Map<number, RunFile[]>();
  for (const f of files) groups.set(f.step ?? 0, [...(groups.get(f.step ?? 0) ?? []), f]);
  for (const group of groups.values()) group.sort((a, b) => (metaOf(a).index ?? 0) - (metaOf(b).index ?? 0));
  return new Map([...groups].sort((a, b) => a[0] - b[0]));
}

export interface StepOptions {
  className?: string;
  /**
   * Called with a step's rendered elements when the slider leaves that step; when given, a step's
   * elements are not kept but rendered again on return (3D viewers: each holds a WebGL context, of
   * which a browser allows only about 16).
   */
  release?: (rendered: HTMLElement[]) => void;
}

/**
 * A slider over the key's steps and, under it, `render(file)` for each file of the chosen step in a
 * figure with its caption. One step only: no slider.
 */
export function stepSlider(files: RunFile[], render: (f: RunFile) => HTMLElement, options: StepOptions = {}): HTMLElement {
  const { className = "", release } = options;
  const groups = byStep(files);
  const steps = [...groups.keys()];
  const slider = h("input.media-step", { type: "range", min: 0, max: steps.length - 1, step: 1, value: String(steps.length - 1) });
  const label = h("span.media-step-label");
  const holder = h(`div.media-items${className ? "." + className : ""}` as "div.x");
  const shown = new Map<number, HTMLElement[]>();
  const rendered = new Map<number, HTMLElement[]>();
  let current: number | null = null;
  const show = () => {
    const step = steps[Number(slider.value)];
    if (step === current) return;
    if (release && current !== null) {
      release(rendered.get(current) ?? []);
      shown.delete(current);
      rendered.delete(current);
    }
    current = step;
    label.textContent = `step ${step}` + (steps.length > 1 ? ` (${Number(slider.value) + 1} of ${steps.length})` : "");
    if (!shown.has(step)) {
      const views: HTMLElement[] = [];
      shown.set(step, groups.get(step)!.map((f) => {
        const { caption, index } = metaOf(f);
        const text = caption ?? (groups.get(step)!.length > 1 && index !== undefined ? `#${index + 1}` : "");
        const view = render(f);
        views.push(view);
        return h("figure.media-item", { dataset: { step: String(step) } }, view, text ? h("figcaption", null, String(text)) : null);
      }));
      rendered.set(step, views);
    }
    // Pause what is left playing on the step moved away from.
    holder.querySelectorAll("audio, video").forEach((m) => (m as HTMLMediaElement).pause());
    holder.replaceChildren(...shown.get(step)!);
    holder.dataset.step = String(step);
  };
  slider.addEventListener("input", show);
  show();
  return h("div.media-stepper", null, steps.length > 1 ? h("div.media-step-bar", null, slider, " ", label) : label, holder);
}
