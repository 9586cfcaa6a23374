// A project's artifacts: names grouped by type (left), a name's versions with their aliases,
// sizes, file counts and producing runs, and a version's description, metadata, files (with
// downloads) and lineage graph: producer runs → version → consumer runs, a few hops.

import { API, BlobUrls, del, get, put } from "../api";
import type { Answer } from "../answers";
import { errorBox, guarded, h, replace } from "../dom";
import { type Lineage, type LineageNode, type NodeLook, lineageGraph } from "../lineage";
import { navigate, projectNav } from "../nav";
import { whoami } from "../session";
import { colorOf, flatten, fmtBytes, fmtNum, fmtTime, hash32 } from "../util";

const enc = encodeURIComponent;
const MAX_FILES_SHOWN = 1000;

type Artifacts = Answer<"/projects/{team}/{project}/artifacts">;
/** An artifact version as the API answers it (docs/artifacts.md's VERSION). */
export type ArtifactVersion = Answer<"/projects/{team}/{project}/artifacts/{name}/versions">["versions"][number];
type VersionDetail = Answer<"/projects/{team}/{project}/artifacts/{name}/{ref}">;
type LineageAnswer = Answer<"/projects/{team}/{project}/artifacts/{name}/{ref}/lineage">;

export const artifactsBase = (team: string, project: string) => `/projects/${enc(team)}/${enc(project)}/artifacts`;
/** The UI's page of a version (its number: what people read; a link stays put as aliases move). */
export const versionHref = (v: { team: string; project: string; name: string; version: string }) =>
  `${artifactsBase(v.team, v.project)}/${enc(v.name)}/${enc(v.version)}`;
const runHref = (team: string, project: string, runId: string) =>
  `/projects/${enc(team)}/${enc(project)}/runs/${enc(runId)}`;

/** An artifact type's colour: wandb's common types their own, any other one from a palette by its name's hash. */
const TYPE_COLORS: Record<string, string> = { dataset: "#0d9488", model: "#c2410c", code: "#475569", checkpoint: "#7c3aed" };
const PALETTE = ["#2563eb", "#db2777", "#65a30d", "#b45309", "#0891b2", "#9333ea", "#dc2626", "#4d7c0f"];
export const typeColor = (type: string) => TYPE_COLORS[type] ?? PALETTE[hash32(type) % PALETTE.length];

export function aliasBadges(aliases: string[]): HTMLElement[] {
  return aliases.map((a) => h("span", { className: `alias${a === "latest" ? " alias-latest" : ""}` }, a));
}

/** Versions as table rows; with `withName` the artifact's name:version (the run page lists many names). */
export function versionsTable(versions: ArtifactVersion[], opts: { withName?: boolean; current?: string; producer?: boolean } = {}): HTMLElement {
  const head = [opts.withName ? "artifact" : "version", ...(opts.withName ? ["type"] : []), "aliases", "size", "files", "created",
    ...(opts.producer === false ? [] : ["logged by"])];
  return h("table.grid.artifact-versions", null,
    h("thead", null, h("tr", null, head.map((c) => h("th", null, c)))),
    h("tbody", null, versions.map((v) => h("tr", { className: v.digest === opts.current ? "current" : "", dataset: { version: v.version, digest: v.digest } },
      h("td.nowrap", null, h("a", { href: versionHref(v) }, opts.withName ? `${v.name}:${v.version}` : v.version)),
      opts.withName ? h("td", null, h("span.type-badge", { style: { borderColor: typeColor(v.type), color: typeColor(v.type) } }, v.type)) : null,
      h("td", null, aliasBadges(v.aliases.filter((a) => a !== v.version))),
      h("td.num", null, fmtBytes(v.size)), h("td.num", null, v.file_count), h("td.nowrap", null, fmtTime(v.created_at)),
      opts.producer === false ? null : h("td", null, v.run_id ? h("a", { href: runHref(v.team, v.project, v.run_id) }, v.run_id) : "")))));
}

function kv(rows: Array<[string, unknown]>): HTMLElement {
  return h("table.kv", null, h("tbody", null, rows.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => h("tr", null, h("th", null, k), h("td", null, v instanceof Node ? v : fmtNum(v))))));
}

/** Where a file of a version is downloaded: by digest, so the bytes are the version's whatever aliases do. */
const fileUrl = (v: ArtifactVersion, path: string) =>
  `${API}${artifactsBase(v.team, v.project)}/${enc(v.name)}/${v.digest}/files/${path.split("/").map(enc).join("/")}`;

