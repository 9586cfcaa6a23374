"""Audio, Video, Html and Object3D as a user's script logs them (one subprocess, W&B-style), against a real
``runstream server`` (embedded ClickHouse), read back through ``runstream.Api``: each file's media type and meta,
and its downloaded bytes decoded by an independent reader (``wave``, Pillow, imageio/ffmpeg, orjson).

Also pinned down: values over the limits (a 200 MB video array, audio with NaN) raise at the user's own call,
and the run goes on — what it logs before and after still arrives, the sender is not broken.
"""

from __future__ import annotations

import io
import subprocess
import sys
import wave
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from PIL import Image as PILImage

import runstream
from infra.net import free_port
from tests.helpers import Server, scanned_history, script_env, unique, wait_for

#: The files the script logs (a gallery of three clips is three files).
EXPECTED_FILES = 10

SCRIPT = """\
import sys
import numpy as np
import runstream as wandb

run = wandb.init(project=sys.argv[1], id=sys.argv[2], settings={"system_metrics": False, "git": False})
rng = np.random.default_rng(0)
t = np.arange(8000) / 8000
wandb.log({
    "speech": [
        wandb.Audio(np.sin(2 * np.pi * f * t) * 0.5, sample_rate=8000, caption=f"{f} Hz") for f in (220, 440, 880)
    ],
    "stereo": wandb.Audio(rng.uniform(-1, 1, (4000, 2)).astype(np.float32), sample_rate=16000),
    "rollout_gif": wandb.Video(rng.integers(0, 256, (6, 3, 24, 32), dtype=np.uint8), fps=6, caption="gif"),
    "rollout_mp4": wandb.Video(rng.random((10, 3, 24, 32)), fps=5, format="mp4", caption="mp4"),
    "page": wandb.Html("<h1>Evaluation</h1><script>document.title = 'x'</script>"),
    "cloud": wandb.Object3D.from_point_cloud(
        points=np.c_[rng.random((500, 3)), rng.integers(0, 256, (500, 3))],
        boxes=[{"corners": [[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], "label": "car",
                "color": (255, 0, 0)}],
    ),
    "mesh": wandb.Object3D(sys.argv[3], caption="triangle"),
    "loss": 1.0,
}, step=0)

# Over the limits: refused at the call, before any encoding; the run goes on.
for name, build in [
    ("video", lambda: wandb.Video(np.zeros((50, 4, 1024, 1024), dtype=np.uint8), format="mp4")),
    ("audio", lambda: wandb.Audio(np.full(100, np.nan), sample_rate=8000)),
]:
    try:
        build()
    except ValueError as exc:
        print(f"REFUSED {name}: {exc}", flush=True)
    else:
        print(f"ACCEPTED {name}", flush=True)

for step in (1, 2, 3):
    wandb.log({"loss": 1.0 / (step + 1)}, step=step)
wandb.log({"after": wandb.Audio(np.zeros(800), sample_rate=8000, caption="after the refusals")}, step=3)
wandb.finish()
"""

OBJ = "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("server") / "data", free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(server: Server) -> runstream.Api:
    return runstream.Api(url=server.url, api_key="")


