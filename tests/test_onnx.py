"""ONNX frontend and export: round trips through torch.onnx, onnxruntime and codegen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from onnx_util import assert_matches_ort, calibrate, kinds, make_model, run_ort, torch_export, w
from torch import nn

from automtl import backbones
from automtl.compiler.codegen import codegen
from automtl.compiler.errors import CompileError
from automtl.compiler.frontends.fx import from_module
from automtl.compiler.frontends.onnx import from_onnx, max_opset

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest)

# --- zoo round trips ---------------------------------------------------------------------------
ZOO = backbones.names()


def _size(name: str) -> int:
    return 32 if name == "tiny_cnn" else 64


@pytest.mark.parametrize("name", ZOO)
def test_zoo_round_trip(name: str, tmp_path: Path) -> None:
    """torch -> ONNX (TorchScript exporter, BN kept) -> IR -> codegen equals torch and onnxruntime."""
    shape = (3, _size(name), _size(name))
    model = calibrate(backbones.get(name), shape)
    x = torch.randn(2, *shape)
    path = torch_export(model, x, tmp_path / f"{name}.onnx", do_constant_folding=False)
    graph = from_onnx(path)
    assert graph.inputs == ["x"] and graph[graph.inputs[0]].shape == (1, *shape)
    # the same operators, parameters and FLOPs as the fx frontend (eval-mode export drops Dropout)
    traced = from_module(model, shape)
    assert kinds(graph) == [k for k in kinds(traced) if k != "dropout"]
    assert (graph.params, graph.flops) == (traced.params, traced.flops)
    gm = codegen(graph).eval()
    with torch.no_grad():
        want = model(x)
        got = gm(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-5
    (ort_out,) = run_ort(path, x.numpy())
    assert np.abs(ort_out - want.numpy()).max() <= 1e-4
    # weights carry the torch state-dict names
    conv = graph[next(n.name for n in graph if n.kind == "conv2d")]
    torch.testing.assert_close(conv.tensors["weight"], model.state_dict()[f"{conv.name}.weight"])
    bn = graph[next(n.name for n in graph if n.kind == "batch_norm")]
    assert set(bn.tensors) == {"weight", "bias", "running_mean", "running_var"}
    torch.testing.assert_close(bn.tensors["running_var"], model.state_dict()[f"{bn.name}.running_var"])


def test_folded_bn_export(tmp_path: Path) -> None:
    """The default TorchScript export folds BN into the convolutions; the IR follows it."""
    model = calibrate(backbones.get("resnet18"), (3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    import automtl

    graph = automtl.compile(torch_export(model, x, tmp_path / "r18.onnx"))  # .onnx paths go to from_onnx
    assert "batch_norm" not in kinds(graph)
    assert [n.name for n in graph if n.kind == "conv2d"][:2] == ["conv1", "layer1.0.conv1"]
    with torch.no_grad():
        assert (codegen(graph).eval()(x) - model(x)).abs().max().item() <= 1e-4


class ViewNet(nn.Module):
    """What torch.onnx emits for view(size(0), -1) and other shape arithmetic, relu6, hardswish, resizing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = F.relu6(self.bn(self.conv(x)))
        y = torch.cat([F.hardswish(y), F.hardsigmoid(y) * y], dim=1)
        z = F.max_pool2d(y, 2, ceil_mode=True)
        z = F.avg_pool2d(z, 2)
        seg = F.interpolate(self.up(y), size=(10, 10), mode="nearest")
        big = F.interpolate(z, size=(z.shape[2] * 2, z.shape[3] * 2), mode="bilinear", align_corners=True)
        pooled = big.reshape(big.shape[0], big.shape[1], -1).mean(-1)
        return (
            self.fc(z.view(z.size(0), -1)).softmax(-1),
            seg.mean((2, 3), keepdim=True) - 0.5,
            pooled.view(-1, 8)[:, 2:6],
        )


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_shape_arithmetic_is_folded(dynamo: bool, tmp_path: Path) -> None:
    model = calibrate(ViewNet(), (3, 16, 16))
    x = torch.randn(3, 3, 16, 16)
    path = torch_export(model, x, tmp_path / "view.onnx", dynamo=dynamo)
    graph = from_onnx(path)
    ks = kinds(graph)
    assert "flatten" in ks and ks.count("reshape") == 1 and "narrow" in ks
    assert not any(n.kind == "opaque" for n in graph), graph.table()
    with torch.no_grad():
        want = model(x)
        got = codegen(graph).eval()(x)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-5


