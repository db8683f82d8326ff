"""The torch.fx frontend on a suite of popular CNN patterns (tests/cnn_patterns.py), with no hint.

Every pattern must compile with no ``leaf_modules=`` / ``wrap_functions=``, count exactly the source
module's parameters, and compute what the source computes; over the suite at most 5% of the operators
may stay opaque. The counts are printed (``pytest -s``) as a table.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from cnn_patterns import PATTERNS
from torch import nn

import automtl
from automtl.compiler.frontends.fx import OpaqueOperatorWarning
from automtl.compiler.ir import Graph

SHAPE = (3, 32, 32)
MAX_OPAQUE_FRACTION = 0.05


def compile_pattern(name: str, randomize) -> tuple[nn.Module, Graph]:
    torch.manual_seed(0)
    module = randomize(PATTERNS[name]())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OpaqueOperatorWarning)
        return module, automtl.compile(module, input_shape=SHAPE)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", list(PATTERNS))
def test_pattern_compiles_exactly_with_no_hint(name: str, randomize, assert_same) -> None:
    module, graph = compile_pattern(name, randomize)
    assert graph.params == n_params(module), "every parameter counted once"
    assert [n.name for n in graph if n.kind == "opaque"] == []
    assert_same(module, graph, batch=3)


def test_suite_opaque_fraction_and_counts(randomize) -> None:
    rows = []
    kinds: Counter[str] = Counter()
    for name in PATTERNS:
        module, graph = compile_pattern(name, randomize)
        ops = [n for n in graph if n.kind != "input"]
        kinds.update(n.kind for n in ops)
        rows.append((name, len(ops), sum(n.kind == "opaque" for n in ops), graph.params, n_params(module)))
    total, opaque = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"\n{'pattern':18s} {'ops':>5s} {'opaque':>6s} {'params':>8s} {'source':>8s}")
    for row in rows:
        print(f"{row[0]:18s} {row[1]:5d} {row[2]:6d} {row[3]:8d} {row[4]:8d}")
    print(f"{len(rows)} patterns: {total} operators, {opaque} opaque ({opaque / total:.1%}); kinds: {dict(kinds)}")
    assert len(rows) >= 20
    assert opaque <= MAX_OPAQUE_FRACTION * total
    assert all(r[3] == r[4] for r in rows)
    # the patterns exercise what they are meant to exercise
    for kind in ("batch_norm", "layer_norm", "parameter", "permute", "narrow", "reshape", "pad", "concat",
                 "interpolate", "avg_pool2d", "hardswish", "hardsigmoid", "silu", "gelu", "linear"):
        assert kinds[kind] > 0, kind


def test_reused_relu_gets_one_operator_per_call(randomize) -> None:
    _, graph = compile_pattern("resnet_d", randomize)
    assert [n.name for n in graph if n.name.startswith("layer1.relu")] == [
        "layer1.relu", "layer1.relu_1", "layer1.relu_2",
    ]
    assert {graph[n].kind for n in ("layer1.relu", "layer1.relu_1", "layer1.relu_2")} == {"relu"}


def test_fused_bn_act_is_a_batch_norm_named_after_its_module(randomize) -> None:
    module, graph = compile_pattern("fused_bn_act", randomize)
    for bn in ("bn1", "bn2", "bn3"):
        node = graph[bn]
        assert node.kind == "batch_norm" and node.params == 2 * node.attrs["num_features"]
        assert torch.equal(node.tensors["running_var"], module.get_submodule(bn).running_var)
    assert graph["bn2.act"].kind == "hardswish"


def test_dynamic_same_padding_is_static_pad_and_conv(randomize) -> None:
    _, graph = compile_pattern("tf_same_padding", randomize)
    pads = [n.attrs["pad"] for n in graph if n.kind == "pad"]
    assert pads == [[0, 1, 0, 1], [1, 2, 1, 2], [0, 1, 0, 1]]  # 32 -> 16 (k3 s2), 16 -> 8 (k5 s2), 8 -> 4
    assert (graph["conv_stem"].kind, graph["conv_stem"].attrs["padding"]) == ("conv2d", (0, 0))
    assert graph["max_pool2d"].shape == (1, 8, 4, 4)


def test_convnext_layer_norms_permutes_and_layer_scale(randomize) -> None:
    module, graph = compile_pattern("convnext", randomize)
    assert graph["stem.1"].kind == "layer_norm" and graph["stem.1"].shape == (1, 8, 8, 16)
    assert graph["stage1.gamma"].kind == "parameter" and graph["stage1.gamma"].shape == (16,)
    assert graph["stage2.gamma"].shape == (1, 24, 1, 1)  # `gamma.reshape(1, -1, 1, 1)` folded into the operator
    assert graph["stage1.gamma"].params == 16 and graph["stage1.fc1"].shape == (1, 8, 8, 64)


# --- one small module per feature -------------------------------------------------------------------
def compile_quietly(module: nn.Module, shape: tuple[int, ...]) -> Graph:
    """Compile and fail on any OpaqueOperatorWarning (the module should be fully typed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", OpaqueOperatorWarning)
        return automtl.compile(module, input_shape=shape)


class FunctionalNorms(nn.Module):
    """Norms called as functions on parameters and buffers, with and without affine weights."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4, affine=False)
        self.gn_weight, self.gn_bias = nn.Parameter(torch.rand(4) + 0.5), nn.Parameter(torch.randn(4))
        self.ln_weight = nn.Parameter(torch.rand(6) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(x, self.bn.running_mean, self.bn.running_var, None, None, False, 0.1, 1e-5)
        y = F.group_norm(y, 2, self.gn_weight, self.gn_bias, 1e-5)
        z = F.layer_norm(y, (6,), self.ln_weight, None)  # over the last axis, no bias
        return z + F.layer_norm(y, y.shape[-2:])  # over the last two axes, no affine


def test_functional_norms_are_typed_and_counted(assert_same) -> None:
    m = FunctionalNorms().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
    g = compile_quietly(m, (4, 5, 6))
    assert [n.kind for n in g] == ["input", "batch_norm", "group_norm", "layer_norm", "layer_norm", "add"]
    bn = g["batch_norm"]
    assert bn.attrs["affine"] is False and bn.params == 0 and sorted(bn.tensors) == [
        "running_mean", "running_var"]
    assert g["group_norm"].params == 8 and g["layer_norm"].params == 6 and g["layer_norm_1"].params == 0
    assert g["layer_norm_1"].attrs["normalized_shape"] == (5, 6)
    assert g.params == n_params(m)
    assert_same(m, g, batch=3)


class BNAct(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                                   self.momentum, self.eps))


def test_functional_batch_norm_follows_train_and_eval_like_the_source(randomize) -> None:
    """Traced in training mode, the typed batch norm normalises by batch statistics and updates its running
    statistics as the source does; in eval mode it uses them."""
    m = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), BNAct(4))).train()
    g = compile_quietly(m, (3, 6, 6))
    assert g["1"].kind == "batch_norm" and g["1"].attrs["momentum"] == 0.1
    from automtl.compiler.codegen import codegen

    gm = codegen(g).train()
    x = torch.randn(4, 3, 6, 6)
    assert torch.allclose(gm(x), m(x), atol=1e-5)
    assert torch.allclose(gm.get_submodule("_1").running_mean, m[1].running_mean, atol=1e-6)
    gm.eval(), m.eval()
    assert torch.allclose(gm(x), m(x), atol=1e-5)


def test_fused_bn_act_becomes_a_choice_batch_norm_in_the_supermodel(randomize) -> None:
    m = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), BNAct(4)))
    model = automtl.build(m, {"a": nn.Conv2d(4, 1, 1), "b": nn.Conv2d(4, 1, 1)}, input_shape=(3, 8, 8))
    assert model.mtl_graph["1"].kind == "mtl_batch_norm"
    out = model(torch.randn(2, 3, 8, 8), mode="warmup")
    assert out["a"].shape == (2, 1, 6, 6)


class LayerScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(4) + 0.5)
        self.beta = nn.Parameter(torch.randn(4))
        self.shared = nn.Parameter(torch.randn(4, 1, 1))
        self.register_buffer("mean", torch.randn(1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x) * self.gamma.view(1, -1, 1, 1) + self.beta[:, None, None]
        y = (y - self.mean) * self.shared  # one parameter read by two operators is counted once
        return y + self.shared


def test_parameters_read_directly_are_counted_once(assert_same) -> None:
    m = LayerScale().eval()
    g = compile_quietly(m, (4, 5, 5))
    params = {n.name: (n.shape, n.params) for n in g if n.kind == "parameter"}
    assert params == {"gamma": ((1, 4, 1, 1), 4), "beta": ((4, 1, 1), 4), "mean": ((1, 4, 1, 1), 0),
                      "shared": ((4, 1, 1), 4)}
    assert g.params == n_params(m)
    assert_same(m, g, batch=3)


class Layout(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a, b = x.chunk(2, 1)
        c, d = torch.split(x, [1, 3], dim=1)
        pieces = [t * 2 for t in x.split(2, 1)]  # a split is a real tuple: it can be looped over
        nhwc = x.permute(0, 2, 3, 1).contiguous()
        s = x.mean((2, 3), keepdim=True)
        return (a + b, c * d[:, :1], torch.cat(pieces, 1), nhwc, x.transpose(2, 3), x[:, :, 1:-1, ::2],
                x[..., None], s.expand(-1, -1, 6, 7) + x, s.squeeze(-1).unsqueeze(-1).expand_as(x))


def test_split_chunk_permute_transpose_slicing_expand_are_typed(assert_same) -> None:
    g = compile_quietly(Layout(), (4, 6, 7))
    kinds = Counter(n.kind for n in g)
    assert kinds["narrow"] == 7 and kinds["permute"] == 2 and kinds["slice"] == 1 and kinds["expand"] == 2
    assert g["contiguous"].kind == "identity" and g["getitem_8"].kind == "reshape"
    assert g["getitem_7"].attrs == {"dims": [2, 3], "starts": [1, 0], "ends": [5, 7], "steps": [1, 2]}
    assert list(g.output_shapes().values()) == [
        (1, 2, 6, 7), (1, 1, 6, 7), (1, 4, 6, 7), (1, 6, 7, 4), (1, 4, 7, 6), (1, 4, 4, 4), (1, 4, 6, 7, 1),
        (1, 4, 6, 7), (1, 4, 6, 7)]
    assert_same(Layout(), g, batch=3)


class BatchSlice(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:1] * 2


def test_slicing_the_batch_axis_stays_opaque_and_exact(assert_same) -> None:
    with pytest.warns(OpaqueOperatorWarning, match="getitem"):
        g = automtl.compile(BatchSlice(), input_shape=(2, 3, 3))
    assert [n.kind for n in g] == ["input", "opaque", "mul"]
    assert_same(BatchSlice(), g, batch=3)


class Siamese(nn.Module):
    """One conv and one batch norm applied to two inputs: their weights must stay one bank."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn(self.conv(x)))
        b = self.relu(self.bn(self.conv(F.avg_pool2d(x, 3, 1, 1))))
        return a + b


def test_weighted_module_called_twice_is_one_tied_weight_bank(randomize, assert_same) -> None:
    m = randomize(Siamese())
    g = compile_quietly(m, (3, 6, 6))
    assert [(n.name, n.kind) for n in g if n.name[:4] in ("conv", "bn", "bn_1", "relu")] == [
        ("conv", "tied_module"), ("bn", "tied_module"), ("relu", "relu"), ("conv_1", "tied_module"),
        ("bn_1", "tied_module"), ("relu_1", "relu")]
    assert (g["conv"].attrs["tie"], g["conv_1"].attrs["tie"]) == (None, "conv")
    assert g["conv"].params == n_params(m.conv) and g["conv_1"].params == 0
    assert g.params == n_params(m)
    gm = assert_same(m, g)
    assert gm.conv is gm.conv_1 and gm.bn is gm.bn_1 and gm.conv is not m.conv  # one copy, its own
    assert sum(p.numel() for p in gm.parameters()) == n_params(m)


class DynamicShapes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding="same", dilation=2)
        self.valid = nn.Conv2d(3, 3, 3, padding="valid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.shape[-1] > 6:  # control flow on a static size
            y = F.max_pool2d(y, 2)
        return F.interpolate(self.valid(y), size=x.shape[2:], mode="bilinear")


@pytest.mark.parametrize("size,pooled", [(8, True), (6, False)])
def test_control_flow_on_sizes_and_padding_strings(size: int, pooled: bool, assert_same) -> None:
    m = DynamicShapes().eval()
    g = compile_quietly(m, (3, size, size))
    assert ("max_pool2d" in [n.kind for n in g]) is pooled
    assert g["conv"].attrs["padding"] == (2, 2) and g["valid"].attrs["padding"] == (0, 0)
    assert g["interpolate"].attrs["size"] == (size, size)
    assert_same(m, g, batch=2)


class UNetUp(nn.Module):
    """Decoder code that compares shapes before resizing (``x.shape != skip.shape``)."""

    def __init__(self) -> None:
        super().__init__()
        self.down, self.up = nn.Conv2d(3, 4, 3, 2, 1), nn.ConvTranspose2d(4, 3, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.down(x))
        if y.shape != x.shape:
            y = F.interpolate(y, size=x.shape[-2:], mode="nearest")
        return torch.cat([x, y], 1)


@pytest.mark.parametrize("size,resized", [(8, False), (7, True)])
def test_shape_comparisons_trace(size: int, resized: bool, assert_same) -> None:
    m = UNetUp().eval()
    g = compile_quietly(m, (3, size, size))
    assert ("interpolate" in g) is resized and g.output_shapes() == {"cat": (1, 6, size, size)}
    assert_same(m, g, batch=3)


def test_instance_norm_and_channel_shuffle_modules(assert_same) -> None:
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4, affine=True), nn.ChannelShuffle(2),
                      nn.InstanceNorm2d(4)).eval()
    with torch.no_grad():
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-1, 1)
    g = compile_quietly(m, (3, 7, 7))
    assert [n.kind for n in g] == ["input", "conv2d", "instance_norm", "channel_shuffle", "instance_norm"]
    assert g["1"].params == 8 and g["3"].params == 0 and g.params == n_params(m)
    assert_same(m, g, batch=3)


