"""What a run collects about its environment without being asked: system metrics, git, host, console.

Everything here runs inside the user's training process, mostly on background
threads, so every collector follows one rule: it never raises into the caller
and never blocks the training loop; an internal error is logged once
(``logging.getLogger("runstream")``) and disables just that collector.
"""