# --- single operators against onnxruntime --------------------------------------------------------
def _conv_cases() -> list:
    node = helper.make_node
    return [
        pytest.param(
            [node("Conv", ["x", "W", "B"], ["y"], pads=[0, 1, 2, 1], strides=[2, 1], dilations=[1, 2])],
            {"W": w(6, 3, 3, 3), "B": w(6)}, (2, 3, 9, 10), id="asymmetric-pads-dilation",
        ),
        pytest.param(
            [node("Conv", ["x", "W"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2], group=3)],
            {"W": w(6, 1, 3, 3)}, (2, 3, 8, 8), id="same-upper-grouped",
        ),
        pytest.param(
            [node("Conv", ["x", "W"], ["y"], auto_pad="SAME_LOWER", strides=[2, 2])],
            {"W": w(4, 3, 4, 4)}, (1, 3, 9, 9), id="same-lower",
        ),
        pytest.param(
            [node("ConvTranspose", ["x", "W", "B"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1],
                  output_padding=[1, 0])],
            {"W": w(3, 4, 3, 3), "B": w(4)}, (2, 3, 5, 5), id="conv-transpose",
        ),
        pytest.param(
            [node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)],
            {"s": w(3), "b": w(3), "m": w(3), "v": np.abs(w(3)) + 0.5}, (2, 3, 4, 4), id="batch-norm",
        ),
    ]


@pytest.mark.parametrize(("nodes", "inits", "shape"), _conv_cases())
def test_conv_like(nodes: list, inits: dict, shape: tuple) -> None:
    assert_matches_ort(make_model(nodes, {"x": shape}, ["y"], inits), shape)


def test_gemm_alpha_beta_and_matmul_bias() -> None:
    node = helper.make_node
    model = make_model(
        [
            node("Flatten", ["x"], ["f"], axis=1),
            node("Gemm", ["f", "W", "C"], ["g"], alpha=0.5, beta=2.0, transB=0),
            node("Gemm", ["f", "W2"], ["h"], transB=1),
            node("Unsqueeze", ["g", "ax"], ["g3"]),
            node("MatMul", ["g3", "M"], ["mm"]),
            node("Add", ["mm", "mb"], ["y"]),
        ],
        {"x": ("N", 2, 3, 2)}, ["y", "h"],
        {"W": w(12, 5), "C": w(1, 5), "W2": w(7, 12), "ax": np.array([1]), "M": w(5, 4), "mb": w(4)},
    )
    graph = assert_matches_ort(model, (3, 2, 3, 2))
    linears = [n for n in graph if n.kind == "linear"]
    assert [n.attrs["bias"] for n in linears] == [True, False, True]  # MatMul + Add became one linear
    assert linears[0].tensors["weight"].shape == (5, 12)


@pytest.mark.parametrize(
    ("opset", "inputs", "attrs", "kind"),
    [
        (10, ["x"], {"min": 0.0, "max": 6.0}, "relu6"),
        (13, ["x", "lo", "hi"], {}, "clip"),
        (13, ["x", "zero"], {}, "relu"),
        (13, ["x", "zero", "six"], {}, "relu6"),
    ],
)
def test_clip(opset: int, inputs: list, attrs: dict, kind: str) -> None:
    consts = {"lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32),
              "zero": np.array(0.0, np.float32), "six": np.array(6.0, np.float32)}
    nodes = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(consts[n]))
             for n in inputs[1:]]
    nodes.append(helper.make_node("Clip", inputs, ["y"], **attrs))
    model = make_model(nodes, {"x": (2, 3)}, ["y"], opset=opset)
    assert kinds(assert_matches_ort(model, (2, 3))) == [kind]


