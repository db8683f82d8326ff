"""The torch.fx frontend's escape hatches: untraceable modules named with a suggestion, leaf modules and
wrapped functions as opaque nodes, and one warning for unknown calls (none for fully typed modules)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from fx_helpers import Residual, kinds, n_params
from torch import nn

from automtl.compiler.errors import CompileError
from automtl.compiler.frontends.fx import OpaqueOperatorWarning, from_module


# --- escape hatches and opaque calls ------------------------------------------------------------
class DataDependent(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace this."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.conv(x)
        return -self.conv(x)


class WithBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.BatchNorm2d(4), DataDependent())
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


def test_untraceable_module_names_path_and_suggests_leaf_modules() -> None:
    with pytest.raises(CompileError) as info:
        from_module(WithBranch(), (3, 8, 8))
    msg = str(info.value)
    assert "'body.1'" in msg and "DataDependent" in msg
    assert "leaf_modules=[DataDependent]" in msg
    assert isinstance(info.value.__cause__, Exception)


def test_untraceable_root_suggests_escape_hatches() -> None:
    with pytest.raises(CompileError, match="leaf_modules=.*wrap_functions="):
        from_module(DataDependent(), (4, 3, 3))


@pytest.mark.parametrize("leaf", [DataDependent, "body.1"], ids=["by-type", "by-name"])
def test_leaf_modules_become_opaque_nodes(leaf: object, randomize, assert_same) -> None:
    m = randomize(WithBranch())
    with pytest.warns(OpaqueOperatorWarning, match="body.1"):
        g = from_module(m, (3, 8, 8), leaf_modules=[leaf])
    assert kinds(g) == ["input", "conv2d", "batch_norm", "opaque", "conv2d"]
    assert g["body.1"].attrs["target"] is m.body[1]
    assert g["body.1"].shape == (1, 4, 8, 8)
    # the opaque module's own conv is not counted: the IR does not know what is inside it
    assert g.params == n_params(m) - n_params(m.body[1])
    gm = assert_same(m, g)
    branches = set()
    for sign in (1.0, -1.0):  # inputs far apart in both directions take both branches of the leaf's `if`
        x = sign * 100 * torch.ones(2, 3, 8, 8)
        with torch.no_grad():
            branches.add(bool(m.body[0](m.stem(x)).sum() > 0))
            assert (gm(x) - m(x)).abs().max().item() <= 1e-5 * 100
    assert branches == {True, False}


def untraceable_scale(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4 and x.sum() > 0:
        return x * 2
    return x * 3


class UsesFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(untraceable_scale(self.conv(x)))


def test_wrap_functions(assert_same) -> None:
    m = UsesFunction().eval()
    with pytest.raises(CompileError):
        from_module(m, (3, 4, 4))
    with pytest.warns(OpaqueOperatorWarning, match="untraceable_scale"):
        g = from_module(m, (3, 4, 4), wrap_functions=[untraceable_scale])
    assert kinds(g) == ["input", "conv2d", "opaque", "relu"]
    assert g["untraceable_scale"].attrs["target"] is untraceable_scale
    assert g.params == n_params(m)
    assert_same(m, g)


class Unknowns(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.scale = nn.Parameter(torch.randn(1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.norm(self.conv(x)) * self.scale
        z = torch.roll(y.flip(1), 1, 2)
        return F.gelu(z, approximate="tanh") + y, x.clamp(min=0.1)


def test_unknown_calls_become_opaque_with_one_warning(assert_same) -> None:
    m = Unknowns().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = from_module(m, (3, 6, 6))
    opaque = [w for w in caught if issubclass(w.category, OpaqueOperatorWarning)]
    assert len(opaque) == 1
    msg = str(opaque[0].message)
    names = [n.name for n in g if n.kind == "opaque"]
    assert names == ["flip", "roll"]
    assert "2 operator(s)" in msg and ", ".join(names) in msg
    assert g["roll"].shape == (1, 4, 6, 6) and g["clamp"].shape == (1, 3, 6, 6)
    # group norm, a parameter read directly, clamp and tanh GELU are typed; every parameter is counted
    kinds = (g["norm"].kind, g["scale"].kind, g["clamp"].kind, g["gelu"].kind)
    assert kinds == ("group_norm", "parameter", "clip", "gelu_tanh")
    assert g.params == n_params(m)
    assert_same(m, g)


def test_opaque_warning_is_not_raised_for_fully_typed_modules() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_module(Residual(), (8, 4, 4))
    assert not [w for w in caught if issubclass(w.category, OpaqueOperatorWarning)]
