// A project's settings: its description and visibility (team admins), and deleting it, behind
// a dialog that wants the project's name typed (every run, file and artifact goes with it).

import { del, get, patch } from "../api";
import type { Answer } from "../answers";
import { dangerDialog } from "../confirm";
import { errorBox, h, select } from "../dom";
import { navigate, projectNav } from "../nav";
import { whoami } from "../session";
import { fmtTime } from "../util";

const enc = encodeURIComponent;
type Project = Answer<"/projects/{team}/{project}">;

export async function projectSettingsPage(root: HTMLElement, [team, project]: string[], signal?: AbortSignal): Promise<void> {
  const path = `/projects/${enc(team)}/${enc(project)}`;
  root.append(projectNav(team, project, "settings"));
  let info = await get<Project>(path, signal);
  const me = await whoami();
  const mayChange = me.local_admin || !!me.user; // the server decides; an anonymous reader cannot
  const status = h("div.settings-status");
  const description = h("textarea", { rows: 2, name: "project-description", placeholder: "what this project is", disabled: !mayChange },
    info.description ?? "");
  let visibility = info.visibility as string;
  const save = async () => {
    // Only what changed: a visibility sent unchanged would still be a change in the audit log.
    const changes: Record<string, string> = {};
    if (description.value !== (info.description ?? "")) changes.description = description.value;
    if (visibility !== info.visibility) changes.visibility = visibility;
    try {
      if (Object.keys(changes).length) info = await patch<Project>(path, changes);
      status.replaceChildren(h("span.muted", null, "saved"));
    } catch (err) { status.replaceChildren(errorBox(err)); }
  };
  const deleteProject = () => dangerDialog({
    title: `Delete project ${team}/${project}?`,
    body: h("p", null, `Its ${info.run_count} run${info.run_count === 1 ? "" : "s"}, with their metrics, console logs, files and `,
      "artifacts, its reports, share links and alert rules are deleted for good. This cannot be undone."),
    action: "Delete project",
    typed: project,
    run: async () => { await del(path); },
  }).then((deleted) => { if (deleted) navigate("/"); });
  root.append(h("div.project-settings", null,
    h("h2", null, `${team}/${project}`),
    h("section", null, h("h3", null, "Project"),
      h("p.muted", null, `${info.run_count} run${info.run_count === 1 ? "" : "s"} · created ${fmtTime(info.created_at)}`),
      h("label.block", null, "description ", description),
      h("label.block", null, "visibility ", select([["private", "private (the team only)"], ["public", "public (anyone can read)"]],
        visibility, (v) => { visibility = v; }, { name: "project-visibility", disabled: !mayChange })),
      mayChange ? h("button.save-project", { onclick: save }, "Save") : null, status),
    !mayChange ? h("p.muted", null, "Sign in with an API key (top right) to change or delete the project.") :
    h("section.danger-zone", null, h("h3", null, "Danger zone"),
      h("p", null, "Deleting the project deletes every run in it, their files and artifacts, and its reports."),
      h("button.danger.delete-project", { onclick: deleteProject }, "Delete project…"))));
  root.dataset.ready = "1";
}
