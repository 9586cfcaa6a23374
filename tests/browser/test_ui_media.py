"""The run page's media tab for audio, video, HTML, 3D objects and runstream.plot charts, in headless
Chromium against ``runstream server`` (the browser set-up of test_ui_artifacts.py, the UI's CSP kept).

The files are made here as the contract (docs/sdk.md, media) says the SDK writes them -- a WAV, a WebM
and a GIF, an HTML page, the point-cloud JSON and OBJ/STL/PLY/GLB meshes, and one chart file of each
kind -- and go in through the public API as the SDK sends them: the blob uploaded, then a ``file`` event
of kind "media" with its media_type, step and meta. So this checks the UI against the file formats,
not against whichever SDK version is installed.

Screenshots of each type and chart kind go to tmp/artifacts/browser; with RUNSTREAM_DOC_IMG=docs/img
they are also written there as media-<type>.png and chart-<kind>.png (the docs' images):

    RUNSTREAM_DOC_IMG=docs/img .venv/bin/pytest tests/browser/test_ui_media.py -m browser -p no:cacheprovider
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import struct
import tempfile
import time
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.browser import test_ui_artifacts
from tests.browser.test_ui import ARTIFACTS, ROOT, TIMEOUT_MS, chromium_path

pytestmark = pytest.mark.browser

server = test_ui_artifacts.server

TEAM = "default"
PROJECT = "media"
RUN = "rich1"
DOC_IMG = Path(os.environ["RUNSTREAM_DOC_IMG"]) if os.environ.get("RUNSTREAM_DOC_IMG") else None
CHART_KINDS = ("line", "scatter", "bar", "histogram", "line_series", "confusion_matrix", "pr_curve", "roc_curve")
MESHES = ("obj", "stl", "ply", "glb", "gltf")
#: The 3D viewer's background (object3d.ts): a drawn canvas has pixels of other colours.
BACKGROUND = (0x11, 0x14, 0x18)


# -- the files, as the SDK writes them -------------------------------------------------------------


def wav(freq: float, seconds: float = 1.0, rate: int = 8000) -> bytes:
    """A mono 16-bit PCM WAV (runstream.Audio's encoding) of a sine tone."""
    t = np.arange(int(rate * seconds)) / rate
    samples = (np.sin(2 * math.pi * freq * t) * 0.4 * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return out.getvalue()


def frames(count: int = 16, size: int = 64) -> np.ndarray:
    """A square moving across a gradient: (time, height, width, 3) uint8."""
    out = np.zeros((count, size, size, 3), dtype=np.uint8)
    out[..., 2] = np.linspace(40, 200, size, dtype=np.uint8)[None, None, :]
    for i in range(count):
        x = i * (size - 16) // max(1, count - 1)
        out[i, 24:40, x : x + 16] = (250, 200, 40)
    return out


def video(codec: str, ext: str) -> bytes:
    """Frames encoded by imageio-ffmpeg (runstream.Video's mp4/webm path)."""
    import imageio_ffmpeg

    clip = frames()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"clip.{ext}"
        writer = imageio_ffmpeg.write_frames(
            str(path), (clip.shape[2], clip.shape[1]), fps=8, codec=codec, quality=None
        )
        writer.send(None)
        for frame in clip:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        return path.read_bytes()


def gif() -> bytes:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames()]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=125, loop=0)
    return out.getvalue()


HTML_PAGE = """<!doctype html><html><body style="font-family: sans-serif">
<h1 id="title">Validation report</h1>
<table border="1"><tr><th>class</th><th>f1</th></tr><tr><td>cat</td><td>0.91</td></tr>
<tr><td>dog</td><td>0.87</td></tr></table>
<p id="where">static</p>
<script>document.getElementById("where").textContent = "script ran; origin " + String(window.origin);</script>
</body></html>"""


