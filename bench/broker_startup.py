"""How long the development Kafka broker takes to start and stop.

    .venv/bin/python -m bench.broker_startup [--repeat 3]

Prints the time to fetch the jars (0 once cached), each start until the broker
has accepted a produce and answered a fetch, each clean stop, and a restart on
the same data; last, one JSON line with the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from infra.kafka_broker import KAFKA_VERSION, KafkaBroker, fetch_kafka


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    t = time.monotonic()
    fetch_kafka()
    fetch_s = time.monotonic() - t
    print(f"Kafka {KAFKA_VERSION}: jars ready in {fetch_s:.1f} s")

    starts, stops, restarts = [], [], []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as data_dir:
            broker = KafkaBroker(data_dir)
            t = time.monotonic()
            broker.start()
            starts.append(time.monotonic() - t)
            t = time.monotonic()
            broker.stop()
            stops.append(time.monotonic() - t)
            t = time.monotonic()
            broker.start()
            restarts.append(time.monotonic() - t)
            broker.stop()
        print(f"  run {i + 1}: format+start {starts[-1]:.2f} s, stop {stops[-1]:.2f} s, restart {restarts[-1]:.2f} s")
    print(
        json.dumps(
            {
                "kafka_version": KAFKA_VERSION,
                "fetch_s": round(fetch_s, 2),
                "start_s": round(statistics.median(starts), 2),
                "stop_s": round(statistics.median(stops), 2),
                "restart_s": round(statistics.median(restarts), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