def test_activations_and_elementwise() -> None:
    node = helper.make_node
    c = np.float32
    model = make_model(
        [
            node("HardSigmoid", ["x"], ["a"]),  # alpha 0.2: decomposed exactly
            node("HardSigmoid", ["x"], ["b"], alpha=1 / 6, beta=0.5),
            node("HardSwish", ["x"], ["h"]),
            node("LeakyRelu", ["x"], ["l"], alpha=0.2),
            node("Sigmoid", ["x"], ["s"]),
            node("Tanh", ["x"], ["t"]),
            node("Elu", ["x"], ["e"], alpha=0.7),
            node("PRelu", ["x", "slope"], ["p"]),
            node("Sub", ["two", "a"], ["a1"]),  # scalar - tensor
            node("Div", ["b", "two"], ["b1"]),  # tensor / scalar
            node("Mul", ["h", "chan"], ["h1"]),  # tensor * per-channel constant
            node("Add", ["l", "s"], ["ls"]),
            node("Div", ["ls", "t"], ["lst"]),
            node("Sum", ["a1", "b1", "h1", "p"], ["sum"]),
            node("Max", ["sum", "e"], ["mx"]),
            node("Concat", ["mx", "lst"], ["y"], axis=1),
        ],
        {"x": (2, 3, 4, 4)}, ["y"],
        {"slope": w(3, 1, 1), "two": np.array([2.0], c), "chan": w(1, 3, 1, 1)},
    )
    graph = assert_matches_ort(model, (2, 3, 4, 4), atol=1e-4)
    ks = kinds(graph)
    assert ks.count("hardsigmoid") == 1 and "prelu" in ks and "maximum" in ks
    sub = next(n for n in graph if n.kind == "sub")
    assert sub.attrs == {"scalar": 2.0, "scalar_first": True}


def _pool_cases() -> list:
    def pool(op: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op, ["x"], ["y"], **attrs)

    k3s2 = {"kernel_shape": [3, 3], "strides": [2, 2]}
    k2s2 = {"kernel_shape": [2, 2], "strides": [2, 2]}
    return [
        pytest.param(pool("MaxPool", **k3s2, pads=[1, 1, 1, 1]), id="max"),
        pytest.param(pool("MaxPool", **k3s2, auto_pad="SAME_UPPER"), id="max-same-upper"),
        pytest.param(pool("MaxPool", **k2s2, ceil_mode=1), id="max-ceil"),
        pytest.param(pool("MaxPool", kernel_shape=[2, 2], dilations=[2, 2]), id="max-dilated-stride1"),
        pytest.param(pool("AveragePool", **k3s2, pads=[1, 1, 1, 1]), id="avg-exclude-pad"),
        pytest.param(pool("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
                     id="avg-include-pad"),
        pytest.param(pool("AveragePool", **k2s2, auto_pad="SAME_LOWER", count_include_pad=1),
                     id="avg-same-lower"),
        pytest.param(pool("GlobalMaxPool"), id="global-max"),
        pytest.param(pool("GlobalAveragePool"), id="global-avg"),
    ]


@pytest.mark.parametrize("pool", _pool_cases())
def test_pooling(pool) -> None:
    assert_matches_ort(make_model([pool], {"x": (2, 3, 7, 8)}, ["y"]), (2, 3, 7, 8))


def test_avg_pool_asymmetric_exclude_pad_rejected() -> None:
    pool = helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2],
                            auto_pad="SAME_UPPER")
    with pytest.raises(CompileError, match=r"AveragePool 'pool'.*asymmetric pads"):
        from_onnx(make_model([pool], {"x": (1, 3, 7, 7)}, ["y"]))


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ([0, -1], "flatten"), ([-1, 24], "flatten"), ([2, 6, 4], "reshape"), ([0, 3, 8], "reshape"),
        ([0, 3, 2, 4], None),
    ],
)
def test_reshape_keeps_batch(target: list, kind: str | None) -> None:
    model = make_model([helper.make_node("Reshape", ["x", "s"], ["y"])], {"x": (2, 3, 2, 4)}, ["y"],
                       {"s": np.array(target, np.int64)})
    ks = kinds(assert_matches_ort(model, (2, 3, 2, 4)))
    assert ks == ([kind] if kind else [])


def test_reshape_across_batch_rejected() -> None:
    model = make_model([helper.make_node("Reshape", ["x", "s"], ["y"], name="r")], {"x": (2, 3, 2, 4)}, ["y"],
                       {"s": np.array([-1, 4], np.int64)})
    with pytest.raises(CompileError, match=r"Reshape 'r'.*does not keep the batch"):
        from_onnx(model)


