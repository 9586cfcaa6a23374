"""Many runs at once in one process (``init(reinit="create_new")``), logged from several threads.

RUNS runs are started; THREADS threads each log STEPS steps to their share of them, all at
once; then the script ends without finishing any run (the exit hook finishes them all). Once
everything is logged it prints ``STATE {json}``: the run ids, in order, and the names of the
SDK's sender threads. Run ``index`` logs ``{"v": index * 1000 + step}`` at each step.

usage: python many_runs.py PROJECT RUNS THREADS STEPS
"""

import json
import sys
import threading

import runstream


def main(project: str, count: int, threads: int, steps: int) -> None:
    quiet = {"system_metrics": False, "console": False, "git": False}
    runs = [
        runstream.init(project=project, config={"index": i}, reinit="create_new", settings=quiet) for i in range(count)
    ]

    def log_to(share: list[tuple[int, runstream.Run]]) -> None:
        for step in range(steps):
            for index, run in share:
                run.log({"v": index * 1000 + step})

    workers = [threading.Thread(target=log_to, args=(list(enumerate(runs))[k::threads],)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    senders = [t.name for t in threading.enumerate() if t.name.startswith("runstream-sender")]
    print("STATE " + json.dumps({"ids": [r.id for r in runs], "senders": senders}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