@pytest.fixture(scope="module")
def logged(server: Server, api: runstream.Api, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The script, run once: its output and the run's media files by key, downloaded."""
    work = tmp_path_factory.mktemp("work")
    project, run_id = unique("media"), unique("r")
    (work / "train.py").write_text(SCRIPT)
    (work / "triangle.obj").write_text(OBJ)
    result = subprocess.run(
        [sys.executable, "train.py", project, run_id, "triangle.obj"],
        cwd=work,
        env=script_env(server.url, work),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    path = f"default/{project}/{run_id}"
    wait_for(lambda: api.run(path).state == "finished", f"{path} to finish")
    wait_for(lambda: len(_media(api, path)) == EXPECTED_FILES, f"the {EXPECTED_FILES} media files of {path}")
    files: dict[str, list[dict[str, Any]]] = {}
    downloads = work / "downloads"
    for f in _media(api, path):
        f.download(root=downloads).close()
        meta = f.meta  # the file event's meta, as the run page reads it
        files.setdefault(meta["key"], []).append(
            {
                "media_type": f.mimetype,
                "step": f.step,
                "meta": meta,
                "name": f.name,
                "blob": (downloads / f.name).read_bytes(),
            }
        )
    for entries in files.values():
        entries.sort(key=lambda e: (e["step"], e["meta"].get("index", 0)))
    return {"stdout": result.stdout, "stderr": result.stderr, "path": path, "files": files}


def _media(api: runstream.Api, path: str) -> list[Any]:
    return [f for f in api.run(path).files() if f.kind == "media"]


def _wav(blob: bytes) -> tuple[int, int, int, np.ndarray]:
    with wave.open(io.BytesIO(blob), "rb") as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return wav.getframerate(), wav.getnchannels(), wav.getsampwidth(), pcm.reshape(-1, wav.getnchannels())


def test_a_list_of_audio_is_a_gallery_of_wavs(logged):
    speech = logged["files"]["speech"]
    assert [(e["media_type"], e["step"], e["meta"]["index"], e["meta"]["count"]) for e in speech] == [
        ("audio", 0, 0, 3),
        ("audio", 0, 1, 3),
        ("audio", 0, 2, 3),
    ]
    assert [e["meta"]["caption"] for e in speech] == ["220 Hz", "440 Hz", "880 Hz"]
    for entry, frequency in zip(speech, (220, 440, 880), strict=True):
        meta = entry["meta"]
        assert entry["name"].startswith("media/audio/speech_0_") and entry["name"].endswith(".wav")
        assert (meta["sample_rate"], meta["channels"], meta["duration"], meta["format"]) == (8000, 1, 1.0, "wav")
        rate, channels, width, pcm = _wav(entry["blob"])
        assert (rate, channels, width, len(pcm)) == (8000, 1, 2, 8000)
        # The tone is the one logged: its strongest frequency, at half the full scale.
        spectrum = np.abs(np.fft.rfft(pcm[:, 0]))
        assert int(np.argmax(spectrum)) == frequency and abs(int(pcm.max()) - 16384) <= 1
    (stereo,) = logged["files"]["stereo"]
    assert stereo["meta"]["channels"] == 2 and _wav(stereo["blob"])[1:3] == (2, 2)
    assert len(_wav(stereo["blob"])[3]) == 4000 and stereo["meta"]["duration"] == 0.25


def test_videos_decode_as_gif_and_mp4(logged):
    (gif,) = logged["files"]["rollout_gif"]
    assert gif["media_type"] == "video" and gif["name"].endswith(".gif")
    assert gif["meta"] == {
        "width": 32,
        "height": 24,
        "frames": 6,
        "fps": 6,
        "format": "gif",
        "caption": "gif",
        "duration": 1.0,
        "key": "rollout_gif",
    }
    with PILImage.open(io.BytesIO(gif["blob"])) as image:
        assert (image.format, image.size, image.n_frames, image.info.get("loop")) == ("GIF", (32, 24), 6, 0)

    iio = pytest.importorskip("imageio.v3")
    (mp4,) = logged["files"]["rollout_mp4"]
    assert mp4["name"].endswith(".mp4") and mp4["meta"]["format"] == "mp4" and mp4["meta"]["frames"] == 10
    frames = iio.imread(mp4["blob"], extension=".mp4", plugin="FFMPEG")
    assert frames.shape == (10, 24, 32, 3)
    assert iio.immeta(mp4["blob"], extension=".mp4", plugin="FFMPEG")["fps"] == 5.0


def test_html_and_3d_objects_arrive_as_logged(logged):
    (page,) = logged["files"]["page"]
    assert page["media_type"] == "html" and page["name"].endswith(".html")
    assert page["blob"].decode() == "<h1>Evaluation</h1><script>document.title = 'x'</script>"
    assert page["meta"] == {"size": len(page["blob"]), "key": "page"}

    (cloud,) = logged["files"]["cloud"]
    assert cloud["media_type"] == "object3d" and cloud["name"].endswith(".pts.json")
    assert cloud["meta"] == {
        "format": "pts.json",
        "points": 500,
        "caption": None,
        "original_points": 500,
        "nonfinite": 0,
        "key": "cloud",
    }
    scene = orjson.loads(cloud["blob"])
    assert scene["type"] == "points" and np.array(scene["points"]).shape == (500, 6)
    assert [(b["label"], b["color"], len(b["corners"])) for b in scene["boxes"]] == [("car", [255.0, 0.0, 0.0], 8)]

    (mesh,) = logged["files"]["mesh"]
    assert mesh["name"].endswith(".obj") and mesh["blob"].decode() == OBJ
    assert mesh["meta"] == {"format": "obj", "points": None, "caption": "triangle", "key": "mesh"}


def test_values_over_the_limits_raise_at_the_call_and_the_run_goes_on(logged, api):
    refused = [line for line in logged["stdout"].splitlines() if line.startswith(("REFUSED", "ACCEPTED"))]
    assert len(refused) == 2, logged["stdout"]
    assert refused[0].startswith("REFUSED video: runstream.Video: the input array is 200.0 MiB, over the 100 MiB")
    assert "run.log_artifact" in refused[0] and "run.save()" in refused[0]
    assert refused[1] == (
        "REFUSED audio: runstream.Audio: the audio holds 100 NaN/Inf samples; "
        "clean it (numpy.nan_to_num) before logging"
    )
    # What was logged before and after the refusals all arrived; the sender reported nothing.
    assert [r["loss"] for r in scanned_history(api, logged["path"])] == [1.0, 1 / 2, 1 / 3, 1 / 4]
    (after,) = logged["files"]["after"]
    assert after["step"] == 3 and after["meta"]["caption"] == "after the refusals"
    assert len(_wav(after["blob"])[3]) == 800
    assert "failed" not in logged["stderr"], logged["stderr"]