def _resize_cases() -> list:
    def resize(*inputs: str, **attrs) -> onnx.NodeProto:
        return helper.make_node("Resize", ["x", *inputs], ["y"], **attrs)

    s2 = {"roi": np.zeros(0, np.float32), "sc": np.array([1, 1, 2, 2], np.float32)}
    sizes = {"roi": np.zeros(0, np.float32), "sz": np.array([2, 3, 8, 11], np.int64)}
    floor = {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    return [
        pytest.param(resize("roi", "sc", mode="nearest", **floor), s2, 13, id="nearest"),
        pytest.param(resize("roi", "sc", mode="nearest"), s2, 13, id="nearest-half-pixel-x2"),
        pytest.param(resize("roi", "", "sz", mode="nearest", **floor), sizes, 13, id="nearest-sizes"),
        pytest.param(resize("roi", "", "sz", mode="nearest", nearest_mode="round_prefer_ceil"), sizes, 13,
                     id="nearest-exact"),
        pytest.param(resize("roi", "sc", mode="linear"), s2, 13, id="linear-half-pixel"),
        pytest.param(resize("roi", "", "sz", mode="linear", coordinate_transformation_mode="align_corners"),
                     sizes, 13, id="linear-align-corners"),
        pytest.param(resize("roi", "", "sz", mode="linear", axes=[2, 3],
                            coordinate_transformation_mode="pytorch_half_pixel"),
                     {**sizes, "sz": np.array([8, 11], np.int64)}, 18,
                     id="linear-sizes-axes-opset18"),
        pytest.param(resize("", "", "sz", mode="cubic"), sizes, 13, id="cubic-half-pixel"),
        pytest.param(helper.make_node("Upsample", ["x", "sc"], ["y"], mode="nearest"), {"sc": s2["sc"]}, 9,
                     id="upsample-9"),
    ]


@pytest.mark.parametrize(("resize", "inits", "opset"), _resize_cases())
def test_resize(resize, inits: dict, opset: int) -> None:
    model = make_model([resize], {"x": (2, 3, 4, 5)}, ["y"], inits, opset=opset)
    graph = assert_matches_ort(model, (2, 3, 4, 5))
    assert kinds(graph) == ["interpolate"]


def test_resize_without_torch_equivalent_rejected() -> None:
    resize = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear", name="up",
                              coordinate_transformation_mode="asymmetric")
    model = make_model([resize], {"x": (1, 3, 4, 4)}, ["y"], {"sc": np.array([1, 1, 2, 2], np.float32)})
    with pytest.raises(CompileError, match=r"Resize 'up'.*asymmetric.*no torch equivalent"):
        from_onnx(model)


def test_pad_reduce_softmax_and_friends() -> None:
    node = helper.make_node
    model = make_model(
        [
            node("Pad", ["x", "p1", "v"], ["a"]),
            node("Pad", ["a", "p2"], ["b"], mode="reflect"),
            node("Pad", ["b", "p2"], ["c"], mode="edge"),
            node("Dropout", ["c"], ["d"]),
            node("Identity", ["d"], ["e"]),
            node("Slice", ["e", "st", "en", "ax"], ["f"]),
            node("ReduceMean", ["f"], ["g"], axes=[2, 3], keepdims=0),
            node("Softmax", ["g"], ["y1"], axis=1),
            node("LogSoftmax", ["g"], ["y2"]),
            node("ReduceMean", ["f"], ["h"], axes=[-1], keepdims=1),
            node("Squeeze", ["h", "sq"], ["y3"]),
        ],
        {"x": (2, 3, 5, 6)}, ["y1", "y2", "y3"],
        {"p1": np.array([0, 1, 0, 2, 0, 2, 1, 0], np.int64), "v": np.array(1.5, np.float32),
         "p2": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "st": np.array([1, 2], np.int64),
         "en": np.array([-1, 100], np.int64), "ax": np.array([1, 3], np.int64),
         "sq": np.array([3], np.int64)},
        opset=13,
    )
    ks = kinds(assert_matches_ort(model, (2, 3, 5, 6)))
    assert ks.count("pad") == 3 and ks.count("narrow") == 2 and ks.count("mean") == 2


def test_reduce_mean_opset18_axes_input() -> None:
    model = make_model([helper.make_node("ReduceMean", ["x", "ax"], ["y"])], {"x": (2, 3, 4, 4)}, ["y"],
                       {"ax": np.array([2, 3], np.int64)}, opset=18)
    assert kinds(assert_matches_ort(model, (2, 3, 4, 4))) == ["mean"]


