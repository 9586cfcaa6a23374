// Alerts: the live list (Server-Sent Events) and the rules editor.

import { del, get, patch, post, sse } from "../api";
import type { Alert, Answer } from "../answers";
import { errorBox, guarded, h, select } from "../dom";
import { projectNav } from "../nav";
import { fmtTime } from "../util";

const enc = encodeURIComponent;
type Rule = Answer<"/projects/{team}/{project}/alert-rules">["rules"][number];
const EXAMPLES: Record<string, object> = {
  threshold: { metric: "loss", op: ">", value: 10, level: "WARN" },
  nonfinite: { metric: "*", level: "ERROR" },
  divergence: { metric: "loss", percent: 100, within_steps: 50, level: "ERROR" },
  stall: { seconds: 600, level: "WARN" },
  system: { metric: "gpu.0.temp", op: ">", value: 85, for_seconds: 60, level: "WARN" },
  run_state: { states: ["crashed", "failed"], level: "WARN" },
};

export async function alertsPage(root: HTMLElement, [team, project]: string[], signal?: AbortSignal): Promise<() => void> {
  const base = `/projects/${enc(team)}/${enc(project)}`;
  root.append(projectNav(team, project, "alerts"));
  const live = h("span.live", null, "connecting…");
  const list = h("tbody");
  const seen = new Set<string>();
  const alertRow = (a: Alert) => h("tr.alert-row", { dataset: { alert: a.alert_id } },
    h("td.nowrap", null, fmtTime(a.time)), h("td", null, h("span", { className: `level level-${a.level}` }, a.level)),
    h("td", null, h("a", { href: `${base}/runs/${enc(a.run_id)}` }, a.run_id)),
    h("td", null, h("b", null, a.title), h("div.alert-text", null, a.text)), h("td.muted", null, a.source));
  const { alerts } = await get<Answer<"/projects/{team}/{project}/alerts">>(`${base}/alerts?limit=200`, signal);
  for (const a of alerts) { seen.add(a.alert_id + a.run_id); list.append(alertRow(a)); }
  const since = alerts.length ? Math.max(...alerts.map((a) => a.time)) : undefined;
  const stop = sse(`${base}/alerts/stream${since ? `?since=${since}` : ""}`, (e) => {
    if (e.event !== "alert") return;
    const a = JSON.parse(e.data) as Alert; // an "alert" event carries one alert, as the list has them
    if (seen.has(a.alert_id + a.run_id)) return;
    seen.add(a.alert_id + a.run_id);
    const row = alertRow(a);
    row.classList.add("new");
    list.prepend(row);
  }, (s) => { live.textContent = s === "live" ? "● live" : s; }, signal);

  const rulesStatus = h("div.rules-status");
  const rulesBox = h("div.rules");
  const drawRules = async () => {
    const { rules } = await get<Answer<"/projects/{team}/{project}/alert-rules">>(`${base}/alert-rules`);
    rulesBox.replaceChildren(h("table.grid", null,
      h("thead", null, h("tr", null, ["name", "kind", "spec", "cooldown", "enabled", ""].map((c) => h("th", null, c)))),
      h("tbody", null, rules.map((r) => {
        const enabled = h("input", { type: "checkbox", checked: r.enabled });
        enabled.addEventListener("change", () => {
          const want = enabled.checked;
          patch(`${base}/alert-rules/${enc(r.id)}`, { enabled: want }).then(() => rulesStatus.replaceChildren(), (e) => {
            enabled.checked = !want; // the server kept the old value: show it
            rulesStatus.replaceChildren(errorBox(e));
          });
        });
        return h("tr", null, h("td", null, r.name), h("td", null, r.kind), h("td", null, h("code", null, JSON.stringify(r.spec))),
          h("td.num", null, `${r.cooldown_s} s`), h("td", null, enabled),
          h("td", null, h("button.link", { onclick: () => editor(r) }, "edit"), " ",
            h("button.link", { onclick: guarded(rulesStatus, async () => { await del(`${base}/alert-rules/${enc(r.id)}`); await drawRules(); }) }, "delete")));
      }))), h("button.new-rule", { onclick: () => editor(null) }, "+ rule"));
  };
  const editorBox = h("div.rule-editor");
  const editor = (rule: Rule | null) => {
    const name = h("input", { value: rule?.name ?? "", placeholder: "name", name: "rule-name" });
    const spec = h("textarea", { rows: 4, cols: 60, name: "rule-spec" }, JSON.stringify(rule?.spec ?? EXAMPLES.threshold, null, 1));
    const kind = select(Object.keys(EXAMPLES).map((k) => [k, k] as [string, string]), rule?.kind ?? "threshold", (k) => {
      spec.value = JSON.stringify(EXAMPLES[k], null, 1);
    }, { name: "rule-kind" });
    const cooldown = h("input", { type: "number", value: String(rule?.cooldown_s ?? 300), min: 0, size: 6 });
    const message = h("div");
    const saveRule = async () => {
      let parsed: unknown;
      try { parsed = JSON.parse(spec.value); } catch { message.replaceChildren(errorBox("the spec is not valid JSON")); return; }
      const body = { name: name.value, kind: kind.value, spec: parsed, cooldown_s: Number(cooldown.value) };
      try {
        if (rule) await patch(`${base}/alert-rules/${enc(rule.id)}`, body);
        else await post(`${base}/alert-rules`, body);
        editorBox.replaceChildren();
        await drawRules();
      } catch (err) { message.replaceChildren(errorBox(err)); }
    };
    editorBox.replaceChildren(h("h3", null, rule ? `Edit rule ${rule.name}` : "New rule"),
      h("div.form", null, h("label", null, "name ", name), h("label", null, "kind ", kind),
        h("label", null, "cooldown (s) ", cooldown), h("label.block", null, "spec (JSON) ", spec)),
      message, h("button", { onclick: saveRule }, "save"), " ", h("button.link", { onclick: () => editorBox.replaceChildren() }, "cancel"));
  };
  root.append(h("div.alerts-page", null,
    h("section", null, h("h2", null, "Alerts ", live),
      h("table.grid.alerts", null, h("thead", null, h("tr", null, ["time", "level", "run", "alert", "source"].map((c) => h("th", null, c)))), list)),
    h("section", null, h("h2", null, "Rules"), rulesStatus, rulesBox, editorBox)));
  try {
    await drawRules();
  } catch (err) {
    rulesStatus.replaceChildren(errorBox(err));
  }
  return stop;
}
