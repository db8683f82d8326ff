"""Loss weighting: the registry and options, the loss-level weightings (equal, static, uncertainty, DWA,
ABDP) on small hand-computed examples, and every data-parallel weighting in two real processes.
PCGrad, FAMO and the gradient-level ``backward`` are in test_weighting_gradients.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from automtl.search import distributed
from automtl.search.distributed import exit_process, leave
from automtl.train.weighting import (
    ABDP,
    DWA,
    WEIGHTINGS,
    Equal,
    Static,
    Uncertainty,
    Weighting,
    get_weighting,
    weighting_options,
)


def _losses(*values: float) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(v, requires_grad=True) for name, v in zip("abc", values, strict=False)}


def test_registry_builds_every_strategy_as_a_module() -> None:
    assert set(WEIGHTINGS) == {"equal", "static", "uncertainty", "dwa", "pcgrad", "famo", "abdp"}
    kwargs = {"static": {"weights": {"a": 1.0, "b": 2.0}}}
    for name in WEIGHTINGS:
        w = get_weighting(name, ["a", "b"], **kwargs.get(name, {}))
        assert isinstance(w, Weighting) and isinstance(w, nn.Module)
        assert w.task_names == ("a", "b")
        assert set(w.weights()) == {"a", "b"}
    assert isinstance(get_weighting("DWA", ["a"]), DWA)
    with pytest.raises(ValueError, match="unknown loss weighting 'gradnorm'"):
        get_weighting("gradnorm", ["a"])
    with pytest.raises(ValueError, match="duplicate task names"):
        get_weighting("equal", ["a", "a"])


def test_equal_sums_and_skips_missing_tasks() -> None:
    w = Equal(["a", "b", "c"])
    losses = _losses(1.0, 2.0, 4.0)
    total = w.combine({"a": losses["a"], "b": losses["b"], "c": None})
    assert total.item() == pytest.approx(3.0)
    total.backward()
    assert losses["a"].grad.item() == 1.0 and losses["b"].grad.item() == 1.0
    assert losses["c"].grad is None
    assert w.weights() == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert list(w.parameters()) == []
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['z'\]"):
        w.combine({"z": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="no task has a loss"):
        w.combine({"a": None})
    with pytest.raises(ValueError, match="task 'a': loss must be a scalar"):
        w.combine({"a": torch.ones(2)})


def test_static_weights_values_gradients_and_errors() -> None:
    w = get_weighting("static", ["a", "b"], weights={"a": 0.5, "b": 3.0})
    losses = _losses(2.0, 1.0)
    total = w(losses)
    assert total.item() == pytest.approx(0.5 * 2.0 + 3.0 * 1.0)
    total.backward()
    assert losses["a"].grad.item() == pytest.approx(0.5)
    assert losses["b"].grad.item() == pytest.approx(3.0)
    assert w.weights() == {"a": 0.5, "b": 3.0}
    with pytest.raises(ValueError, match=r"no weight for task\(s\) \['b'\]"):
        Static(["a", "b"], weights={"a": 1.0})
    with pytest.raises(ValueError, match="task 'b': weight must be"):
        Static(["a", "b"], weights={"a": 1.0, "b": -2.0})
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['c'\]"):
        Static(["a"], weights={"a": 1.0, "c": 1.0})


def test_uncertainty_value_and_gradients() -> None:
    w = Uncertainty(["a", "b"])
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.0, math.log(2.0)]))
    losses = _losses(1.0, 4.0)
    total = w.combine(losses)
    # exp(-0) * 1 + 0 + exp(-ln 2) * 4 + ln 2
    assert total.item() == pytest.approx(1.0 + 2.0 + math.log(2.0), rel=1e-6)
    total.backward()
    assert losses["a"].grad.item() == pytest.approx(1.0)
    assert losses["b"].grad.item() == pytest.approx(0.5)
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    assert w.log_vars.grad.tolist() == pytest.approx([0.0, 1.0 - 0.5 * 4.0])
    assert [p is w.log_vars for p in w.parameters()] == [True]
    assert w.weights() == pytest.approx({"a": 1.0, "b": 0.5})


def test_uncertainty_skips_a_missing_task_entirely() -> None:
    w = Uncertainty(["a", "b"], init_log_var=1.0)
    total = w.combine({"a": torch.tensor(2.0), "b": None})
    assert total.item() == pytest.approx(math.exp(-1.0) * 2.0 + 1.0, rel=1e-6)
    total.backward()
    assert w.log_vars.grad[1].item() == 0.0


def test_dwa_equal_for_two_epochs_then_softmax_of_loss_ratios() -> None:
    w = DWA(["a", "b"], temperature=2.0)
    assert w.weights() == {"a": 1.0, "b": 1.0}
    w.epoch_end({"a": 1.0, "b": 1.0})
    assert w.weights() == {"a": 1.0, "b": 1.0}  # one epoch recorded: still equal
    w.epoch_end({"a": 0.5, "b": 1.0})
    # ratios r = (0.5, 1.0); lambda = 2 * softmax(r / 2)
    ea, eb = math.exp(0.25), math.exp(0.5)
    expected = {"a": 2 * ea / (ea + eb), "b": 2 * eb / (ea + eb)}
    assert w.weights() == pytest.approx(expected)
    assert sum(w.weights().values()) == pytest.approx(2.0)
    losses = _losses(3.0, 1.0)
    total = w.combine(losses)
    assert total.item() == pytest.approx(3.0 * expected["a"] + 1.0 * expected["b"], rel=1e-6)
    total.backward()
    assert losses["a"].grad.item() == pytest.approx(expected["a"], rel=1e-6)
    # the next epoch uses the last two epochs only: (0.5 -> 2.0, 1.0 -> 1.0), r = (4, 1)
    w.epoch_end({"a": 2.0, "b": 1.0})
    ea, eb = math.exp(2.0), math.exp(0.5)
    assert w.weights()["a"] == pytest.approx(2 * ea / (ea + eb))


def test_dwa_tracks_epoch_means_itself_and_survives_a_state_dict_round_trip() -> None:
    w = DWA(["a", "b"])
    for epoch, (a_losses, b_losses) in enumerate([([2.0, 4.0], [1.0, 1.0]), ([1.0, 2.0], [2.0, 2.0])]):
        for la, lb in zip(a_losses, b_losses, strict=True):
            w.combine({"a": torch.tensor(la), "b": torch.tensor(lb)}, epoch=epoch)
        w.eval()
        w.combine({"a": torch.tensor(100.0), "b": torch.tensor(100.0)})  # evaluation: not recorded
        w.train()
        w.epoch_end()
    # epoch means: a 3.0 -> 1.5 (r = 0.5), b 1.0 -> 2.0 (r = 2.0)
    ea, eb = math.exp(0.25), math.exp(1.0)
    assert w.weights() == pytest.approx({"a": 2 * ea / (ea + eb), "b": 2 * eb / (ea + eb)})
    restored = DWA(["a", "b"])
    restored.load_state_dict(w.state_dict())
    assert restored.weights() == pytest.approx(w.weights())
    with pytest.raises(ValueError, match=r"no loss was recorded this epoch for task\(s\) \['a', 'b'\]"):
        w.epoch_end()
    with pytest.raises(ValueError, match=r"no average loss for task\(s\) \['b'\]"):
        w.epoch_end({"a": 1.0})
    with pytest.raises(ValueError, match="task 'a': average loss nan"):
        w.epoch_end({"a": float("nan"), "b": 1.0})


# --- options --------------------------------------------------------------------------------------
def test_options_are_checked_with_one_line_naming_the_weighting_and_key() -> None:
    with pytest.raises(ValueError, match=r"^dwa weighting: unknown option 'temprature' \(did you mean 'temper"):
        get_weighting("dwa", ["a"], temprature=1.0)
    with pytest.raises(ValueError, match="^equal weighting: unknown option 'alpha'; options: none$"):
        get_weighting("equal", ["a"], alpha=1.5)
    with pytest.raises(ValueError, match=r"^famo weighting: lr must be a finite number in \(0.0, inf\], got -1"):
        get_weighting("famo", ["a"], lr=-1)
    with pytest.raises(ValueError, match="^famo weighting: optimizer must be 'adam' or 'sgd'"):
        get_weighting("famo", ["a"], optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"^famo weighting: min_losses for unknown task\(s\) \['z'\]"):
        get_weighting("famo", ["a"], min_losses={"z": 0.0})
    with pytest.raises(ValueError, match=r"^abdp weighting: momentum must be a finite number in \[0.0, 1.0\)"):
        get_weighting("abdp", ["a"], momentum=1.0)
    with pytest.raises(ValueError, match="^abdp weighting: temperature must be"):
        get_weighting("abdp", ["a"], temperature=0)
    with pytest.raises(ValueError, match="^pcgrad weighting: seed must be an integer"):
        get_weighting("pcgrad", ["a"], seed=1.5)
    assert weighting_options("FAMO") == {"lr": 0.025, "gamma": 0.01, "optimizer": "adam", "eps": 1e-8,
                                         "min_losses": None}
    assert set(weighting_options("abdp")) == {"momentum", "temperature"}


# --- ABDP ---------------------------------------------------------------------------------------------
def test_abdp_weights_by_hand() -> None:
    w = ABDP(["a", "b"], momentum=0.5, temperature=1.0)
    assert w.weights() == {"a": 1.0, "b": 1.0}
    w.after_step({"a": 2.0, "b": torch.tensor(2.0)})  # seeds the averages: ratios 1, weights equal
    assert w.weights() == pytest.approx({"a": 1.0, "b": 1.0})
    w.after_step({"a": 2.0, "b": 1.0})  # m = (2, 1.5), r = (1, 0.75), lambda = 2 r / sum r
    assert w.weights() == pytest.approx({"a": 8 / 7, "b": 6 / 7})
    losses = _losses(3.0, 1.0)
    total = w.combine(losses)
    assert total.item() == pytest.approx(8 / 7 * 3.0 + 6 / 7 * 1.0, rel=1e-6)
    total.backward()
    assert losses["a"].grad.item() == pytest.approx(8 / 7, rel=1e-6)
    soft = ABDP(["a", "b"], momentum=0.5, temperature=2.0)  # lambda proportional to sqrt(r)
    soft.after_step({"a": 2.0, "b": 2.0})
    soft.after_step({"a": 2.0, "b": 1.0})
    assert soft.weights()["a"] == pytest.approx(2 / (1 + math.sqrt(0.75)))
    late = ABDP(["a", "b"], momentum=0.5, temperature=1.0)  # b not seen yet: ratio 1
    late.after_step({"a": 4.0, "b": None})
    late.after_step({"a": 2.0})  # m_a = 3, r = (0.75, 1)
    assert late.weights() == pytest.approx({"a": 6 / 7, "b": 8 / 7})
    with pytest.raises(ValueError, match="^abdp weighting: task 'a': first loss 0 must be > 0"):
        ABDP(["a", "b"]).after_step({"a": 0.0, "b": 1.0})


def test_abdp_prioritises_the_hard_domain_over_time() -> None:
    torch.manual_seed(0)
    shared = nn.Linear(4, 16)
    heads = nn.ModuleDict({"easy": nn.Linear(16, 2), "hard": nn.Linear(16, 2)})
    params = list(shared.parameters()) + list(heads.parameters())
    opt = torch.optim.SGD(params, lr=0.5)
    w = ABDP(["easy", "hard"])
    history = []
    for _ in range(80):
        x = torch.randn(32, 4)
        labels = {"easy": (x[:, 0] > 0).long(), "hard": torch.randint(0, 2, (32,))}  # hard: unlearnable
        feats = torch.relu(shared(x))
        losses = {d: nn.functional.cross_entropy(heads[d](feats), labels[d]) for d in heads}
        opt.zero_grad(set_to_none=True)
        w.backward(losses, list(shared.parameters()))
        opt.step()
        w.after_step(losses)
        history.append(w.weights()["hard"])
    every_ten = history[::10] + [history[-1]]
    assert all(a < b for a, b in zip(every_ten, every_ten[1:], strict=False))  # it keeps gaining weight
    assert history[-1] > 1.3  # as the easy domain is learnt, the hard one (labels at random) leads
    assert w.weights()["easy"] < 0.75 and sum(w.weights().values()) == pytest.approx(2.0)


def test_abdp_state_dict_round_trip_resumes_exactly() -> None:
    w = ABDP(["a", "b"], momentum=0.8)
    for k in range(4):
        w.after_step({"a": 2.0 * 0.9**k, "b": 1.0 * 0.5**k})
    resumed = ABDP(["a", "b"], momentum=0.8)
    resumed.load_state_dict({k: v.clone() for k, v in w.state_dict().items()})
    for k in range(4, 8):
        w.after_step({"a": 2.0 * 0.9**k, "b": 1.0 * 0.5**k})
        resumed.after_step({"a": 2.0 * 0.9**k, "b": 1.0 * 0.5**k})
    assert torch.equal(w.lambdas, resumed.lambdas) and torch.equal(w.smoothed, resumed.smoothed)
    assert w.weights()["a"] > w.weights()["b"]  # a's loss falls slower: the harder domain


# --- data parallel with real processes ------------------------------------------------------------------
DP_METHODS = ("equal", "pcgrad", "famo", "abdp")


def _dp_train(name: str, rank: int, world: int) -> dict[str, Any]:
    """Three steps of a shared layer and two heads on a global batch of 8, this process's share of it,
    following the calling contract: backward (with reduce), average, step, after_step on averaged losses."""
    torch.manual_seed(0)
    shared, heads = nn.Linear(3, 4), nn.ModuleDict({"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})
    params = list(shared.parameters()) + list(heads.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    w = get_weighting(name, ["a", "b"])
    x = torch.randn(8, 3)
    y = {"a": x.sum(dim=1, keepdim=True), "b": -3 * x[:, :1]}
    part = slice(rank * 8 // world, (rank + 1) * 8 // world)

    def mean(t: torch.Tensor) -> torch.Tensor:
        if world == 1:
            return t
        t = t.clone()
        torch.distributed.all_reduce(t)
        return t / world

    def losses() -> dict[str, torch.Tensor]:
        h = torch.tanh(shared(x[part]))
        return {t: nn.functional.mse_loss(heads[t](h), y[t][part]) for t in heads}

    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        step_losses = losses()
        w.backward(step_losses, list(shared.parameters()), reduce=mean)
        if world > 1:
            distributed.average_gradients(params)
        opt.step()
        if w.needs_post_step_losses:
            with torch.no_grad():
                step_losses = losses()
        w.after_step({t: mean(v.detach()) for t, v in step_losses.items()})
    return {"params": [p.detach().clone() for p in params], "weights": w.weights()}


def _dp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save({name: _dp_train(name, rank, world) for name in DP_METHODS}, f"{out}/rank{rank}.pt")
    finally:
        leave()
    exit_process(0)  # past torch's gloo teardown, which can abort a finished process at exit


def test_two_processes_with_reduce_equal_one_on_the_global_batch(tmp_path: Path) -> None:
    mp.spawn(_dp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in DP_METHODS:
        one = _dp_train(name, 0, 1)
        for rank in ranks:
            assert rank[name]["weights"] == pytest.approx(one["weights"], rel=1e-5), name
            for p, q in zip(rank[name]["params"], one["params"], strict=True):
                assert torch.allclose(p, q, atol=1e-6, rtol=1e-5), f"{name}: max diff {(p - q).abs().max():.3g}"
        if name in ("famo", "abdp"):  # the weights adapted: the comparison is about a real update
            assert abs(one["weights"]["a"] - one["weights"]["b"]) > 1e-3, name
    # the gradients conflicted: PCGrad's shared layer ends elsewhere than equal weighting's
    assert not torch.allclose(_dp_train("pcgrad", 0, 1)["params"][0], _dp_train("equal", 0, 1)["params"][0])
