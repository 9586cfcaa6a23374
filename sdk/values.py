"""Turning user values into what events carry: JSON-safe config, int or float metrics, flat keys."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from runstream.events import encode_value

_INT64 = 2**63


def to_scalar(value: Any) -> float | int | None:
    """A loggable number as an int or a float, or None when the value is not a scalar.

    Integers (Python, numpy and torch integer kinds) stay ints, so a metric logged
    as whole numbers reads back as ints (W&B's ``epoch == 3``); bools become the
    ints 0 and 1 (metrics are numbers on the server); ints beyond 64 bits, which
    JSON events cannot carry, become floats. numpy and torch scalars are
    recognised without importing either library.
    """
    t = type(value)
    if t is float:
        return value
    if t is int:
        return value if -_INT64 <= value < _INT64 else float(value)
    if t is bool:
        return int(value)
    module = t.__module__
    # numpy and torch scalars, and arrays of one element (``loss.view(1)``): wandb logs these as numbers.
    if module == "numpy" or module.startswith("numpy."):
        if getattr(value, "size", None) == 1 and getattr(value.dtype, "kind", "") in "biuf":
            return to_scalar(value.item())  # a Python bool, int or float
        return None
    if module.startswith("torch"):
        value = local_tensor(value)
        if _torch_number(value):
            return to_scalar(value.item())
    if isinstance(value, int):  # subclasses: IntEnum, integers from other libraries
        return to_scalar(int(value))
    if isinstance(value, float):
        return float(value)
    return None


def local_tensor(value: Any) -> Any:
    """This rank's part of a distributed torch tensor (FSDP2's ``DTensor``: ``to_local()``), else the value.

    A sharded or partial DTensor's ``item()``/``tolist()`` may gather it from every rank (a collective that only
    rank 0, which logs, would enter: a hang); its local shard is what this rank holds. A replicated value (a loss averaged across
    ranks) is the whole value; a sharded or partial one is this rank's part."""
    to_local = getattr(value, "to_local", None)
    return to_local() if callable(to_local) and type(value).__module__.startswith("torch") else value


def _torch_number(value: Any) -> bool:
    """A dense, real-valued torch tensor of one element (0-d or not): ``.item()`` gives its number."""
    try:
        return value.numel() == 1 and not value.is_complex() and not value.is_sparse
    except (AttributeError, TypeError):  # torch.Size and other torch objects
        return False


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become ``a/b`` keys, as wandb shows them."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise TypeError(f"log() keys must be strings, got {key!r} ({type(key).__name__})")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def json_safe(value: Any) -> Any:
    """Config and summary values as JSON can carry them (numpy scalars, tuples, sets, paths, ...)."""
    if value is None or type(value) in (str, bool, int):
        return value
    if type(value) is float:
        return value if math.isfinite(value) else encode_value(value)  # the contract's "NaN", "Infinity"
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    module = type(value).__module__
    if module.startswith(("numpy", "torch")):
        number = to_scalar(value)
        if number is not None:
            return json_safe(number)  # scalars and one-element arrays are numbers, as in wandb
        value = local_tensor(value)
    tolist = getattr(value, "tolist", None)
    if callable(tolist):  # numpy and torch arrays
        return json_safe(tolist())
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return json_safe(float(value))
    return str(value)
