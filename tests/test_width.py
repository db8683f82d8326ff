"""Channel groups and width scaling (compiler/width.py): ties from the IR, thin graphs equal hand-built ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import automtl
from automtl.backbones.mobilenet import _SETTINGS, ConvBNReLU6, InvertedResidual
from automtl.backbones.resnet import BasicBlock, conv1x1
from automtl.compiler.codegen import codegen
from automtl.compiler.errors import CompileError
from automtl.compiler.width import channel_groups, half_size, scale_widths


class Toy(nn.Module):
    """A residual add, a concatenation, a depthwise and a grouped convolution, BN, a linear classifier."""

    def __init__(self, w: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(w)
        self.a = nn.Conv2d(w, w, 3, padding=1)
        self.b = nn.Conv2d(w, 2 * w, 1)
        self.dw = nn.Conv2d(2 * w, 2 * w, 3, padding=1, groups=2 * w)
        self.dwbn = nn.BatchNorm2d(2 * w)
        self.grouped = nn.Conv2d(3 * w, w, 1, groups=4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = x + self.a(x)
        y = self.dwbn(self.dw(self.b(x)))
        z = self.grouped(torch.cat([x, y], 1))
        return self.fc(torch.flatten(self.pool(z), 1))


def _thin_resnet18(w: int) -> nn.Module:
    stem = [nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    layers: list[nn.Module] = list(stem)
    inplanes = w
    for i, planes in enumerate((w, 2 * w, 4 * w, 8 * w)):
        stride = 1 if i == 0 else 2
        down = None
        if stride != 1 or inplanes != planes:
            down = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers += [BasicBlock(inplanes, planes, stride, 1, down), BasicBlock(planes, planes)]
        inplanes = planes
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(8 * w, 1000))


def _thin_mobilenet_v2(div: int) -> nn.Module:
    in_ch = 32 // div
    features: list[nn.Module] = [ConvBNReLU6(3, in_ch, stride=2)]
    for t, c, n, s in _SETTINGS:
        for i in range(n):
            features.append(InvertedResidual(in_ch, c // div, s if i == 0 else 1, t))
            in_ch = c // div
    features.append(ConvBNReLU6(in_ch, 1280 // div, kernel_size=1))
    return nn.Sequential(*features, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Sequential(nn.Dropout(0.2),
                                                                                       nn.Linear(1280 // div, 1000)))


def _same_costs(thin: automtl.Graph, hand: automtl.Graph) -> None:
    assert thin.params == hand.params and thin.flops == hand.flops
    assert sorted(n.shape for n in thin) == sorted(n.shape for n in hand)
    assert thin.output_shapes() == {thin.outputs[0]: hand[hand.outputs[0]].shape}


def test_channel_groups_follow_adds_concats_depthwise_and_bn() -> None:
    g = automtl.compile(Toy(), (3, 8, 8))
    groups = {grp.name: grp for grp in channel_groups(g)}
    assert groups["x"].fixed == "the graph input" and groups["fc"].fixed.startswith("a graph output")
    stem = groups["stem"]  # stem, its BN and the residual conv a share one count (the add ties them)
    assert {("bn", "num_features"), ("a", "in_channels"), ("a", "out_channels"), ("b", "in_channels"),
            ("grouped", "in_channels")} <= set(stem.members)
    assert "a" not in groups  # a's output is tied into stem's group, so it opens none
    b = groups["b"]  # the depthwise conv and its BN follow b; the grouped conv reads stem's and b's parts
    assert {("dw", "in_channels"), ("dw", "out_channels"), ("dwbn", "num_features"),
            ("grouped", "in_channels")} <= set(b.members)
    assert groups["grouped"].multiple == 4 and stem.multiple == 4 and b.multiple == 4
    assert all(not grp.fixed for name, grp in groups.items() if name not in ("x", "fc"))


def test_half_width_toy_equals_hand_built_module_and_runs() -> None:
    full = automtl.compile(Toy(16), (3, 8, 8))
    thin = scale_widths(full, 0.5)
    _same_costs(thin, automtl.compile(Toy(8), (3, 8, 8)))
    assert thin["dw"].attrs["groups"] == 16 and thin["grouped"].attrs["groups"] == 4
    assert full["a"].attrs["in_channels"] == 16  # the original is untouched
    out = codegen(thin)(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 5)


def test_per_group_factors_and_multiples() -> None:
    full = automtl.compile(Toy(16), (3, 8, 8))
    thin = scale_widths(full, {"b": 0.25})  # only b's group: 32 -> 8 channels; the rest keep theirs
    assert thin["b"].attrs["out_channels"] == 8 and thin["dw"].attrs["groups"] == 8
    assert thin["grouped"].attrs["in_channels"] == 16 + 8 and thin["stem"].attrs["out_channels"] == 16
    odd = scale_widths(full, 0.3)  # 16 * 0.3 = 4.8 -> 4 (a multiple of the grouped conv's 4 groups)
    assert odd["stem"].attrs["out_channels"] % 4 == 0 and odd["grouped"].attrs["out_channels"] % 4 == 0
    with pytest.raises(CompileError, match="no channel group named 'nope'"):
        scale_widths(full, {"nope": 0.5})
    with pytest.raises(CompileError, match="factor -1.0 must be a positive number"):
        scale_widths(full, {"b": -1.0})


def test_resnet18_at_half_width_equals_a_hand_built_half_resnet18() -> None:
    from automtl.backbones import resnet18

    full = automtl.compile(resnet18(), (3, 64, 64))
    _same_costs(scale_widths(full, 0.5), automtl.compile(_thin_resnet18(32), (3, 64, 64)))


def test_mobilenet_v2_at_half_width_equals_a_hand_built_half_mobilenet() -> None:
    from automtl.backbones import mobilenet_v2

    full = automtl.compile(mobilenet_v2(), (3, 64, 64))
    thin = scale_widths(full, 0.5)
    _same_costs(thin, automtl.compile(_thin_mobilenet_v2(2), (3, 64, 64)))
    dws = [n for n in thin if n.kind == "conv2d" and n.attrs["groups"] > 1]
    assert dws and all(n.attrs["groups"] == n.attrs["in_channels"] == n.attrs["out_channels"] for n in dws)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_half_size_of_zoo_backbones_halves_flops_and_runs(name: str) -> None:
    from automtl import backbones

    full = automtl.compile(backbones.get(name), (3, 64, 64))
    half = half_size(full)
    assert abs(half.flops_ratio - 0.5) < 0.03 and 0.3 < half.params_ratio < 0.7
    assert half.graph.flops == pytest.approx(0.5 * full.flops, rel=0.06)
    assert 0.5 < half.factor < 0.9  # FLOPs fall about as the square of the width
    assert half.graph.output_shapes() == full.output_shapes()  # the classifier keeps its 1000 classes
    out = codegen(half.graph).eval()(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_trunk_output_thins_when_not_kept() -> None:
    trunk = automtl.compile(automtl.backbones.get("resnet18"), (3, 64, 64))
    from automtl.compiler.passes import cut

    trunk = cut(trunk, "layer4.1.relu2")
    kept = half_size(trunk)
    thin = half_size(trunk, keep_outputs=False)
    assert kept.graph.output_shapes()["layer4.1.relu2"][1] == 512  # consumers built for 512 channels still fit
    assert thin.graph.output_shapes()["layer4.1.relu2"][1] < 512
    assert abs(thin.flops_ratio - 0.5) < 0.03


def test_thin_graph_with_weights_computes_the_leading_channels_subnetwork() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(8, 6, 1, bias=False))
    g = automtl.compile(net, (3, 5, 5))
    thin = scale_widths(g, 0.5)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        net[0].weight[4:] = 0  # the channels the thin graph drops contribute nothing
        expect = net(x)
    assert thin["0"].tensors["weight"].shape == (4, 3, 3, 3)
    torch.testing.assert_close(codegen(thin)(x), expect)


def test_channels_read_by_unknown_operators_stay_fixed() -> None:
    class Reshaping(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x).reshape(x.shape[0], 8, 4, 4)
            return self.b(y)

    g = automtl.compile(Reshaping(), (3, 4, 4))
    groups = {grp.name: grp for grp in channel_groups(g, keep_outputs=False)}
    assert "reshape" in groups["a"].fixed
    thin = scale_widths(g, 0.5, keep_outputs=False)
    assert thin["a"].attrs["out_channels"] == 8 and thin["b"].attrs["out_channels"] == 4
    with pytest.raises(CompileError, match="target"):
        half_size(g, target=0)


class Chunked(nn.Module):
    """A channel split (chunk into two halves, as shuffle and res2net blocks do), one conv per part, concat."""

    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, w, 3, padding=1)
        self.left = nn.Conv2d(w // 2, w // 2, 3, padding=1)
        self.right = nn.Conv2d(w // 2, w, 1)
        self.head = nn.Conv2d(w // 2 + w, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(self.stem(x), 2, dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], 1))


def test_channel_splits_scale_with_their_space() -> None:
    full = automtl.compile(Chunked(16), (3, 8, 8))
    thin = scale_widths(full, 0.5)
    _same_costs(thin, automtl.compile(Chunked(8), (3, 8, 8)))
    narrows = [n for n in thin if n.kind == "narrow"]
    assert [(n.attrs["start"], n.attrs["length"]) for n in narrows] == [(0, 4), (4, 4)]
    odd = scale_widths(full, 0.3)  # 16 * 0.3 = 4.8: the stem's count stays even so both halves stay whole
    assert odd["stem"].attrs["out_channels"] % 2 == 0
    assert codegen(odd)(torch.randn(1, 3, 8, 8)).shape == (1, 4, 8, 8)
    groups = {g.name: g for g in channel_groups(full)}
    assert groups["stem"].multiple == 2 and not groups["stem"].fixed
