"""``python -m bench.chaos``: run the scenarios, print a table and one JSON line (see the package's docstring)."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.chaos.harness import Result
from bench.chaos.scenarios import QUICK, SCENARIOS


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(results: list[Result]) -> str:
    head = (
        "scenario",
        "sent",
        "acked",
        "stored",
        "dropped",
        "lost",
        "dup",
        "log max ms",
        "finish s",
        "recover s",
        "ok",
    )
    rows = [head]
    for r in results:
        finish = f"{r.finish_max_s:.1f}/{r.finish_bound_s:.0f}" if r.finish_bound_s else _fmt(r.finish_max_s)
        rows.append(
            (
                r.name, _fmt(r.sent), _fmt(r.acked), _fmt(r.stored), _fmt(r.dropped), _fmt(r.lost),
                _fmt(r.duplicated), _fmt(r.log_blocked_max_ms, 2), finish, _fmt(r.recover_s),
                "yes" if not r.check() else "NO",
            )
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def summary(results: list[Result]) -> dict[str, Any]:
    return {
        "scenarios": len(results),
        "lost": sum(r.lost for r in results),
        "duplicated": sum(r.duplicated for r in results),
        "log_blocked_max_ms": round(max((r.log_blocked_max_ms for r in results), default=0.0), 2),
        "finish_max_s": round(max((r.finish_max_s for r in results), default=0.0), 2),
        "recovered": sum(r.recovered for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="run these scenarios only")
    parser.add_argument("--quick", action="store_true", help="shorter fault windows, 200 killed runs")
    parser.add_argument("--runs", type=int, help="runs SIGKILLed in sigkill-runs (default 1000, --quick 200)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, data)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="runstream-chaos-"))
    print(f"working directory: {work}", flush=True)
    results: list[Result] = []
    try:
        for name in args.only or list(SCENARIOS):
            params = dict(QUICK[name]) if args.quick else {}
            if name == "sigkill-runs" and args.runs:
                params["runs"] = args.runs
            began = time.monotonic()
            print(f"\n== {name} {params or ''}", flush=True)
            try:
                result = SCENARIOS[name](work / name, **params)
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
                traceback.print_exc()
                result = Result(name, notes=[f"the scenario failed: {type(exc).__name__}: {exc}"])
            results.append(result)
            print(table([result]), flush=True)
            for note in result.notes:
                print(f"  note: {note}", flush=True)
            print(f"  details: {json.dumps(result.extra, default=str)}", flush=True)
            print(f"  ({time.monotonic() - began:.0f} s)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + table(results))
    print(json.dumps(summary(results)))


if __name__ == "__main__":
    main()
