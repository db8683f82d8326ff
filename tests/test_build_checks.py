"""build() names an untyped operator that would fail or compute something else on task-stacked batches."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import automtl
from automtl.compiler.errors import CompileError
from automtl.model.checks import OpaqueWeightsWarning

# every net here keeps some call the compiler does not know: that is what the checks are about
pytestmark = pytest.mark.filterwarnings("ignore::automtl.compiler.frontends.fx.OpaqueOperatorWarning")

SHAPE = (3, 8, 8)
HEADS = {"a": nn.Identity(), "b": nn.Identity(), "c": nn.Identity()}


def centre(y: torch.Tensor) -> torch.Tensor:
    """Subtracts the batch mean: mixes samples."""
    return y - y.mean(0, keepdim=True)


def mirror(y: torch.Tensor) -> torch.Tensor:
    """A per-sample function the compiler does not know."""
    return y * 2 + y.flip(-1)


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w.view(1, -1, 1, 1)


class Net(nn.Module):
    """conv -> (something) -> conv; the middle decides what the check must say."""

    def __init__(self, middle: str) -> None:
        super().__init__()
        self.middle = middle
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.scale = Scale()
        self.norm = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        if self.middle == "hard_batch":
            y = y.view(2, 8, -1).view(2, 8, 8, 8)
        elif self.middle == "centre":
            y = centre(y)
        elif self.middle == "mirror":
            y = mirror(self.norm(y))
        elif self.middle == "leaf":
            y = self.scale(y)
        elif self.middle == "tied":  # one BN module called twice
            y = self.norm(self.c3(self.norm(y)))
        return self.c2(y)


def _build(middle: str, **kw):
    return automtl.build(Net(middle), HEADS, input_shape=(2, *SHAPE), **kw)


def test_batch_size_written_into_the_code_is_named_at_build() -> None:
    with pytest.raises(CompileError, match=r"operator 'view' \(opaque call of Tensor.view\).*x.size\(0\)"):
        _build("hard_batch")


def test_code_that_mixes_samples_is_named_at_build() -> None:
    with pytest.raises(CompileError, match=r"'centre' \(opaque call of centre\) gives other values on the stacked"):
        _build("centre", wrap_functions=[centre])


def test_a_per_sample_untyped_call_builds_silently_and_is_exact() -> None:
    torch.manual_seed(0)
    net = Net("mirror")
    with warnings.catch_warnings():
        warnings.simplefilter("error", OpaqueWeightsWarning)
        model = automtl.build(net, HEADS, input_shape=(2, *SHAPE), wrap_functions=[mirror])
    assert any(n.kind == "opaque" for n in model.graph)
    x = torch.randn(4, *SHAPE)
    net.eval()
    model.eval()
    out = model(x, architecture=model.uniform_architecture("shared"))
    for task in HEADS:
        torch.testing.assert_close(out[task], net(x), rtol=1e-5, atol=1e-5)


def test_an_opaque_module_with_weights_is_named_with_the_fix() -> None:
    with pytest.warns(OpaqueWeightsWarning, match=r"operator 'scale' \(opaque call of Scale\) holds 8 parameters.*"
                                                   r"leaf_modules="):
        model = _build("leaf", leaf_modules=[Scale])
    assert model(torch.randn(2, *SHAPE))["a"].shape == (2, 8, 8, 8)


def test_a_module_called_twice_with_weights_is_named() -> None:
    with pytest.warns(OpaqueWeightsWarning, match=r"'norm' \(module called at several places of BatchNorm2d\) holds "
                                                   r"16 parameters.*its own module instance"):
        _build("tied")


def test_the_trial_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = _build("mirror", wrap_functions=[mirror])
    assert model.training and all(m.training for m in model.modules())
    fresh = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert fresh and all(torch.equal(v, torch.zeros_like(v)) for k, v in fresh.items() if "mean" in k)
    assert all(torch.equal(v, torch.ones_like(v)) for k, v in fresh.items() if "var" in k)


class StemStats(nn.Module):
    """An untyped, sample-mixing call on the input, before any choice: exact for one shared input
    (it sees the real batch), wrong for per-task inputs stacked into one batch."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c1(centre(x))


def test_per_task_inputs_check_the_operators_a_shared_input_never_stacks() -> None:
    model = automtl.build(StemStats(), HEADS, input_shape=(2, *SHAPE), wrap_functions=[centre])
    assert model(torch.randn(2, *SHAPE))["a"].shape == (2, 8, 8, 8)  # one input: the source's computation
    domains = {t: torch.randn(2, *SHAPE) for t in HEADS}
    for _ in range(2):  # refused at every call, never a torch error or silently mixed domains
        with pytest.raises(CompileError, match=r"'centre' \(opaque call of centre\) gives other values"):
            model(domains)
