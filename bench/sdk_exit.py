"""What a script's end costs and keeps: every way a W&B-style script ends, against a real server.

    .venv/bin/python -m bench.sdk_exit [--steps 20000] [--repeat 3]

Starts ``runstream server`` (embedded ClickHouse) on a temporary data directory, then, for
each way a script can end (falling off the end without ``finish()``, ``finish()``,
``sys.exit(3)``, an uncaught exception, SIGTERM, Ctrl-C), runs a training script as a
subprocess from its own directory: ``--steps`` steps of 10 scalars, then that ending.
Figures, medians over ``--repeat`` runs:

- exit s: wall time from the script's last ``log()`` to the process having exited, which
  is what the end of a job waits for (the final flush, bounded by ``finish_timeout``);
- script CPU s: user + system CPU time of the whole script process (all threads);
- points stored / logged, read back through the API: anything below 100% is data lost;
- the state and exit code the server shows.

``--sdk DIR`` runs the scripts with another copy of the SDK (a checkout's ``sdk/``
directory, e.g. of an older commit), to compare; the server is always this one.

Only prints figures; the last line is one JSON object with them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

from infra.net import free_port

ENDINGS = {
    "falls off the end": ("", None),
    "finish()": ("wandb.finish()\n", None),
    "sys.exit(3)": ("sys.exit(3)\n", None),
    "uncaught exception": ("raise RuntimeError('diverged')\n", None),
    "SIGTERM": ("time.sleep(600)\n", signal.SIGTERM),
    "Ctrl-C (SIGINT)": ("time.sleep(600)\n", signal.SIGINT),
}


def _script(project: str, run_id: str, steps: int, then: str) -> str:
    return (
        textwrap.dedent(f"""\
        import sys, time
        import runstream as wandb
        wandb.init(project={project!r}, id={run_id!r}, config={{"lr": 0.01}},
                   settings={{"system_metrics": False, "git": False}})
        for step in range({steps}):
            wandb.log({{f"m{{i}}": step * 0.001 + i for i in range(10)}})
        print("LAST_LOG", time.time(), flush=True)
        """)
        + then
    )


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _wait_ready(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited while starting")
        try:
            _get(f"{url}/api/v1/health")
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not answer within 120 s")


def one(url: str, work: Path, env: dict[str, str], ending: str, steps: int) -> dict:
    then, sig = ENDINGS[ending]
    project, run_id = "bench-exit", f"r{time.time_ns()}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "train.py").write_text(_script(project, run_id, steps, then))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # SIGINT as a terminal delivers it: a shell's background job would inherit it ignored.
    proc = subprocess.Popen(
        [sys.executable, "train.py"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    last_log = None
    for line in proc.stdout:  # type: ignore[union-attr]
        if line.startswith("LAST_LOG"):
            last_log = float(line.split()[1])
            if sig is not None:
                proc.send_signal(sig)
            break
    proc.wait(timeout=600)
    exited = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if last_log is None:
        raise SystemExit(f"{ending}: the script ended before logging everything (exit code {proc.returncode})")
    path = f"{url}/api/v1/runs/default/{project}/{run_id}"
    deadline = time.monotonic() + 10
    run: dict = {"state": "absent (nothing arrived)", "exit_code": None}
    stored = 0
    while time.monotonic() < deadline:  # the server's answer for the run, once it is no longer running
        try:
            run = _get(path)
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            time.sleep(0.5)
            continue
        if run["state"] != "running":
            break
        time.sleep(0.2)
    if run["exit_code"] is not None or run["state"] not in ("absent (nothing arrived)",):
        stats = _get(path + "/statistics")
        stored = sum(m["count"] for m in stats["metrics"].values())
    return {
        "exit_s": exited - last_log,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "stored": stored,
        "logged": steps * 10,
        "state": run["state"],
        "exit_code": run["exit_code"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sdk", type=Path, help="the sdk/ directory of another checkout, for the scripts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runstream-bench-exit-") as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "RUNSTREAM_URL": url, "RUNSTREAM_CONFIG": str(Path(tmp) / "none.toml")}
        server_env = dict(env)
        if args.sdk:  # a regular package named runstream, first on the path, wins over the installed one
            (Path(tmp) / "sdk").mkdir()
            (Path(tmp) / "sdk" / "runstream").symlink_to(args.sdk.resolve())
            env["PYTHONPATH"] = str(Path(tmp) / "sdk")
        server = subprocess.Popen(
            [
                Path(sys.executable).parent / "runstream",
                "server",
                "--data-dir",
                str(Path(tmp) / "data"),
                "--port",
                str(port),
            ],
            env=server_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_ready(url, server)
            results = {}
            sdk = args.sdk or "this checkout's"
            print(f"{args.steps:,} steps x 10 scalars per run, median of {args.repeat}; server: {url}; SDK: {sdk}")
            print(f"{'ending':<20} {'exit s':>7} {'CPU s':>6} {'stored/logged':>14}  state, exit code")
            for ending in ENDINGS:
                rows = [one(url, Path(tmp) / "work", env, ending, args.steps) for _ in range(args.repeat)]
                exit_s = statistics.median(r["exit_s"] for r in rows)
                cpu_s = statistics.median(r["cpu_s"] for r in rows)
                kept = min(r["stored"] / r["logged"] for r in rows)
                states = sorted({f"{r['state']}, {r['exit_code']}" for r in rows})
                print(f"{ending:<20} {exit_s:>7.2f} {cpu_s:>6.2f} {kept:>13.1%}  {' / '.join(states)}")
                results[ending] = {
                    "exit_s": round(exit_s, 3),
                    "cpu_s": round(cpu_s, 3),
                    "stored_fraction": kept,
                    "states": states,
                }
            print(json.dumps({"steps": args.steps, "repeat": args.repeat, "sdk": str(sdk), "endings": results}))
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