class LegacySE(nn.Module):
    """Squeeze-excitation as older code writes it: ``view(b, c)``, linear layers, ``expand_as``."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c, c // 4, bias=False), nn.ReLU(inplace=True), nn.Linear(c // 4, c),
                                nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = self.fc(self.pool(x).view(b, c)).view(b, c, 1, 1)
        return x * y.expand_as(x) + F.relu6(x + 3.0).div_(6.0) + x.clamp_min(0.0)


class SpaceToDepth(nn.Module):
    """Per-channel input normalisation by integer indexing, then a strided-slice space-to-depth."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(12, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([torch.unsqueeze(x[:, i], 1) * (0.229 + i / 100) + 0.1 * i for i in range(3)], 1)
        return self.conv(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))


@pytest.mark.parametrize("cls,channels,expected", [
    (LegacySE, 8, {"reshape": 2, "expand": 1, "div": 1, "clip": 1}),
    (SpaceToDepth, 3, {"index_select": 3, "reshape": 3, "slice": 4}),
], ids=["legacy_se", "space_to_depth"])
def test_more_spellings_are_typed(cls: type[nn.Module], channels: int, expected: dict[str, int], assert_same) -> None:
    m = cls().eval()
    g = compile_quietly(m, (channels, 8, 8))
    kinds = Counter(n.kind for n in g)
    assert {k: kinds[k] for k in expected} == expected
    assert g.params == n_params(m)
    assert_same(m, g, batch=3)


