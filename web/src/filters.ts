// The filter builder's rows and their translation into the API's filter document
// (wandb's MongoDB-like operators: $eq $ne $gt $gte $lt $lte $in $nin $regex $exists).

import { h, select } from "./dom";

export interface FilterRow { field: string; op: string; value: string }

export const OPS: Array<[string, string]> = [
  ["$eq", "="], ["$ne", "≠"], ["$gt", ">"], ["$gte", "≥"], ["$lt", "<"], ["$lte", "≤"],
  ["$in", "in"], ["$nin", "not in"], ["$regex", "matches"], ["$exists", "exists"],
];
export const RUN_FIELDS = ["state", "name", "tags", "group", "job_type", "user", "host", "created_at", "run_id"];

/** A typed value from what was typed: numbers, true/false/null, else the text. */
export function parseValue(text: string): unknown {
  const t = text.trim();
  if (t === "true") return true;
  if (t === "false") return false;
  if (t === "null") return null;
  if (t !== "" && !Number.isNaN(Number(t))) return Number(t);
  return t.replace(/^"(.*)"$/, "$1");
}

export function toFilter(rows: FilterRow[], search = ""): Record<string, unknown> | null {
  const parts: Record<string, unknown>[] = [];
  for (const row of rows) {
    if (!row.field) continue;
    let value: unknown;
    if (row.op === "$in" || row.op === "$nin") value = row.value.split(",").map((v) => parseValue(v)).filter((v) => v !== "");
    else if (row.op === "$exists") value = row.value.trim() !== "false";
    else if (row.op === "$regex") value = row.value;
    else if (row.field === "created_at") value = Number(row.value) || row.value;
    else value = parseValue(row.value);
    parts.push({ [row.field]: { [row.op]: value } });
  }
  if (search.trim()) parts.push({ name: { $regex: `(?i)${search.trim().replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}` } });
  if (!parts.length) return null;
  return parts.length === 1 ? parts[0] : { $and: parts };
}

/** The filter builder: a row per condition, combined with AND. */
export function filterBuilder(rows: FilterRow[], fields: string[], onChange: () => void): HTMLElement {
  const box = h("div.filters");
  const draw = () => {
    box.replaceChildren(
      ...rows.map((row, i) => {
        const value = h("input", { value: row.value, placeholder: row.op === "$in" || row.op === "$nin" ? "a, b, c" : "value",
                                   className: "filter-value", size: 12 });
        value.addEventListener("change", () => { row.value = value.value; onChange(); });
        return h("span.filter", null,
          select(fields.map((f) => [f, f] as [string, string]), row.field, (v) => { row.field = v; onChange(); },
                 { className: "filter-field" }),
          select(OPS, row.op, (v) => { row.op = v; onChange(); }, { className: "filter-op" }),
          value,
          h("button.link", { title: "remove", onclick: () => { rows.splice(i, 1); draw(); onChange(); } }, "✕"));
      }),
      h("button.add-filter", { onclick: () => { rows.push({ field: fields[0], op: "$eq", value: "" }); draw(); } }, "+ filter"));
  };
  draw();
  return box;
}
