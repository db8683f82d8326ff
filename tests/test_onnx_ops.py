"""ONNX operators read since the frontend became a package: layout (Split, Transpose, Gather,
Expand, strided Slice), normalisation (Layer/Instance/GroupNormalization, fused group norms), and
others, each against onnxruntime; a ConvNeXt / MixNet-style export against torch and onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper
from onnx_util import assert_matches_ort, kinds, make_model, run_ort, torch_export, w
from torch import nn

from automtl import build
from automtl.compiler.codegen import codegen
from automtl.compiler.errors import CompileError
from automtl.compiler.frontends.onnx import from_onnx

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest)


# --- newer operators against onnxruntime ------------------------------------------------------------
def _operator_cases() -> list:
    node = helper.make_node
    i64 = np.int64
    return [
        pytest.param([node("Split", ["x"], ["a", "b"], axis=1, split=[1, 3])], {}, 11, ["narrow"] * 2,
                     id="split-attr-opset11"),
        pytest.param([node("Split", ["x", "s"], ["a", "b", "c"], axis=1)], {"s": np.array([2, 1, 1], i64)}, 13,
                     ["narrow"] * 3, id="split-input"),
        pytest.param([node("Split", ["x"], ["a", "b", "c"], axis=-1, num_outputs=3)], {}, 18, ["narrow"] * 3,
                     id="split-uneven-num-outputs"),
        pytest.param([node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), node("Relu", ["t"], ["r"]),
                      node("Transpose", ["r"], ["y"], perm=[0, 3, 1, 2])], {}, 17, ["permute", "relu", "permute"],
                     id="transpose-channels-last"),
        pytest.param([node("Gather", ["x", "i"], ["y"], axis=1)], {"i": np.array(2, i64)}, 13, ["index_select"],
                     id="gather-scalar"),
        pytest.param([node("Gather", ["x", "i"], ["y"], axis=3)], {"i": np.array([[4, 0], [-1, 2]], i64)}, 13,
                     ["index_select"], id="gather-2d-negative"),
        pytest.param([node("Gather", ["x", "i"], ["y"], axis=2)], {"i": np.array([1, 2], i64)}, 13, ["narrow"],
                     id="gather-range"),
        pytest.param([node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1), node("Expand", ["m", "s"], ["y"])],
                     {"s": np.array([1, 4, 1, 5], i64)}, 13, ["mean", "expand"], id="expand"),
        pytest.param([node("LayerNormalization", ["x", "g", "b"], ["y"], epsilon=1e-3)],
                     {"g": w(5), "b": w(5)}, 17, ["layer_norm"], id="layer-norm-last"),
        pytest.param([node("LayerNormalization", ["x", "g"], ["y"], axis=1)], {"g": w(4, 3, 5)}, 17,
                     ["layer_norm"], id="layer-norm-axis1-no-bias"),
        pytest.param([node("InstanceNormalization", ["x", "g", "b"], ["y"], epsilon=1e-4)],
                     {"g": w(4), "b": w(4)}, 17, ["instance_norm"], id="instance-norm"),
        pytest.param([node("GroupNormalization", ["x", "g", "b"], ["y"], num_groups=2)],
                     {"g": w(4), "b": w(4)}, 21, ["group_norm"], id="group-norm-21"),
        pytest.param([node("LayerNormalization", ["x", "g", "b"], ["y", "mean", "inv_std"], axis=2)],
                     {"g": w(3, 5), "b": w(3, 5)}, 17, ["layer_norm", "mean", "sub", "mul", "mean", "add", "rsqrt"],
                     id="layer-norm-statistics"),
        pytest.param([node("PRelu", ["x", "slope"], ["y"])], {"slope": w(3, 5)}, 16,
                     ["parameter", "clip", "mul", "relu", "add"], id="prelu-broadcast"),
        pytest.param([node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])],
                     {"st": np.array([1, 0], i64), "en": np.array([4, 99], i64), "ax": np.array([1, 3], i64),
                      "sp": np.array([2, 2], i64)}, 13, ["slice"], id="slice-steps"),
        pytest.param([node("Erf", ["x"], ["e"]), node("Softplus", ["e"], ["s"]), node("Gelu", ["s"], ["y"],
                      approximate="tanh")], {}, 20, ["erf", "softplus", "gelu_tanh"], id="erf-softplus-gelu-tanh"),
        pytest.param([node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[2, 0, 2, 1])], {}, 17,
                     ["pad", "max_pool2d"], id="maxpool-pads-over-half-kernel"),
        pytest.param([node("AveragePool", ["x"], ["y"], kernel_shape=[3, 2], pads=[2, 1, 1, 0], count_include_pad=1)],
                     {}, 17, ["pad", "avg_pool2d"], id="avgpool-include-pads-over-half-kernel"),
        pytest.param([node("ConvTranspose", ["x", "W", "B"], ["y"], strides=[2, 2], output_shape=[7, 10])],
                     {"W": w(4, 2, 3, 3), "B": w(2)}, 17, ["conv_transpose2d", "narrow"], id="deconv-output-shape"),
        pytest.param([node("ConvTranspose", ["x", "W"], ["y"], strides=[2, 2], auto_pad="SAME_UPPER")],
                     {"W": w(4, 2, 4, 3)}, 17, ["conv_transpose2d", "narrow"], id="deconv-same-upper"),
        pytest.param([node("ConvTranspose", ["x", "W"], ["y"], pads=[0, 2, 1, 1])], {"W": w(4, 2, 3, 3)}, 17,
                     ["conv_transpose2d", "narrow", "narrow"], id="deconv-asymmetric-pads"),
    ]


@pytest.mark.parametrize(("nodes", "inits", "opset", "want"), _operator_cases())
def test_operator_matches_onnxruntime(nodes: list, inits: dict, opset: int, want: list) -> None:
    """Each case compiles to the typed kinds ``want`` and computes what onnxruntime does."""
    outputs = list(nodes[-1].output)
    model = make_model(nodes, {"x": (2, 4, 3, 5)}, outputs, inits, opset=opset)
    graph = assert_matches_ort(model, (2, 4, 3, 5))
    assert kinds(graph) == want


def test_group_norm_18_is_refused_by_the_checker() -> None:
    """Version 18 (one scale per group) is deprecated: the checker refuses it, naming the node."""
    node = helper.make_node("GroupNormalization", ["x", "g", "b"], ["y"], num_groups=2)
    model = make_model([node], {"x": (2, 4, 3, 5)}, ["y"], {"g": w(2), "b": w(2)}, opset=18)
    msg = r"GroupNormalization '#0': the ONNX checker rejects the model: .*deprecated"
    with pytest.raises(CompileError, match=msg):
        from_onnx(model)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_group_norm_spelled_out_is_fused(scale: float) -> None:
    """Reshape -> InstanceNormalization(1, 0) -> Reshape -> Mul -> Add is one group_norm; a scaling one is not."""
    node = helper.make_node
    nodes = [node("Reshape", ["x", "grouped"], ["g"]), node("InstanceNormalization", ["g", "ones", "zeros"], ["n"]),
             node("Reshape", ["n", "full"], ["f"]), node("Mul", ["f", "gamma"], ["m"]),
             node("Add", ["m", "beta"], ["y"])]
    inits = {"grouped": np.array([0, 2, -1], np.int64), "full": np.array([0, 4, 3, 5], np.int64),
             "ones": np.full(2, scale, np.float32), "zeros": np.zeros(2, np.float32), "gamma": w(4, 1, 1),
             "beta": w(4, 1, 1)}
    graph = assert_matches_ort(make_model(nodes, {"x": (2, 4, 3, 5)}, ["y"], inits), (2, 4, 3, 5))
    if scale == 1.0:
        assert kinds(graph) == ["group_norm"] and graph.params == 8
    else:
        assert kinds(graph) == ["reshape", "instance_norm", "reshape", "parameter", "mul", "parameter", "add"]


class ConvNeXtMix(nn.Module):
    """What the exporter writes for ConvNeXt / MixNet / Res2Net blocks: permute + LayerNorm + layer
    scale, channel splits into differently sized convolutions, x[:, i] and expand_as, group/instance norm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.norm = nn.LayerNorm(8, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.gamma = nn.Parameter(torch.full((8,), 0.5))
        self.mix = nn.ModuleList([nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 5, padding=2),
                                  nn.Conv2d(4, 4, 1)])
        self.gn, self.inorm = nn.GroupNorm(4, 8), nn.InstanceNorm2d(8, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))) * self.gamma
        x = x + y.permute(0, 3, 1, 2)
        x = torch.cat([m(c) for m, c in zip(self.mix, torch.split(x, [2, 2, 4], dim=1), strict=True)], dim=1)
        gate = torch.sigmoid(x[:, 3]).unsqueeze(1).expand_as(x)
        return self.inorm(self.gn(x * gate))


