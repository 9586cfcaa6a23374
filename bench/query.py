"""How fast storage answers dashboard queries over a large generated project.

    .venv/bin/python -m bench.query [--runs 1000] [--metric-steps 10000] [--meta-runs 10000] [--repeat 20] [--data-dir DIR]

Loads, into the embedded ClickHouse engine (chdb) and through the writers the
stream processors use (``insert_metric_points``, ``upsert_runs``,
``upsert_run_summaries``):

- ``--runs`` runs x 10 metrics x ``--metric-steps`` steps of history (100M points
  by default) with realistic curves (decaying losses, saturating accuracies, a
  cosine learning-rate schedule, noisy gradient norms), noise, a few NaN and
  infinite values, and one-step spikes planted in ``loss`` of every 10th run;
  sent as 1,000-row metric events, like the SDK's batches;
- ``--meta-runs`` runs of metadata (config of 20 keys, summary, tags, groups,
  states) for the runs table; the first ``--runs`` of them are the runs above.

Then merges the parts (``OPTIMIZE ... FINAL``, the steady state of a table
that is not being written to) and prints p50/p95 of ``--repeat`` timings for:

- runs table: filter on a config key + sort on a summary key, page of 100;
- compare chart: all ``--runs`` runs x ``loss``, at most 500 points per run;
- group bands: the same runs in 10 groups, mean/std/min/max per group;
- one run's full history (every metric and step, all pages);

and once: bulk export throughput (every point of a quarter of the runs, as an
Arrow IPC stream and as Parquet; ``export_points_per_s`` is Arrow's), bytes per stored point (history + step times; the buckets separately),
and whether every planted spike shows as the max of its bucket in the
compare chart. The last line is JSON with the headline figures. Nothing is
asserted: targets are printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from clickhouse_connect.driver.client import Client

from runstream.events import METRICS, Event
from runstream.storage.client import connect
from runstream.storage.export import export_history
from runstream.storage.history import history_page
from runstream.storage.migrations import migrate
from runstream.storage.runs import search_runs
from runstream.storage.series import group_bands, series
from runstream.storage.writer import insert_metric_points, upsert_run_summaries, upsert_runs

TEAM, PROJECT = "bench", "compare"
METRIC_NAMES = (
    "loss",
    "val_loss",
    "acc",
    "val_acc",
    "lr",
    "grad_norm",
    "throughput",
    "perplexity",
    "f1",
    "weight_norm",
)
OPTIMIZERS = ("adam", "adamw", "sgd", "lion", "adafactor")
GROUPS = 10
EVENT_ROWS = 1000
SPIKE = 1000.0


def run_id(i: int) -> str:
    return f"run-{i:05d}"


def curves(rng: np.random.Generator, steps: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Ten realistic metric curves and the wall time (Unix s) of each step, for one run."""
    s = np.arange(steps, dtype=np.float64)
    tau = rng.uniform(steps / 20, steps / 3)
    floor = rng.uniform(0.05, 0.6)
    loss = rng.uniform(1.5, 4.0) * np.exp(-s / tau) + floor + rng.normal(0, 0.03, steps)
    acc = 1 - np.exp(-s / tau) * rng.uniform(0.6, 0.9) - floor / 4 + rng.normal(0, 0.01, steps)
    lr = rng.uniform(1e-4, 3e-3) * 0.5 * (1 + np.cos(np.pi * s / steps))
    values = {
        "loss": loss,
        "val_loss": loss * rng.uniform(1.0, 1.2) + rng.normal(0, 0.05, steps),
        "acc": acc,
        "val_acc": acc - rng.uniform(0, 0.05) + rng.normal(0, 0.02, steps),
        "lr": lr,
        "grad_norm": np.abs(rng.standard_cauchy(steps)) * 0.1 + np.exp(-s / tau),
        "throughput": rng.uniform(500, 5000) + rng.normal(0, 50, steps),
        "perplexity": np.exp(np.minimum(loss, 30)),
        "f1": acc * rng.uniform(0.9, 1.0) + rng.normal(0, 0.01, steps),
        "weight_norm": rng.uniform(10, 50) + np.sqrt(s) * rng.uniform(0.01, 0.1) + rng.normal(0, 0.01, steps),
    }
    dt = rng.uniform(0.05, 0.5)
    times = 1.7e9 + rng.uniform(0, 30 * 86400) + np.cumsum(rng.normal(dt, dt / 20, steps))
    return values, times


