"""What logging and using a large artifact costs the SDK, and what content addressing saves.

    .venv/bin/python -m bench.artifacts [--size-mb 1024] [--dedup-mb 100] [--versions 10] [--data-dir DIR]

Starts ``runstream server`` (embedded ClickHouse, the local blob store) on a fresh data directory and
drives the SDK in child processes of their own, so that each one's peak RSS is the SDK's alone:

- upload: a run logs a ``--size-mb`` file (random bytes, written beforehand) as an artifact and waits
  for its version (``log_artifact(...).wait()``): read, hashed and copied into the staging folder,
  streamed to the server, stored; MB/s over the whole, and the staging part alone (until its digest is
  known);
- download: another process fetches that version and ``download()``s it, checking its SHA-256;
- dedup: ``--versions`` versions of a ``--dedup-mb`` artifact of 10 files where each version replaces
  one file: the bytes the server's blob store grew by against the logical bytes of all versions.

MB is 10^6 bytes. The last line is one JSON object with the figures. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.embedded import EmbeddedServer

REPO = Path(__file__).resolve().parents[1]
PROJECT = "bench-artifacts"
DEDUP_FILES = 10


def write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            chunk = os.urandom(min(1 << 20, left))
            f.write(chunk)
            left -= len(chunk)


def store_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in (data_dir / "files" / "_blobs").rglob("*") if p.is_file())


# -- the SDK's side (child processes) --------------------------------------------------------------


def child_upload(url: str, source: str, workdir: str) -> dict[str, Any]:
    import runstream

    run = runstream.init(
        project=PROJECT,
        id="uploader",
        dir=workdir,
        settings={"url": url, "api_key": "", "console": False, "system_metrics": False, "git": False},
    )
    start = time.perf_counter()
    artifact = run.log_artifact(source, name="big", type="dataset")
    returned = time.perf_counter() - start
    while artifact._digest is None and not artifact._staged.is_set():  # read, hashed and copied: its digest is known
        time.sleep(0.001)
    staged = time.perf_counter() - start
    artifact.wait()
    stored = time.perf_counter() - start
    run.finish()
    return {"log_artifact_returned_s": returned, "staged_s": staged, "stored_s": stored, "digest": artifact.digest}


def child_download(url: str, target: str) -> dict[str, Any]:
    import runstream
    from runstream.artifacts import fetch_artifact

    api = runstream.Api(url=url, api_key="")
    artifact = fetch_artifact(api, f"{PROJECT}/big:latest")
    start = time.perf_counter()
    artifact.download(target)
    return {"download_s": time.perf_counter() - start}


def child_dedup(url: str, folder: str, workdir: str, versions: int, file_bytes: int) -> dict[str, Any]:
    import runstream

    run = runstream.init(
        project=PROJECT,
        id="deduper",
        dir=workdir,
        settings={"url": url, "api_key": "", "console": False, "system_metrics": False, "git": False},
    )
    root = Path(folder)
    start = time.perf_counter()
    for version in range(versions):
        if version:  # each version replaces one of the files: 90% is shared with the one before
            write_random(root / f"part-{version % DEDUP_FILES}.bin", file_bytes)
        run.log_artifact(folder, name="shared", type="dataset").wait()
    elapsed = time.perf_counter() - start
    run.finish()
    return {"dedup_s": elapsed}


def _child(args: argparse.Namespace) -> None:
    if args.child == "upload":
        out = child_upload(args.url, args.source, args.workdir)
    elif args.child == "download":
        out = child_download(args.url, args.target)
    else:
        out = child_dedup(args.url, args.source, args.workdir, args.versions, args.file_bytes)
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps(out), flush=True)


def _spawn(*argv: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.artifacts", *argv], cwd=REPO, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"{argv[1]} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="the large artifact's size (MB)")
    parser.add_argument("--dedup-mb", type=int, default=100, help="the size of each deduplicated version (MB)")
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--data-dir", help="where the server and the files go (default: a temporary directory)")
    parser.add_argument("--child", choices=["upload", "download", "dedup"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--file-bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    base = Path(args.data_dir or tempfile.mkdtemp(prefix="bench-artifacts-"))
    data_dir, work = base / "server", base / "work"
    size = args.size_mb * 10**6
    source = work / "big" / "payload.bin"
    write_random(source, size)
    server = EmbeddedServer(data_dir)
    try:
        up = _spawn("--child", "upload", "--url", server.url, "--source", str(source), "--workdir", str(work))
        stored_big = store_bytes(data_dir)
        down = _spawn("--child", "download", "--url", server.url, "--target", str(work / "downloaded"))
        shutil.rmtree(work / "downloaded", ignore_errors=True)

        file_bytes = args.dedup_mb * 10**6 // DEDUP_FILES
        folder = work / "shared"
        for index in range(DEDUP_FILES):
            write_random(folder / f"part-{index}.bin", file_bytes)
        dedup = _spawn(
            "--child", "dedup", "--url", server.url, "--source", str(folder), "--workdir", str(work),
            "--versions", str(args.versions), "--file-bytes", str(file_bytes),
        )  # fmt: skip
        stored_dedup = store_bytes(data_dir) - stored_big
    finally:
        server.stop()
        if not args.data_dir:
            shutil.rmtree(base, ignore_errors=True)

    logical = args.versions * DEDUP_FILES * file_bytes
    figures = {
        "size_mb": args.size_mb,
        "upload_mb_s": round(size / 1e6 / up["stored_s"], 1),
        "stage_mb_s": round(size / 1e6 / up["staged_s"], 1),
        "log_artifact_returned_ms": round(up["log_artifact_returned_s"] * 1000, 2),
        "upload_max_rss_mb": round(up["max_rss_mb"], 1),
        "download_mb_s": round(size / 1e6 / down["download_s"], 1),
        "download_max_rss_mb": round(down["max_rss_mb"], 1),
        "dedup_versions": args.versions,
        "dedup_logical_mb": round(logical / 1e6, 1),
        "dedup_stored_mb": round(stored_dedup / 1e6, 1),
        "dedup_ratio": round(logical / max(stored_dedup, 1), 2),
        "dedup_max_rss_mb": round(dedup["max_rss_mb"], 1),
    }
    print(f"upload of {args.size_mb} MB: {figures['upload_mb_s']} MB/s end to end (staging alone "
          f"{figures['stage_mb_s']} MB/s; log_artifact returned in {figures['log_artifact_returned_ms']} ms), "
          f"SDK peak RSS {figures['upload_max_rss_mb']} MB")  # fmt: skip
    print(f"download: {figures['download_mb_s']} MB/s, SDK peak RSS {figures['download_max_rss_mb']} MB")
    print(f"dedup: {args.versions} versions of {args.dedup_mb} MB sharing 90% of their files: "
          f"{figures['dedup_logical_mb']} MB logical, {figures['dedup_stored_mb']} MB stored "
          f"({figures['dedup_ratio']}x)")  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
