"""``runstream.Settings``: what ``init(settings=...)`` accepts (the counterpart of ``wandb.Settings``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from typing import Any

from runstream.settings import Settings as EnvSettings

log = logging.getLogger("runstream")


@dataclass(frozen=True)
class RunSettings:
    #: Where events go: http(s)://server or kafka://host:port[,host:port]. Default: RUNSTREAM_URL.
    url: str = ""
    api_key: str = ""
    #: Where file and media blobs go (http(s)://server); default: ``url`` when it is http(s). Default: RUNSTREAM_FILES_URL.
    files_url: str = ""
    #: Collectors: system metrics (every ``system_interval`` s), console capture, git commit and diff.
    system_metrics: bool = True
    system_interval: float = 10.0
    console: bool = True
    git: bool = True
    #: Seconds ``finish()`` waits for acknowledgements before leaving the rest to ``runstream sync``.
    finish_timeout: float = 5.0
    #: Seconds between the sender's drains (batching), and between heartbeats.
    flush_interval: float = 0.25
    heartbeat_interval: float = 15.0

    @classmethod
    def resolve(cls, given: RunSettings | dict[str, Any] | Any | None) -> RunSettings:
        """Defaults from the environment, overridden by what ``init`` was given.

        Unknown keys (wandb has many settings) are ignored with a debug message, so
        scripts written for wandb keep working.
        """
        env = EnvSettings.from_env()
        base = cls(url=env.url, api_key=env.api_key, files_url=env.files_url)
        if given is None:
            return replace(base, api_key=env.key_for(base.url))
        if isinstance(given, RunSettings):
            url = given.url or base.url
            return replace(
                given, url=url, api_key=given.api_key or env.key_for(url), files_url=given.files_url or base.files_url
            )
        if isinstance(given, dict):
            values = dict(given)
        else:
            values = {k: v for k, v in vars(given).items() if not k.startswith("_")}
        known = {f.name for f in fields(cls)}
        ignored = sorted(k for k in values if k not in known)
        if ignored:
            log.debug("runstream: ignoring settings it does not use: %s", ", ".join(ignored))
        resolved = replace(base, **{k: v for k, v in values.items() if k in known and v is not None})
        if not values.get("api_key"):  # a saved key goes only to the server it was saved for
            resolved = replace(resolved, api_key=env.key_for(resolved.url))
        return resolved


def Settings(**kwargs: Any) -> dict[str, Any]:  # noqa: N802 - named like wandb.Settings, which scripts call
    """``runstream.Settings(...)``/``wandb.Settings(...)``: keyword settings for ``init(settings=...)``."""
    return kwargs
