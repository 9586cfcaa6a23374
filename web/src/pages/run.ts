// One run: overview (live state, config, summary, git and its diff), charts of every metric,
// system metrics, console log, files and media.

import { fetchText, fileUrl, get, patch, qs } from "../api";
import { ChartPanel, type Line, type PanelSpec } from "../chart";
import { seriesLoader } from "../data";
import { debounce, errorBox, h, replace } from "../dom";
import { projectNav } from "../main";
import { colorOf, fmtAgo, fmtBytes, fmtDuration, fmtNum, fmtTime, flatten } from "../util";

const enc = encodeURIComponent;

function kv(rows: Array<[string, unknown]>): HTMLElement {
  return h("table.kv", null, h("tbody", null, rows.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => h("tr", null, h("th", null, k), h("td", null, v instanceof Node ? v : fmtNum(v))))));
}

/** A unified diff with added, removed and hunk lines coloured. */
export function diffView(patchText: string): HTMLElement {
  return h("pre.diff", null, patchText.split("\n").map((line) => {
    const cls = line.startsWith("+++") || line.startsWith("---") ? "file" : line.startsWith("+") ? "add"
      : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : line.startsWith("diff ") ? "file" : "";
    return h("span", { className: cls }, line + "\n");
  }));
}

export async function runPage(root: HTMLElement, [team, project, runId]: string[]): Promise<() => void> {
  const path = `/runs/${enc(team)}/${enc(project)}/${enc(runId)}`;
  let run = await get<any>(path);
  root.append(projectNav(team, project, ""));
  const stateBadge = h("span", { className: `state state-${run.state}` }, run.state);
  const heartbeat = h("span.muted.heartbeat");
  const title = h("h2.run-title", null, h("span.swatch.big", { style: { background: colorOf(run.id) } }), ` ${run.name || run.id} `,
    stateBadge, " ", heartbeat);
  const tabsEl = h("nav.tabs.run-tabs");
  const content = h("div.run-content");
  root.append(title, tabsEl, content);
  const timers: number[] = [];
  let panels: ChartPanel[] = [];
  const destroyPanels = () => { panels.forEach((p) => p.destroy()); panels = []; };

  // Live state: poll while the run is running (heartbeats arrive about every few seconds).
  const tick = () => {
    heartbeat.textContent = run.state === "running" ? `heartbeat ${fmtAgo(run.heartbeat_at)}` :
      run.finished_at ? `finished ${fmtAgo(run.finished_at)}` : "";
  };
  tick();
  timers.push(window.setInterval(async () => {
    tick();
    if (run.state !== "running") return;
    try {
      run = await get<any>(path);
      stateBadge.textContent = run.state;
      stateBadge.className = `state state-${run.state}`;
      tick();
    } catch { /* keep the last state */ }
  }, 5000));

  const overview = async () => {
    const git = run.git ?? {};
    const files = (await get<{ files: any[] }>(`${path}/files`)).files;
    const patchFile = files.find((f) => f.kind === "git_patch");
    const notes = h("textarea.notes", { rows: 3, placeholder: "notes" }, run.notes ?? "");
    const saved = h("span.muted");
    notes.addEventListener("change", async () => {
      try { run = await patch(path, { notes: notes.value || null }); saved.textContent = "saved"; }
      catch (err) { saved.replaceChildren(errorBox(err)); }
    });
    const tagsInput = h("input.tags-input", { value: (run.tags ?? []).join(", "), size: 40 });
    tagsInput.addEventListener("change", async () => {
      try {
        run = await patch(path, { tags: tagsInput.value.split(",").map((t) => t.trim()).filter(Boolean) });
        saved.textContent = "saved";
      } catch (err) { saved.replaceChildren(errorBox(err)); }
    });
    const runtime = run.finished_at ? run.finished_at - run.created_at : run.heartbeat_at - run.created_at;
    const diffBox = h("div.diff-box");
    replace(content,
      h("div.overview", null,
        h("section", null, h("h3", null, "Run"), kv([
          ["id", run.id], ["state", run.state], ["exit code", run.exit_code], ["created", fmtTime(run.created_at)],
          ["runtime", runtime > 0 ? fmtDuration(runtime) : ""], ["heartbeat", fmtTime(run.heartbeat_at)],
          ["group", run.group], ["job type", run.job_type], ["user", run.user], ["host", run.host],
          ["command", h("code", null, [run.program, ...(run.args ?? [])].filter(Boolean).join(" "))],
          ["python", run.python],
          ["tags", tagsInput],
        ]), h("h3", null, "Notes"), notes, saved),
        h("section", null, h("h3", null, "Git"), kv([
          ["commit", git.commit ? h("code", null, git.commit) : null], ["branch", git.branch], ["remote", git.remote],
          ["dirty", git.dirty === undefined ? null : String(git.dirty)], ["root", git.root],
        ]), patchFile ? h("div", null, h("h3", null, "Diff ", h("a.muted", { href: fileUrl(patchFile.url), download: patchFile.path }, "download")), diffBox)
          : h("p.muted", null, "no diff (the working tree was clean or not a git repository)")),
        h("section", null, h("h3", null, "Config"), kv(Object.entries(flatten(run.config)))),
        h("section", null, h("h3", null, "Summary"), kv(Object.entries(flatten(run.summary))))));
    if (patchFile) diffBox.append(diffView(await fetchText(fileUrl(patchFile.url))));
  };

  const charts = async (system: boolean) => {
    const names: string[] = system
      ? (await get<{ series: any[] }>(`${path}/system` + qs({ points: 500 }))).series.map((s) => s.metric)
      : (await get<{ metrics: string[] }>(`${path}/metrics`)).metrics;
    if (!names.length) { replace(content, h("p.muted", null, system ? "no system metrics" : "no metrics")); return; }
    const runs = () => [{ id: run.id, name: run.name || run.id }];
    let sysCache: Promise<any[]> | null = null;
    const sysLoader = async (spec: PanelSpec): Promise<{ lines: Line[] }> => {
      sysCache ??= get<{ series: any[] }>(`${path}/system` + qs({ points: 500 })).then((a) => a.series);
      const s = (await sysCache).find((x) => x.metric === spec.metric);
      if (!s) return { lines: [] };
      const x = spec.x === "relative" ? s.time.map((t: number) => t - s.time[0]) : s.time;
      return { lines: [{ key: run.id, label: spec.metric, color: colorOf(run.id), x, y: s.mean, lo: s.min, hi: s.max }] };
    };
    const loader = system ? sysLoader : seriesLoader(team, project, runs);
    panels = names.map((metric) => new ChartPanel(
      { id: metric, metric, kind: system ? "system" : "metric", x: system ? "relative" : "step", smoothing: 0 },
      { loader, hidden: () => false, metrics: names, xChoices: system ? ["relative", "time"] : undefined }));
    replace(content, h("div.panels", null, panels.map((p) => p.el)));
    await Promise.all(panels.map((p) => p.load()));
  };

  const consoleTab = async () => {
    const q = h("input.console-search", { type: "search", placeholder: "search the log (text; tick regex for RE2)", size: 40 });
    const regex = h("input", { type: "checkbox" });
    const out = h("pre.console");
    const more = h("button.link", { hidden: true }, "older lines");
    let cursor: string | null = null;
    const show = async (older: boolean) => {
      const answer = await get<{ lines: any[]; next_cursor: string | null }>(`${path}/console` +
        qs({ tail: 1000, q: q.value || undefined, regex: q.value && regex.checked ? 1 : undefined, cursor: older ? cursor : undefined }));
      cursor = answer.next_cursor;
      more.hidden = !cursor;
      const lines = answer.lines.map((l) => h("span", { className: l.stream === "stderr" ? "stderr" : "" },
        h("span.ts", null, fmtTime(l.time).slice(11) + " "), l.line + "\n"));
      if (older) out.prepend(...lines); else out.replaceChildren(...lines);
      if (!answer.lines.length && !older) out.textContent = q.value ? "no line matches" : "no console output";
      if (!older) out.scrollTop = out.scrollHeight;
    };
    q.addEventListener("input", debounce(() => void show(false).catch((e) => out.replaceChildren(errorBox(e))), 300));
    regex.addEventListener("change", () => void show(false));
    more.addEventListener("click", () => void show(true));
    replace(content, h("div.console-bar", null, q, h("label", null, regex, " regex"), " ", more), out);
    await show(false);
    if (run.state === "running") timers.push(window.setInterval(() => { if (!q.value) void show(false); }, 5000));
  };

  const filesTab = async () => {
    const { files } = await get<{ files: any[] }>(`${path}/files`);
    if (!files.length) { replace(content, h("p.muted", null, "no files")); return; }
    const rows = files.map((f) => h("tr", null,
      h("td", null, h("a", { href: fileUrl(f.url), download: f.path.split("/").pop() }, f.path)),
      h("td", null, f.media_type ? `${f.kind} (${f.media_type})` : f.kind), h("td.num", null, fmtBytes(f.size)),
      h("td.num", null, f.step ?? ""), h("td", null, fmtTime(f.time))));
    replace(content, h("table.grid.files", null,
      h("thead", null, h("tr", null, ["path", "kind", "size", "step", "time"].map((c) => h("th", null, c)))),
      h("tbody", null, rows)));
  };

  const mediaTab = async () => {
    const media = (await get<{ files: any[] }>(`${path}/files` + qs({ kind: "media" }))).files;
    if (!media.length) { replace(content, h("p.muted", null, "no media")); return; }
    const byKey = new Map<string, any[]>();
    for (const f of media) {
      const key = `${f.media_type}:${f.meta?.key ?? f.path}`;
      byKey.set(key, [...(byKey.get(key) ?? []), f]);
    }
    const sections: HTMLElement[] = [];
    for (const [key, items] of byKey) {
      items.sort((a, b) => (a.step ?? 0) - (b.step ?? 0));
      const [type, name] = [key.slice(0, key.indexOf(":")), key.slice(key.indexOf(":") + 1)];
      const body = h("div");
      sections.push(h("section.media", null, h("h3", null, `${name} `, h("span.muted", null, type)), body));
      if (type === "image") {
        body.className = "image-grid";
        body.append(...items.map((f) => h("figure", null,
          h("img", { src: fileUrl(f.url), alt: f.meta?.caption ?? f.path, loading: "lazy", width: 96, height: 96 }),
          h("figcaption", null, `step ${f.step ?? "?"}`, f.meta?.caption ? ` · ${f.meta.caption}` : ""))));
      } else if (type === "histogram") {
        body.className = "histograms";
        void Promise.all(items.map(async (f) => ({ f, data: JSON.parse(await fetchText(fileUrl(f.url))) })))
          .then((all) => body.append(histogramView(all)));
      } else if (type === "table") {
        const step = h("select");
        items.forEach((f, i) => step.append(h("option", { value: String(i), selected: i === items.length - 1 }, `step ${f.step}`)));
        const holder = h("div");
        const show = async () => {
          const data = JSON.parse(await fetchText(fileUrl(items[Number(step.value)].url)));
          holder.replaceChildren(h("table.grid", null, h("thead", null, h("tr", null, data.columns.map((c: string) => h("th", null, c)))),
            h("tbody", null, data.data.map((row: unknown[]) => h("tr", null, row.map((v) => h("td", null, fmtNum(v))))))));
        };
        step.addEventListener("change", () => void show());
        body.append(step, holder);
        void show();
      } else {
        body.append(h("ul", null, items.map((f) => h("li", null, h("a", { href: fileUrl(f.url), download: "" }, f.path)))));
      }
    }
    replace(content, ...sections);
  };

  const tabs: Array<[string, () => Promise<void>]> = [
    ["overview", overview], ["charts", () => charts(false)], ["system", () => charts(true)],
    ["console", consoleTab], ["files", filesTab], ["media", mediaTab],
  ];
  const open = (name: string) => {
    destroyPanels();
    timers.splice(1).forEach((t) => window.clearInterval(t));
    tabsEl.querySelectorAll("a").forEach((a) => a.classList.toggle("active", a.dataset.tab === name));
    replace(content, h("p.muted", null, "loading…"));
    const fn = tabs.find(([n]) => n === name)![1];
    fn().catch((err) => replace(content, errorBox(err)));
    history.replaceState(null, "", `${location.pathname}#${name}`);
  };
  tabsEl.append(...tabs.map(([name]) => h("a", { href: `#${name}`, dataset: { tab: name }, onclick: (e: Event) => { e.preventDefault(); open(name); } }, name)));
  open(tabs.some(([n]) => `#${n}` === location.hash) ? location.hash.slice(1) : "overview");
  return () => { timers.forEach((t) => window.clearInterval(t)); destroyPanels(); };
}

