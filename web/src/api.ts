// The public HTTP API, as the UI calls it: an API key from localStorage as a Bearer token,
// or a report's share token (X-Runstream-Share) on /share/<token> pages.

export const API = "/api/v1";
const KEY_STORAGE = "runstream.apiKey";
let shareToken: string | null = null;

export class ApiError extends Error {
  constructor(public status: number, message: string, public code: string = "") {
    super(message);
  }
}

export function getApiKey(): string {
  try { return localStorage.getItem(KEY_STORAGE) ?? ""; } catch { return ""; }
}

export function setApiKey(key: string): void {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

export function setShareToken(token: string | null): void {
  shareToken = token;
}

export function authHeaders(): Record<string, string> {
  const headers: Record<string, string> = {};
  if (shareToken) headers["X-Runstream-Share"] = shareToken;
  else {
    const key = getApiKey();
    if (key) headers["Authorization"] = `Bearer ${key}`;
  }
  return headers;
}

/** A query string from defined values (objects become their JSON text). */
export function qs(params: Record<string, unknown>): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "") continue;
    const text = typeof v === "object" ? JSON.stringify(v) : String(v);
    parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(text)}`);
  }
  return parts.length ? `?${parts.join("&")}` : "";
}

/** The error answer of the API (api/errors.py): what a failed request says. */
interface ErrorAnswer { error?: { code?: string; message?: string } }

/** A request; T is what the caller reads of the answer (an `Answer<path, method>` of answers.ts). */
export async function api<T = unknown>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json", ...authHeaders() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  let data: unknown = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!response.ok) {
    const error = (data as ErrorAnswer | null)?.error;
    const message = error?.message ?? `${method} ${path}: HTTP ${response.status}`;
    throw new ApiError(response.status, message, error?.code ?? "");
  }
  return data as T;
}

export const get = <T = unknown>(path: string, signal?: AbortSignal) => api<T>("GET", path, undefined, signal);
export const post = <T = unknown>(path: string, body: unknown, signal?: AbortSignal) => api<T>("POST", path, body, signal);
export const patch = <T = unknown>(path: string, body: unknown) => api<T>("PATCH", path, body);
export const put = <T = unknown>(path: string, body: unknown) => api<T>("PUT", path, body);
export const del = <T = unknown>(path: string) => api<T>("DELETE", path);

/** Fetch a file with the caller's credentials as headers (never in the URL). */
async function fetchFile(url: string, signal?: AbortSignal): Promise<Response> {
  const response = await fetch(url, { headers: authHeaders(), signal });
  if (!response.ok) throw new ApiError(response.status, `${url}: HTTP ${response.status}`);
  return response;
}

/** A file's bytes as text (patches, tables, histograms). */
export async function fetchText(url: string, signal?: AbortSignal): Promise<string> {
  return (await fetchFile(url, signal)).text();
}

/**
 * Object URLs of files fetched with the caller's credentials, for <img> and downloads (an
 * <img src> or <a href download> would send no Authorization header). revoke() frees them all.
 */
export class BlobUrls {
  private urls: string[] = [];

  async get(url: string, signal?: AbortSignal): Promise<string> {
    const blob = await (await fetchFile(url, signal)).blob();
    const objectUrl = URL.createObjectURL(blob);
    this.urls.push(objectUrl);
    return objectUrl;
  }

  /** An <img> whose bytes are fetched with credentials; onError says why one failed. */
  image(url: string, attrs: Record<string, string | number>, onError: (err: unknown) => void, signal?: AbortSignal): HTMLImageElement {
    const img = document.createElement("img");
    for (const [k, v] of Object.entries(attrs)) img.setAttribute(k, String(v));
    this.get(url, signal).then((src) => { img.src = src; }, (err) => { if (!signal?.aborted) onError(err); });
    return img;
  }

  /** A download link: a click fetches the file with credentials and saves it under `name`. */
  download(url: string, name: string, label: string, onError: (err: unknown) => void, className = ""): HTMLAnchorElement {
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    a.textContent = label;
    if (className) a.className = className;
    a.addEventListener("click", (event) => {
      if (a.dataset.blob) return; // the second, synthetic click below: let the browser save it
      event.preventDefault();
      this.get(url).then((objectUrl) => {
        const saver = document.createElement("a");
        saver.href = objectUrl;
        saver.download = name;
        saver.dataset.blob = "1";
        saver.hidden = true;
        document.body.append(saver);
        saver.click();
        saver.remove();
      }, onError);
    });
    return a;
  }

  revoke(): void {
    this.urls.forEach((u) => URL.revokeObjectURL(u));
    this.urls = [];
  }
}

export interface SseEvent { id: string; event: string; data: string }

/**
 * Server-Sent Events over fetch, so the API key travels as a header (EventSource cannot
 * send one). Reconnects after a drop, resuming with Last-Event-ID. Returns a stop function.
 */
export function sse(path: string, onEvent: (e: SseEvent) => void, onState?: (state: string) => void,
                    signal?: AbortSignal): () => void {
  const controller = new AbortController();
  let lastId = "";
  let stopped = false;
  const connect = async () => {
    while (!stopped) {
      try {
        const headers: Record<string, string> = { Accept: "text/event-stream", ...authHeaders() };
        if (lastId) headers["Last-Event-ID"] = lastId;
        const response = await fetch(API + path, { headers, signal: controller.signal });
        if (!response.ok || !response.body) {
          // A refusal (bad key, no access) does not pass by retrying: say what the server said, and stop.
          const permanent = response.status >= 400 && response.status < 500 && ![408, 429].includes(response.status);
          let message = `stream: HTTP ${response.status}`;
          try { message = ((await response.json()) as ErrorAnswer | null)?.error?.message ?? message; } catch { /* not JSON */ }
          if (permanent) { onState?.(`stopped: ${message}`); return; }
          throw new ApiError(response.status, message);
        }
        onState?.("live");
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) { onState?.("reconnecting"); break; }
          buffer += value;
          let cut: number;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const event: SseEvent = { id: "", event: "message", data: "" };
            const data: string[] = [];
            for (const line of block.split("\n")) {
              if (line.startsWith(":")) continue;
              const colon = line.indexOf(":");
              const field = colon < 0 ? line : line.slice(0, colon);
              const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
              if (field === "id") event.id = val;
              else if (field === "event") event.event = val;
              else if (field === "data") data.push(val);
            }
            if (!data.length) continue;
            event.data = data.join("\n");
            if (event.id) lastId = event.id;
            onEvent(event);
          }
        }
      } catch (err) {
        if (stopped) return;
        onState?.(`reconnecting (${err instanceof Error ? err.message : err})`);
      }
      if (!stopped) await new Promise((r) => setTimeout(r, 2000));
    }
  };
  const stop = () => { stopped = true; controller.abort(); };
  if (signal?.aborted) return stop;
  signal?.addEventListener("abort", stop);
  void connect();
  return stop;
}