def point_cloud(rgb: bool, n: int = 3000, seed: int = 0) -> dict[str, Any]:
    """The SDK's ".pts.json": a ring of points (xyz+category or xyz+rgb) and two boxes."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * math.pi, n)
    radius = rng.normal(5, 0.4, n)
    xyz = np.stack([radius * np.cos(angle), radius * np.sin(angle), rng.normal(0, 0.3, n)], axis=1)
    if rgb:
        colors = np.stack([(np.cos(angle) + 1) * 127, (np.sin(angle) + 1) * 127, np.full(n, 180)], axis=1)
        points = np.concatenate([xyz, colors], axis=1)
    else:
        points = np.concatenate([xyz, (angle // (math.pi / 2))[:, None]], axis=1)

    def box(cx: float, cy: float, label: str, color: list[int]) -> dict[str, Any]:
        corners = [[cx + dx, cy + dy, dz] for dz in (-1, 1) for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        return {"corners": corners, "label": label, "color": color}

    boxes = [box(5, 0, "car", [0, 255, 0]), box(-5, 0, "truck", [255, 80, 80])]
    return {"type": "points", "points": np.round(points, 3).tolist(), "boxes": boxes, "vectors": []}


CUBE_OBJ = "\n".join(
    [f"v {x} {y} {z}" for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    + ["f 1 3 4 2", "f 5 6 8 7", "f 1 2 6 5", "f 3 7 8 4", "f 1 5 7 3", "f 2 4 8 6"]
).encode()

TETRA = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
TETRA_FACES = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]


def stl() -> bytes:
    facets = []
    for a, b, c in TETRA_FACES:
        verts = "\n".join(f"      vertex {x} {y} {z}" for x, y, z in (TETRA[a], TETRA[b], TETRA[c]))
        facets.append(f"  facet normal 0 0 0\n    outer loop\n{verts}\n    endloop\n  endfacet")
    return ("solid tetra\n" + "\n".join(facets) + "\nendsolid tetra\n").encode()


def ply() -> bytes:
    header = ["ply", "format ascii 1.0", f"element vertex {len(TETRA)}", "property float x", "property float y"]
    header += ["property float z", f"element face {len(TETRA_FACES)}", "property list uchar int vertex_indices"]
    header += ["end_header"]
    body = [" ".join(map(str, v)) for v in TETRA] + [f"3 {a} {b} {c}" for a, b, c in TETRA_FACES]
    return ("\n".join(header + body) + "\n").encode()


def _gltf_tetra() -> tuple[dict[str, Any], bytes]:
    """The tetrahedron as glTF 2.0: its JSON (the buffer's uri left out) and its buffer (positions, then indices)."""
    positions = np.array(TETRA, dtype="<f4").tobytes()
    indices = np.array(TETRA_FACES, dtype="<u2").tobytes()
    bin_chunk = positions + indices
    gltf = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "buffers": [{"byteLength": len(bin_chunk)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": len(positions), "target": 34962},
            {"buffer": 0, "byteOffset": len(positions), "byteLength": len(indices), "target": 34963},
        ],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 4, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 1]},
            {"bufferView": 1, "componentType": 5123, "count": 12, "type": "SCALAR"},
        ],
    }
    return gltf, bin_chunk


def gltf_embedded() -> bytes:
    """A .gltf standing alone: its buffer in a base64 data: URI."""
    gltf, buffer = _gltf_tetra()
    gltf["buffers"][0]["uri"] = "data:application/octet-stream;base64," + base64.b64encode(buffer).decode()
    return json.dumps(gltf).encode()


def glb() -> bytes:
    """A binary glTF 2.0 of the tetrahedron: a JSON chunk and a BIN chunk."""
    gltf, bin_chunk = _gltf_tetra()
    json_chunk = json.dumps(gltf).encode()
    json_chunk += b" " * (-len(json_chunk) % 4)
    bin_chunk += b"\0" * (-len(bin_chunk) % 4)
    body = struct.pack("<I4s", len(json_chunk), b"JSON") + json_chunk + struct.pack("<I4s", len(bin_chunk), b"BIN\0")
    body += bin_chunk
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body