@pytest.mark.parametrize(("opset", "dynamo"), [(17, False), (20, False), (20, True)],
                         ids=["torchscript-17", "torchscript-20", "dynamo"])  # opset 17: GELU spelled out with Erf
def test_convnext_mixnet_export(opset: int, dynamo: bool, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ConvNeXtMix().eval()
    with torch.no_grad():
        for m in (model.gn, model.inorm, model.norm):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_()
    x = torch.randn(2, 3, 12, 12)
    kwargs = {} if dynamo else {"opset_version": opset}
    path = torch_export(model, x, tmp_path / "mix.onnx", dynamo=dynamo, **kwargs)
    graph = from_onnx(path)
    ks = kinds(graph)
    assert {"permute", "layer_norm", "gelu" if opset >= 20 else "erf", "index_select", "expand"} <= set(ks)
    # the exporter writes GroupNorm as Reshape -> InstanceNormalization -> Reshape -> Mul -> Add: fused back
    assert ks.count("narrow") == 3 and ks.count("group_norm") == 1 and ks.count("instance_norm") == 1
    assert graph.params == sum(p.numel() for p in model.parameters())  # the layer scale gamma included
    with torch.no_grad():
        want = model(x)
        got = codegen(graph).eval()(x)
    assert (got - want).abs().max().item() <= 1e-4
    (ort_out,) = run_ort(path, x.numpy())
    assert np.abs(ort_out - got.numpy()).max() <= 1e-4


def test_supermodel_on_an_export(tmp_path: Path) -> None:
    """build() on the opset-17 export: all-shared fixed mode equals the source module with the heads;
    derived models equal fixed mode (all shared and all specific)."""
    torch.manual_seed(0)
    source, x = ConvNeXtMix().eval(), torch.randn(2, 3, 12, 12)
    path = torch_export(source, x, tmp_path / "mix.onnx", opset_version=17)
    heads = {t: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n)) for t, n in (("a", 3), ("b", 2))}
    model = build(str(path), heads).eval()
    with torch.no_grad():
        features = source(x)
        for kind in ("shared", "specific"):
            arch = model.uniform_architecture(kind)
            fixed = model(x, mode="fixed", architecture=arch)
            derived = model.derive(arch).eval().as_dict(x)
            for task in heads:
                assert (derived[task] - fixed[task]).abs().max().item() <= 1e-6
                if kind == "shared":
                    assert (fixed[task] - model.heads[task](features)).abs().max().item() <= 1e-5