def metric_events(i: int, steps: int, spikes: dict[str, tuple[int, float]]) -> Iterator[Event]:
    """One run's history as the SDK sends it: 1,000-row columnar events, NaN/Inf as strings."""
    rng = np.random.default_rng(i)
    values, times = curves(rng, steps)
    run = run_id(i)
    if i % 10 == 0:  # a one-step spike that any downsampling must keep
        step = int(rng.integers(steps // 100, steps - steps // 100))
        values["loss"][step] += SPIKE
        spikes[run] = (step, float(values["loss"][step]))
    columns: dict[str, list[Any]] = {name: v.tolist() for name, v in values.items()}
    if i % 20 == 0:  # a few non-finite values
        for step in rng.integers(0, steps, 3).tolist():
            columns["grad_norm"][step] = "NaN"
        columns["perplexity"][int(rng.integers(0, steps))] = "Infinity"
    all_steps = list(range(steps))
    all_times = times.tolist()
    for k, start in enumerate(range(0, steps, EVENT_ROWS)):
        end = min(start + EVENT_ROWS, steps)
        data = {
            "step": all_steps[start:end],
            "time": all_times[start:end],
            "values": {name: col[start:end] for name, col in columns.items()},
        }
        yield Event(METRICS, TEAM, PROJECT, run, (1 << 32) + k, all_times[end - 1], data)


def run_records(n: int, metric_runs: int, final_loss: dict[str, float]) -> tuple[list[dict], list[dict]]:
    """Run metadata and summaries for ``n`` runs."""
    rng = np.random.default_rng(12345)
    now = time.time()
    runs, summaries = [], []
    for i in range(n):
        created = now - rng.uniform(0, 90 * 86400)
        config: dict[str, Any] = {
            "lr": float(10 ** rng.uniform(-5, -1)),
            "batch_size": int(rng.choice([16, 32, 64, 128, 256])),
            "optimizer": str(OPTIMIZERS[i % len(OPTIMIZERS)]),
            "dropout": float(rng.uniform(0, 0.5)),
            "layers": int(rng.integers(2, 48)),
            "hidden": int(rng.choice([256, 512, 1024, 2048])),
            "seed": i,
            "warmup_steps": int(rng.integers(0, 2000)),
            "weight_decay": float(rng.uniform(0, 0.1)),
            "epochs": int(rng.integers(1, 100)),
            "schedule": str(rng.choice(["cosine", "linear", "constant"])),
            "model": {
                "name": str(rng.choice(["resnet50", "vit-b16", "gpt2-small", "llama-1b"])),
                "depth": int(rng.integers(6, 48)),
            },
            "data": {"dataset": str(rng.choice(["imagenet", "c4", "cifar10"])), "augment": bool(rng.integers(0, 2))},
            "grad_clip": float(rng.choice([0.5, 1.0, 5.0])),
            "precision": str(rng.choice(["bf16", "fp16", "fp32"])),
            "num_workers": int(rng.choice([4, 8, 16])),
            "label_smoothing": float(rng.uniform(0, 0.2)),
            "ema": bool(rng.integers(0, 2)),
        }
        run = run_id(i)
        runs.append(
            {
                "team": TEAM,
                "project": PROJECT,
                "run_id": run,
                "name": f"{config['model']['name']}-{i}",
                "state": str(rng.choice(["finished", "finished", "finished", "failed", "crashed", "running"])),
                "created_at": created,
                "updated_at": created + 3600,
                "heartbeat_at": created + 3600,
                "group": f"sweep-{i % GROUPS}",
                "job_type": "train",
                "tags": [f"t{j}" for j in range(3) if rng.random() < 0.3],
                "config": config,
                "version": 1,
            }
        )
        loss = final_loss.get(run, float(rng.uniform(0.05, 3)))
        summary = {
            "loss": loss,
            "acc": float(rng.uniform(0.5, 0.99)),
            "best_val_loss": loss * 1.1,
            "epoch": config["epochs"],
        }
        summaries.append({"team": TEAM, "project": PROJECT, "run_id": run, "summary": summary, "version": 1})
    return runs, summaries


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """p50 and p95 in ms of ``repeat`` calls after one warm-up, and the last result."""
    result = fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, math.ceil(0.95 * len(samples)) - 1)], result