def chart(kind: str) -> dict[str, Any]:
    """One runstream.plot chart file of `kind`: {spec, columns, data} (contract section 2)."""
    rng = np.random.default_rng(1)
    xs = list(range(20))
    if kind == "line":
        data = [[x, round(math.exp(-x / 6), 4), run] for run in ("train", "val") for x in xs]
        return _chart(
            kind, "loss by epoch", {"x": "epoch", "y": "loss", "stroke": "split"}, ["epoch", "loss", "split"], data
        )
    if kind == "scatter":
        data = [
            [round(float(a), 3), round(float(a * 0.8 + b), 3)]
            for a, b in zip(rng.normal(0, 1, 300), rng.normal(0, 0.3, 300))
        ]
        return _chart(kind, "prediction vs truth", {"x": "truth", "y": "prediction"}, ["truth", "prediction"], data)
    if kind == "bar":
        data = [["cat", 120], ["dog", 95], ["bird", 40], ["fish", 12]]
        return _chart(kind, "samples per class", {"label": "class", "value": "count"}, ["class", "count"], data)
    if kind == "histogram":
        data = [[round(float(v), 3)] for v in rng.normal(0, 1, 1000)]
        return _chart(kind, "logit distribution", {"value": "logit"}, ["logit"], data)
    if kind == "line_series":
        data = [
            [key, round(math.sin(x / 3 + phase), 4), x] for key, phase in (("sin", 0.0), ("shifted", 1.0)) for x in xs
        ]
        spec = {"x": "step", "y": "lineVal", "stroke": "lineKey"}
        return _chart(kind, "two waves", spec, ["lineKey", "lineVal", "step"], data, xname="epoch")
    if kind == "confusion_matrix":
        classes = ["cat", "dog", "bird"]
        counts = [[50, 3, 1], [4, 41, 5], [0, 6, 30]]
        data = [[classes[a], classes[p], counts[a][p]] for a in range(3) for p in range(3) if counts[a][p]]
        spec = {"actual": "Actual", "predicted": "Predicted", "count": "nPredictions"}
        return _chart(kind, "confusion", spec, ["Actual", "Predicted", "nPredictions"], data, class_names=classes)
    if kind == "pr_curve":
        recall = np.linspace(0, 1, 21)
        data = [
            [c, round(float(1 - 0.5 * r**k), 4), round(float(r), 4)]
            for c, k in (("cat", 4), ("dog", 2), ("bird", 1))
            for r in recall
        ]
        spec = {"x": "recall", "y": "precision", "stroke": "class"}
        return _chart(kind, "precision v. recall", spec, ["class", "precision", "recall"], data)
    assert kind == "roc_curve"
    fpr = np.linspace(0, 1, 21)
    data = [[c, round(float(f), 4), round(float(f**k), 4)] for c, k in (("cat", 0.2), ("dog", 0.5)) for f in fpr]
    return _chart(kind, "ROC", {"x": "fpr", "y": "tpr", "stroke": "class"}, ["class", "fpr", "tpr"], data)


def _chart(
    kind: str, title: str, fields: dict[str, str], columns: list[str], data: list[list[Any]], **extra: Any
) -> dict[str, Any]:
    return {"spec": {"kind": kind, "title": title, "fields": fields, **extra}, "columns": columns, "data": data}


# -- logging them through the public API ----------------------------------------------------------


