"""``run.watch()`` on real PyTorch models trained a few steps, logged into a real ``runstream server``
(embedded ClickHouse) and read back through ``runstream.Api``.

wandb's behaviour pinned down: histograms go under ``parameters/<name>`` and ``gradients/<name>``,
every ``log_freq`` forward (parameters) or backward (gradients) passes, stored with the next
``log()``; frozen parameters have no gradient histograms; ``unwatch`` removes every hook.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import runstream
from infra.net import free_port
from tests.helpers import Server, unique, wait_for

QUIET = {"console": False, "system_metrics": False, "git": False}
LAYERS = ("0.weight", "0.bias", "2.weight", "2.bias")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("server") / "data", free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(server: Server) -> runstream.Api:
    return runstream.Api(url=server.url, api_key="")


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))


def _start(server: Server, tmp_path: Path) -> runstream.Run:
    return runstream.init(project=unique("watch"), dir=tmp_path, settings={**QUIET, "url": server.url})


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 20, generator=generator), torch.randint(0, 4, (16,), generator=generator)
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    return loss


def _histograms(api: runstream.Api, run: runstream.Run, tmp_path: Path, count: int) -> dict[tuple[str, int], Any]:
    """{(key, step): (histogram JSON, meta)} of the run's histogram files, once ``count`` have arrived."""

    def files() -> list[Any]:
        return [f for f in api.run(run.path).files() if f.kind == "media" and f.mimetype == "histogram"]

    wait_for(lambda: len(files()) >= count, f"{count} histograms of {run.path}")
    found = {}
    for f in files():
        with f.download(tmp_path / "down", replace=True) as blob:
            found[f._attrs["meta"]["key"], f.step] = (json.load(blob), f._attrs["meta"])
    return found


def _hooks(model: nn.Module) -> tuple[int, int]:
    """(forward hooks on any submodule, tensor hooks on any parameter)."""
    forward = sum(len(m._forward_hooks) for m in model.modules())
    tensor = sum(len(p._backward_hooks or {}) for p in model.parameters())
    return forward, tensor


def _close_to_numpy(histogram: dict[str, Any], values: torch.Tensor) -> None:
    counts, edges = np.histogram(values.numpy().ravel(), bins=64)
    assert np.allclose(histogram["bins"], edges, rtol=1e-5, atol=1e-6)
    assert sum(histogram["values"]) == values.numel()
    # float32 histc and numpy's float64 may put a value sitting on an edge in the next bin
    assert np.abs(np.asarray(histogram["values"]) - counts).sum() <= 4


