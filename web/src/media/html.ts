// Html (runstream.Html): the logged page in a sandboxed iframe. sandbox="allow-scripts" without
// allow-same-origin gives the page an opaque origin: its scripts run but cannot read the app's
// storage (the API key), cookies or DOM, nor call the API as the reader. srcdoc carries the text,
// fetched with credentials (an iframe src to the API would send no Authorization header).

import { fetchText } from "../api";
import type { RunFile } from "../answers";
import { h } from "../dom";

export function htmlView(f: RunFile, onError: (err: unknown) => void, signal?: AbortSignal): HTMLElement {
  const frame = h("iframe.media-html", { sandbox: "allow-scripts", referrerpolicy: "no-referrer", title: f.path });
  fetchText(f.url, signal).then((text) => { frame.srcdoc = text; }, (err) => { if (!signal?.aborted) onError(err); });
  return frame;
}
