// One run: overview (live state, config, summary, git and its diff, its fork and rewinds), charts
// of every metric, system metrics, console log, files, media and the artifacts it logged and used;
// moving it to another project and deleting it, each behind a dialog.

import { BlobUrls, del, fetchText, get, patch, post, qs } from "../api";
import type { Answer, GitInfo, MediaMeta, Run, RunFile } from "../answers";
import { ChartPanel, type Line, type PanelSpec, stepMetricOf, xOfStepMetric } from "../chart";
import { dangerDialog } from "../confirm";
import { relativeTime, seriesLoader } from "../data";
import { debounce, errorBox, guarded, h, replace } from "../dom";
import { navigate, projectNav } from "../nav";
import { whoami } from "../session";
import { audioView } from "../media/audio";
import { drawChart, parseChart } from "../media/chart";
import { htmlView } from "../media/html";
import { object3dView } from "../media/object3d";
import { stepSlider } from "../media/steps";
import { videoView } from "../media/video";
import { versionsTable } from "./artifacts";
import { colorOf, fmtAgo, fmtBytes, fmtDuration, fmtNum, fmtTime, flatten } from "../util";

const enc = encodeURIComponent;

type RunPatch = Answer<"/runs/{team}/{project}/{run_id}", "patch">;
type SystemSeries = Answer<"/runs/{team}/{project}/{run_id}/system">["series"][number];
/** A histogram file's JSON (sdk/media.py's Histogram): bin edges, and the count between each two. */
interface HistogramData { bins: number[]; values: number[] }
/** A table file's JSON (sdk/media.py's Table). */
interface TableData { columns: string[]; data: unknown[][] }
/** A media file's meta: free-form in the document, so read through MediaMeta. */
const metaOf = (f: RunFile): MediaMeta => (f.meta ?? {}) as MediaMeta;

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

