// Parameter importance for a metric (POST .../importance): a table of the config keys with a bar
// for each one's importance (a random forest's, normalised to 1) and one for its correlation
// with the metric (right and green when positive, left and red when negative).

import { post } from "../api";
import type { Answer } from "../answers";
import { h } from "../dom";
import { fmtNum } from "../util";
import { shortField } from "./common";

export interface ImportanceSpec { metric: string }

export type Importance = Answer<"/projects/{team}/{project}/importance", "post">;

export function fetchImportance(base: string, metric: string, filters: Record<string, unknown> | null,
                                signal?: AbortSignal): Promise<Importance> {
  return post<Importance>(`${base}/importance`, { metric, filters: filters ?? undefined }, signal);
}

/** The table of an answer. */
export function importanceTable(answer: Importance): HTMLElement {
  const max = Math.max(1e-9, ...answer.params.map((p) => p.importance));
  return h("div.importance", null,
    h("div.muted", null, `${shortField(answer.metric)}: ${answer.runs} runs`),
    h("table.grid.importance", null,
      h("thead", null, h("tr", null, h("th", null, "parameter"), h("th", null, "importance"), h("th", null, "correlation"))),
      h("tbody", null, answer.params.map((p) => {
        const r = p.correlation ?? 0;
        return h("tr", { dataset: { param: p.param } },
          h("td", { title: p.param }, shortField(p.param)),
          h("td.bar-cell", { title: fmtNum(p.importance) },
            h("span.imp-axis", null, h("span.imp-bar", { style: { width: `${(100 * p.importance) / max}%` } })), h("span.bar-value", null, fmtNum(Number(p.importance.toFixed(3))))),
          h("td.bar-cell", { title: p.correlation === null ? "no correlation" : `Pearson's r ${fmtNum(r)}` },
            h("span.corr-axis", null,
              h("span", { className: `corr-bar ${r >= 0 ? "pos" : "neg"}`,
                          style: { width: `${Math.abs(r) * 50}%`, left: r >= 0 ? "50%" : `${50 - Math.abs(r) * 50}%` } })),
            h("span.bar-value", null, p.correlation === null ? "—" : fmtNum(Number(r.toFixed(2))))));
      }))));
}
