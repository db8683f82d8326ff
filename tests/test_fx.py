"""The torch.fx frontend: one small module per feature, checked for kinds, shapes and exact equality;
inputs, outputs and parameter and FLOP counts. Opaque calls and escape hatches are in test_fx_opaque.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fx_helpers import Residual, compile_quietly, kinds, n_params
from torch import nn

import automtl
from automtl.compiler.errors import CompileError
from automtl.compiler.frontends.fx import OpaqueOperatorWarning, from_module


# --- residuals, concatenation, reshaping -------------------------------------------------------
def test_residual_add(randomize, assert_same) -> None:
    m = randomize(Residual())
    g = compile_quietly(m, (8, 6, 6))
    assert kinds(g) == ["input", "conv2d", "batch_norm", "relu", "conv2d", "batch_norm", "add", "add", "relu"]
    adds = [n for n in g if n.kind == "add"]
    assert all(n.shape == (1, 8, 6, 6) and len(n.inputs) == 2 for n in adds)
    assert adds[0].inputs == ["bn2", "x"]
    assert g.params == n_params(m)
    assert_same(m, g)


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], 1)
        return torch.cat((y, x), dim=-3)


def test_concat(randomize, assert_same) -> None:
    m = randomize(Concat())
    g = compile_quietly(m, (3, 5, 7))
    cats = [n for n in g if n.kind == "concat"]
    assert [n.shape for n in cats] == [(1, 10, 5, 7), (1, 13, 5, 7)]
    assert cats[0].inputs == ["a", "b"]
    assert g.params == n_params(m)
    assert_same(m, g)


class Head(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.how == "module":
            y = self.flat(y)
        elif self.how == "function":
            y = torch.flatten(y, 1)
        elif self.how == "method":
            y = y.flatten(1)
        elif self.how == "view":
            y = y.view(y.size(0), -1)
        elif self.how == "reshape":
            y = y.reshape(y.shape[0], -1)
        return self.fc(y)


@pytest.mark.parametrize("how", ["module", "function", "method", "view", "reshape"])
def test_flatten_spellings(how: str, assert_same) -> None:
    m = Head(how).eval()
    g = compile_quietly(m, (3, 8, 8))
    assert kinds(g) == ["input", "conv2d", "flatten", "linear"]
    assert [n for n in g if n.kind == "flatten"][0].shape == (1, 64)
    assert g.output_shapes() == {"fc": (1, 5)}
    assert g.params == n_params(m)
    assert_same(m, g, batch=3)


class ViewKeepBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.view(x.size(0), 2, -1)
        return y.reshape(y.shape[0], 4, 3, -1)


def test_view_to_other_shapes_keeps_batch(assert_same) -> None:
    g = compile_quietly(ViewKeepBatch(), (4, 3, 4))
    assert kinds(g) == ["input", "reshape", "reshape"]
    assert [n.shape for n in g][1:] == [(1, 2, 24), (1, 4, 3, 4)]
    assert_same(ViewKeepBatch(), g, batch=5)


class SizeArithmetic(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), x.size(1) * 4, -1) * 2


def test_arithmetic_on_static_sizes_is_typed(assert_same) -> None:
    """Shapes are static at compile time: ``x.size(1) * 4`` is the int 32, so the view is a typed reshape."""
    g = compile_quietly(SizeArithmetic(), (8, 4, 4))
    assert kinds(g) == ["input", "reshape", "mul"]
    assert g["view"].attrs["shape"] == [32, -1] and g.output_shapes() == {"mul": (1, 32, 4)}
    assert_same(SizeArithmetic(), g, batch=3)


class BatchArithmetic(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0) * 2, -1) * 2


def test_arithmetic_on_the_batch_size_stays_opaque_and_exact(assert_same) -> None:
    """``x.size(0) * 2`` depends on the batch: an int computed at run time, never an element-wise mul operator."""
    with pytest.warns(OpaqueOperatorWarning, match="mul, view"):
        g = from_module(BatchArithmetic(), (8, 4, 4))
    assert kinds(g) == ["input", "opaque", "opaque", "opaque", "mul"]
    assert g.output_shapes() == {"mul_1": (2, 64)}
    assert_same(BatchArithmetic(), g, batch=3)


class BatchAxisOps(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([x, x]), torch.flatten(x)


def test_batch_axis_cat_and_flatten_stay_opaque(assert_same) -> None:
    """The IR keeps the batch axis apart; torch.cat(dim=0) and flatten(start_dim=0) run as opaque calls."""
    with pytest.warns(OpaqueOperatorWarning, match="cat, flatten"):
        g = from_module(BatchAxisOps(), (2, 3, 3))
    assert kinds(g) == ["input", "opaque", "opaque"]
    assert g.output_shapes() == {"cat": (2, 2, 3, 3), "flatten": (18,)}
    assert_same(BatchAxisOps(), g)


# --- functional calls ---------------------------------------------------------------------------
class Functional(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a = F.max_pool2d(F.relu(x), 3, 2, 1)
        b = F.avg_pool2d(x, kernel_size=3, stride=2, ceil_mode=True, count_include_pad=False, padding=1)
        c = F.adaptive_avg_pool2d(a, 1)
        d = F.interpolate(b, scale_factor=2, mode="nearest")
        e = F.interpolate(a, size=(7, 5), mode="bilinear", align_corners=False)
        f = F.adaptive_max_pool2d(x, (2, 3))
        return a, b, c, d, e, f, x.mean((2, 3))


def test_functional_relu_pooling_interpolate(assert_same) -> None:
    g = compile_quietly(Functional(), (3, 9, 10))
    assert kinds(g) == [
        "input", "relu", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "interpolate", "interpolate",
        "adaptive_max_pool2d", "mean",
    ]
    assert list(g.output_shapes().values()) == [
        (1, 3, 5, 5), (1, 3, 5, 6), (1, 3, 1, 1), (1, 3, 10, 12), (1, 3, 7, 5), (1, 3, 2, 3), (1, 3),
    ]
    assert_same(Functional(), g)


# --- convolution variants -----------------------------------------------------------------------
class ConvVariants(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.grouped = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4)
        self.dilated = nn.Conv2d(12, 6, 3, padding=2, dilation=2)
        self.asym = nn.Conv2d(6, 4, (1, 3), stride=(2, 1), padding=(0, 1), dilation=(1, 3))
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.asym(self.dilated(self.grouped(self.depthwise(x)))))


def test_depthwise_grouped_dilated_convs(randomize, assert_same) -> None:
    m = randomize(ConvVariants())
    g = compile_quietly(m, (8, 11, 11))
    assert [(n.name, n.attrs["groups"], n.shape) for n in g if n.kind == "conv2d"] == [
        ("depthwise", 8, (1, 8, 11, 11)),
        ("grouped", 4, (1, 12, 6, 6)),
        ("dilated", 1, (1, 6, 6, 6)),
        ("asym", 1, (1, 4, 3, 2)),
    ]
    assert g["asym"].attrs["dilation"] == (1, 3)
    assert g["depthwise"].params == 8 * 9
    assert g.params == n_params(m)
    assert_same(m, g)


class ConvTranspose(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.up2 = nn.ConvTranspose2d(4, 3, 2, stride=2, dilation=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up2(self.up(x))


def test_conv_transpose(assert_same) -> None:
    m = ConvTranspose().eval()
    g = compile_quietly(m, (6, 5, 4))
    assert kinds(g) == ["input", "conv_transpose2d", "conv_transpose2d"]
    assert g["up"].shape == (1, 4, 10, 8)
    assert g["up2"].shape == (1, 3, 21, 17)  # (10 - 1) * 2 + 2 * (2 - 1) + 1
    assert g.params == n_params(m)
    assert_same(m, g)


# --- squeeze-excitation, activations, scalars ---------------------------------------------------
class SqueezeExcite(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 4, 1)
        self.fc2 = nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


def test_squeeze_excitation_gate(assert_same) -> None:
    m = SqueezeExcite().eval()
    g = compile_quietly(m, (8, 5, 5))
    assert kinds(g) == ["input", "mean", "conv2d", "relu", "conv2d", "sigmoid", "mul"]
    assert g["fc2"].shape == (1, 8, 1, 1)
    mul = g["mul"]
    assert mul.inputs == ["x", "sigmoid"] and mul.shape == (1, 8, 5, 5)
    assert g.params == n_params(m)
    assert_same(m, g)


class Activations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hs = nn.Hardswish()
        self.silu = nn.SiLU()
        self.relu6 = nn.ReLU6(inplace=True)
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu6(self.silu(self.hs(x * 3)))
        z = F.hardswish(x) + F.silu(x) + F.relu6(x) + F.hardsigmoid(x) + torch.tanh(x)
        return self.lrelu(y + z)


def test_hardswish_silu_relu6(assert_same) -> None:
    g = compile_quietly(Activations(), (2, 4, 4))
    got = kinds(g)
    for kind in ("hardswish", "silu", "relu6", "hardsigmoid", "tanh", "leaky_relu"):
        assert kind in got, kind
    assert got.count("hardswish") == 2 and got.count("silu") == 2 and got.count("relu6") == 2
    assert g["lrelu"].attrs["negative_slope"] == 0.2
    assert_same(Activations(), g)


class Scalars(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - x * 0.5) / 4 + 2 - x.sub(3) * (2 / (x.abs() + 1))


def test_scalar_arithmetic(assert_same) -> None:
    with pytest.warns(OpaqueOperatorWarning, match="abs"):  # abs is not in the registry
        g = from_module(Scalars(), (3, 4, 4))
    scalar = {n.name: (n.kind, n.attrs["scalar"], n.attrs.get("scalar_first", False)) for n in g
              if "scalar" in n.attrs}
    assert scalar["mul"] == ("mul", 0.5, False)
    assert scalar["sub"] == ("sub", 1, True)
    assert scalar["truediv"] == ("div", 4, False)
    assert scalar["add"] == ("add", 2, False)
    assert scalar["sub_1"] == ("sub", 3, False)
    assert scalar["truediv_1"] == ("div", 2, True)
    assert all(n.shape == (1, 3, 4, 4) for n in g)
    assert_same(Scalars(), g)


# --- inputs, outputs, api -------------------------------------------------------------------------
class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.a(x) + self.b(mask)
        return y, F.max_pool2d(y, 2)


def test_several_inputs_and_outputs(assert_same) -> None:
    m = TwoInputs().eval()
    g = automtl.compile(m, [(3, 6, 6), (1, 6, 6)])
    assert g.inputs == ["x", "mask"]
    assert g.output_shapes() == {"add": (1, 4, 6, 6), "max_pool2d": (1, 4, 3, 3)}
    assert_same(m, g)


def test_input_shape_with_batch_and_errors() -> None:
    g = from_module(Residual(), (4, 8, 5, 5))
    assert g["x"].shape == (4, 8, 5, 5) and g.output_shapes() == {"relu_1": (4, 8, 5, 5)}
    with pytest.raises(CompileError, match="input_shape"):
        automtl.compile(Residual())
    with pytest.raises(CompileError, match="2 inputs but 1"):
        from_module(TwoInputs(), (3, 6, 6))
    with pytest.raises(CompileError, match="expects 8 input channels"):
        from_module(Residual(), (3, 5, 5))


def test_unused_operators_are_pruned() -> None:
    class Dead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Conv2d(3, 3, 1)
            self.unused = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.unused(x)
            return self.used(x)

    g = from_module(Dead(), (3, 4, 4))
    assert [n.name for n in g] == ["x", "used"]


# --- parameter and FLOP counts ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "module",
    [Residual(), Concat(), Head("view"), ConvVariants(), ConvTranspose(), SqueezeExcite(), TwoInputs()],
    ids=lambda m: type(m).__name__,
)
def test_params_match_module_parameters(module: nn.Module) -> None:
    shapes = {"Residual": (8, 6, 6), "Concat": (3, 5, 5), "Head": (3, 8, 8), "ConvVariants": (8, 11, 11),
              "ConvTranspose": (6, 4, 4), "SqueezeExcite": (8, 4, 4), "TwoInputs": [(3, 4, 4), (1, 4, 4)]}
    g = compile_quietly(module, shapes[type(module).__name__])
    assert g.params == n_params(module)
    assert g.params == sum(n.params for n in g)


def test_conv_flops_are_two_times_macs() -> None:
    """FLOPs = 2 x MACs: a multiply-add counts as two operations; bias adds are not counted."""
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1))
    g = compile_quietly(conv, (3, 16, 16))
    node = g["0"]
    assert node.shape == (1, 8, 8, 8)
    macs = 8 * 8 * 8 * (3 * 3 * 3)  # output elements x (C_in/groups x k x k)
    assert node.flops == 2 * macs == 27_648
    assert node.params == 8 * 3 * 3 * 3 + 8


def test_grouped_conv_and_linear_flops_batch_scaled() -> None:
    """FLOPs = 2 x MACs, for a grouped conv and a linear layer, counted for the whole batch."""
    m = nn.Sequential(nn.Conv2d(8, 4, 3, groups=2, bias=False), nn.Flatten(), nn.Linear(4 * 3 * 3, 5))
    g = compile_quietly(m, (2, 8, 5, 5))
    assert g["0"].flops == 2 * (2 * 4 * 3 * 3) * (4 * 3 * 3)
    assert g["2"].flops == 2 * (2 * 5) * 36
    assert g.flops == sum(n.flops for n in g)