export async function runPage(root: HTMLElement, [team, project, runId]: string[], signal?: AbortSignal): Promise<() => void> {
  const path = `/runs/${enc(team)}/${enc(project)}/${enc(runId)}`;
  let run: Run = await get<Run>(path, signal);
  // Deleting and moving need a project admin: an anonymous reader (a public project) is not offered them.
  const me = await whoami();
  const mayChange = me.local_admin || !!me.user;
  root.append(projectNav(team, project, ""));
  const stateBadge = h("span", { className: `state state-${run.state}` }, run.state);
  const heartbeat = h("span.muted.heartbeat");
  const title = h("h2.run-title", null, h("span.swatch.big", { style: { background: colorOf(run.id) } }), ` ${run.name || run.id} `,
    stateBadge, " ", heartbeat, h("span.spacer"),
    mayChange ? h("button.move-run", { onclick: () => void moveRun() }, "Move to project…") : null,
    mayChange ? h("button.danger.delete-run", { onclick: () => void deleteRun() }, "Delete run…") : null);
  const deleteRun = () => dangerDialog({
    title: `Delete run ${run.name || run.id}?`,
    body: h("p", null, "Its metrics, system metrics, console log, files and media are deleted for good, and so are the ",
      "artifact versions it logged that no other run logged or used. This cannot be undone."),
    action: "Delete run",
    typed: run.name || run.id,
    run: async () => { await del(path); },
  }).then((deleted) => { if (deleted) navigate(`/projects/${enc(team)}/${enc(project)}`); });
  const moveRun = async () => {
    const others = (await get<Answer<"/projects">>("/projects").catch(() => ({ projects: [] as Answer<"/projects">["projects"] })))
      .projects.filter((p) => p.team === team && p.name !== project);
    const target = h("input.move-target", { name: "move-target", list: "move-projects", placeholder: "project", size: 28, autocomplete: "off" });
    let movedTo = "";
    const moved = await dangerDialog({
      title: `Move run ${run.name || run.id} to another project`,
      body: h("p", null, `The run, with its history, files and media, moves to another project of team ${team} `,
        "(made if missing); links to its old page stop working. A running run cannot move."),
      fields: h("label.block", null, `project of ${team}: `, target,
        h("datalist#move-projects", null, others.map((p) => h("option", { value: p.name })))),
      action: "Move run",
      run: async () => {
        const to = target.value.trim();
        if (!to) throw new Error("name the project to move the run to");
        const answer = await post<Answer<"/runs/{team}/{project}/{run_id}/move", "post">>(`${path}/move`, { project: to });
        movedTo = `/projects/${enc(answer.team)}/${enc(answer.project)}/runs/${enc(answer.run_id)}`;
      },
    });
    if (moved && movedTo) navigate(movedTo);
  };
  const tabsEl = h("nav.tabs.run-tabs");
  const content = h("div.run-content");
  root.append(title, tabsEl, content);
  const timers: number[] = [];
  const blobs = new BlobUrls();     // images and downloads fetched with credentials
  let panels: ChartPanel[] = [];
  let mediaDisposers: Array<() => void> = [];  // the media tab's charts and 3D viewers
  const destroyPanels = () => {
    panels.forEach((p) => p.destroy());
    panels = [];
    mediaDisposers.forEach((d) => d());
    mediaDisposers = [];
  };

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
      run = await get<Run>(path);
      stateBadge.textContent = run.state;
      stateBadge.className = `state state-${run.state}`;
      tick();
    } catch { /* keep the last state */ }
  }, 5000));

  // Each tab paints into its own pane and checks alive() after every await: a tab left while
  // it loads paints nothing and starts no timer.
  type Tab = (pane: HTMLElement, alive: () => boolean, tabSignal: AbortSignal) => Promise<void>;

  const overview: Tab = async (content, alive, tabSignal) => {
    const git = (run.git ?? {}) as GitInfo;
    const files = (await get<Answer<"/runs/{team}/{project}/{run_id}/files">>(`${path}/files`, tabSignal)).files;
    if (!alive()) return;
    const patchFile = files.find((f) => f.kind === "git_patch");
    const notes = h("textarea.notes", { rows: 3, placeholder: "notes" }, run.notes ?? "");
    const saved = h("span.muted");
    notes.addEventListener("change", async () => {
      // The edit's answer is the run without its fork and rewinds: keep those from the run's answer.
      try { run = { ...run, ...await patch<RunPatch>(path, { notes: notes.value || null }) }; saved.textContent = "saved"; }
      catch (err) { saved.replaceChildren(errorBox(err)); }
    });
    const tagsInput = h("input.tags-input", { value: (run.tags ?? []).join(", "), size: 40 });
    tagsInput.addEventListener("change", async () => {
      try {
        run = { ...run, ...await patch<RunPatch>(path, { tags: tagsInput.value.split(",").map((t) => t.trim()).filter(Boolean) }) };
        saved.textContent = "saved";
      } catch (err) { saved.replaceChildren(errorBox(err)); }
    });
    const runtime = run.finished_at ? run.finished_at - run.created_at : (run.heartbeat_at ?? 0) - run.created_at;
    const { fork, rewinds } = run;
    const diffBox = h("div.diff-box");
    replace(content,
      h("div.overview", null,
        h("section", null, h("h3", null, "Run"), kv([
          ["id", run.id], ["state", run.state], ["exit code", run.exit_code], ["created", fmtTime(run.created_at)],
          ["runtime", runtime > 0 ? fmtDuration(runtime) : ""], ["heartbeat", fmtTime(run.heartbeat_at)],
          ["group", run.group], ["job type", run.job_type],
          ["sweep", run.sweep ? h("a.run-sweep", { href: `/projects/${enc(team)}/${enc(project)}/sweeps/${enc(run.sweep)}` }, run.sweep) : null],
          ["user", run.user], ["host", run.host],
          ["command", h("code", null, [run.program, ...(run.args ?? [])].filter(Boolean).join(" "))],
          ["python", run.python],
          ["forked from", fork ? h("span.fork", null, h("a", { href: `/projects/${enc(team)}/${enc(project)}/runs/${enc(fork.run_id)}` }, fork.run_id),
            ` at step ${fork.step}`) : null],
          ["rewound", rewinds?.length ? h("span.rewinds", null, rewinds.map((r, i) =>
            h("span", null, i ? "; " : "", `to step ${r.step} (${fmtTime(r.at)})`))) : null],
          ["tags", tagsInput],
        ]),
        // A failed run's traceback, under its state (the server clears it when the run resumes).
        run.state === "failed" && run.error ? h("div.run-error", null, h("h3", null, "Traceback"), h("pre.traceback", null, run.error)) : null,
        h("h3", null, "Notes"), notes, saved),
        h("section", null, h("h3", null, "Git"), kv([
          ["commit", git.commit ? h("code", null, git.commit) : null], ["branch", git.branch], ["remote", git.remote],
          ["dirty", git.dirty === undefined ? null : String(git.dirty)], ["root", git.root],
        ]), patchFile ? h("div", null, h("h3", null, "Diff ", blobs.download(patchFile.url, patchFile.path.split("/").pop() || "diff.patch", "download",
          (err) => diffBox.replaceChildren(errorBox(err)), "muted")), diffBox)
          : h("p.muted", null, "no diff (the working tree was clean or not a git repository)")),
        h("section", null, h("h3", null, "Config"), kv(Object.entries(flatten(run.config)))),
        h("section", null, h("h3", null, "Summary"), kv(Object.entries(flatten(run.summary))))));
    if (patchFile) {
      const text = await fetchText(patchFile.url, tabSignal);
      if (alive()) diffBox.append(diffView(text));
    }
  };

  const charts = async (system: boolean, content: HTMLElement, alive: () => boolean, tabSignal: AbortSignal) => {
    const names: string[] = system
      ? (await get<Answer<"/runs/{team}/{project}/{run_id}/system">>(`${path}/system` + qs({ points: 500 }), tabSignal)).series.map((s) => s.metric)
      : (await get<Answer<"/runs/{team}/{project}/{run_id}/metrics">>(`${path}/metrics`, tabSignal)).metrics;
    if (!alive()) return;
    if (!names.length) { replace(content, h("p.muted", null, system ? "no system metrics" : "no metrics")); return; }
    const runs = () => [{ id: run.id, name: run.name || run.id }];
    let sysCache: Promise<SystemSeries[]> | null = null;
    const sysLoader = async (spec: PanelSpec): Promise<{ lines: Line[] }> => {
      sysCache ??= get<Answer<"/runs/{team}/{project}/{run_id}/system">>(`${path}/system` + qs({ points: 500 })).then((a) => a.series);
      const s = (await sysCache).find((x) => x.metric === spec.metric);
      if (!s) return { lines: [] };
      const x = spec.x === "relative" ? relativeTime(s.time) : s.time;
      return { lines: [{ key: run.id, label: spec.metric, color: colorOf(run.id), x, y: s.mean, lo: s.min, hi: s.max }] };
    };
    const loader = system ? sysLoader : seriesLoader(team, project, runs);
    // A metric's x axis is its define_metric(step_metric=...), if the run defined one; else the step.
    const mine = names.map((metric) => new ChartPanel(
      { id: metric, metric, kind: system ? "system" : "metric", smoothing: 0,
        ...(system ? { x: "relative" as const } : xOfStepMetric(stepMetricOf(run.metrics, metric))) },
      { loader, hidden: () => false, metrics: names, xChoices: system ? ["relative", "time"] : undefined }));
    panels = mine;
    replace(content, h("div.panels", null, mine.map((p) => p.el)));
    await Promise.all(mine.map((p) => p.load()));
  };

  const consoleTab: Tab = async (content, alive, tabSignal) => {
    const q = h("input.console-search", { type: "search", placeholder: "search the log (text; tick regex for RE2)", size: 40 });
    const regex = h("input", { type: "checkbox" });
    const out = h("pre.console");
    const more = h("button.link", { hidden: true }, "older lines");
    const status = h("div.console-status");
    let cursor: string | null = null;
    let olderLoaded = false;   // older pages shown: a refresh of the tail would drop them
    let asked = 0;             // the newest question wins (a slow answer to an older one is dropped)
    const show = async (older: boolean) => {
      const ticket = ++asked;
      const answer = await get<Answer<"/runs/{team}/{project}/{run_id}/console">>(`${path}/console` +
        qs({ tail: 1000, q: q.value || undefined, regex: q.value && regex.checked ? 1 : undefined, cursor: older ? cursor : undefined }), tabSignal);
      if (ticket !== asked || !alive()) return;
      status.replaceChildren();
      olderLoaded = older;
      cursor = answer.next_cursor;
      more.hidden = !cursor;
      const lines = answer.lines.map((l) => h("span", { className: l.stream === "stderr" ? "stderr" : "" },
        h("span.ts", null, fmtTime(l.time).slice(11) + " "), l.line + "\n"));
      if (older) out.prepend(...lines); else out.replaceChildren(...lines);
      if (!answer.lines.length && !older) out.textContent = q.value ? "no line matches" : "no console output";
      if (!older) out.scrollTop = out.scrollHeight;
    };
    q.addEventListener("input", debounce(guarded(status, () => show(false)), 300));
    regex.addEventListener("change", guarded(status, () => show(false)));
    more.addEventListener("click", guarded(status, () => show(true)));
    replace(content, h("div.console-bar", null, q, h("label", null, regex, " regex"), " ", more), status, out);
    await show(false);
    if (!alive() || run.state !== "running") return;
    // Refresh the tail while the run runs, unless the reader is searching, has loaded older
    // lines, or scrolled up (a refresh would replace what they read and jump to the bottom).
    const poll = window.setInterval(() => {
      if (run.state !== "running") { window.clearInterval(poll); return; }
      const atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 24;
      if (q.value || olderLoaded || !atBottom) return;
      show(false).catch((e) => status.replaceChildren(errorBox(e)));
    }, 5000);
    timers.push(poll);
  };

  const filesTab: Tab = async (content, alive, tabSignal) => {
    const { files } = await get<Answer<"/runs/{team}/{project}/{run_id}/files">>(`${path}/files`, tabSignal);
    if (!alive()) return;
    const status = h("div.files-status");
    if (!files.length) { replace(content, h("p.muted", null, "no files")); return; }
    const rows = files.map((f) => h("tr", null,
      h("td", null, blobs.download(f.url, f.path.split("/").pop() || "file", f.path, (err) => status.replaceChildren(errorBox(err)))),
      h("td", null, f.media_type ? `${f.kind} (${f.media_type})` : f.kind), h("td.num", null, fmtBytes(f.size)),
      h("td.num", null, f.step ?? ""), h("td", null, fmtTime(f.time))));
    replace(content, status, h("table.grid.files", null,
      h("thead", null, h("tr", null, ["path", "kind", "size", "step", "time"].map((c) => h("th", null, c)))),
      h("tbody", null, rows)));
  };

  const mediaTab: Tab = async (content, alive, tabSignal) => {
    const media = (await get<Answer<"/runs/{team}/{project}/{run_id}/files">>(`${path}/files` + qs({ kind: "media" }), tabSignal)).files;
    if (!alive()) return;
    if (!media.length) { replace(content, h("p.muted", null, "no media")); return; }
    const byKey = new Map<string, RunFile[]>();
    for (const f of media) {
      const key = `${f.media_type}:${metaOf(f).key ?? f.path}`;
      byKey.set(key, [...(byKey.get(key) ?? []), f]);
    }
    const sections: HTMLElement[] = [];
    const status = h("div.media-status");
    const fail = (err: unknown) => { if (alive()) status.replaceChildren(errorBox(err)); };
    for (const [key, items] of byKey) {
      items.sort((a, b) => (a.step ?? 0) - (b.step ?? 0));
      const [type, name] = [key.slice(0, key.indexOf(":")), key.slice(key.indexOf(":") + 1)];
      const body = h("div");
      sections.push(h("section.media", null, h("h3", null, `${name} `, h("span.muted", null, type)), body));
      if (type === "image") {
        const byStep = new Map<number, RunFile[]>();
        for (const f of items) byStep.set(f.step ?? 0, [...(byStep.get(f.step ?? 0) ?? []), f]);
        if ([...byStep.values()].every((g) => g.length === 1)) {
          // One image per step: all steps in one grid.
          body.className = "image-grid";
          body.append(...items.map((f) => h("figure", null,
            blobs.image(f.url, { alt: metaOf(f).caption ?? f.path, width: 96, height: 96 }, fail, tabSignal),
            h("figcaption", null, `step ${f.step ?? "?"}`, metaOf(f).caption ? ` · ${metaOf(f).caption}` : ""))));
        } else {
          body.append(galleryView(byStep, (f) => blobs.image(f.url, { alt: metaOf(f).caption ?? f.path, width: 96, height: 96 }, fail, tabSignal)));
        }
      } else if (type === "histogram") {
        body.className = "histograms";
        Promise.all(items.map(async (f) => ({ f, data: JSON.parse(await fetchText(f.url, tabSignal)) as HistogramData })))
          .then((all) => { if (alive()) body.append(histogramView(all)); }, fail);
      } else if (type === "table") {
        const step = h("select");
        items.forEach((f, i) => step.append(h("option", { value: String(i), selected: i === items.length - 1 }, `step ${f.step}`)));
        const holder = h("div");
        const show = async () => {
          const data = JSON.parse(await fetchText(items[Number(step.value)].url, tabSignal)) as TableData;
          if (!alive()) return;
          holder.replaceChildren(h("table.grid", null, h("thead", null, h("tr", null, data.columns.map((c) => h("th", null, c)))),
            h("tbody", null, data.data.map((row) => h("tr", null, row.map((v) => h("td", null, fmtNum(v))))))));
        };
        step.addEventListener("change", () => void show().catch(fail));
        body.append(step, holder);
        void show().catch(fail);
      } else if (type === "audio") {
        body.append(stepSlider(items, (f) => audioView(f, blobs, fail, tabSignal), { className: "media-audio-list" }));
      } else if (type === "video") {
        body.append(stepSlider(items, (f) => videoView(f, blobs, fail, tabSignal), { className: "media-video-list" }));
      } else if (type === "html") {
        body.append(stepSlider(items, (f) => htmlView(f, fail, tabSignal)));
      } else if (type === "object3d") {
        // A viewer holds a WebGL context (a browser allows about 16): the step moved away from frees its own.
        const viewers = new Map<HTMLElement, () => void>();
        body.append(stepSlider(items, (f) => {
          const viewer = object3dView(f, fail, tabSignal);
          viewers.set(viewer.el, viewer.dispose);
          mediaDisposers.push(viewer.dispose);
          return viewer.el;
        }, { release: (els) => els.forEach((el) => { viewers.get(el)?.(); viewers.delete(el); }) }));
      } else if (type === "chart") {
        // A chart per step (runstream.plot's JSON), drawn once fetched.
        body.append(stepSlider(items, (f) => {
          const holder = h("div.media-chart", { dataset: { key: name } }, h("p.muted", null, "loading…"));
          fetchText(f.url, tabSignal).then((text) => {
            if (!alive()) return;
            const chart = parseChart(text);
            mediaDisposers.push(drawChart(holder, [{ label: run.name || run.id, color: colorOf(run.id), chart }], { width: 640 }));
          }).catch((err) => { if (alive()) { holder.replaceChildren(errorBox(err)); } });
          return holder;
        }));
      } else {
        body.append(h("ul", null, items.map((f) => h("li", null, blobs.download(f.url, f.path.split("/").pop() || "file", f.path, fail)))));
      }
    }
    replace(content, status, ...sections);
  };

  // Artifact versions the run logged (it is their producer) and used (its inputs), each linking to its page.
  const artifactsTab: Tab = async (content, alive, tabSignal) => {
    const { logged, used } = await get<Answer<"/runs/{team}/{project}/{run_id}/artifacts">>(`${path}/artifacts`, tabSignal);
    if (!alive()) return;
    replace(content, h("div.run-artifacts", null,
      h("section.run-logged", null, h("h3", null, "Logged ", h("span.muted", null, String(logged.length))),
        logged.length ? versionsTable(logged, { withName: true, producer: false }) : h("p.muted", null, "this run logged no artifact")),
      h("section.run-used", null, h("h3", null, "Used ", h("span.muted", null, String(used.length))),
        used.length ? versionsTable(used, { withName: true }) : h("p.muted", null, "this run used no artifact"))));
  };

  const tabs: Array<[string, Tab]> = [
    ["overview", overview], ["charts", (p, a, s) => charts(false, p, a, s)], ["system", (p, a, s) => charts(true, p, a, s)],
    ["console", consoleTab], ["files", filesTab], ["media", mediaTab], ["artifacts", artifactsTab],
  ];
  let opened = 0;
  let tabAbort: AbortController | null = null;
  const open = (name: string) => {
    const ticket = ++opened;
    tabAbort?.abort();
    tabAbort = new AbortController();
    const tabSignal = tabAbort.signal;
    const alive = () => ticket === opened && !signal?.aborted;
    destroyPanels();
    blobs.revoke();
    timers.splice(1).forEach((t) => window.clearInterval(t));
    tabsEl.querySelectorAll("a").forEach((a) => a.classList.toggle("active", a.dataset.tab === name));
    const pane = h("div.run-pane", null, h("p.muted", null, "loading…"));
    replace(content, pane);
    const fn = tabs.find(([n]) => n === name)![1];
    fn(pane, alive, tabSignal).catch((err) => { if (alive()) replace(pane, errorBox(err)); });
    history.replaceState(null, "", `${location.pathname}#${name}`);
  };
  tabsEl.append(...tabs.map(([name]) => h("a", { href: `#${name}`, dataset: { tab: name }, onclick: (e: Event) => { e.preventDefault(); open(name); } }, name)));
  open(tabs.some(([n]) => `#${n}` === location.hash) ? location.hash.slice(1) : "overview");
  return () => {
    opened++;
    tabAbort?.abort();
    timers.forEach((t) => window.clearInterval(t));
    destroyPanels();
    blobs.revoke();
  };
}