/** What a lineage node shows, from the fields the API gives it (a run's, or an artifact version's). */
function nodeLook(team: string, project: string, n: LineageNode): NodeLook {
  const str = (k: string) => (typeof n[k] === "string" || typeof n[k] === "number" ? String(n[k]) : "");
  const nodeTeam = str("team") || team;
  const nodeProject = str("project") || project;
  if (n.kind === "run") {
    const runId = str("run_id") || n.id.replace(/^run:/, "").split("/").pop()!;
    // A run of another project says which first (the second line is clipped; the tooltip has it all).
    const where = nodeProject !== project ? `${nodeProject}/${runId}` : `run ${runId}`;
    return { title: str("name") || runId, sub: `${where}${str("state") ? ` · ${str("state")}` : ""}`,
      href: runHref(nodeTeam, nodeProject, runId), color: colorOf(runId) };
  }
  const name = str("name");
  const version = str("version") || str("digest").slice(0, 8);
  return { title: `${name}:${version}`, sub: `${str("type") || "artifact"}${nodeProject !== project ? ` · ${nodeProject}` : ""}`,
    href: name && version ? versionHref({ team: nodeTeam, project: nodeProject, name, version }) : undefined,
    color: typeColor(str("type")) };
}

/** The node of the version itself: by digest when the nodes carry one, else by name and version. */
function focusOf(graph: Lineage, v: ArtifactVersion): string {
  const art = graph.nodes.filter((n) => n.kind !== "run");
  return (art.find((n) => n.digest === v.digest && (n.project === undefined || n.project === v.project))
    ?? art.find((n) => n.name === v.name && n.version === v.version)
    ?? art.find((n) => n.id.includes(v.digest)) ?? art[0] ?? graph.nodes[0])?.id ?? "";
}

