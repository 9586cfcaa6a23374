"""``run.watch()``: histograms of a PyTorch model's parameters and gradients, from hooks on the model.

As wandb does (``wandb/integration/torch/wandb_torch.py``):

- ``log="parameters"``/``"all"``: one forward hook on the watched module counts its forward passes;
  every ``log_freq``-th pass it takes a histogram of each of the module's parameters.
- ``log="gradients"``/``"all"``: a tensor hook on each parameter that requires a gradient counts the
  backward passes that reach it; every ``log_freq``-th one it takes a histogram of that gradient.
  Frozen parameters (``requires_grad=False``) get no hook, so no ``gradients/`` key.
- Histograms are computed in torch, on the tensor's device (``torch.histc``, 64 bins), at the moment
  the hook runs: the optimizer changes parameters in place and gradients are zeroed later, so only
  the counts (64 numbers) are kept. NaN and Inf values are left out of the bins and counted
  (``meta.nonfinite``). They are logged with the run's next ``log()`` call, at its step, under
  ``parameters/<name>`` and ``gradients/<name>`` (wandb commits them with the next row too).
- ``unwatch()`` removes every hook it put on the model (histograms taken before it are still logged).
- A copy of a watched model (``copy.deepcopy``, ``AveragedModel``, pickle, ``torch.save(model)``) carries inert
  hooks that do nothing: the copy is not watched.
- FSDP2 parameters and gradients (``DTensor``) are histogrammed from this rank's shard (``to_local()``).

The hooks never raise into the training loop: a tensor torch cannot histogram (say a complex
parameter) is skipped with one warning per key.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from runstream.media import Histogram
from runstream.values import local_tensor

log = logging.getLogger("runstream")

#: wandb's bin count for watched tensors.
NUM_BINS = 64
LOG_CHOICES = ("gradients", "parameters", "all", None)


@dataclass
class _EveryN:
    """Counts passes; ``tick()`` is true on every ``n``-th one (the n-th, 2n-th, ...: wandb's log_track)."""

    n: int
    count: int = 0

    def tick(self) -> bool:
        self.count += 1
        if self.count < self.n:
            return False
        self.count = 0
        return True


class _Hook:
    """A hook the watcher put on a module or a parameter: it calls ``fn`` (a bound watcher method).

    A copy of the model (``copy.deepcopy``: ``AveragedModel``, Lightning's ``StochasticWeightAveraging``, EMA
    helpers) or a pickled one (``pickle``, ``torch.save(model)``, spawned workers) gets an inert hook, which
    does nothing: the watcher (its lock, the run) does not travel, and only the watched model is watched."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., None] | None) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> None:
        if self.fn is not None:
            self.fn(*args)
        # None: the module's output (or the gradient) goes on unchanged

    def __deepcopy__(self, memo: dict[int, Any]) -> _Hook:
        return _Hook(None)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Hook, (None,))


@dataclass
class _Watched:
    """One watched module: the key prefix of its histograms and the handles of its hooks."""

    module: Any
    prefix: str
    log: str | None
    log_freq: int
    handles: list[Any] = field(default_factory=list)

    def remove_hooks(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


#: Values binned at a time: the temporaries (a float copy, bin numbers) stay a few times 4M values, whatever the size.
CHUNK = 1 << 22


def tensor_histogram(tensor: Any, bins: int = NUM_BINS) -> tuple[list[int], list[float], int]:
    """``(counts, bin_edges, nonfinite)`` of a tensor's values, computed with torch where the tensor lives.

    Equal-width bins from the smallest to the largest finite value, as ``numpy.histogram`` (and
    ``runstream.Histogram``) make them: one value alone is widened to a unit range around it, and no
    finite value at all gives empty bins over [0, 1]. NaN and Inf are counted, not binned. The implicit
    zeros of a sparse tensor are counted in the bin holding 0. A distributed tensor (FSDP2's ``DTensor``)
    is this rank's shard (``to_local()``): each rank would see another part, and only rank 0 logs.

    The bins are counted with ``bincount`` over the values' bin numbers: the counts ``torch.histc`` gives
    (the largest value in the last bin) at a sixth of its CPU time (230 µs instead of 1.4 ms for 200k
    float32 values, one thread), and allowed under ``torch.use_deterministic_algorithms`` on CUDA,
    where ``histc`` is not. The values are binned ``CHUNK`` at a time, so a large (say bfloat16) tensor
    needs no float copy of itself, and NaN/Inf are not filtered out (a masked copy, and a device wait, per
    chunk): this code reads the device once for the range (twice with NaN/Inf) and once for the counts (on
    CUDA, ``bincount`` itself also reads each chunk's largest bin number, to size its result)."""
    values = local_tensor(tensor.detach())
    if values.is_complex():
        raise TypeError(f"a complex tensor ({values.dtype}) has no histogram of real values")
    implicit_zeros = 0
    if values.is_sparse:
        values = values.coalesce()
        implicit_zeros = values.numel() - values._values().numel()
        values = values._values()
    flat = values.reshape(-1)
    chunks = flat.split(CHUNK)
    low, high = _range(flat)  # aminmax in the tensor's own dtype; NaN or Inf anywhere makes it non-finite
    has_nonfinite = not (math.isfinite(low) and math.isfinite(high))
    if has_nonfinite:
        low, high = _finite_range(chunks)
    any_finite = flat.numel() > 0 and low <= high
    if implicit_zeros:
        low, high = (min(low, 0.0), max(high, 0.0)) if any_finite else (0.0, 0.0)
    elif not any_finite:
        low, high = 0.0, 1.0
    if low == high:
        low, high = low - 0.5, high + 0.5
    scale = bins / (high - low)
    # float32 bins bfloat16/half/small integers exactly enough; float64 for float64, int64 and ranges at
    # float32's limits (bin numbers without overflow).
    wide = high - low > 1e38 or scale > 1e30 or flat.dtype in (torch.float64, torch.int64)
    work_dtype = torch.float64 if wide else torch.float32
    counts = torch.zeros(bins + 2, dtype=torch.int64, device=flat.device)
    outside = float(bins + 1)
    for chunk in chunks:
        # Bin numbers 0..bins (only the largest value reaches ``bins``, give or take rounding: folded into the
        # last bin); NaN/Inf get bins + 1, counted apart, so no per-chunk filtering (and no device sync).
        numbers = chunk.to(work_dtype, copy=True).sub_(low).mul_(scale)
        if has_nonfinite:
            numbers.nan_to_num_(nan=outside, posinf=outside, neginf=outside)
        counts += torch.bincount(numbers.clamp_(0, outside).int(), minlength=bins + 2)
    binned = counts.tolist()
    top, nonfinite = binned[bins], binned[bins + 1]
    del binned[bins:]
    binned[bins - 1] += top
    if implicit_zeros:
        binned[min(int((0.0 - low) * scale), bins - 1)] += implicit_zeros
    width = (high - low) / bins
    edges = [low + i * width for i in range(bins)] + [high]
    return binned, edges, nonfinite


def _range(flat: Any) -> tuple[float, float]:
    """(min, max) of a 1-D tensor as floats; (0, 0) for an empty one."""
    if not flat.numel():
        return 0.0, 0.0
    low, high = torch.stack(torch.aminmax(flat)).tolist()
    return float(low), float(high)


def _finite_range(chunks: Iterable[Any]) -> tuple[float, float]:
    """(min, max) of the finite values of ``chunks`` (NaN and Inf left out); (inf, -inf) when none is finite."""
    lows, highs = [], []
    for chunk in chunks:
        inf = math.inf
        lows.append(chunk.nan_to_num(nan=inf, posinf=inf, neginf=inf).amin().double())
        highs.append(chunk.nan_to_num(nan=-inf, posinf=-inf, neginf=-inf).amax().double())
    low, high = torch.stack([torch.stack(lows).amin(), torch.stack(highs).amax()]).tolist()  # one device wait
    return low, high


def _prefix(number: int) -> str:
    """wandb's key prefix of the n-th watched model: none for the first, "graph_<n>" glued on for later ones."""
    return "" if number == 0 else f"graph_{number}"


def _gradient_keys(watched: _Watched) -> list[tuple[str, Any]]:
    """(key, parameter) of the parameters that get a gradient (frozen ones get none, so no hook)."""
    return [
        (f"gradients/{watched.prefix}{name}", p) for name, p in watched.module.named_parameters() if p.requires_grad
    ]


def _keys(watched: _Watched) -> list[str]:
    """The histogram keys a watched module logs."""
    keys = []
    if watched.log in ("parameters", "all"):
        keys += [f"parameters/{watched.prefix}{name}" for name, _ in watched.module.named_parameters()]
    if watched.log in ("gradients", "all"):
        keys += [key for key, _ in _gradient_keys(watched)]
    return keys


class Watcher:
    """The hooks one run put on the models it watches, and the histograms they took since the last log()."""

    def __init__(self, is_live: Callable[[], bool] = lambda: True) -> None:
        self._is_live = is_live  # false once the run finished: the hooks then do nothing
        self._watched: dict[int, _Watched] = {}  # by id(module)
        self._keys: dict[str, int] = {}  # histogram key -> id of the module it belongs to
        self._pending: dict[str, Histogram] = {}
        self._lock = threading.Lock()  # backward hooks may run on autograd's threads (CUDA)
        self._next_idx = 0
        self._warned: set[str] = set()

    @property
    def modules(self) -> list[Any]:
        return [w.module for w in self._watched.values()]

    def watch(self, models: Any, log: str | None, log_freq: int, idx: int | None = None) -> None:
        """Hook ``models`` (a module or a list of them); watching a watched module again replaces its hooks."""
        if log not in LOG_CHOICES:
            raise ValueError(f"watch(log=...) must be 'gradients', 'parameters', 'all' or None, got {log!r}")
        if isinstance(log_freq, bool) or not isinstance(log_freq, int) or log_freq < 1:
            raise ValueError(
                f"watch(log_freq=...) is a number of batches (forward/backward passes), at least 1; got {log_freq!r}"
            )
        if idx is not None and (isinstance(idx, bool) or not isinstance(idx, int) or idx < 0):
            raise ValueError(f"watch(idx=...) must be a non-negative integer or None, got {idx!r}")
        modules = list(models) if isinstance(models, (list, tuple)) else [models]
        for module in modules:
            if not isinstance(module, torch.nn.Module):
                raise TypeError(f"watch() takes a torch.nn.Module (or a list of them), got {type(module).__name__}")
        if len({id(module) for module in modules}) != len(modules):
            twice = next(m for i, m in enumerate(modules) if any(m is other for other in modules[:i]))
            raise ValueError(
                f"watch(): the list holds the same {type(twice).__name__} more than once; pass each model once"
            )
        # Every model's keys are checked before any hook is placed: a refused call changes nothing.
        plans = []
        replaced = {id(module) for module in modules}
        taken = {key for key, owner in self._keys.items() if owner not in replaced}
        for offset, module in enumerate(modules):
            previous = self._watched.get(id(module))
            if idx is not None:
                prefix = _prefix(idx + offset)
            elif previous is not None:
                prefix = previous.prefix  # watched again: its keys stay what they were
            else:
                prefix = _prefix(self._next_idx + offset)
            watched = _Watched(module, prefix, log, log_freq)
            clash = next((key for key in _keys(watched) if key in taken), None)
            if clash is not None:
                raise ValueError(
                    f"watch(): another watched model already logs {clash!r}; give each model its own "
                    "idx= (its keys then start with graph_<idx>)"
                )
            taken.update(_keys(watched))
            plans.append((previous, watched))
        self._next_idx += len(modules)  # as wandb's counter: one per model watched
        for previous, watched in plans:
            if previous is not None:
                self._forget(previous)
            if log is not None:
                self._hook(watched)

    def _hook(self, watched: _Watched) -> None:
        module = watched.module
        if watched.log in ("parameters", "all"):
            forward_passes = _EveryN(watched.log_freq)
            hook = _Hook(partial(self._after_forward, watched, forward_passes))
            watched.handles.append(module.register_forward_hook(hook))
        if watched.log in ("gradients", "all"):
            for key, parameter in _gradient_keys(watched):
                backward_passes = _EveryN(watched.log_freq)
                hook = _Hook(partial(self._on_gradient, key, backward_passes))
                watched.handles.append(parameter.register_hook(hook))
        self._watched[id(module)] = watched
        self._keys.update(dict.fromkeys(_keys(watched), id(module)))

    def unwatch(self, models: Any = None) -> None:
        """Remove the hooks of ``models`` (a module or a list of them; None: of every watched model)."""
        if models is None:
            modules: Iterable[Any] = [w.module for w in self._watched.values()]
        else:
            modules = models if isinstance(models, (list, tuple)) else [models]
        for module in list(modules):
            watched = self._watched.get(id(module))
            if watched is None:
                log.warning("runstream: unwatch(): %s is not watched", type(module).__name__)
                continue
            self._forget(watched)

    def _forget(self, watched: _Watched) -> None:
        watched.remove_hooks()
        del self._watched[id(watched.module)]
        owner = id(watched.module)
        self._keys = {key: who for key, who in self._keys.items() if who != owner}

    def take(self) -> dict[str, Histogram]:
        """The histograms taken since the last call (the next log() stores them)."""
        if not self._pending:
            return {}
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    # -- the hooks: they run inside the model's forward and backward passes ------------------------------

    def _after_forward(self, watched: _Watched, passes: _EveryN, module: Any, inputs: Any, output: Any) -> None:
        if not passes.tick() or not self._is_live():
            return
        for name, parameter in module.named_parameters():
            self._take(f"parameters/{watched.prefix}{name}", parameter)

    def _on_gradient(self, key: str, passes: _EveryN, grad: Any) -> None:
        if passes.tick() and self._is_live():
            self._take(key, grad)

    def _take(self, key: str, tensor: Any) -> None:
        try:
            counts, edges, nonfinite = tensor_histogram(tensor)
            histogram = Histogram(np_histogram=(counts, edges))
        except Exception as exc:  # noqa: BLE001 - a hook must never break the training step
            self._warn_once(key, f"runstream: watch() skips {key}: {type(exc).__name__}: {exc}")
            return
        histogram.nonfinite = nonfinite
        if nonfinite:
            total = sum(counts) + nonfinite  # this rank's values (a DTensor's numel() is the whole tensor's)
            self._warn_once(
                f"{key} nonfinite",
                f"runstream: {key} holds {nonfinite:,} NaN/Inf values of {total:,}; they are counted in its "
                "histogram's meta.nonfinite, not binned (said once per key)",
            )
        with self._lock:
            self._pending[key] = histogram

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s", message)
