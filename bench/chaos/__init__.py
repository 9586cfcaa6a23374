"""The chaos suite: what happens to logged metrics when a part of the system fails.

    .venv/bin/python -m bench.chaos [--only NAME ...] [--quick] [--runs N] [--keep]

Each scenario (``bench/chaos/scenarios.py``) starts the real services, logs runs through the
SDK in training processes of their own (``bench/chaos/logger.py``), injects one fault, heals it,
and counts what arrived:

| scenario | fault |
|---|---|
| ``clickhouse-cluster`` | ClickHouse SIGKILLed for 30 s under a Faust worker (SDK → Kafka → worker) |
| ``clickhouse-embedded`` | the same under ``runstream server``'s in-process pipeline writing to a ClickHouse server |
| ``network`` | SDK ↔ server through ``infra.tcp_proxy``: a 20 s black hole, then every connection reset |
| ``sdk-disk-full`` | the run's spool on a 512 KiB tmpfs while the server is unreachable |
| ``server-disk-full`` | the embedded server's data directory on a tmpfs that a filler file fills for 30 s |
| ``torn-segment`` | a spool record torn mid-line (power loss), the run resumed, then ``runstream sync`` |
| ``clock-skew`` | training machines' clocks a day ahead and behind: resume, liveness, crash detection |
| ``sigkill-runs`` | 1,000 runs (cluster mode) SIGKILLed at once: all crashed within the crash timeout + 10 s, no flapping |

Per scenario it prints points **sent** (logged), **acked** (acknowledged when ``finish()``
returned), **stored** (distinct (run, metric, step) in ``metric_points FINAL``: what queries
show), **dropped** (what the SDK reported it could not keep, or records a power loss tore),
**lost** (sent - dropped - stored, after the heal and any ``runstream sync``), **dup**
(points that queries count twice: folded again into a run's summary or its chart buckets;
raw rows that ``FINAL`` collapses are harmless and shown apart), the slowest ``log()`` call,
the slowest ``finish()`` against its bound, and the time to recover (from the heal until
everything logged before it is stored; for the crash scenarios, from the SIGKILL until the
runs are marked crashed).

The last line is JSON: ``{"scenarios", "lost", "duplicated", "log_blocked_max_ms",
"finish_max_s", "recovered"}``; targets: lost 0, duplicated 0, log() ≤ 50 ms, finish() within
its bound, recovered = scenarios. Figures are printed, never asserted;
``tests/integration/test_chaos.py`` runs the scenarios that fit in CI with short windows and
asserts the functional targets.

Needs root for the disk-full scenarios (``mount -t tmpfs``) and Java for ``clickhouse-cluster``.
"""
