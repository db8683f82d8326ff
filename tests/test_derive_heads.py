"""A derived model saved and loaded without its supermodel, and heads and trunk operators that are not
plain: untraceable heads, opaque trunk operators, bare leaf and multi-output heads."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from derive_helpers import (
    EVAL_TOL,
    check_both_modes,
    n_params,
    perturb,
    random_architecture,
    tiny,
)
from torch import nn

from automtl import build
from automtl.model.derive import MultiTaskModel

pytestmark = pytest.mark.usefixtures("one_thread")


# --- persistence -----------------------------------------------------------------------------------
def test_save_load_without_the_supermodel(tmp_path: Path) -> None:
    model = tiny("follow")
    arch = random_architecture(model, seed=3)
    derived = model.derive(arch).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = derived(x)
    report = derived.report()
    path = tmp_path / "mt.pt"
    derived.save(path)
    del model, derived
    gc.collect()
    loaded = MultiTaskModel.load(path).eval()
    assert loaded.task_names == ["t0", "t1", "t2"] and loaded.architecture.to_dict() == arch.to_dict()
    with torch.no_grad():
        got = loaded(x)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    assert loaded.report() == report
    assert loaded.code == loaded.net.code and "gates" not in loaded.code
    (tmp_path / "bad.pt").write_bytes(b"")
    torch.save({"format": "something else"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not an automtl multi-task model"):
        MultiTaskModel.load(tmp_path / "bad.pt")


# --- heads -----------------------------------------------------------------------------------------
class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if y.sum() > 0:
            return y
        return -y


def test_untraceable_head_stays_one_call(tmp_path: Path) -> None:
    heads = {"plain": nn.Sequential(nn.Linear(10, 3), nn.ReLU()), "odd": Untraceable(10)}
    model = tiny("follow", heads=heads)
    arch = random_architecture(model, seed=1)
    derived = model.derive(arch)
    odd = [n for n in derived.graph if n.name.startswith("head.odd")]
    assert [(n.name, n.kind) for n in odd] == [("head.odd", "opaque")]
    plain = [n.kind for n in derived.graph if n.name.startswith("head.plain")]
    assert plain == ["linear", "relu"]  # a traceable head is inlined
    check_both_modes(model, derived, torch.randn(2, 3, 32, 32), arch)
    assert n_params(derived) == derived.report()["total"]["params"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = derived(x)
    derived.save(tmp_path / "m.pt")
    with torch.no_grad():
        got = MultiTaskModel.load(tmp_path / "m.pt").eval()(x)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


class LeafGroupNorm(nn.GroupNorm):
    """Not a registry module: kept as a leaf (``leaf_modules=``), it stays one opaque call."""


class WithGroupNorm(nn.Module):
    """A trunk operator outside the registry (a GroupNorm kept as a leaf): opaque, so always shared."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = LeafGroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.gn(self.conv1(x)))


def test_opaque_trunk_operator_keeps_one_module(tmp_path: Path) -> None:
    """Copies of an opaque operator on diverged values still share its one set of weights."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="opaque"):
        model = perturb(build(WithGroupNorm(), {"a": nn.Identity(), "b": nn.Identity()}, input_shape=(3, 8, 8),
                              leaf_modules=[LeafGroupNorm]))
    arch = model.uniform_architecture("specific")
    derived = model.derive(arch)
    assert [n.kind for n in derived.graph if n.attrs.get("derived", {}).get("source") == "gn"] == ["opaque", "opaque"]
    norms = {id(m) for m in derived.modules() if isinstance(m, nn.GroupNorm)}
    assert len(norms) == 1
    convs = 2 * (8 * 3 * 9 + 8) + 2 * (8 * 8 * 9 + 8)
    assert n_params(derived) == derived.report()["total"]["params"] == convs + 16
    check_both_modes(model, derived, torch.randn(2, 3, 8, 8), arch)
    derived.save(tmp_path / "gn.pt")
    loaded = MultiTaskModel.load(tmp_path / "gn.pt")
    assert len({id(m) for m in loaded.modules() if isinstance(m, nn.GroupNorm)}) == 1


class TwoOutputs(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc(x)
        return y, y.relu()


def test_bare_leaf_and_multi_output_heads() -> None:
    """A bare nn.Linear head is inlined as a typed operator; a head with two outputs stays one call.

    (``build`` refuses a head that does not return one tensor, since no task can train it; a model built
    without that check still derives and runs exactly.)"""
    with pytest.raises(ValueError, match="the head of task 'pair' returns a tuple"):
        tiny("follow", heads={"bare": nn.Linear(10, 3), "pair": TwoOutputs(10)})
    model = tiny("follow", heads={"bare": nn.Linear(10, 3), "pair": TwoOutputs(10)}, check_heads=False)
    derived = model.derive(model.uniform_architecture("shared")).eval()
    assert [(n.name, n.kind) for n in derived.graph if n.name.startswith("head.")] == [
        ("head.bare.0", "linear"), ("head.pair", "opaque")]
    assert derived.report()["per_task"]["bare"]["flops"] == 3_461_440 + 2 * 10 * 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model.eval()(x, mode="fixed", architecture=model.uniform_architecture("shared"))
        got = derived.as_dict(x)
    assert isinstance(got["pair"], tuple) and len(got["pair"]) == 2
    for a, b in [(got["bare"], want["bare"]), *zip(got["pair"], want["pair"], strict=True)]:
        torch.testing.assert_close(a, b, rtol=EVAL_TOL, atol=1e-6)
