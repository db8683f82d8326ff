"""Loss weighting: values and gradients on small hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from automtl.train.weighting import DWA, WEIGHTINGS, Equal, Static, Uncertainty, Weighting, get_weighting


def _losses(*values: float) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(v, requires_grad=True) for name, v in zip("abc", values, strict=False)}


def test_registry_builds_every_strategy_as_a_module() -> None:
    assert set(WEIGHTINGS) == {"equal", "static", "uncertainty", "dwa"}
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
