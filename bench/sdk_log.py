"""What ``log()`` costs a training script: runstream vs W&B offline vs MLflow.

    .venv/bin/python -m bench.sdk_log [--steps 20000] [--mlflow-steps 2000] [--repeat 5] [--only KEY,...]

Runs the same workload (a synthetic training loop that builds 10 scalars per
step and logs them) through each tool, each in its own process:

- runstream ``mode="offline"`` (spool to local disk only) and online into a real
  Kafka broker (started here with ``infra.kafka_broker``), both also with 10x the
  steps, where the sender thread drains while the loop runs;
- W&B with ``WANDB_MODE=offline``;
- both again with their default settings (system metrics, console capture, git on), as
  a user runs them; the other rows turn those collectors off in both tools;
- MLflow with a local SQLite store (its file store refuses to start since
  MLflow 3.x unless ``MLFLOW_ALLOW_FILE_STORE=true``; it runs too, opted in),
  synchronous and ``synchronous=False``. MLflow costs milliseconds per call, so
  it gets fewer steps; per-call figures stay comparable.

wandb and mlflow are installed on first use into a bench-only venv outside the
repository (``~/.cache/runstream/bench-venv``, or ``$RUNSTREAM_BENCH_VENV``).
runstream runs with the project's ``.venv``.

Figures, each the median of ``--repeat`` repetitions (a fresh run each):

- µs per ``log()``: (loop with logging - the same loop without it) / calls, both
  loops building the same dict with the same arithmetic;
- ``finish()`` s: the end-of-run flush (runstream/wandb ``run.finish()``, MLflow
  ``flush_async_logging()`` + ``end_run()``);
- points/s end to end: points / (logging loop + finish); for Kafka the finish
  waits for the broker's acknowledgements, so this is points acknowledged per s
  from the first ``log()`` to ``finish()`` returning;
- peak RSS of the process (``ru_maxrss``);
- background CPU s: the process's CPU time minus the main thread's
  (``time.process_time()`` - ``time.thread_time()`` on the main thread) from
  ``init`` to ``finish`` returning, i.e. what the tool's threads burn; helper
  processes (wandb-core) are counted separately, from /proc.

``watch()`` (job ``watch``): what ``run.watch(model)`` costs a PyTorch training step, on an MLP
784-256-10 (ReLU), batch 64, SGD, CPU, ``--torch-threads`` threads (default 1: steadier on a
shared machine; the overhead is absolute µs either way). Three variants in fresh runs, taken in
turn within each repetition: no watch, ``watch(log="all", log_freq=100)`` and ``log_freq=1``;
each step is forward + cross-entropy + backward + ``optimizer.step()`` + ``run.log({"loss": ...})``.
Figures per variant: µs per step (wall), the main thread's CPU µs per step (where the hooks and
the histograms run), background CPU s (the sender encoding and spooling the histogram files,
loop and finish) and the histograms stored. ``--watch-steps`` steps each (default 1,000).

    .venv/bin/python -m bench.sdk_log --only watch [--watch-steps 1000] [--repeat 5] [--torch-threads 1]

Only prints figures: targets are shown next to them, never asserted. The last
line is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Stdlib only at module level: the workers for wandb and MLflow run this file with the bench venv's python.

REPO = Path(__file__).resolve().parent.parent
PROJECT_PYTHON = REPO / ".venv" / "bin" / "python"
BENCH_VENV = Path(os.environ.get("RUNSTREAM_BENCH_VENV", Path.home() / ".cache" / "runstream" / "bench-venv"))
PEERS = ("wandb", "mlflow")
SCALARS = 10

TARGET_US_PER_LOG = 2.0
TARGET_SPEEDUP_VS_WANDB = 100.0
TARGET_KAFKA_POINTS_PER_S = 1_000_000

LogFn = Callable[..., Any]
Session = tuple[LogFn, Callable[[], dict[str, Any]]]  # the run's log function and its finish


# -- the workload ------------------------------------------------------------------------------


def _metrics(i: int) -> dict[str, float]:
    """One synthetic training step's scalars. Both loops build them, so the subtraction is fair."""
    t = i * 1e-4
    loss = 2.0 / (1.0 + t)
    return {
        "loss": loss,
        "val_loss": loss * 1.1,
        "acc": 1.0 - loss / 2.0,
        "val_acc": 0.98 - loss / 2.0,
        "lr": 1e-3 / (1.0 + 10.0 * t),
        "grad_norm": 1.0 + (i % 7) * 0.1,
        "throughput": 1000.0 + (i % 13),
        "epoch": i / 1000.0,
        "tokens": i * 512.0,
        "weight_decay": 0.01,
    }


