"""Bytes per metric point under candidate column codecs: how metric_points' codecs were chosen.

    .venv/bin/python -m bench.codecs [--runs 100] [--metric-steps 10000]

Generates the same realistic history as ``bench.query`` (10 metrics per run),
writes it into one table per codec variant in the embedded engine, merges the
parts and prints compressed bytes per point, per column and in total. The
variant named ``schema`` is what ``storage/migrations/0001_metrics.sql`` uses;
``time-per-point`` shows why wall time lives in ``metric_steps`` instead.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile

import numpy as np
import pyarrow as pa

from bench.query import METRIC_NAMES, curves
from runstream.storage.client import connect

IDENTITY = "team LowCardinality(String), project LowCardinality(String), metric LowCardinality(String), run_id LowCardinality(String)"
VARIANTS = {
    "schema": "step UInt64 CODEC(DoubleDelta, ZSTD(1)), value Float64 CODEC(FPC, ZSTD(1)), seq UInt64 CODEC(DoubleDelta, ZSTD(1))",
    "gorilla": "step UInt64 CODEC(DoubleDelta, ZSTD(1)), value Float64 CODEC(Gorilla, ZSTD(1)), seq UInt64 CODEC(DoubleDelta, ZSTD(1))",
    "zstd-only": "step UInt64 CODEC(ZSTD(1)), value Float64 CODEC(ZSTD(3)), seq UInt64 CODEC(ZSTD(1))",
    "lz4-default": "step UInt64, value Float64, seq UInt64",
    "time-per-point": "step UInt64 CODEC(DoubleDelta, ZSTD(1)), time DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)), "
    "value Float64 CODEC(FPC, ZSTD(1)), seq UInt64 CODEC(DoubleDelta, ZSTD(1))",
}


def history(runs: int, steps: int) -> pa.Table:
    parts = []
    for i in range(runs):
        values, times = curves(np.random.default_rng(i), steps)
        for name in METRIC_NAMES:
            parts.append(
                pa.table(
                    {
                        "team": pa.array(["bench"] * steps).dictionary_encode(),
                        "project": pa.array(["codecs"] * steps).dictionary_encode(),
                        "metric": pa.array([name] * steps).dictionary_encode(),
                        "run_id": pa.array([f"run-{i:05d}"] * steps).dictionary_encode(),
                        "step": pa.array(np.arange(steps, dtype=np.uint64)),
                        "time": pa.array(np.round(times * 1000).astype(np.int64)).cast(pa.timestamp("ms", tz="UTC")),
                        "value": pa.array(values[name]),
                        "seq": pa.array((1 << 32) + np.arange(steps, dtype=np.uint64) // 1000),
                    }
                )
            )
    return pa.concat_tables(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--metric-steps", type=int, default=10_000)
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="runstream-bench-codecs-")
    try:
        client = connect(f"chdb://{data_dir}?database=codecs")
        table = history(args.runs, args.metric_steps)
        points = table.num_rows
        print(
            f"{points:,} points ({args.runs} runs x {len(METRIC_NAMES)} metrics x {args.metric_steps:,} steps); bytes per point:"
        )
        for name, columns in VARIANTS.items():
            target = f"points_{name.replace('-', '_')}"
            client.command(
                f"CREATE TABLE {target} ({IDENTITY}, {columns}) ENGINE = ReplacingMergeTree(seq) "
                "ORDER BY (team, project, metric, run_id, step)"
            )
            client.insert_arrow(target, table.select([c.split()[0] for c in f"{IDENTITY}, {columns}".split(", ")]))
            client.command(f"OPTIMIZE TABLE {target} FINAL")
            sizes = client.query(
                "SELECT name, data_compressed_bytes FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
                parameters={"t": target},
            ).result_rows
            per_column = "  ".join(f"{col} {size / points:.3f}" for col, size in sizes)
            print(f"  {name:15s} {sum(size for _, size in sizes) / points:6.3f}   ({per_column})")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
