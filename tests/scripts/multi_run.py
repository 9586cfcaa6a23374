"""Three runs at once in one process, as wandb's ``init(reinit="create_new")`` runs them.

Each run logs its own steps, interleaved with the others'; the second is finished, then the
script ends as ENDING says without finishing the other two: "end" (falls off the end),
"sys.exit(3)", "exception" (uncaught), or "wait" (sleeps until a signal ends it). Once
everything is logged it prints ``STATE {json}``: the run ids, ``runstream.run``'s id and the
names of the SDK's sender threads.

usage: python multi_run.py PROJECT ENDING
"""

import json
import sys
import threading
import time

import runstream
from runstream import sender

STEPS = 6


def main(project: str, ending: str) -> None:
    runs = [
        runstream.init(
            project=project,
            name=f"multi-{index}",
            config={"index": index},
            reinit="create_new",
            settings={"system_metrics": False, "git": False},
        )
        for index in range(3)
    ]
    for step in range(STEPS):
        for index, run in enumerate(runs):
            run.log({"loss": index + 1 / (step + 1), "index": index})
        if step == STEPS // 2:
            time.sleep(0.6)  # the rows leave in more than one batch
    runs[1].finish()
    senders = [t.name for t in threading.enumerate() if t.name.startswith("runstream-sender")]
    current = runstream.run.id if runstream.run is not None else None
    hub = sender._hub  # the process's sender thread: Kafka runs share its producer
    producers = [p for p in (hub._producers.values() if hub else []) if p._producer is not None]
    state = {"ids": [r.id for r in runs], "current": current, "senders": senders, "kafka_producers": len(producers)}
    print("STATE " + json.dumps(state), flush=True)
    if ending == "sys.exit(3)":
        sys.exit(3)
    if ending == "exception":
        raise ValueError("boom with three runs")
    if ending == "wait":
        time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