def test_histograms_arrive_every_log_freq_passes_with_the_next_log(server, api, tmp_path):
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    run = _start(server, tmp_path)
    run.watch(model, log="all", log_freq=2)
    assert _hooks(model) == (1, 4)
    seen: dict[int, dict[str, torch.Tensor]] = {}
    for step in range(6):
        loss = _train_step(model, optimizer, step)
        # What the hooks saw: parameters in the forward pass, gradients in the backward pass.
        seen[step] = {f"parameters/{n}": p.detach().clone() for n, p in model.named_parameters()}
        seen[step] |= {f"gradients/{n}": p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
        run.log({"loss": loss, "loss_1": loss.detach().view(1)})  # tensors are numbers
    run.config.update({"lr": torch.tensor(0.5), "shape": torch.tensor([3, 4])})
    run.summary["best"] = torch.tensor([0.25])
    run.log({"weights": runstream.Histogram(model[0].weight)}, step=5)  # a parameter (requires_grad) as is
    assert run.finish().unacked_events == 0

    found = _histograms(api, run, tmp_path, 8 * 3 + 1)
    watched = {(key, step) for key, step in found if key != "weights"}
    # The 2nd, 4th and 6th passes: logged with the log() of steps 1, 3, 5.
    assert watched == {(f"{kind}/{name}", step) for kind in ("parameters", "gradients") for name in LAYERS
                       for step in (1, 3, 5)}  # fmt: skip
    for (key, step), (histogram, meta) in found.items():
        if key != "weights":
            _close_to_numpy(histogram, seen[step][key])
            assert meta["nonfinite"] == 0 and len(histogram["values"]) == 64
    remote = api.run(run.path)
    history = list(remote.scan_history())
    assert [row["loss"] for row in history] == [row["loss_1"] for row in history]
    assert all(isinstance(row["loss"], float) for row in history) and len(history) == 6
    assert remote.config["lr"] == pytest.approx(0.5) and remote.config["shape"] == [3, 4]
    assert remote.summary["best"] == 0.25


def test_unwatch_removes_every_hook_and_stops_the_histograms(server, api, tmp_path):
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = _start(server, tmp_path)
    run.watch(model, log="all", log_freq=1)
    run.watch(model, log="all", log_freq=1)  # watched again: its hooks are replaced, not doubled
    assert _hooks(model) == (1, 4)
    for step in range(4):
        if step == 2:
            run.unwatch(model)
            assert _hooks(model) == (0, 0)
        _train_step(model, optimizer, step)
        optimizer.step()
        run.log({"loss": float(step)})
    assert run.finish().unacked_events == 0
    found = _histograms(api, run, tmp_path, 16)
    assert {step for _, step in found} == {0, 1} and len(found) == 16
    assert len(api.run(run.path).history()) == 4  # the steps after unwatch were logged, without histograms


def test_a_frozen_layer_has_parameter_histograms_and_no_gradient_ones(server, api, tmp_path):
    model = _mlp()
    model[0].requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    run = _start(server, tmp_path)
    run.watch(model, log="all", log_freq=1)
    assert _hooks(model) == (1, 2)  # tensor hooks only where gradients flow
    for step in range(2):
        _train_step(model, optimizer, step)
        optimizer.step()
        run.log({"loss": float(step)})
    assert run.finish().unacked_events == 0
    found = _histograms(api, run, tmp_path, 12)
    assert set(found) == {(f"parameters/{name}", step) for name in LAYERS for step in (0, 1)} | {
        (f"gradients/{name}", step) for name in ("2.weight", "2.bias") for step in (0, 1)
    }
    assert found["parameters/0.weight", 0][0] == found["parameters/0.weight", 1][0]  # frozen: unchanged
    assert found["parameters/2.weight", 0][0] != found["parameters/2.weight", 1][0]  # trained


class _Scale(nn.Module):
    """y = w * x: the gradient of w is the batch's sum of x, so a NaN input makes exactly one NaN gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x


def test_nan_gradients_are_counted_and_training_goes_on(server, api, tmp_path, caplog):
    model = _Scale()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = _start(server, tmp_path)
    run.watch(model, log="all", log_freq=1)
    for step in range(3):
        x = torch.ones(4, 10)
        if step == 0:
            x[1, 3] = float("nan")
        loss = model(x).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # w[3] becomes NaN
        run.log({"loss": loss})
    assert run.finish().unacked_events == 0
    found = _histograms(api, run, tmp_path, 6)
    nonfinite = {key: meta["nonfinite"] for key, (_, meta) in found.items()}
    assert nonfinite == {
        ("gradients/w", 0): 1,
        ("parameters/w", 0): 0,
        ("gradients/w", 1): 0,
        ("parameters/w", 1): 1,  # the NaN step's update
        ("gradients/w", 2): 0,
        ("parameters/w", 2): 1,
    }
    gradient = found["gradients/w", 0][0]
    assert sum(gradient["values"]) == 9 and gradient["bins"][0] == pytest.approx(3.5)  # 4.0 nine times
    assert "gradients/w holds 1 NaN/Inf values of 10" in caplog.text
    assert sum(row["loss"] is None or np.isnan(row["loss"]) for row in api.run(run.path).history().to_dict("records"))