def test_compiling_in_training_mode_leaves_the_module_unchanged(randomize) -> None:
    """The fused BN module's forward counts batches in training mode; tracing runs it, compiling must not."""
    module = randomize(PATTERNS["fused_bn_act"]()).train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    graph = automtl.compile(module, input_shape=SHAPE)
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    assert [graph[b].kind for b in ("bn1", "bn2", "bn3")] == ["batch_norm"] * 3


@pytest.mark.parametrize("kind,attrs,shape,message", [
    ("permute", {"dims": [1, 0, 2, 3]}, (1, 2, 3, 4), "keeping the batch first"),
    ("slice", {"dims": [2], "starts": [5], "ends": [9], "steps": [1]}, (1, 2, 3, 4), "empty"),
    ("expand", {"shape": [2, 5, 4]}, (1, 2, 3, 4), "cannot expand"),
    ("layer_norm", {"normalized_shape": (3,), "eps": 1e-5, "affine": True}, (1, 2, 3, 4), "last axes [3]"),
    ("group_norm", {"num_groups": 3, "num_channels": 4, "eps": 1e-5, "affine": True}, (1, 4, 3, 3), "3 groups"),
])
def test_shape_rules_of_the_fx_kinds_name_the_operator(kind: str, attrs: dict, shape: tuple, message: str) -> None:
    from automtl.compiler.ir import Node
    from automtl.compiler.ops import ShapeError, get

    with pytest.raises(ShapeError, match=re.escape(message)) as info:
        get(kind).infer(Node("layer", kind, attrs=attrs), [shape])
    assert "'layer'" in str(info.value)


class KeywordCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(input=x))


def test_module_called_twice_with_keywords_stays_one_opaque_module(assert_same) -> None:
    """A call the IR cannot type makes every call of that module opaque: still one weight bank."""
    m = KeywordCall().eval()
    with pytest.warns(OpaqueOperatorWarning, match="conv, conv_1"):
        g = automtl.compile(m, input_shape=(3, 4, 4))
    assert [n.kind for n in g] == ["input", "opaque", "opaque"]
    gm = assert_same(m, g)
    assert gm.conv is gm.conv_1


def test_tied_calls_count_flops_like_their_kind(randomize) -> None:
    g = automtl.compile(randomize(Siamese()), input_shape=(3, 6, 6))
    conv = 2 * (4 * 6 * 6) * (3 * 3 * 3)  # 2 x MACs of one call
    assert g["conv"].flops == g["conv_1"].flops == conv and g["bn_1"].flops == 2 * 4 * 6 * 6


class MoreActivations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gelu, self.softplus, self.mish = nn.GELU(approximate="tanh"), nn.Softplus(), nn.Mish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gelu(x) + F.gelu(x, approximate="tanh") + F.gelu(x, approximate="none")
        return y + self.softplus(x) + F.softplus(x) + self.mish(x) + F.mish(x)


def test_tanh_gelu_softplus_mish_are_typed(assert_same) -> None:
    g = compile_quietly(MoreActivations(), (3, 4, 4))
    kinds = Counter(n.kind for n in g)
    assert (kinds["gelu_tanh"], kinds["gelu"], kinds["softplus"], kinds["mish"]) == (2, 1, 2, 2)
    assert_same(MoreActivations(), g, batch=3)


class BlurPool(nn.Module):
    """Anti-aliased downsampling: a fixed (buffer) filter in ``F.conv2d`` stays fixed and uncounted."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.register_buffer("filt", (torch.tensor([1.0, 2.0, 1.0])[:, None] * torch.tensor([1.0, 2.0, 1.0]) / 16)
                             .expand(c, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(self.conv(x), (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.filt, stride=2, groups=x.shape[1])


def test_a_buffer_used_as_a_conv_weight_is_not_made_learnable(assert_same) -> None:
    m = BlurPool().eval()
    with pytest.warns(OpaqueOperatorWarning, match="conv2d"):
        g = automtl.compile(m, input_shape=(3, 8, 8))
    assert g["filt"].kind == "parameter" and g["filt"].params == 0 and g["conv2d"].kind == "opaque"
    assert g.params == n_params(m)
    gm = assert_same(m, g, batch=2)
    assert sum(p.numel() for p in gm.parameters()) == n_params(m)
