// Settings: teams, their members and roles, API keys (a new key is shown once), the team's audit
// log (admins), and the key this browser uses.

import { del, get, getApiKey, post, put, qs, setApiKey } from "../api";
import type { Answer } from "../answers";
import { errorBox, h, replace, select } from "../dom";
import { whoami } from "../session";
import { fmtTime } from "../util";

const enc = encodeURIComponent;
const ROLES: Array<[string, string]> = [["viewer", "viewer"], ["member", "member"], ["admin", "admin"]];
// A key's scope caps its member's role: ingest (a training job's: writes runs, nothing else), read, admin.
const SCOPES: Array<[string, string]> = [["ingest", "ingest (training jobs)"], ["read", "read"], ["admin", "admin"]];
type AuditPage = Answer<"/teams/{team}/audit">;
type AuditEntry = AuditPage["entries"][number];
// Typed by the API's own list (storage/audit.py): tsc refuses an action the API does not have.
const AUDIT_ACTIONS: AuditEntry["action"][] = ["team.create", "member.add", "member.role", "member.remove",
  "key.create", "key.revoke", "project.create", "project.visibility", "report.delete", "share.create",
  "share.revoke", "run.delete", "rule.create", "rule.delete"];
const AUDIT_PAGE = 50;

function who(actor: AuditEntry["actor"]): string {
  if (actor.kind === "local_admin") return "local admin";
  if (actor.kind === "cli") return `CLI${actor.user ? ` (${actor.user})` : ""}`;
  if (actor.kind === "key") return `${actor.user ?? "?"} (key ${actor.key_id ?? "?"})`;
  return actor.kind;
}

