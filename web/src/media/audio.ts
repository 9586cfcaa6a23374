// Audio (runstream.Audio): an <audio controls> element per file, its bytes fetched with credentials
// into a blob: URL (an <audio src> to the API would send no Authorization header).

import type { BlobUrls } from "../api";
import type { RunFile } from "../answers";
import { h } from "../dom";
import { fmtNum } from "../util";
import { metaOf } from "./steps";

export function audioView(f: RunFile, blobs: BlobUrls, onError: (err: unknown) => void, signal?: AbortSignal): HTMLElement {
  const audio = h("audio.media-audio", { controls: true, preload: "metadata" });
  blobs.get(f.url, signal).then((src) => { audio.src = src; }, (err) => { if (!signal?.aborted) onError(err); });
  const m = metaOf(f);
  const facts = [
    typeof m.duration === "number" ? `${fmtNum(m.duration)} s` : "",
    typeof m.sample_rate === "number" ? `${m.sample_rate} Hz` : "",
    typeof m.channels === "number" ? (m.channels === 1 ? "mono" : `${m.channels} channels`) : "",
  ].filter(Boolean).join(" · ");
  return h("div.media-audio-box", null, audio, facts ? h("div.muted.media-facts", null, facts) : null);
}
