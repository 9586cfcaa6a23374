// Who the server says this browser is (GET /whoami), asked once per API key.

import { get } from "./api";
import type { Answer } from "./answers";

export type Whoami = Answer<"/whoami">;

const NOBODY: Whoami = { user: null, team: null, role: null, local_admin: false, key_id: null, scope: null, share: null };
let who: Whoami | null = null;

/** Who the server says we are (cached until forgetWhoami, when the key changes). */
export async function whoami(): Promise<Whoami> {
  if (!who) {
    try { who = await get<Whoami>("/whoami"); } catch { who = NOBODY; }
  }
  return who;
}

/** The key changed: ask again next time. */
export function forgetWhoami(): void {
  who = null;
}

/** Who we are as a short name, for keys of settings saved in this browser. */
export async function userKey(): Promise<string> {
  const me = await whoami();
  return me.local_admin ? "local" : me.user ? `${me.team}:${me.user}` : "anonymous";
}
