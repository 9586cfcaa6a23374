"""``run.watch()``'s hooks (runstream.integration.torch) on real torch modules, in offline runs read
back from their spools; and torch tensors taken wherever a number is (log, config, summary)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

import runstream
from runstream import events
from runstream.integration.torch import NUM_BINS, tensor_histogram
from runstream.values import json_safe, to_scalar
from tests.helpers import metric_points, spooled_events

QUIET = {"console": False, "system_metrics": False, "git": False}


@pytest.fixture
def run(tmp_path):
    r = runstream.init(project="proj", entity="team", mode="offline", dir=tmp_path, settings=QUIET)
    yield r
    r.finish()


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))


def _media(run: runstream.Run) -> list[tuple[int, str, dict]]:
    run.finish()
    return sorted(
        (e.data["step"], e.data["meta"]["key"], e.data["meta"])
        for e in spooled_events(run.dir)
        if e.type == events.FILE and e.data["kind"] == "media"
    )


def _step(model: nn.Module, backward: bool = True) -> None:
    loss = model(torch.randn(3, 6)).pow(2).mean()
    if backward:
        model.zero_grad()
        loss.backward()


# -- the histogram, computed in torch --------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(0).normal(size=5000),
        np.linspace(-3, 7, 1001),
        np.full(17, 2.5),  # one value: widened to [2, 3] as numpy does
        np.array([]),  # nothing: empty bins over [0, 1] as numpy does
    ],
)
def test_the_histogram_is_numpys(values):
    counts, edges, nonfinite = tensor_histogram(torch.tensor(values, dtype=torch.float64))
    want_counts, want_edges = np.histogram(values, bins=NUM_BINS)
    assert counts == want_counts.tolist() and np.allclose(edges, want_edges) and nonfinite == 0


def test_nan_and_inf_are_counted_not_binned():
    values = torch.tensor([1.0, float("nan"), 2.0, float("inf"), -float("inf"), 3.0])
    counts, edges, nonfinite = tensor_histogram(values)
    assert nonfinite == 3 and sum(counts) == 3 and (edges[0], edges[-1]) == (1.0, 3.0)
    counts, edges, nonfinite = tensor_histogram(torch.full((4, 4), float("nan")))
    assert nonfinite == 16 and counts == [0] * NUM_BINS and (edges[0], edges[-1]) == (0.0, 1.0)


@pytest.mark.parametrize(
    "values", [[-3e38, 0.0, 3e38], [1.0, 1.0 + 2e-7, 1.0 + 4e-7], [1e-44, 2e-44, 3e-44]], ids=["huge", "narrow", "tiny"]
)
def test_ranges_at_float32s_limits_are_binned_as_numpy_does(values):
    tensor = torch.tensor(values, dtype=torch.float32)
    counts, edges, _ = tensor_histogram(tensor)
    want_counts, want_edges = np.histogram(tensor.numpy().astype(np.float64), bins=NUM_BINS)
    assert counts == want_counts.tolist() and np.allclose(edges, want_edges, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64, torch.uint8])
def test_every_real_dtype_is_binned(dtype):
    values = torch.arange(0, 100).to(dtype)
    counts, edges, _ = tensor_histogram(values)
    assert sum(counts) == 100 and (edges[0], edges[-1]) == (0.0, 99.0)


def test_a_sparse_tensors_implicit_zeros_fall_in_the_bin_of_zero():
    sparse = torch.sparse_coo_tensor([[1, 5]], [2.0, 4.0], (100,), check_invariants=True)
    counts, edges, _ = tensor_histogram(sparse)
    assert sum(counts) == 100 and edges[0] == 0.0 and counts[0] == 98 and counts[-1] == 1


# -- when the hooks take histograms -----------------------------------------------------------------


def test_parameters_are_counted_in_forward_passes_not_log_calls(run):
    model = _mlp()
    run.watch(model, log="parameters", log_freq=3)
    for _ in range(2):  # 4 forward passes per logged step (say, accumulation): one histogram set per 3
        for _ in range(4):
            _step(model, backward=False)
        run.log({"loss": 1.0})
    run.log({"loss": 1.0})  # nothing taken since the last log()
    media = _media(run)
    keys = {"parameters/0.weight", "parameters/0.bias", "parameters/2.weight", "parameters/2.bias"}
    assert [(step, key) for step, key, _ in media] == sorted((step, key) for step in (0, 1) for key in keys)


def test_gradients_are_counted_in_backward_passes(run):
    model = _mlp()
    run.watch(model, log_freq=2)  # wandb's default: gradients
    for _ in range(5):
        _step(model)
        run.log({"loss": 1.0})
    media = _media(run)
    assert {key for _, key, _ in media} == {"gradients/0.weight", "gradients/0.bias", "gradients/2.weight",
                                            "gradients/2.bias"}  # fmt: skip
    assert sorted({step for step, _, _ in media}) == [1, 3]


def test_histograms_taken_before_an_explicit_step_go_with_it(run):
    model = _mlp()
    run.watch(model, log="gradients", log_freq=1)
    _step(model)
    run.log({"loss": 0.5}, step=40)
    run.log({"acc": torch.tensor(0.9)}, commit=False)  # uncommitted rows take them too
    _step(model)
    run.log({"loss": 0.4})
    assert sorted({step for step, _, _ in _media(run)}) == [40, 41]


def test_log_none_hooks_nothing_and_log_graph_is_said_to_be_ignored(run, caplog):
    model = _mlp()
    with caplog.at_level(logging.WARNING, logger="runstream"):
        assert run.watch(model, log=None, log_graph=True) == []
    assert "log_graph" in caplog.text
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    assert all(not p._backward_hooks for p in model.parameters())


def test_bad_arguments_are_clear_errors(run):
    with pytest.raises(ValueError, match="'gradients', 'parameters', 'all' or None"):
        run.watch(_mlp(), log="weights")
    with pytest.raises(ValueError, match="log_freq"):
        run.watch(_mlp(), log_freq=0)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        run.watch([_mlp(), object()])
    assert run._watched == []  # a refused list hooks none of its models


def test_later_models_get_wandbs_graph_prefix_and_equal_keys_are_refused(run):
    first, second = _mlp(), _mlp()
    run.watch([first, second], log="parameters", log_freq=1)
    _step(first, backward=False)
    _step(second, backward=False)
    run.log({"loss": 1.0})
    third, fourth = _mlp(), _mlp()
    with pytest.raises(ValueError, match="idx="):
        run.watch([third, fourth], log="parameters", idx=1)  # idx 1 and 2: the second model logs graph_1 keys
    assert not third._forward_hooks and not fourth._forward_hooks  # a refused call hooks none of its models
    keys = {key for _, key, _ in _media(run)}
    assert "parameters/0.weight" in keys and "parameters/graph_10.weight" in keys and len(keys) == 8


def test_watching_again_replaces_the_hooks_and_keeps_the_keys(run):
    model = _mlp()
    run.watch(model, log="all", log_freq=1)
    run.watch(model, log="gradients", log_freq=1)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    assert [len(p._backward_hooks) for p in model.parameters()] == [1, 1, 1, 1]
    _step(model)
    run.log({"loss": 1.0})
    assert {key.split("/")[0] for _, key, _ in _media(run)} == {"gradients"}


def test_unwatch_of_one_model_keeps_the_others(run, caplog):
    first, second = _mlp(), _mlp()
    run.watch(first, log="all")
    run.watch(second, log="all")
    run.unwatch(first)
    assert not first._forward_hooks and all(not p._backward_hooks for p in first.parameters())
    assert len(second._forward_hooks) == 1 and run._watched == [second]
    with caplog.at_level(logging.WARNING, logger="runstream"):
        run.unwatch(first)
    assert "is not watched" in caplog.text
    run.unwatch()
    assert not second._forward_hooks and run._watched == []


def test_finish_stores_the_last_histograms_and_removes_the_hooks(run):
    model = _mlp()
    run.watch(model, log="all", log_freq=1)
    run.log({"loss": 1.0})
    _step(model)  # taken after the last log(): stored at the next step by finish(), as wandb's partial row
    media = _media(run)
    assert {step for step, _, _ in media} == {1} and len(media) == 8
    assert not model._forward_hooks and all(not p._backward_hooks for p in model.parameters())


def test_after_finish_the_hooks_take_nothing_and_watch_is_refused(run):
    model = _mlp()
    run.watch(model, log="all", log_freq=1)
    run.finish()
    _step(model)  # the hooks are still there (until unwatch) but do nothing
    assert run._torch.take() == {}
    with pytest.raises(runstream.Error, match="finished"):
        run.watch(_mlp())


def test_a_tensor_torch_cannot_bin_is_skipped_and_training_goes_on(run, caplog):
    model = nn.Linear(3, 3, dtype=torch.complex64)
    run.watch(model, log="all", log_freq=1)
    with caplog.at_level(logging.WARNING, logger="runstream"):
        model(torch.randn(2, 3, dtype=torch.complex64)).abs().sum().backward()
    assert model.weight.grad is not None
    assert "watch() skips parameters/weight: TypeError: a complex tensor" in caplog.text
    run.log({"loss": 1.0})
    assert _media(run) == []


# -- tensors wherever a number or an array is ---------------------------------------------------------


def test_tensors_of_one_element_are_numbers():
    assert to_scalar(torch.tensor(2)) == 2 and isinstance(to_scalar(torch.tensor(2)), int)
    assert to_scalar(torch.tensor([0.5], requires_grad=True)) == 0.5
    assert to_scalar(torch.tensor([[1.5]], dtype=torch.bfloat16)) == 1.5
    assert to_scalar(np.array([3.0])) == 3.0  # numpy too, as wandb's json_friendly
    assert to_scalar(torch.tensor([1.0, 2.0])) is None and to_scalar(torch.tensor(1 + 2j)) is None
    assert json_safe({"lr": torch.tensor(0.25), "sizes": torch.tensor([3, 4]), "one": torch.tensor([7])}) == {
        "lr": 0.25,
        "sizes": [3, 4],
        "one": 7,
    }


def test_tensors_are_logged_as_numbers_and_histograms(run):
    run.config.update({"dropout": torch.tensor(0.5)})
    run.summary["best"] = torch.tensor([0.75])
    run.log({"loss": torch.tensor(0.5, requires_grad=True) * 2, "acc": torch.tensor([0.25]),
             "w": torch.randn(100, requires_grad=True)})  # fmt: skip
    assert run.config["dropout"] == 0.5 and run.summary["best"] == 0.75
    media = _media(run)
    points = metric_points(spooled_events(run.dir))
    assert (0, "loss", 1.0) in points and (0, "acc", 0.25) in points
    assert [(step, key) for step, key, _ in media] == [(0, "w")]


# -- what the review found: copies, chunks, unwatch, lists, distributed tensors ---------------------------


def test_the_histogram_is_binned_in_chunks_with_nan_and_inf_anywhere(monkeypatch):
    import runstream.integration.torch as torch_hooks

    monkeypatch.setattr(torch_hooks, "CHUNK", 7)  # 1000 values: 143 chunks, some all NaN
    values = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    values[100:120] = float("nan")
    values[[3, 500, 999]] = torch.tensor([float("inf"), -float("inf"), float("nan")], dtype=torch.float64)
    counts, edges, nonfinite = tensor_histogram(values)
    finite = values[torch.isfinite(values)].numpy()
    want_counts, want_edges = np.histogram(finite, bins=NUM_BINS)
    assert nonfinite == 23 and counts == want_counts.tolist() and np.allclose(edges, want_edges)


def test_a_bfloat16_tensor_is_binned_as_its_values_are():
    values = torch.randn(5000, generator=torch.Generator().manual_seed(2)).bfloat16()
    values[::50] = float("nan")
    counts, edges, nonfinite = tensor_histogram(values)
    exact = values.double().numpy()
    want_counts, want_edges = np.histogram(exact[np.isfinite(exact)], bins=NUM_BINS)
    assert nonfinite == 100 and counts == want_counts.tolist() and np.allclose(edges, want_edges)


def test_copies_of_a_watched_model_carry_inert_hooks(run, tmp_path):
    import copy
    import pickle

    from torch.optim.swa_utils import AveragedModel

    model = _mlp()
    run.watch(model, log="all", log_freq=1)
    copied = copy.deepcopy(model)  # EMA helpers, Lightning's StochasticWeightAveraging
    averaged = AveragedModel(model)
    unpickled = pickle.loads(pickle.dumps(model))
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    for other in (copied, averaged.module, unpickled, loaded):
        _step(other)  # the copies train; their hooks do nothing
        assert torch.equal(other[0].weight, model[0].weight)
    assert run._torch.take() == {} and run._watched == [model]
    _step(model)
    run.log({"loss": 1.0})
    assert len(_media(run)) == 8  # the watched model still is
    assert not model._forward_hooks  # finish() unhooked it


def test_histograms_taken_before_unwatch_are_still_logged(run):
    model = _mlp()
    run.watch(model, log="all", log_freq=1)
    _step(model)
    run.unwatch(model)
    assert run._watched == [] and not model._forward_hooks
    run.log({"loss": 1.0})
    media = _media(run)
    assert len(media) == 8 and {step for step, _, _ in media} == {0}


def test_the_same_model_twice_in_one_list_is_refused(run):
    model = _mlp()
    with pytest.raises(ValueError, match="the same Sequential more than once"):
        run.watch([model, _mlp(), model], log="all")
    assert not model._forward_hooks and run._watched == []


@pytest.fixture
def one_rank_mesh(tmp_path):
    """A real (one-process, gloo) device mesh, for DTensors as FSDP2 makes them."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_a_distributed_tensor_is_this_ranks_shard(one_rank_mesh):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    sharded = distribute_tensor(torch.arange(10.0), one_rank_mesh, [Shard(0)])
    counts, edges, _ = tensor_histogram(sharded)  # bincount has no DTensor rule: it runs on the local shard
    assert sum(counts) == 10 and (edges[0], edges[-1]) == (0.0, 9.0)
    assert json_safe({"w": sharded}) == {"w": [float(i) for i in range(10)]}  # DTensor.tolist() is refused
    assert to_scalar(distribute_tensor(torch.tensor(2.5), one_rank_mesh, [Replicate()])) == 2.5
