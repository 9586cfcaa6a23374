"""A worker process for tests: the real app, with a short Kafka session timeout so a killed
worker's partitions move to the survivors within seconds (production keeps Faust's default)."""

import sys

from runstream.settings import Settings
from runstream.streams.app import create_app

if __name__ == "__main__":
    app = create_app(Settings.from_env(), sweep_every_s=1.0, broker_session_timeout=6.0, broker_heartbeat_interval=1.0)
    sys.argv = ["worker", "worker", "--loglevel", "warn", "--without-web"]
    app.main()