export async function artifactsPage(root: HTMLElement, [team, project, name, ref]: string[], signal?: AbortSignal): Promise<() => void> {
  const base = artifactsBase(team, project);
  root.append(projectNav(team, project, "artifacts"));
  const blobs = new BlobUrls();
  const { artifacts } = await get<Artifacts>(base, signal);
  const byType = new Map<string, Artifacts["artifacts"]>();
  for (const a of [...artifacts].sort((x, y) => x.type.localeCompare(y.type) || x.name.localeCompare(y.name))) {
    byType.set(a.type, [...(byType.get(a.type) ?? []), a]);
  }
  const tree = h("aside.artifact-tree", null, h("h3", null, "Artifacts"),
    artifacts.length ? [...byType].map(([type, list]) => h("section.artifact-type", { dataset: { type } },
      h("h4", null, h("span.swatch", { style: { background: typeColor(type) } }), ` ${type} `, h("span.muted", null, String(list.length))),
      h("ul", null, list.map((a) => h("li", { className: a.name === name ? "active" : "" },
        h("a", { href: `${base}/${enc(a.name)}` }, a.name), " ", h("span.muted", null, `${a.versions} version${a.versions === 1 ? "" : "s"}`))))))
      : h("p.muted", null, "No artifacts yet."));
  const mainPane = h("section.artifact-main");
  root.append(h("div.artifacts-page", null, tree, mainPane));
  if (!name) {
    replace(mainPane, artifacts.length
      ? h("p.muted", null, "Pick an artifact on the left: its versions, files and lineage.")
      : h("div.muted", null, h("p", null, "Runs log artifacts (datasets, models, checkpoints) with ",
        h("code", null, "run.log_artifact(artifact)"), " and use them with ", h("code", null, "run.use_artifact(\"name:latest\")"),
        "; they show here, with their versions, files and lineage.")));
    root.dataset.ready = "1";
    return () => blobs.revoke();
  }
  const summary = artifacts.find((a) => a.name === name);
  const [{ versions }, detail] = await Promise.all([
    get<Answer<"/projects/{team}/{project}/artifacts/{name}/versions">>(`${base}/${enc(name)}/versions`, signal),
    get<VersionDetail>(`${base}/${enc(name)}/${enc(ref ?? "latest")}`, signal)]);
  // A version may hold many thousands of files: the first ones are listed (the API and the SDK have them all).
  const shownFiles = detail.files.slice(0, MAX_FILES_SHOWN);
  const status = h("div.artifact-status");
  const lineageBox = h("div.lineage-box", null, h("p.muted", null, "loading…"));
  const hopsSelect = h("select.lineage-hops", null, [1, 2, 3].map((n) => h("option", { value: String(n), selected: n === 2 }, String(n))));
  const meta = flatten(detail.metadata ?? {});
  // Aliases: latest is the server's (always the newest); the others are set here (moving one from the
  // version that had it, as the API does) or removed. The page is drawn again from the server after.
  const aliasStatus = h("span.alias-status");
  const redraw = () => navigate(location.pathname, true);
  const aliasesPath = `${base}/${enc(name)}/aliases`;
  const mayChange = await whoami().then((me) => me.local_admin || !!me.user); // anonymous readers only read
  const aliasEditor = () => {
    if (!mayChange) return aliasBadges(detail.aliases.filter((a) => a !== detail.version));
    const input = h("input.alias-input", { placeholder: "+ alias", size: 10, name: "alias", "aria-label": "new alias" });
    const add = guarded(aliasStatus, async () => {
      const alias = input.value.trim();
      if (!alias) return;
      await put(`${aliasesPath}/${enc(alias)}`, { version: detail.digest });
      redraw();
    });
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") add(); });
    return h("span.alias-editor", null,
      detail.aliases.filter((a) => a !== detail.version).map((a) => a === "latest" ? aliasBadges([a])
        : h("span.alias", { dataset: { alias: a } }, a, h("button.link.alias-remove", { title: `remove the alias ${a}`, "aria-label": `remove ${a}`,
          onclick: guarded(aliasStatus, async () => { await del(`${aliasesPath}/${enc(a)}`); redraw(); }) }, "×"))),
      input, h("button.alias-add", { onclick: add }, "add"));
  };
  replace(mainPane,
    h("h2.artifact-title", null, `${name} `, h("span.type-badge", { style: { borderColor: typeColor(detail.type), color: typeColor(detail.type) } },
      summary?.type ?? detail.type)),
    h("section.artifact-versions-box", null, h("h3", null, `Versions `, h("span.muted", null, String(versions.length))),
      versionsTable(versions, { current: detail.digest })),
    h("section.artifact-version", { dataset: { digest: detail.digest, version: detail.version } },
      h("h3.version-title", null, `${name}:${detail.version} `, aliasEditor(), aliasStatus),
      detail.description ? h("p.artifact-description", null, detail.description) : null,
      h("div.version-grid", null,
        h("div", null, h("h4", null, "Overview"), kv([
          ["version", detail.version], ["type", detail.type], ["digest", h("code", null, detail.digest)],
          ["size", fmtBytes(detail.size)], ["files", detail.file_count], ["created", fmtTime(detail.created_at)],
          ["logged by", detail.run_id ? h("a", { href: runHref(detail.team, detail.project, detail.run_id) }, detail.run_id) : null],
        ])),
        h("div.artifact-metadata", null, h("h4", null, "Metadata"),
          Object.keys(meta).length ? kv(Object.entries(meta)) : h("p.muted", null, "no metadata"))),
      h("h4", null, "Files ", h("span.muted", null, String(detail.files.length))), status,
      detail.files.length ? h("table.grid.artifact-files", null,
        h("thead", null, h("tr", null, ["path", "size", "digest"].map((c) => h("th", null, c)))),
        h("tbody", null, shownFiles.map((f) => h("tr", null,
          h("td", null, f.ref ? h("span", { title: f.ref }, f.path, " ", h("span.muted", null, `→ ${f.ref}`))
            : blobs.download(fileUrl(detail, f.path), f.path.split("/").pop() || "file", f.path,
              (err) => status.replaceChildren(errorBox(err)))),
          h("td.num", null, fmtBytes(f.size)), h("td", null, h("code.muted", { title: f.digest }, f.digest.slice(0, 12)))))))
        : h("p.muted", null, "no files"),
      detail.files.length > shownFiles.length ? h("p.muted", null, `the first ${shownFiles.length.toLocaleString()} of ${detail.files.length.toLocaleString()} files`) : null,
      h("h4.lineage-head", null, "Lineage ", h("span.muted", null, "· the runs that logged it on the left, that used it on the right · "),
        h("label.muted", null, "hops ", hopsSelect)),
      lineageBox));
  root.dataset.ready = "1";
  // Hops: 1 the version's runs, 2 also their other artifacts, 3 also those artifacts' runs.
  let asked = 0;
  const drawLineage = async (hops: number) => {
    const ticket = ++asked;
    const answer = await get<LineageAnswer>(`${base}/${enc(name)}/${detail.digest}/lineage?hops=${hops}`, signal);
    if (ticket !== asked || signal?.aborted) return;
    const graph: Lineage = { edges: answer.edges, nodes: answer.nodes.map((n) => ({ ...n, id: n.id ?? "", kind: n.kind ?? "artifact" })) };
    replace(lineageBox, graph.nodes.length
      ? lineageGraph(graph, focusOf(graph, detail), (n) => nodeLook(team, project, n))
      : h("p.muted", null, "no lineage"),
    answer.truncated ? h("p.muted", null, "more runs and versions than a graph shows: the nearest are drawn") : null);
    lineageBox.dataset.ready = String(hops);
  };
  const fail = (err: unknown) => { if (!signal?.aborted) lineageBox.replaceChildren(errorBox(err)); };
  hopsSelect.addEventListener("change", () => void drawLineage(Number(hopsSelect.value)).catch(fail));
  await drawLineage(2).catch(fail);
  return () => blobs.revoke();
}