def test_newest_supported_opset() -> None:
    node = helper.make_node
    model = make_model([node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), node("Relu", ["c"], ["y"])],
                       {"x": (1, 3, 6, 6)}, ["y"], {"W": w(4, 3, 3, 3)}, opset=max_opset())
    assert kinds(from_onnx(model)) == ["conv2d", "relu"]


def test_inputs_from_bytes_and_symbolic_batch() -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": ("batch", 3, 4, 4)}, ["y"])
    graph = from_onnx(model.SerializeToString())
    assert graph["x"].shape == (1, 3, 4, 4)
    assert from_onnx(model, input_shape=(5, 3, 4, 4))["x"].shape == (5, 3, 4, 4)


def test_initializers_listed_as_inputs() -> None:
    """Models from IR version < 4 list every initializer among the graph inputs too."""
    conv = helper.make_node("Conv", ["x", "W"], ["y"])
    model = make_model([conv], {"x": (1, 3, 4, 4), "W": (2, 3, 1, 1)}, ["y"], {"W": w(2, 3, 1, 1)})
    graph = assert_matches_ort(model, (1, 3, 4, 4))
    assert graph.inputs == ["x"] and kinds(graph) == ["conv2d"]


# --- fixed bugs ----------------------------------------------------------------------------------
def test_clip_without_bounds_is_the_identity() -> None:
    model = make_model([helper.make_node("Clip", ["x"], ["y"])], {"x": (2, 3)}, ["y"], opset=13)
    assert kinds(assert_matches_ort(model, (2, 3))) == []


@pytest.mark.parametrize("nearest_mode", ["floor", "ceil"])
def test_resize_half_pixel_integer_upscale_honours_nearest_mode(nearest_mode: str) -> None:
    """floor / ceil rounding of half-pixel coordinates is not torch's nearest, even at integer upscales."""
    resize = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest", nearest_mode=nearest_mode,
                              name="up")
    model = make_model([resize], {"x": (1, 2, 4, 4)}, ["y"], {"sc": np.array([1, 1, 2, 3], np.float32)})
    with pytest.raises(CompileError, match=rf"Resize 'up': nearest resize .*nearest_mode='{nearest_mode}'"):
        from_onnx(model)
    model.graph.node[0].attribute[-1].s = b"round_prefer_floor"
    assert kinds(assert_matches_ort(model, (1, 2, 4, 4))) == ["interpolate"]


@pytest.mark.parametrize(("mode", "width"), [("linear", 9), ("nearest", 12)])
def test_resize_pytorch_half_pixel_to_length_one_samples_the_start(mode: str, width: int) -> None:
    resize = helper.make_node("Resize", ["x", "", "", "sz"], ["y"], mode=mode,
                              coordinate_transformation_mode="pytorch_half_pixel")
    model = make_model([resize], {"x": (2, 3, 4, 6)}, ["y"], {"sz": np.array([2, 3, 1, width], np.int64)})
    assert kinds(assert_matches_ort(model, (2, 3, 4, 6))) == ["narrow", "interpolate"]


@pytest.mark.parametrize(
    ("dtype", "np_dtype", "op"),
    [(TensorProto.DOUBLE, np.float64, "Cast"), (TensorProto.FLOAT16, np.float16, "Cast"),
     (TensorProto.DOUBLE, np.float64, "CastLike")],
)
def test_cast_to_float_gives_float32(dtype: int, np_dtype: type, op: str) -> None:
    if op == "Cast":
        nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT)]
        inits = {}
    else:
        nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("CastLike", ["r", "like"], ["y"])]
        inits = {"like": np.zeros(1, np.float32)}
    model = make_model(nodes, {"x": (2, 3)}, ["y"], inits, dtype=dtype)
    graph = assert_matches_ort(model, (2, 3), dtype=np_dtype)  # values and float32 type as onnxruntime
    assert kinds(graph) == ["relu", "cast"]


def test_weights_refused_on_non_float32_tensors() -> None:
    conv = helper.make_node("Conv", ["x", "W"], ["y"], name="conv1")
    model = make_model([conv], {"x": (1, 3, 4, 4)}, ["y"], {"W": w(2, 3, 1, 1).astype(np.float64)},
                       dtype=TensorProto.DOUBLE, out_dtype=TensorProto.DOUBLE)
    with pytest.raises(CompileError, match=r"Conv 'conv1': Conv on a float64 tensor is not supported"):
        from_onnx(model)
