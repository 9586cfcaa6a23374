// Settings: teams, their members and roles, API keys (a new key is shown once), and the key
// this browser uses.

import { del, get, getApiKey, post, put, setApiKey } from "../api";
import type { Answer } from "../answers";
import { errorBox, h, replace, select } from "../dom";
import { whoami } from "../session";
import { fmtTime } from "../util";

const enc = encodeURIComponent;
const ROLES: Array<[string, string]> = [["viewer", "viewer"], ["member", "member"], ["admin", "admin"]];

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
      h("table.grid.keys", null, h("thead", null, h("tr", null, ["key id", "user", "name", "created", "revoked", ""].map((c) => h("th", null, c)))),
        h("tbody", null, keys.map((k) => h("tr", null, h("td", null, h("code", null, k.key_id)), h("td", null, k.user), h("td", null, k.name),
          h("td", null, fmtTime(k.created_at)), h("td", null, k.revoked_at ? fmtTime(k.revoked_at) : ""),
          h("td", null, k.revoked_at ? "" : h("button.link", { onclick: () => void del(`${t}/keys/${enc(k.key_id)}`).then(() => showTeam(team)).catch(fail) }, "revoke")))))),
      h("div.row", null, keyName, admin ? [" for ", select(members.map((m) => [m.user, m.user] as [string, string]), keyUser, (u) => { keyUser = u; })] : null,
        h("button.create-key", { onclick: async () => {
          try {
            const k = await post<Answer<"/teams/{team}/keys", "post">>(`${t}/keys`, { name: keyName.value, user: keyUser || undefined });
            await showTeam(team);
            teamBox.append(h("div.new-key", null, "New key for ", k.user, " — copy it now, it is not shown again: ", h("code.secret", null, k.key)));
          } catch (err) { fail(err); }
        } }, "create key")));
  }
  if (first) await showTeam(first);
}