def spikes_found(chart: dict[str, Any], spikes: dict[str, tuple[int, float]]) -> int:
    """Planted spikes that show as the max of the chart point whose bucket holds their step."""
    found = 0
    by_run = {s["run_id"]: s for s in chart["series"]}
    for run, (step, value) in spikes.items():
        s = by_run.get(run)
        if s is None:
            continue
        i = int(np.searchsorted(s["step"], step))  # first point whose last step >= the spike's step
        found += int(i < len(s["max"]) and s["max"][i] == value)
    return found


def table_bytes(client: Client, table: str) -> int:
    return int(
        client.command(  # type: ignore[arg-type]  # a one-value command() returns that value
            "SELECT sum(data_compressed_bytes) FROM system.parts WHERE active AND database = currentDatabase() AND table = {t:String}",
            parameters={"t": table},
        )
        or 0
    )


# The dashboard queries measured here, shared with bench.api (the same queries through the HTTP API).
RUNS_FILTER = {"config.lr": {"$lt": 0.001}}
RUNS_ORDER = "summary.loss"
RUNS_PAGE = 100
CHART_METRIC = "loss"
CHART_POINTS = 500


def load(client: Client, runs: int, metric_steps: int, meta_runs: int, where: object) -> dict[str, tuple[int, float]]:
    """Load the generated project (printing progress) and merge its parts; the planted spikes by run."""
    points = runs * len(METRIC_NAMES) * metric_steps
    print(
        f"loading {runs:,} runs x {len(METRIC_NAMES)} metrics x {metric_steps:,} steps = {points:,} points "
        f"and {meta_runs:,} runs of metadata into {where}",
        flush=True,
    )

    spikes: dict[str, tuple[int, float]] = {}
    final_loss: dict[str, float] = {}
    start = time.perf_counter()
    chunk = 20
    for first in range(0, runs, chunk):
        events = [e for i in range(first, min(first + chunk, runs)) for e in metric_events(i, metric_steps, spikes)]
        insert_metric_points(client, events)
        for e in events:
            final_loss[e.run_id] = e.data["values"]["loss"][-1]
        done = min(first + chunk, runs)
        elapsed = time.perf_counter() - start
        print(
            f"\r  history: {done:,}/{runs:,} runs, {elapsed:.0f} s, "
            f"{done * points / runs / elapsed / 1e6:.2f}M points/s",
            end="",
            flush=True,
        )
    load_s = time.perf_counter() - start
    run_rows, summaries = run_records(meta_runs, runs, final_loss)
    for first in range(0, meta_runs, 2000):
        upsert_runs(client, run_rows[first : first + 2000])
        upsert_run_summaries(client, summaries[first : first + 2000])
    print(
        f"\n  loaded in {time.perf_counter() - start:.0f} s (history {load_s:.0f} s through insert_metric_points, "
        f"{points / load_s / 1e6:.2f}M points/s including all bucket levels); merging parts ...",
        flush=True,
    )
    for table in ("metric_points", "metric_steps", "metric_buckets", "runs", "run_summaries", "key_catalog"):
        client.command(f"OPTIMIZE TABLE {table} FINAL")
    return spikes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs with metric history")
    parser.add_argument("--metric-steps", type=int, default=10_000)
    parser.add_argument("--meta-runs", type=int, default=10_000, help="runs in the runs table")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, help="chdb directory (default: a temporary one, removed after)")
    args = parser.parse_args()
    meta_runs = max(args.meta_runs, args.runs)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="runstream-bench-query-"))
    client = connect(f"chdb://{data_dir}?database=bench")
    migrate(client)
    points = args.runs * len(METRIC_NAMES) * args.metric_steps
    spikes = load(client, args.runs, args.metric_steps, meta_runs, data_dir)

    history_bytes = table_bytes(client, "metric_points") + table_bytes(client, "metric_steps")
    bucket_bytes = table_bytes(client, "metric_buckets")
    stored = int(client.command("SELECT count() FROM metric_points"))  # type: ignore[arg-type]  # a one-value command() returns that value
    bytes_per_point = history_bytes / stored

    ids = [run_id(i) for i in range(args.runs)]
    groups = {f"sweep-{g}": ids[g::GROUPS] for g in range(GROUPS)}
    runs_p50, runs_p95, page = timed(
        lambda: search_runs(client, TEAM, PROJECT, filters=RUNS_FILTER, order=RUNS_ORDER, limit=RUNS_PAGE), args.repeat
    )
    chart_p50, chart_p95, chart = timed(
        lambda: series(client, TEAM, PROJECT, ids, [CHART_METRIC], points=CHART_POINTS), args.repeat
    )
    bands_p50, bands_p95, bands = timed(
        lambda: group_bands(client, TEAM, PROJECT, groups, CHART_METRIC, points=CHART_POINTS), args.repeat
    )

    def full_history() -> int:
        rows, after = 0, None
        while True:
            page = history_page(client, TEAM, PROJECT, ids[len(ids) // 2], after_step=after, page_size=10_000)
            rows += len(page["step"])
            after = page["next_after_step"]
            if after is None:
                return rows

    hist_p50, hist_p95, hist_rows = timed(full_history, max(3, args.repeat // 4))

    export_ids = ids[: max(1, args.runs // 4)]
    export_points = len(export_ids) * len(METRIC_NAMES) * args.metric_steps
    exports = {}
    for fmt in ("arrow", "parquet"):
        start = time.perf_counter()
        size = sum(len(chunk) for chunk in export_history(client, TEAM, PROJECT, export_ids, None, fmt))
        exports[fmt] = (export_points / (time.perf_counter() - start), size)
    export_rate = exports["arrow"][0]

    found = spikes_found(chart, spikes)
    chart_points = max(len(s["x"]) for s in chart["series"])
    print(f"""
storage query benchmark (chdb {client.server_version}, {points:,} points, {meta_runs:,} runs)
  runs table (filter config.lr < 0.001, sort summary.loss, page of 100): p50 {runs_p50:7.1f} ms  p95 {runs_p95:7.1f} ms  (target <= 50 ms; {len(page["runs"])} rows)
  compare chart ({len(chart["series"]):,} runs x loss, <= {chart_points} points each):     p50 {chart_p50:7.1f} ms  p95 {chart_p95:7.1f} ms  (target <= 150 ms)
  group bands ({len(bands["groups"])} groups of {args.runs // GROUPS} runs):                        p50 {bands_p50:7.1f} ms  p95 {bands_p95:7.1f} ms
  one run's full history ({hist_rows:,} steps x {len(METRIC_NAMES)} metrics):              p50 {hist_p50:7.1f} ms  p95 {hist_p95:7.1f} ms
  bulk export, {export_points:,} points:  Arrow IPC {exports["arrow"][0] / 1e6:5.1f}M points/s ({exports["arrow"][1] / 1e6:.0f} MB), Parquet {exports["parquet"][0] / 1e6:5.1f}M points/s ({exports["parquet"][1] / 1e6:.0f} MB)  (target >= 10M)
  bytes per stored point (history + step times):  {bytes_per_point:5.2f}  (target <= 8; downsampled buckets add {bucket_bytes / stored:.2f})
  planted spikes found in the compare chart's max:   {found}/{len(spikes)}""")
    print(
        json.dumps(
            {
                "runs_table_p50_ms": round(runs_p50, 2),
                "runs_table_p95_ms": round(runs_p95, 2),
                "compare_1000_p50_ms": round(chart_p50, 2),
                "compare_1000_p95_ms": round(chart_p95, 2),
                "group_bands_p50_ms": round(bands_p50, 2),
                "full_history_p50_ms": round(hist_p50, 2),
                "export_points_per_s": round(export_rate),
                "export_parquet_points_per_s": round(exports["parquet"][0]),
                "bytes_per_point": round(bytes_per_point, 3),
                "bucket_bytes_per_point": round(bucket_bytes / stored, 3),
                "spikes_found": int(found),
                "spikes_planted": len(spikes),
                "points": points,
                "runs": args.runs,
            }
        )
    )
    if not args.data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