def _baseline_loop(steps: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        row = _metrics(i)  # noqa: F841 - the work the training script does anyway
    return time.perf_counter() - start


def _logging_loop(steps: int, log: LogFn) -> float:
    start = time.perf_counter()
    for i in range(steps):
        row = _metrics(i)
        log(row, step=i)
    return time.perf_counter() - start


# -- measuring one tool, inside its worker process ---------------------------------------------------


def _descendants_cpu() -> dict[int, float]:
    """CPU seconds (user+sys) of each live descendant process, from /proc (empty where there is none)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent_of: dict[int, int] = {}
    cpu: dict[int, float] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid ... utime stime
        parent_of[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    mine, frontier = set(), [os.getpid()]
    while frontier:
        pid = frontier.pop()
        children = [p for p, ppid in parent_of.items() if ppid == pid and p not in mine]
        mine.update(children)
        frontier.extend(children)
    return {pid: cpu[pid] for pid in mine}


def _helper_cpu_since(before: dict[int, float], reaped_before: float) -> float:
    """Helper processes' CPU since the snapshot: live descendants plus children reaped meanwhile."""
    live = sum(cpu - before.get(pid, 0.0) for pid, cpu in _descendants_cpu().items())
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return live + (usage.ru_utime + usage.ru_stime - reaped_before)


def _measure(steps: int, repeat: int, start: Callable[[int], Session]) -> dict[str, Any]:
    """Run ``repeat`` fresh runs of the workload; the figures are the medians over them."""
    reps: list[dict[str, Any]] = []
    for rep in range(repeat):
        # Without logging first, outside the run: the cost of the synthetic work alone.
        baseline_s = _baseline_loop(steps)
        helpers_before = _descendants_cpu()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        reaped_before = children.ru_utime + children.ru_stime
        cpu_before, main_before = time.process_time(), time.thread_time()
        t0 = time.perf_counter()
        log, finish = start(rep)
        init_s = time.perf_counter() - t0
        loop_s = _logging_loop(steps, log)
        t1 = time.perf_counter()
        finish_info = finish()
        finish_s = time.perf_counter() - t1
        cpu_s = time.process_time() - cpu_before
        main_s = time.thread_time() - main_before
        reps.append(
            {
                "us_per_log": (loop_s - baseline_s) / steps * 1e6,
                "baseline_s": baseline_s,
                "loop_s": loop_s,
                "init_s": init_s,
                "finish_s": finish_s,
                "points_per_s": steps * SCALARS / (loop_s + finish_s),
                "bg_cpu_s": max(0.0, cpu_s - main_s),  # the two clocks tick differently: no tiny negatives
                "helper_cpu_s": _helper_cpu_since(helpers_before, reaped_before),
                **finish_info,
            }
        )
    numeric = [k for k, v in reps[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    result: dict[str, Any] = {k: statistics.median(r[k] for r in reps) for k in numeric}
    result["us_per_log_reps"] = [round(r["us_per_log"], 3) for r in reps]
    result["reps"] = reps
    result["steps"] = steps
    result["points"] = steps * SCALARS
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return result


def _worker_runstream(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import runstream

    settings: dict[str, Any] = {"system_metrics": False, "console": False, "git": False, "finish_timeout": 60.0}
    if args.defaults:  # as a user runs it: system metrics, console capture and git on
        settings = {"finish_timeout": 60.0}
    mode = "offline"
    if args.bootstrap:
        mode, settings["url"] = "online", f"kafka://{args.bootstrap}"

    def start(rep: int) -> Session:
        run = runstream.init(project="bench", name=f"sdk-log-{rep}", mode=mode, dir=str(tmp), settings=settings)

        def finish() -> dict[str, Any]:
            result = run.finish()
            return {
                "acked_events": result["acked_events"],
                "unacked_events": result["unacked_events"],
                "points_reported": result["points"],
            }

        return run.log, finish

    result = _measure(args.steps, args.repeat, start)
    # Everything acknowledged (online) or spooled (offline), every repetition.
    result["all_points_counted"] = all(r["points_reported"] == result["points"] for r in result["reps"])
    if mode == "online":
        result["all_acked"] = all(r["unacked_events"] == 0 and r["acked_events"] > 0 for r in result["reps"])
    result["version"] = runstream.__version__
    return result


def _wandb_settings(wandb: Any) -> Any:
    """Collectors off, as for runstream: system metrics, console capture, git, code saving."""
    wanted = {"x_disable_stats": True, "console": "off", "disable_git": True, "save_code": False}
    known = getattr(wandb.Settings, "model_fields", None)
    if known is not None and "x_disable_stats" not in known:
        wanted["_disable_stats"] = wanted.pop("x_disable_stats")  # wandb before 0.19
    return wandb.Settings(**{k: v for k, v in wanted.items() if known is None or k in known})


def _worker_wandb(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import wandb

    settings = wandb.Settings() if args.defaults else _wandb_settings(wandb)

    def start(rep: int) -> Session:
        run = wandb.init(project="bench", name=f"sdk-log-{rep}", dir=str(tmp), mode="offline", settings=settings)

        def finish() -> dict[str, Any]:
            run.finish()
            return {}

        return run.log, finish

    result = _measure(args.steps, args.repeat, start)
    result["version"] = wandb.__version__
    return result


def _worker_mlflow(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import functools

    import mlflow

    uri = f"file:{tmp / 'mlruns'}" if args.store == "file" else f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bench")  # creates the database/experiment outside the measured runs
    log = functools.partial(mlflow.log_metrics, synchronous=False) if args.asynchronous else mlflow.log_metrics

    def start(rep: int) -> Session:
        mlflow.start_run(run_name=f"sdk-log-{rep}")

        def finish() -> dict[str, Any]:
            if args.asynchronous:
                mlflow.flush_async_logging()
            mlflow.end_run()
            return {}

        return log, finish

    result = _measure(args.steps, args.repeat, start)
    result["version"] = mlflow.__version__
    result["tracking_uri_scheme"] = uri.split(":", 1)[0]
    return result


WATCH_VARIANTS: dict[str, dict[str, Any] | None] = {
    "off": None,
    "freq100": {"log": "all", "log_freq": 100},
    "freq1": {"log": "all", "log_freq": 1},
}
WATCH_LABELS = {"off": "no watch", "freq100": 'watch(log="all", log_freq=100)', "freq1": 'watch(log="all", log_freq=1)'}


def _worker_watch(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """µs per training step of a small real model, without and with ``run.watch()`` (its hooks, its histograms)."""
    import torch

    import runstream
    from runstream import events

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    batches = [(torch.randn(64, 784), torch.randint(0, 10, (64,))) for _ in range(8)]
    settings: dict[str, Any] = {"system_metrics": False, "console": False, "git": False, "finish_timeout": 120.0}

    def train(model: Any, optimizer: Any, steps: int, log: LogFn | None) -> None:
        for i in range(steps):
            x, y = batches[i % len(batches)]
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if log is not None:
                log({"loss": loss.item()})

    def one(variant: str, rep: int) -> dict[str, Any]:
        model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        train(model, optimizer, 20, None)  # warm up torch's kernels and allocator outside the figures
        run = runstream.init(project="bench", name=f"watch-{variant}-{rep}", mode="offline", dir=str(tmp),
                             settings=settings)  # fmt: skip
        watch = WATCH_VARIANTS[variant]
        if watch is not None:
            run.watch(model, **watch)
        cpu0, main0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
        train(model, optimizer, args.steps, run.log)
        loop_s, main_s = time.perf_counter() - t0, time.thread_time() - main0
        t1 = time.perf_counter()
        run.finish()
        finish_s = time.perf_counter() - t1
        cpu_s = time.process_time() - cpu0
        main_all_s = time.thread_time() - main0
        histograms = sum(
            1 for e in _spooled(run.dir, events) if e.type == events.FILE and e.data.get("media_type") == "histogram"
        )
        return {
            "us_per_step": loop_s / args.steps * 1e6,
            "main_cpu_us_per_step": main_s / args.steps * 1e6,
            "bg_cpu_s": max(0.0, cpu_s - main_all_s),
            "finish_s": finish_s,
            "histograms": histograms,
        }

    reps: dict[str, list[dict[str, Any]]] = {v: [] for v in WATCH_VARIANTS}
    for rep in range(args.repeat):
        for variant in WATCH_VARIANTS:  # in turn: a slower moment of a shared machine hits every variant
            reps[variant].append(one(variant, rep))
    result: dict[str, Any] = {"steps": args.steps, "torch_threads": args.torch_threads, "torch": torch.__version__}
    for variant, runs in reps.items():
        result[variant] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        result[variant]["us_per_step_reps"] = [round(r["us_per_step"], 1) for r in runs]
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["version"] = runstream.__version__
    return result


def _spooled(run_dir: str, events: Any) -> list[Any]:
    """Every event a finished run spooled (the histograms it stored are counted from them)."""
    from runstream.spool import Cursor, Spool

    spool = Spool(Path(run_dir) / "spool", writer=False)
    try:
        records, _ = spool.read(Cursor(min(spool.segments(), default=1), 0), max_bytes=1 << 30)
    finally:
        spool.close()
    return [events.decode(event) for _, event in records]


WORKERS = {"runstream": _worker_runstream, "wandb": _worker_wandb, "mlflow": _worker_mlflow, "watch": _worker_watch}


def worker_main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f"sdk-log-{args.worker}-"))
    try:
        result = WORKERS[args.worker](args, tmp)
        result["worker"] = args.worker
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("RESULT " + json.dumps(result), flush=True)


# -- the parent: install peers, start Kafka, run the workers, print the table ------------------------


@dataclass(frozen=True)
class Job:
    key: str  # JSON prefix and --only name
    label: str
    worker: str
    steps: int
    python: Path
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    kafka: bool = False


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_peers(venv: Path) -> Path:
    """The bench venv's python, with wandb and mlflow installed (a one-time install, progress on stderr)."""
    python = venv / "bin" / "python"
    if not python.exists():
        _say(f"Creating the bench-only venv {venv} ...")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    check = subprocess.run([str(python), "-c", "import wandb, mlflow"], capture_output=True)
    if check.returncode != 0:
        _say(f"Installing {', '.join(PEERS)} into {venv} (one-time, a minute or two) ...")
        # pip's own output is the progress display; it goes to stderr so stdout stays figures only.
        subprocess.run(
            [str(python), "-m", "pip", "install", "--progress-bar", "on", *PEERS], check=True, stdout=sys.stderr
        )
    return python


def jobs(args: argparse.Namespace, peer_python: Path | None) -> list[Job]:
    long_steps = args.steps * args.long_factor
    # Nothing phones home during the measurements (there is no network here anyway).
    quiet = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "WANDB_SILENT": "true"}
    all_jobs = [
        Job("runstream", "runstream offline", "runstream", args.steps, PROJECT_PYTHON),
        Job("runstream_kafka", "runstream -> Kafka", "runstream", args.steps, PROJECT_PYTHON, kafka=True),
        Job("runstream_long", "runstream offline", "runstream", long_steps, PROJECT_PYTHON),
        Job("runstream_kafka_long", "runstream -> Kafka", "runstream", long_steps, PROJECT_PYTHON, kafka=True),
        Job(
            "runstream_defaults",
            "runstream offline, defaults",
            "runstream",
            args.steps,
            PROJECT_PYTHON,
            ("--defaults",),
        ),
        Job(
            "watch",
            "watch(), MLP 784-256-10",
            "watch",
            args.watch_steps,
            PROJECT_PYTHON,
            ("--torch-threads", str(args.torch_threads)),
        ),
    ]
    if peer_python is not None:
        all_jobs += [
            Job("wandb", "W&B offline", "wandb", args.steps, peer_python, env={**quiet, "WANDB_MODE": "offline"}),
            Job("wandb_defaults", "W&B offline, defaults", "wandb", args.steps, peer_python, ("--defaults",),
                {**quiet, "WANDB_MODE": "offline"}),
            Job("mlflow", "MLflow sqlite", "mlflow", args.mlflow_steps, peer_python, ("--store", "sqlite"), quiet),
            Job("mlflow_async", "MLflow sqlite async", "mlflow", args.mlflow_steps, peer_python, ("--store", "sqlite", "--asynchronous"), quiet),
            Job("mlflow_file", "MLflow file store", "mlflow", args.mlflow_steps, peer_python, ("--store", "file"),
                {**quiet, "MLFLOW_ALLOW_FILE_STORE": "true"}),
            Job("mlflow_file_async", "MLflow file async", "mlflow", args.mlflow_steps, peer_python, ("--store", "file", "--asynchronous"),
                {**quiet, "MLFLOW_ALLOW_FILE_STORE": "true"}),
        ]  # fmt: skip
    if args.only:
        keep = set(args.only.split(","))
        all_jobs = [j for j in all_jobs if j.key in keep]
    return all_jobs


def run_job(job: Job, repeat: int, bootstrap: str | None) -> dict[str, Any]:
    cmd = [
        str(job.python),
        str(Path(__file__).resolve()),
        "--worker",
        job.worker,
        "--steps",
        str(job.steps),
        "--repeat",
        str(repeat),
        *job.args,
    ]
    if job.kafka:
        cmd += ["--bootstrap", bootstrap or ""]
    with tempfile.TemporaryDirectory(prefix="sdk-log-home-") as home:
        env = {**os.environ, **job.env}
        if job.worker == "wandb":  # wandb keeps settings and caches under these: keep them out of ~
            env.update(WANDB_DIR=home, WANDB_CACHE_DIR=home, WANDB_CONFIG_DIR=home, WANDB_DATA_DIR=home)
        # runstream in the repository (its workers import the project); the peers in a scratch directory.
        cwd = REPO if job.worker == "runstream" else home
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stdout + proc.stderr)[-2000:]
    return {"error": f"exit {proc.returncode}: {tail.strip()}"}


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def print_table(results: dict[str, dict[str, Any]], labels: dict[str, str]) -> None:
    header = (
        "tool",
        "steps",
        "µs/log()",
        "finish() s",
        "points/s e2e",
        "init() s",
        "peak RSS MiB",
        "bg CPU s",
        "helper CPU s",
    )
    rows = [header]
    for key, r in results.items():
        if "error" in r:
            rows.append((labels[key], "error", "", "", "", "", "", "", ""))
            continue
        rows.append(
            (
                labels[key],
                f"{r['steps']:,}",
                _num(r["us_per_log"]),
                _num(r["finish_s"], 3),
                f"{r['points_per_s']:,.0f}",
                _num(r["init_s"], 3),
                f"{r['peak_rss_mib']:.0f}",
                _num(r["bg_cpu_s"], 3),
                _num(r["helper_cpu_s"], 3),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        print("  ".join(cells))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for key, r in results.items():
        if "error" in r:
            print(f"\n{labels[key]} failed: {r['error']}")


def print_watch(r: dict[str, Any], repeat: int) -> None:
    """The watch() table: per training step, without and with the hooks."""
    print(
        f"watch(): MLP 784-256-10, batch 64, SGD, CPU, {r['torch_threads']} torch thread(s), torch {r['torch']}; "
        f"{r['steps']:,} steps per run, median of {repeat} runs per variant."
    )
    header = ("variant", "µs/step", "+µs/step", "main CPU µs/step", "bg CPU s", "finish() s", "histograms")
    base = r["off"]["us_per_step"]
    rows = [header]
    for variant, label in WATCH_LABELS.items():
        v = r[variant]
        rows.append(
            (
                label,
                f"{v['us_per_step']:,.0f}",
                "-" if variant == "off" else f"{v['us_per_step'] - base:+,.0f}",
                f"{v['main_cpu_us_per_step']:,.0f}",
                _num(v["bg_cpu_s"], 3),
                _num(v["finish_s"], 3),
                f"{v['histograms']:,.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        print("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print(
        "µs/step: wall time of forward + loss + backward + optimizer.step() + run.log(); +µs/step: over no watch. "
        "main CPU: the training thread's (hooks and histograms run there); bg CPU: the process's other threads "
        "(the sender writing the histogram files), loop and finish."
    )


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000, help="steps for runstream and W&B (10 scalars each)")
    parser.add_argument("--mlflow-steps", type=int, default=2_000, help="steps for MLflow (milliseconds per call)")
    parser.add_argument("--long-factor", type=int, default=10, help="runstream also runs this many times the steps")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions per tool; figures are their medians")
    parser.add_argument("--only", default="", help="comma-separated job keys, e.g. runstream,wandb (or watch)")
    parser.add_argument("--watch-steps", type=int, default=1_000, help="training steps per run of the watch job")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads in the watch job")
    parser.add_argument("--bench-venv", type=Path, default=BENCH_VENV, help="where wandb and mlflow are installed")
    # Worker mode (internal): one tool in this process, one RESULT line on stdout.
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", default="", help=argparse.SUPPRESS)
    parser.add_argument("--store", choices=("sqlite", "file"), default="sqlite", help=argparse.SUPPRESS)
    parser.add_argument("--asynchronous", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--defaults", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return

    began = time.monotonic()
    if not PROJECT_PYTHON.exists():
        sys.exit(f"the project venv is missing ({PROJECT_PYTHON}): run `make test` or create it first")
    wanted = set(args.only.split(",")) if args.only else None
    needs_peers = wanted is None or any(k.startswith(("wandb", "mlflow")) for k in wanted)
    peer_python = ensure_peers(args.bench_venv) if needs_peers else None
    todo = jobs(args, peer_python)

    broker = None
    bootstrap: str | None = None
    results: dict[str, dict[str, Any]] = {}
    labels = {
        job.key: f"{job.label} ({job.steps // 1000}k steps)" if job.key.endswith("_long") else job.label for job in todo
    }
    try:
        if any(job.kafka for job in todo):
            sys.path.insert(0, str(REPO))  # `python bench/sdk_log.py` puts bench/, not the repository, on the path
            from infra.kafka_broker import KafkaBroker
            from runstream.streams.topics import create_topics_sync

            _say("Starting a Kafka broker ...")
            try:
                broker = KafkaBroker()
                broker.start()  # main thread, outside async code: the broker's lifetime is tied to this thread
                create_topics_sync(broker.bootstrap)
                bootstrap = broker.bootstrap
                _say(f"  Kafka at {bootstrap}, ready in {broker.startup_seconds:.1f} s")
            except Exception as exc:  # noqa: BLE001 - the other tools still run; the Kafka rows say why they did not
                _say(f"  the Kafka broker did not start: {exc}")
                for job in todo:
                    if job.kafka:
                        results[job.key] = {"error": f"no Kafka broker: {exc}"}
        for n, job in enumerate(todo, 1):
            if job.key in results:
                continue
            _say(f"[{n}/{len(todo)}] {labels[job.key]}: {job.steps:,} steps x {args.repeat} ...")
            t = time.monotonic()
            results[job.key] = run_job(job, args.repeat, bootstrap)
            _say(f"  done in {time.monotonic() - t:.1f} s" if "error" not in results[job.key] else "  FAILED")
    finally:
        if broker is not None:
            broker.cleanup()
    results = {job.key: results[job.key] for job in todo if job.key in results}  # the table in job order
    watch = results.pop("watch", None)  # its own table: per training step, not per log()
    total_s = time.monotonic() - began

    if watch is not None and "error" not in watch:
        print()
        print_watch(watch, args.repeat)
    elif watch is not None:
        print(f"\nwatch() failed: {watch['error']}")
    if not results:  # --only watch
        print(json.dumps(_watch_summary(watch, args)))
        return
    print()
    print(
        f"{SCALARS} scalars per log() call; each figure is the median of {args.repeat} repetitions (a fresh run each)."
    )
    print_table(results, labels)
    ok = {k: r for k, r in results.items() if "error" not in r}
    print()
    print("µs/log(): (logging loop - same loop without logging) / calls: what the training loop pays per call.")
    print(
        "points/s e2e: points / (logging loop + finish()); Kafka: acknowledged by the broker (acks=all), first log() to finish() returned."
    )
    print(
        "bg CPU s: process CPU - main thread CPU (time.process_time() - time.thread_time()), init to finish: the tool's threads."
    )
    print(
        "helper CPU s: CPU of helper processes (wandb-core) over the same span, from /proc; the Kafka broker is not counted."
    )
    print("peak RSS MiB: ru_maxrss of the whole worker process (imports included, the largest of its repetitions).")

    def us(key: str) -> float | None:
        return ok[key]["us_per_log"] if key in ok else None

    def ratio(peer: str, ours: str) -> float | None:
        theirs_us, ours_us = us(peer), us(ours)
        return theirs_us / ours_us if theirs_us and ours_us and ours_us > 0 else None

    speedup = ratio("wandb", "runstream")
    speedup_defaults = ratio("wandb_defaults", "runstream_defaults")
    print()
    print("Targets (shown, not asserted):")
    if (offline_us := us("runstream")) is not None:
        print(
            f"  runstream offline: {offline_us:.2f} µs per log() (target <= {TARGET_US_PER_LOG:g}): {_met(offline_us <= TARGET_US_PER_LOG)}"
        )
    if us("runstream_long") is not None:
        print(
            f"  runstream offline, {ok['runstream_long']['steps']:,} steps (sender draining meanwhile): {us('runstream_long'):.2f} µs per log()"
        )
    if speedup is not None:
        print(
            f"  vs W&B offline, collectors off in both: {speedup:,.0f}x lower (target >= {TARGET_SPEEDUP_VS_WANDB:g}x): {_met(speedup >= TARGET_SPEEDUP_VS_WANDB)}"
        )
    if speedup_defaults is not None:
        print(
            f"  vs W&B offline, both with default settings: {speedup_defaults:,.0f}x lower (target >= {TARGET_SPEEDUP_VS_WANDB:g}x): {_met(speedup_defaults >= TARGET_SPEEDUP_VS_WANDB)}"
        )
    for key in ("runstream_kafka", "runstream_kafka_long"):
        if key in ok:
            r = ok[key]
            acked = (
                "every point acknowledged in every repetition"
                if r.get("all_acked") and r.get("all_points_counted")
                else "NOT all acknowledged"
            )
            print(
                f"  Kafka, {r['steps']:,} steps: {r['points_per_s']:,.0f} points/s acknowledged "
                f"(target >= {TARGET_KAFKA_POINTS_PER_S:,}): {_met(r['points_per_s'] >= TARGET_KAFKA_POINTS_PER_S)}; {acked}"
            )
    print(f"\nWhole benchmark: {total_s:.0f} s.")

    # The headline keys are always there (null when that tool did not run), the rest per tool that ran.
    summary: dict[str, Any] = {f"{key}_us_per_log": None for key in ("runstream", "wandb", "mlflow")}
    for key, r in ok.items():
        summary[f"{key}_us_per_log"] = round(r["us_per_log"], 3)
    summary["speedup_vs_wandb"] = round(speedup, 1) if speedup is not None else None
    summary["speedup_vs_wandb_defaults"] = round(speedup_defaults, 1) if speedup_defaults is not None else None
    summary["runstream_kafka_points_per_s"] = None
    for key, r in ok.items():
        summary[f"{key}_points_per_s"] = round(r["points_per_s"])
        summary[f"{key}_finish_s"] = round(r["finish_s"], 4)
        summary[f"{key}_peak_rss_mib"] = round(r["peak_rss_mib"], 1)
        summary[f"{key}_bg_cpu_s"] = round(r["bg_cpu_s"], 4)
        summary[f"{key}_helper_cpu_s"] = round(r["helper_cpu_s"], 4)
        if "all_acked" in r:
            summary[f"{key}_all_acked"] = bool(r["all_acked"] and r["all_points_counted"])
    for key, r in results.items():
        if "error" in r:
            summary[f"{key}_error"] = r["error"][-300:]
    summary["versions"] = {r["worker"]: r["version"] for r in ok.values()}
    summary["mlflow_store"] = "sqlite"  # mlflow_us_per_log; the file store is in mlflow_file_*
    summary.update(_watch_summary(watch, args))
    summary.update(
        steps=args.steps,
        mlflow_steps=args.mlflow_steps,
        repeat=args.repeat,
        statistic="median",
        total_s=round(total_s, 1),
    )
    print(json.dumps(summary))


def _watch_summary(watch: dict[str, Any] | None, args: argparse.Namespace) -> dict[str, Any]:
    """The watch() job's headline figures for the JSON line (absent when it did not run)."""
    if watch is None:
        return {}
    if "error" in watch:
        return {"watch_error": watch["error"][-300:]}
    out: dict[str, Any] = {"watch_steps": watch["steps"], "watch_torch_threads": watch["torch_threads"]}
    for variant in WATCH_VARIANTS:
        out[f"watch_{variant}_us_per_step"] = round(watch[variant]["us_per_step"], 1)
        out[f"watch_{variant}_main_cpu_us_per_step"] = round(watch[variant]["main_cpu_us_per_step"], 1)
        out[f"watch_{variant}_bg_cpu_s"] = round(watch[variant]["bg_cpu_s"], 3)
        out[f"watch_{variant}_histograms"] = watch[variant]["histograms"]
        if variant != "off":
            out[f"watch_{variant}_overhead_us_per_step"] = round(
                watch[variant]["us_per_step"] - watch["off"]["us_per_step"], 1
            )
    out["repeat"] = args.repeat
    return out


if __name__ == "__main__":
    main()