function details(d: AuditEntry["details"]): string {
  return Object.entries(d).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(", ") || "none" : String(v)}`).join("; ");
}

/** The team's audit log, newest first, a page at a time, filtered by action (admins only). */
function auditLog(team: string): HTMLElement {
  const t = `/teams/${enc(team)}/audit`;
  const body = h("tbody");
  const status = h("div");
  const more = h("button.link.audit-more", { hidden: true }, "older entries");
  let action = "";
  let cursor: string | null = null;
  const row = (e: AuditEntry) => h("tr", { dataset: { action: e.action } },
    h("td", null, fmtTime(e.at)), h("td", null, who(e.actor)), h("td", null, h("code", null, e.action)),
    h("td", null, e.target), h("td", null, details(e.details)),
    h("td", { title: e.user_agent ?? "" }, e.client_ip ?? "", e.forwarded_for ? ` (for ${e.forwarded_for})` : ""));
  async function load(fresh: boolean): Promise<void> {
    if (fresh) { body.replaceChildren(); cursor = null; }
    try {
      const page = await get<AuditPage>(t + qs({ action, limit: AUDIT_PAGE, cursor }));
      body.append(...page.entries.map(row));
      cursor = page.next_cursor;
      more.hidden = cursor === null;
      status.replaceChildren(body.childElementCount ? "" : h("p.muted", null, "No entries."));
    } catch (err) { status.replaceChildren(errorBox(err)); }
  }
  more.addEventListener("click", () => void load(false));
  const filter = select([["", "all actions"], ...AUDIT_ACTIONS.map((a) => [a, a] as [string, string])], "",
    (a) => { action = a; void load(true); }, { name: "audit-action" });
  void load(true);
  return h("section.audit", null, h("h4", null, "Audit log"),
    h("p.muted", null, "Who changed keys, members, roles, visibility, share links and deletions, when and from where. Entries are never changed or removed."),
    h("div.row", null, "action: ", filter),
    h("table.grid.audit", null, h("thead", null, h("tr", null, ["when", "who", "action", "target", "details", "from"].map((c) => h("th", null, c)))), body),
    status, more);
}

export async function settingsPage(root: HTMLElement): Promise<void> {
  const me = await whoami();
  const keyInput = h("input", { type: "password", value: getApiKey(), size: 40, placeholder: "rs_…", name: "browser-key" });
  root.append(h("h2", null, "Settings"),
    h("section", null, h("h3", null, "This browser"),
      h("p", null, me.local_admin ? "You are the embedded server's local admin (no key needed from this machine)."
        : me.user ? `Signed in with a key of ${me.user}, ${me.role} of team ${me.team}.` : "No key: you see public projects only."),
      h("div.row", null, keyInput, h("button", { onclick: () => { setApiKey(keyInput.value.trim()); location.reload(); } }, "use this key"))));
  let teams: Answer<"/teams">["teams"] = [];
  try {
    teams = (await get<Answer<"/teams">>("/teams")).teams;
  } catch (err) {
    root.append(errorBox(err));
    return;
  }
  // ?team= picks the team shown first (a team just created is shown after the reload).
  const asked = new URLSearchParams(location.search).get("team");
  const first: string = teams.find((t) => t.team === asked)?.team ?? teams[0]?.team ?? "";
  const teamBox = h("div");
  const pick = select(teams.map((t) => [t.team, `${t.team} (${t.role})`] as [string, string]), first,
    (t) => {
      history.replaceState(null, "", `/settings?team=${enc(t)}`); // a reload shows the team picked last
      void showTeam(t).catch((err) => teamBox.replaceChildren(errorBox(err)));
    });
  const newTeam = h("input", { placeholder: "new team", size: 16 });
  root.append(h("section", null, h("h3", null, "Teams"),
    teams.length ? h("div.row", null, "team: ", pick) : h("p.muted", null, "No teams yet."),
    me.local_admin ? h("div.row", null, newTeam, h("button", { onclick: async () => {
      try {
        const name = newTeam.value.trim();
        await post("/teams", { team: name });
        location.assign(`/settings?team=${enc(name)}`);
      } catch (err) { teamBox.prepend(errorBox(err)); }
    } }, "create team")) : null,
    teamBox));

  async function showTeam(team: string): Promise<void> {
    const t = `/teams/${enc(team)}`;
    const [{ members }, { keys }] = await Promise.all([
      get<Answer<"/teams/{team}/members">>(`${t}/members`), get<Answer<"/teams/{team}/keys">>(`${t}/keys`)]);
    const message = h("div");
    const fail = (err: unknown) => message.replaceChildren(errorBox(err));
    const user = h("input", { placeholder: "user", size: 16, name: "member-user" });
    let role = "member";
    const keyName = h("input", { placeholder: "key name", size: 16, name: "key-name" });
    let keyUser = me.user ?? members[0]?.user ?? "";
    let keyScope = "ingest";  // the key a training job should carry: it writes runs, nothing else
    // Only the team's admins change members; the others see them.
    const admin = me.local_admin || teams.find((x) => x.team === team)?.role === "admin";
    replace(teamBox, message,
      h("h4", null, "Members"),
      h("table.grid.members", { dataset: { team } }, h("thead", null, h("tr", null, ["user", "role", "since", ""].map((c) => h("th", null, c)))),
        h("tbody", null, members.map((m) => h("tr", null, h("td", null, m.user),
          h("td", null, admin ? select(ROLES, m.role, (r) => void put(`${t}/members/${enc(m.user)}`, { role: r }).then(() => showTeam(team)).catch(fail)) : m.role),
          h("td", null, fmtTime(m.created_at)),
          h("td", null, admin ? h("button.link", { onclick: () => void del(`${t}/members/${enc(m.user)}`).then(() => showTeam(team)).catch(fail) }, "remove") : ""))))),
      admin ? h("div.row", null, user, select(ROLES, role, (r) => { role = r; }),
        h("button", { onclick: () => void put(`${t}/members/${enc(user.value.trim())}`, { role }).then(() => showTeam(team)).catch(fail) }, "add member")) : null,
      h("h4", null, "API keys"),
      h("table.grid.keys", null, h("thead", null, h("tr", null, ["key id", "user", "name", "scope", "created", "revoked", ""].map((c) => h("th", null, c)))),
        h("tbody", null, keys.map((k) => h("tr", null, h("td", null, h("code", null, k.key_id)), h("td", null, k.user), h("td", null, k.name), h("td", null, k.scope),
          h("td", null, fmtTime(k.created_at)), h("td", null, k.revoked_at ? fmtTime(k.revoked_at) : ""),
          h("td", null, k.revoked_at ? "" : h("button.link", { onclick: () => void del(`${t}/keys/${enc(k.key_id)}`).then(() => showTeam(team)).catch(fail) }, "revoke")))))),
      h("div.row", null, keyName, admin ? [" for ", select(members.map((m) => [m.user, m.user] as [string, string]), keyUser, (u) => { keyUser = u; })] : null,
        " scope ", select(SCOPES, keyScope, (v) => { keyScope = v; }, { name: "key-scope" }),
        h("button.create-key", { onclick: async () => {
          try {
            const k = await post<Answer<"/teams/{team}/keys", "post">>(`${t}/keys`, { name: keyName.value, user: keyUser || undefined, scope: keyScope as "ingest" | "read" | "admin" });
            await showTeam(team);
            teamBox.append(h("div.new-key", null, "New key for ", k.user, " — copy it now, it is not shown again: ", h("code.secret", null, k.key)));
          } catch (err) { fail(err); }
        } }, "create key")),
      admin ? auditLog(team) : null);
  }
  if (first) await showTeam(first);
}