/** Histograms over steps: one row of bars per step, darker where a bin holds more. */
function histogramView(all: Array<{ f: any; data: { bins: number[]; values: number[] } }>): HTMLElement {
  const rowH = 18;
  const width = 520;
  const canvas = h("canvas", { width, height: all.length * rowH + 20, className: "histogram" });
  const ctx = canvas.getContext("2d")!;
  const lo = Math.min(...all.map((a) => a.data.bins[0]));
  const hi = Math.max(...all.map((a) => a.data.bins[a.data.bins.length - 1]));
  const x = (v: number) => 60 + ((v - lo) / (hi - lo || 1)) * (width - 70);
  ctx.font = "11px system-ui";
  all.forEach(({ f, data }, row) => {
    const max = Math.max(...data.values) || 1;
    const y = row * rowH;
    ctx.fillStyle = "#555";
    ctx.fillText(`step ${f.step}`, 2, y + 13);
    data.values.forEach((count, i) => {
      const x0 = x(data.bins[i]);
      const x1 = x(data.bins[i + 1]);
      const barH = (count / max) * (rowH - 3);
      ctx.fillStyle = `hsl(215 70% ${85 - (count / max) * 45}%)`;
      ctx.fillRect(x0, y + rowH - 2 - barH, Math.max(1, x1 - x0 - 0.5), barH);
    });
  });
  ctx.fillStyle = "#555";
  ctx.fillText(fmtNum(lo), 60, all.length * rowH + 14);
  ctx.fillText(fmtNum(hi), width - 50, all.length * rowH + 14);
  return canvas;
}
