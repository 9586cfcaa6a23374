// Video (runstream.Video): GIFs as an <img> (animated by the browser), mp4/webm/ogg/mov in a
// <video controls>; bytes fetched with credentials into a blob: URL.

import type { BlobUrls } from "../api";
import type { RunFile } from "../answers";
import { h } from "../dom";
import { fmtNum } from "../util";
import { metaOf } from "./steps";

/** The file's format: meta.format as the SDK wrote it, else the path's extension. */
export function formatOf(f: RunFile): string {
  const format = metaOf(f).format;
  if (typeof format === "string" && format) return format.toLowerCase();
  return (f.path.split("/").pop() ?? "").split(".").slice(1).join(".").toLowerCase();
}

export function videoView(f: RunFile, blobs: BlobUrls, onError: (err: unknown) => void, signal?: AbortSignal): HTMLElement {
  const m = metaOf(f);
  // Shown at its own size, small clips (64x64 frames) scaled up by a whole factor, large ones down to 640 wide.
  const w = typeof m.width === "number" && m.width > 0 ? m.width : 320;
  const hgt = typeof m.height === "number" && m.height > 0 ? m.height : 240;
  const scale = w < 256 ? Math.ceil(256 / w) : Math.min(1, 640 / w);
  const [width, height] = [Math.round(w * scale), Math.round(hgt * scale)];
  const facts = [
    typeof m.width === "number" ? `${m.width}×${m.height}` : "",
    typeof m.frames === "number" ? `${m.frames} frames` : "",
    typeof m.fps === "number" ? `${fmtNum(m.fps)} fps` : "",
    formatOf(f),
  ].filter(Boolean).join(" · ");
  let player: HTMLElement;
  if (formatOf(f) === "gif") {
    player = blobs.image(f.url, { class: "media-video", alt: String(m.caption ?? f.path), width, height }, onError, signal);
  } else {
    const video = h("video.media-video", { controls: true, loop: true, muted: true, playsinline: true, preload: "auto", width, height });
    video.muted = true;  // the attribute alone does not mute it
    blobs.get(f.url, signal).then((src) => { video.src = src; }, (err) => { if (!signal?.aborted) onError(err); });
    player = video;
  }
  return h("div.media-video-box", null, player, h("div.muted.media-facts", null, facts));
}
