"""A training script for the delivery tests: logs STEPS steps of ``{"loss", "step2"}`` and ends as told.

usage: python delivery.py PROJECT RUN_ID STEPS [options as JSON]

options: ``finish_timeout`` (s, default 10); ``bad_at``: a step after which an event the server
refuses for good (a metrics event with a negative step) is logged beside the good ones;
``pad``: bytes of padding per row (a string logged into the summary every step, to fill a
disk); ``end``: "finish" (default: prints ``RESULT {FinishResult as JSON}``), "none" (falls off
the end: the exit hook finishes), "exit3" (``sys.exit(3)``); ``mode``: init's mode.
"""

import dataclasses
import json
import sys
import time

import runstream
from runstream import events


def main(project: str, run_id: str, steps: int, options: dict) -> None:
    settings = {"system_metrics": False, "console": False, "git": False, **options.get("settings", {})}
    settings["finish_timeout"] = options.get("finish_timeout", 10)
    run = runstream.init(project=project, id=run_id, mode=options.get("mode"), settings=settings)
    print("START " + json.dumps({"dir": run.dir}), flush=True)
    pad = "p" * options.get("pad", 0)
    slowest = 0.0
    for step in range(steps):
        started = time.perf_counter()
        run.log({"loss": 1.0 / (step + 1), "step2": step * 2})
        if pad:
            run.summary["note"] = f"{step}{pad}"
        slowest = max(slowest, time.perf_counter() - started)
        if step == options.get("bad_at"):
            # What a newer SDK (or a bug) might send that this server refuses for good.
            run._sender.put(events.METRICS, {"step": [-1], "time": [time.time()], "values": {"loss": [0.5]}})
        if options.get("pause"):
            time.sleep(options["pause"])
    print("LOGGED " + json.dumps({"slowest_log_s": slowest}), flush=True)
    end = options.get("end", "finish")
    if end == "exit3":
        sys.exit(3)
    if end == "finish":
        result = run.finish()
        print("RESULT " + json.dumps(dataclasses.asdict(result)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
