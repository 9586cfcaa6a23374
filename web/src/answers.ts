// The API's answers as the pages read them, typed from the OpenAPI document: api-types.ts is
// generated from openapi.json (`npm run types`, see docs/ui.md). A type is named by the path
// and method it answers, never by the document's component names, so regenerating after the
// API's schemas are renamed or split changes nothing in the pages.

import type { paths } from "./api-types";

/** A path of the API as api.ts takes it: without the /api/v1 prefix it adds. */
type ApiPath = keyof paths extends infer K ? (K extends `/api/v1${infer Rest}` ? Rest : never) : never;
type Method = "get" | "put" | "post" | "patch" | "delete";
type Operation<P extends ApiPath, M extends Method> = NonNullable<paths[Extract<keyof paths, `/api/v1${P}`>][M]>;
type Json<R> = R extends { content: { "application/json": infer J } } ? J : never;
type Success<O> = O extends { responses: infer R }
  ? (R extends { 200: infer A } ? Json<A> : R extends { 201: infer A } ? Json<A> : never) : never;

/** The JSON of an operation's success: its 200 answer, or its 201 for an operation that creates. */
export type Answer<P extends ApiPath, M extends Method = "get"> = Success<Operation<P, M>>;

export type Run = Answer<"/runs/{team}/{project}/{run_id}">;
export type RunFile = Answer<"/runs/{team}/{project}/{run_id}/files">["files"][number];
export type Report = Answer<"/projects/{team}/{project}/reports/{report_id}">;
export type Alert = Answer<"/projects/{team}/{project}/alerts">["alerts"][number];

// Narrow local types, for objects the document leaves free-form (a page reads only these fields).

/** A run's `git` (the SDK's git capture). */
export interface GitInfo { commit?: string; branch?: string; remote?: string; dirty?: boolean; root?: string }

/** A media file's `meta` (sdk/media.py): the key it was logged under, its caption, its place in a gallery. */
export interface MediaMeta { key?: string; caption?: string | null; index?: number }