class Logger:
    """A run's media files sent as the SDK sends them: the blob PUT, then a ``file`` event."""

    def __init__(self, url: str, run_id: str) -> None:
        self.url, self.run_id, self.seq = url, run_id, 0

    def events(self, *events: tuple[str, dict[str, Any]]) -> None:
        lines = []
        for type_, data in events:
            self.seq += 1
            envelope = {"v": 1, "type": type_, "team": TEAM, "project": PROJECT, "run_id": self.run_id}
            lines.append(orjson.dumps({**envelope, "seq": self.seq, "ts": time.time(), "data": data}))
        request = urllib.request.Request(
            f"{self.url}/api/v1/events", data=b"\n".join(lines), headers={"Content-Type": "application/x-ndjson"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200

    def media(self, media_type: str, folder: str, key: str, step: int, blob: bytes, ext: str, **meta: Any) -> None:
        sha = hashlib.sha256(blob).hexdigest()
        path = f"media/{folder}/{key.replace('/', '_')}_{step}_{sha[:8]}.{ext}"
        request = urllib.request.Request(
            f"{self.url}/api/v1/files/{TEAM}/{PROJECT}/{self.run_id}/{path}?sha256={sha}",
            data=blob,
            method="PUT",
            headers={"Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        data = {"path": path, "kind": "media", "size": len(blob), "sha256": sha, "store_key": path}
        self.events(("file", {**data, "media_type": media_type, "step": step, "meta": {"key": key, **meta}}))


def _files(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/runs/{TEAM}/{PROJECT}/{RUN}/files?kind=media", timeout=10) as r:
        return orjson.loads(r.read())["files"]


@pytest.fixture(scope="module")
def rich_run(server: str) -> str:
    """One run holding every new media type and chart kind (the server's URL once all are stored)."""
    log = Logger(server, RUN)
    log.events(("run_start", {"name": "rich-media"}))
    for step, freq in enumerate((440.0, 660.0, 880.0)):
        log.media("audio", "audio", "speech", step, wav(freq), "wav", sample_rate=8000, duration=1.0, channels=1,
                  caption=f"{int(freq)} Hz", format="wav")  # fmt: skip
    video_meta = {"width": 64, "height": 64, "frames": 16, "fps": 8, "duration": 2.0}
    for step in (0, 1):
        log.media(
            "video",
            "videos",
            "rollout",
            step,
            video("libvpx", "webm"),
            "webm",
            format="webm",
            caption=f"episode {step}",
            **video_meta,
        )
    log.media(
        "video", "videos", "rollout_mp4", 0, video("libx264", "mp4"), "mp4", format="mp4", caption="h264", **video_meta
    )
    log.media("video", "videos", "rollout_gif", 0, gif(), "gif", format="gif", caption="as gif", **video_meta)
    log.media("html", "html", "report", 0, HTML_PAGE.encode(), "html", size=len(HTML_PAGE))
    for step in (0, 1):
        cloud = point_cloud(rgb=False, seed=step)
        log.media("object3d", "object3d", "lidar", step, orjson.dumps(cloud), "pts.json", format="pts.json",
                  points=len(cloud["points"]), caption=f"scan {step}")  # fmt: skip
    cloud = point_cloud(rgb=True)
    log.media(
        "object3d",
        "object3d",
        "lidar_rgb",
        0,
        orjson.dumps(cloud),
        "pts.json",
        format="pts.json",
        points=len(cloud["points"]),
    )
    for fmt, blob in (("obj", CUBE_OBJ), ("stl", stl()), ("ply", ply()), ("glb", glb()), ("gltf", gltf_embedded())):
        log.media("object3d", "object3d", f"mesh_{fmt}", 0, blob, fmt, format=fmt)
    for kind in CHART_KINDS:
        c = chart(kind)
        log.media(
            "chart",
            "charts",
            f"chart/{kind}",
            0,
            orjson.dumps(c),
            "json",
            chart=kind,
            title=c["spec"]["title"],
            rows=len(c["data"]),
        )
    log.events(("run_finish", {"state": "finished", "exit_code": 0}))
    expected = 3 + 2 + 1 + 1 + 1 + 2 + 1 + len(MESHES) + len(CHART_KINDS)
    deadline = time.monotonic() + 60
    while len(_files(server)) < expected:
        assert time.monotonic() < deadline, f"media files stored: {len(_files(server))} of {expected}"
        time.sleep(0.3)
    return server


# -- the browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; `make test` installs it as root)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        # WebGL for the 3D viewer: headless Chromium has no GPU, so SwiftShader draws it.
        args = ["--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--use-angle=swiftshader"]
        b = p.chromium.launch(executable_path=path, args=[*args, "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def media_page(browser: Any, rich_run: str) -> Iterator[Any]:
    """The run's media tab, opened once (the UI's CSP kept); page errors and CSP refusals fail the module."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: _csp_refusal(m, errors))
    page.goto(f"{rich_run}/projects/{TEAM}/{PROJECT}/runs/{RUN}#media")
    page.wait_for_selector("section.media")
    yield page
    page.screenshot(path=str(ARTIFACTS / "run-media-rich-end.png"), full_page=True)
    context.close()
    assert not errors, f"errors in the page: {errors}"


def _csp_refusal(message: Any, errors: list[str]) -> None:
    """A CSP refusal fails the module, but for the logged HTML's own inline script and styles: the sandboxed
    srcdoc frame inherits the UI's policy, which refuses them (docs: what the HTML view shows)."""
    if "Content Security Policy" not in message.text:
        return
    inline = message.text.startswith(("Applying inline style", "Executing inline script"))
    if not (inline and message.location.get("url") == "about:srcdoc"):
        errors.append(message.text)


def _section(page: Any, key: str) -> Any:
    return page.locator("section.media", has=page.locator("h3", has_text=key)).filter(
        has=page.locator(f"xpath=./h3[normalize-space(text())='{key}']")
    )


# The section's box cut to what it holds (a section is as wide as the page; its media are not).
CONTENT_BOX = """el => {
  const box = el.getBoundingClientRect();
  const text = document.createRange();
  text.selectNodeContents(el.querySelector("h3"));
  const parts = [...el.querySelectorAll("figure, .media-step-bar > *, .media-step-label")];
  const right = Math.max(text.getBoundingClientRect().right, ...parts.map((e) => e.getBoundingClientRect().right));
  return {x: box.left + window.scrollX, y: box.top + window.scrollY, width: Math.min(box.width, right - box.left + 16),
          height: box.height};
}"""


def _shot(page: Any, key: str, name: str) -> None:
    section = _section(page, key)
    section.scroll_into_view_if_needed()
    clip = section.evaluate(CONTENT_BOX)
    targets = [ARTIFACTS]
    if DOC_IMG is not None:
        targets.append(DOC_IMG if DOC_IMG.is_absolute() else ROOT / DOC_IMG)
    for target in targets:
        target.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target / f"{name}.png"), clip=clip, full_page=True)


# Promises the page's media settle (no polling, which the CSP's no-eval would refuse).
LOADED = """(el, event) => new Promise((resolve, reject) => {
  const done = () => resolve({duration: el.duration, readyState: el.readyState, width: el.videoWidth || 0});
  if (el.readyState >= 2) return done();
  el.addEventListener(event, done, {once: true});
  // A CSP without media-src blob: refuses the blob: URL without an error event: say so, never hang.
  setTimeout(() => reject(new Error(`no ${event} within 15 s (src ${el.src}, readyState ${el.readyState}); ` +
    "is blob: in the UI's CSP media-src (api/home.py)?")), 15000);
  el.addEventListener("error", () => reject(new Error("media error " + (el.error && el.error.code))), {once: true});
})"""

# Pixels of a canvas (2D or WebGL: copied onto a 2D canvas) unlike `bg`: how much it drew.
DRAWN_PIXELS = """(c, bg) => {
  const copy = document.createElement("canvas");
  copy.width = c.width; copy.height = c.height;
  const ctx = copy.getContext("2d");
  ctx.drawImage(c, 0, 0);
  const px = ctx.getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < px.length; i += 4) {
    if (px[i + 3] && (Math.abs(px[i] - bg[0]) + Math.abs(px[i + 1] - bg[1]) + Math.abs(px[i + 2] - bg[2]) > 30)) n++;
  }
  return n;
}"""


def test_audio_plays_with_a_step_slider(media_page: Any) -> None:
    page = media_page
    section = _section(page, "speech")
    audio = section.locator("audio.media-audio")
    audio.wait_for()
    state = audio.evaluate(LOADED, "loadedmetadata")
    assert abs(state["duration"] - 1.0) < 0.05, state  # the WAV's length: the blob is a playable file
    assert audio.evaluate("el => el.play().then(() => { el.pause(); return 'played'; })") == "played"
    # The slider starts at the latest step and moves to the others.
    assert section.locator(".media-items").get_attribute("data-step") == "2"
    assert "880 Hz" in section.locator("figcaption").inner_text()
    slider = section.locator("input.media-step")
    slider.evaluate("el => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
    assert section.locator(".media-items").get_attribute("data-step") == "0"
    assert "440 Hz" in section.locator("figcaption").inner_text()
    assert "8000 Hz" in section.inner_text() and "mono" in section.inner_text()
    _shot(page, "speech", "media-audio")


def test_video_webm_and_gif(media_page: Any) -> None:
    page = media_page
    video = _section(page, "rollout").locator("video.media-video")
    video.wait_for()
    state = video.evaluate(LOADED, "loadeddata")
    assert state["readyState"] >= 2 and state["width"] == 64, state
    assert _section(page, "rollout").locator("input.media-step").count() == 1  # two steps
    gif_img = _section(page, "rollout_gif").locator("img.media-video")
    gif_img.wait_for()
    assert gif_img.evaluate("img => img.decode().then(() => img.naturalWidth)") == 64
    _shot(page, "rollout", "media-video")


def test_video_mp4(media_page: Any) -> None:
    """H.264 in MP4 (runstream.Video(format="mp4")): Debian's chromium decodes it."""
    video = _section(media_page, "rollout_mp4").locator("video.media-video")
    video.wait_for()
    state = video.evaluate(LOADED, "loadeddata")
    assert state["readyState"] >= 2 and state["width"] == 64, state


def test_html_in_a_sandboxed_iframe(media_page: Any) -> None:
    page = media_page
    frame_el = _section(page, "report").locator("iframe.media-html")
    frame_el.wait_for()
    assert frame_el.get_attribute("sandbox") == "allow-scripts"  # never allow-same-origin
    assert "Validation report" in (frame_el.get_attribute("srcdoc") or "")
    frame = page.frame_locator("section.media iframe.media-html")
    assert frame.locator("h1#title").inner_text() == "Validation report"
    assert frame.locator("td", has_text="0.91").count() == 1
    _shot(page, "report", "media-html")


@pytest.mark.parametrize("key", ["lidar", "lidar_rgb", *(f"mesh_{m}" for m in MESHES)])
def test_object3d_viewer_draws(media_page: Any, key: str) -> None:
    page = media_page
    # A viewer starts once near the screen (each holds a WebGL context): scroll to it.
    _section(page, key).scroll_into_view_if_needed()
    canvas = _section(page, key).locator("canvas.media-3d-canvas[data-drawn]")
    canvas.wait_for()
    drawn = canvas.evaluate(DRAWN_PIXELS, list(BACKGROUND))
    assert drawn > 200, f"{key}: {drawn} pixels drawn"
    if key == "lidar":
        section = _section(page, "lidar")
        assert "3,000 points" in section.inner_text()
        section.locator("input.media-step").evaluate("el => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
        section.locator(".media-items[data-step='0'] canvas.media-3d-canvas[data-drawn]").wait_for()
        # The orbit controls turn the view: a drag changes what the canvas shows.
        viewer = section.locator("canvas.media-3d-canvas")
        viewer.scroll_into_view_if_needed()
        first = viewer.evaluate("c => c.toDataURL()")
        box = viewer.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 2 + 120, box["y"] + box["height"] / 2 + 60, steps=5)
        page.mouse.up()
        assert viewer.evaluate("c => c.toDataURL()") != first
    if key in ("lidar", "mesh_obj"):
        _shot(page, key, "media-object3d" if key == "lidar" else "media-object3d-mesh")


@pytest.mark.parametrize("kind", CHART_KINDS)
def test_chart_kinds_draw(media_page: Any, kind: str) -> None:
    page = media_page
    key = f"chart/{kind}"
    holder = _section(page, key).locator(f".media-chart[data-chart='{kind}'][data-drawn]")
    holder.wait_for()
    expected_series = {"line": 2, "line_series": 2, "pr_curve": 3, "roc_curve": 2, "scatter": 1}
    if kind in expected_series:
        assert holder.get_attribute("data-series") == str(expected_series[kind])
        canvas = holder.locator(".uplot canvas")
        if kind == "pr_curve":
            assert "precision" in holder.inner_text() and "recall" in holder.inner_text()  # the axes' labels
            # A legend entry hides its curve, and shows it again.
            dog = holder.locator(".u-legend .u-series", has_text="dog")
            dog.click()
            assert "u-off" in (dog.get_attribute("class") or "")
            dog.click()
            assert "u-off" not in (dog.get_attribute("class") or "")
    else:
        canvas = holder.locator("canvas.chart-canvas").first
    assert canvas.evaluate(DRAWN_PIXELS, [255, 255, 255]) > 300
    assert chart(kind)["spec"]["title"] in holder.inner_text()
    _shot(page, key, f"chart-{kind.replace('_', '-')}")


def test_what_the_sdk_logs_is_drawn(browser: Any, server: str, tmp_path: Path) -> None:
    """The same views for files the SDK itself wrote (runstream.Audio, Video, Html, Object3D and runstream.plot):
    the UI and the SDK agree on the formats."""
    import runstream
    from runstream import plot

    run = runstream.init(
        entity=TEAM,
        project=PROJECT,
        id="sdk1",
        dir=tmp_path,
        settings={"url": server, "console": False, "system_metrics": False, "git": False},
    )
    tone = np.sin(np.arange(8000) * 2 * math.pi * 440 / 8000) * 0.3
    clip = np.moveaxis(frames(8, 32), -1, 1)  # (time, channel, height, width), as wandb.Video takes it
    y_true = np.array([0, 1, 2, 2, 1, 0, 2, 1])
    probas = np.eye(3)[[0, 1, 2, 1, 1, 0, 2, 0]] * 0.7 + 0.1
    run.log(
        {
            "sound": runstream.Audio(tone, sample_rate=8000, caption="a4"),
            "clip": runstream.Video(clip, fps=4),
            "page": runstream.Html("<h1 id='t'>from the SDK</h1>"),
            "cloud": runstream.Object3D(np.array(point_cloud(rgb=False)["points"])),
            "pr": plot.pr_curve(y_true, probas, labels=["a", "b", "c"]),
            "cm": plot.confusion_matrix(y_true=y_true, preds=probas.argmax(1), class_names=["a", "b", "c"]),
        },
        step=0,
    )
    assert run.finish().unacked_events == 0
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    # Page errors fail it; the CSP's refusals are the first module's concern (media_page).
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{server}/projects/{TEAM}/{PROJECT}/runs/sdk1#media")
        page.wait_for_selector("section.media")
        # Its bytes fetched into a blob: URL (whether it then plays is test_audio_plays_with_a_step_slider's).
        _section(page, "sound").locator("audio.media-audio[src^='blob:']").wait_for(state="attached")
        assert "1 s · 8000 Hz · mono" in _section(page, "sound").inner_text()
        gif_img = _section(page, "clip").locator("img.media-video")
        gif_img.wait_for()
        assert gif_img.evaluate("img => img.decode().then(() => img.naturalWidth)") == 32
        assert page.frame_locator("section.media iframe.media-html").locator("h1#t").inner_text() == "from the SDK"
        _section(page, "cloud").scroll_into_view_if_needed()
        cloud = _section(page, "cloud").locator("canvas.media-3d-canvas[data-drawn]")
        cloud.wait_for()
        assert cloud.evaluate(DRAWN_PIXELS, list(BACKGROUND)) > 200
        pr = _section(page, "pr").locator(".media-chart[data-chart='pr_curve'][data-drawn]")
        pr.wait_for()
        assert pr.get_attribute("data-series") == "3"
        cm = _section(page, "cm").locator(".media-chart[data-chart='confusion_matrix'][data-drawn] canvas")
        assert cm.evaluate(DRAWN_PIXELS, [255, 255, 255]) > 300
    finally:
        page.screenshot(path=str(ARTIFACTS / "run-media-sdk-end.png"), full_page=True)
        context.close()
    assert not errors, f"errors in the page: {errors}"