/**
 * Images logged as lists (galleries): a step picker (the latest step first shown) and every
 * image of the chosen step in a grid, in the order logged (meta.index), with its caption.
 * A step's images are fetched when it is first shown and kept for when it is shown again.
 */
function galleryView(byStep: Map<number, RunFile[]>, image: (f: RunFile) => HTMLImageElement): HTMLElement {
  const steps = [...byStep.keys()].sort((a, b) => a - b);
  const picker = h("select.gallery-step");
  steps.forEach((s) => picker.append(h("option", { value: String(s), selected: s === steps[steps.length - 1] },
    `step ${s} (${byStep.get(s)!.length})`)));
  const grid = h("div.image-grid.gallery");
  const shown = new Map<number, HTMLElement[]>();
  const show = () => {
    const step = Number(picker.value);
    if (!shown.has(step)) {
      const group = [...byStep.get(step)!].sort((a, b) => (metaOf(a).index ?? 0) - (metaOf(b).index ?? 0));
      shown.set(step, group.map((f) => {
        const { caption, index } = metaOf(f);
        return h("figure", null, image(f), h("figcaption", null, caption ?? (index !== undefined ? `#${index + 1}` : "")));
      }));
    }
    grid.replaceChildren(...shown.get(step)!);
  };
  picker.addEventListener("change", show);
  show();
  return h("div", null, picker, grid);
}

/** Histograms over steps: one row of bars per step, darker where a bin holds more. */
function histogramView(all: Array<{ f: RunFile; data: HistogramData }>): HTMLElement {
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
