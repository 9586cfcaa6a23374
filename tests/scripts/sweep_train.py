"""A tiny training program for the sweep tests (tests/integration/test_sweeps_e2e.py).

It logs ``loss`` for ``steps`` steps (default 3), ``pause`` s apart (default 0), and prints
``RUN {json}`` (the run's id, config and process id) once started. The loss is ``loss0`` when the sweep sets
it, else the sum of ``(v - 0.3)**2`` over the other numeric parameters (``a`` counts as itself),
so a test can check each run's summary against its config. ``grandchild`` (a file name) starts a
worker process that sleeps, as a launcher's would, and writes its pid there. With ``loss0`` at 0.5 or more (a
"bad" run, for hyperband), it trains ``slow_factor`` times as many steps (default 20): hyperband's
stop reaches it while it still runs, whatever the machine's load.

usage:
    python sweep_train.py [--name=value ...]              as a sweep's command runs it (the agent's child)
    python sweep_train.py --agent SWEEP --count N         an agent running train() in this process (function=)
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import runstream

#: The parameters that shape the run itself rather than its loss.
CONTROLS = ("steps", "pause", "slow_factor", "loss0")


def expected_loss(config: dict) -> float:
    if "loss0" in config:
        return float(config["loss0"])
    numbers = [
        v for k, v in config.items() if k not in CONTROLS and isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    return float(sum((v - 0.3) ** 2 for v in numbers))


def train() -> None:
    run = runstream.init(settings={"system_metrics": False, "git": False, "console": False})
    config = dict(run.config)
    if config.get("grandchild"):  # as a launcher's worker: a process of the run's own, its pid in that file
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        Path(config["grandchild"]).write_text(str(worker.pid))
    print("RUN " + json.dumps({"run_id": run.id, "config": config, "pid": os.getpid()}), flush=True)
    loss = expected_loss(config)
    steps = int(config.get("steps", 3))
    if loss >= 0.5 and "loss0" in config:
        steps *= int(config.get("slow_factor", 20))
    for _ in range(steps):
        run.log({"loss": loss})
        time.sleep(float(config.get("pause", 0)))
    run.finish()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--agent":
        count = int(sys.argv[sys.argv.index("--count") + 1]) if "--count" in sys.argv else None
        runstream.agent(sys.argv[2], function=train, count=count)
    else:
        train()
