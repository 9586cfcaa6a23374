"""``run.config``: the run's hyperparameters, with wandb's access and freezing rules."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from runstream import events
from runstream.values import json_safe

log = logging.getLogger("runstream")


class ConfigError(ValueError):
    pass


class Config:
    """Attribute and item access; a key keeps its first value unless changed with ``allow_val_change=True``.

    Every change is reported to ``on_change`` with the keys that changed, which the
    run turns into a ``run_update`` event.
    """

    def __init__(self, on_change: Callable[[dict[str, Any]], None] | None = None) -> None:
        object.__setattr__(self, "_items", {})
        object.__setattr__(self, "_on_change", on_change)
        object.__setattr__(self, "_locked", set())  # keys a sweep set (``lock``)
        object.__setattr__(self, "_warned", False)

    def lock(self, keys: Iterable[str]) -> None:
        """Keys a sweep set: W&B's sweep values win, so an update of them without ``allow_val_change=True``
        is ignored (with one warning per run), not refused."""
        self._locked.update(keys)

    def on_change(self, callback: Callable[[dict[str, Any]], None] | None) -> None:
        object.__setattr__(self, "_on_change", callback)

    def update(
        self, values: Mapping[str, Any] | argparse.Namespace | None = None, allow_val_change: bool = False
    ) -> None:
        if values is None:
            return
        if isinstance(values, argparse.Namespace):
            values = vars(values)
        if not isinstance(values, Mapping):
            raise TypeError(f"config.update() takes a dict or argparse.Namespace, got {type(values).__name__}")
        changed: dict[str, Any] = {}
        for key, value in values.items():
            if not isinstance(key, str) or not key:
                raise TypeError(f"config keys must be non-empty strings, got {key!r}")
            value = json_safe(value)
            if not events.is_tree({key: value}):
                raise ConfigError(
                    f"config key {key!r}: keys must be non-empty and nest at most {events.MAX_TREE_DEPTH} "
                    "levels (dotted keys count as levels)"
                )
            if key in self._locked and self._items.get(key) != value and not allow_val_change:
                if not self._warned:
                    object.__setattr__(self, "_warned", True)
                    log.warning(
                        "runstream: config key %r was set by the sweep, which wins: the change is ignored "
                        "(this is said once; pass allow_val_change=True to change a sweep's key)",
                        key,
                    )
                continue
            if key in self._items and self._items[key] != value and not allow_val_change:
                raise ConfigError(
                    f"config key {key!r} is already {self._items[key]!r}; to change it to {value!r}, "
                    f"use run.config.update({{{key!r}: ...}}, allow_val_change=True)"
                )
            if self._items.get(key, _MISSING) != value:
                changed[key] = value
        self._items.update(changed)
        if changed and self._on_change is not None:
            self._on_change(changed)

    def setdefaults(self, values: Mapping[str, Any]) -> None:
        self.update({k: v for k, v in values.items() if k not in self._items})

    def as_dict(self) -> dict[str, Any]:
        return dict(self._items)

    def keys(self):  # noqa: ANN201 - a dict view
        return self._items.keys()

    def items(self):  # noqa: ANN201
        return self._items.items()

    def get(self, key: str, default: Any = None) -> Any:
        return self._items.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __getattr__(self, key: str) -> Any:
        try:
            return self._items[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Config({self._items!r})"


_MISSING = object()
