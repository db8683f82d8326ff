"""The Caffe prototxt frontend: schema and bindings, every layer kind (shapes and numerics against
direct computations, Caffe's formulas where they differ from torch's defaults), the AutoMTL dialect,
V1 files, error messages that name the file, line and layer, and speed."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from automtl.compiler.codegen import codegen
from automtl.compiler.errors import CompileError
from automtl.compiler.frontends import prototxt as P
from automtl.compiler.frontends.prototxt import from_prototxt, from_text, parsing
from automtl.compiler.ir import Graph
from automtl.proto import caffe_pb2

DATA = Path(__file__).parent / "data" / "prototxt"
PROTO = Path(caffe_pb2.__file__).with_name("caffe.proto")
FILE = "net.prototxt"


def net(layers: str, shape: tuple[int, ...] = (1, 3, 8, 8), name: str = "t") -> str:
    """A prototxt with one declared input ``data`` of ``shape`` followed by ``layers``."""
    dims = "\n".join(f"input_dim: {d}" for d in shape)
    return f'name: "{name}"\ninput: "data"\n{dims}\n{layers}'


def layer(name: str, type_: str, bottoms: str | list[str], tops: str | list[str], params: str = "") -> str:
    bottoms = [bottoms] if isinstance(bottoms, str) else bottoms
    tops = [tops] if isinstance(tops, str) else tops
    lines = [f'layer {{\n  name: "{name}"\n  type: "{type_}"']
    lines += [f'  bottom: "{b}"' for b in bottoms] + [f'  top: "{t}"' for t in tops]
    if params:
        lines.append(f"  {params}")
    return "\n".join(lines) + "\n}\n"


def compile_(text: str, **kwargs) -> Graph:
    return from_text(text, FILE, **kwargs)


def run(graph: Graph, *xs: torch.Tensor, setup=None):
    gm = codegen(graph).eval()
    if setup is not None:
        setup(gm)
    with torch.no_grad():
        return gm(*xs)


def fill_random(gm: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values in every parameter and buffer (BN running stats included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(gm.named_parameters()) + list(gm.named_buffers()):
            if t.dtype.is_floating_point:
                v = (
                    torch.rand(t.shape, generator=g) + 0.5
                    if name.endswith("running_var")
                    else (torch.randn(t.shape, generator=g) * 0.5)
                )
                t.copy_(v)


# ----------------------------------------------------------------------------- schema and bindings
BVLC_NUMBERS = {
    "NetParameter": {
        "name": 1,
        "input": 3,
        "input_shape": 8,
        "input_dim": 4,
        "force_backward": 5,
        "state": 6,
        "layer": 100,
        "layers": 2,
    },
    "LayerParameter": {
        "name": 1,
        "type": 2,
        "bottom": 3,
        "top": 4,
        "phase": 10,
        "loss_weight": 5,
        "param": 6,
        "blobs": 7,
        "include": 8,
        "exclude": 9,
        "convolution_param": 106,
        "pooling_param": 121,
        "batch_norm_param": 139,
        "scale_param": 142,
        "eltwise_param": 110,
        "concat_param": 104,
        "slice_param": 126,
        "crop_param": 144,
        "inner_product_param": 117,
        "relu_param": 123,
        "prelu_param": 131,
        "dropout_param": 108,
        "lrn_param": 118,
        "softmax_param": 125,
        "flatten_param": 135,
        "input_param": 143,
        "clip_param": 148,
        "bias_param": 141,
        "power_param": 122,
        "reshape_param": 133,
    },
    "ConvolutionParameter": {
        "num_output": 1,
        "bias_term": 2,
        "pad": 3,
        "kernel_size": 4,
        "group": 5,
        "stride": 6,
        "pad_h": 9,
        "pad_w": 10,
        "kernel_h": 11,
        "kernel_w": 12,
        "stride_h": 13,
        "stride_w": 14,
        "axis": 16,
        "dilation": 18,
    },
    "PoolingParameter": {"pool": 1, "kernel_size": 2, "stride": 3, "pad": 4, "global_pooling": 12, "round_mode": 13},
    "BatchNormParameter": {"use_global_stats": 1, "moving_average_fraction": 2, "eps": 3},
    "V1LayerParameter": {"bottom": 2, "top": 3, "name": 4, "type": 5, "convolution_param": 10},
}


@pytest.mark.parametrize("message", sorted(BVLC_NUMBERS))
def test_field_numbers_match_bvlc(message: str) -> None:
    fields = getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name
    assert {name: fields[name].number for name in BVLC_NUMBERS[message]} == BVLC_NUMBERS[message]


def test_enums_match_bvlc() -> None:
    assert caffe_pb2.PoolingParameter.RoundMode.items() == [("CEIL", 0), ("FLOOR", 1)]
    assert caffe_pb2.PoolingParameter.PoolMethod.items() == [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)]
    assert caffe_pb2.EltwiseParameter.EltwiseOp.items() == [("PROD", 0), ("SUM", 1), ("MAX", 2)]
    assert caffe_pb2.V1LayerParameter.CONVOLUTION == 4 and caffe_pb2.V1LayerParameter.SOFTMAX_LOSS == 21
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL


def test_bindings_match_the_schema_file() -> None:
    """Every field declared in caffe.proto is in caffe_pb2 with the same number (bindings up to date)."""
    declared: dict[str, dict[str, int]] = {}
    stack: list[str] = []
    for raw in PROTO.read_text().splitlines():
        line = raw.split("//")[0].strip()
        if m := re.match(r"(message|enum) (\w+) \{", line):
            stack.append(m.group(2) if m.group(1) == "message" else "")
        elif line == "}":
            stack.pop()
        elif (m := re.match(r"(?:optional|repeated|required) [\w.]+ (\w+) = (\d+)", line)) and stack[-1]:
            declared.setdefault(stack[-1], {})[m.group(1)] = int(m.group(2))
    assert len(declared) > 40
    for message, fields in declared.items():
        desc = caffe_pb2.DESCRIPTOR.message_types_by_name[message]
        assert {f.name: f.number for f in desc.fields} == fields, message


def test_bindings_have_no_runtime_version_pin() -> None:
    source = Path(caffe_pb2.__file__).read_text()
    assert "ValidateProtobufRuntimeVersion" not in source
    assert "Protobuf Python Version: 5.26.1" in source


# ----------------------------------------------------------------------------- parsing
def resnet50_text() -> str:
    """ResNet-50 deploy prototxt in the original style: in-place BatchNorm/Scale/ReLU, tabs, 228 layers."""
    out = ['name: "ResNet-50"', 'input: "data"', "input_dim: 1", "input_dim: 3", "input_dim: 224", "input_dim: 224"]

    def add(name: str, type_: str, bottoms: list[str], top: str, params: str = "") -> None:
        body = "".join(f'\tbottom: "{b}"\n' for b in bottoms)
        out.append(f'layer {{\n{body}\ttop: "{top}"\n\tname: "{name}"\n\ttype: "{type_}"\n{params}}}')

    def conv(name: str, bottom: str, n: int, k: int, s: int = 1, p: int = 0, relu: bool = True) -> str:
        add(
            name,
            "Convolution",
            [bottom],
            name,
            f"\tconvolution_param {{\n\t\tnum_output: {n}\n\t\tkernel_size: {k}"
            f"\n\t\tpad: {p}\n\t\tstride: {s}\n\t\tbias_term: false\n\t}}\n",
        )
        add(f"bn_{name}", "BatchNorm", [name], name, "\tbatch_norm_param {\n\t\tuse_global_stats: true\n\t}\n")
        add(f"scale_{name}", "Scale", [name], name, "\tscale_param {\n\t\tbias_term: true\n\t}\n")
        if relu:
            add(f"{name}_relu", "ReLU", [name], name)
        return name

    prev = conv("conv1", "data", 64, 7, 2, 3)
    add(
        "pool1",
        "Pooling",
        [prev],
        "pool1",
        "\tpooling_param {\n\t\tkernel_size: 3\n\t\tstride: 2\n\t\tpool: MAX\n\t}\n",
    )
    prev = "pool1"
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=2):
        for i in range(blocks):
            b = f"res{stage}{'abcdef'[i]}"
            s = 2 if i == 0 and stage > 2 else 1
            short = conv(f"{b}_branch1", prev, 4 * width, 1, s, relu=False) if i == 0 else prev
            x = conv(f"{b}_branch2a", prev, width, 1, s)
            x = conv(f"{b}_branch2b", x, width, 3, 1, 1)
            x = conv(f"{b}_branch2c", x, 4 * width, 1, relu=False)
            add(b, "Eltwise", [short, x], b)
            add(f"{b}_relu", "ReLU", [b], b)
            prev = b
    add(
        "pool5",
        "Pooling",
        [prev],
        "pool5",
        "\tpooling_param {\n\t\tkernel_size: 7\n\t\tstride: 1\n\t\tpool: AVE\n\t}\n",
    )
    add("fc1000", "InnerProduct", ["pool5"], "fc1000", "\tinner_product_param {\n\t\tnum_output: 1000\n\t}\n")
    add("prob", "Softmax", ["fc1000"], "prob")
    return "\n".join(out) + "\n"


ODD_SYNTAX = """# comment with layer { braces } and "quotes"
name: 'odd' input: "data"
input_shape < dim: 1 dim: [3, 4, 4] >
layer { name: "c # not a comment" type: "Convolution" bottom: "data" top: "c"
  convolution_param: { num_output: 2, kernel_size: 1; bias_term: f weight_filler { type: "x\\"y" } } }
layer { name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: 1 kernel_size: 0x2 stride: 2 } }
"""


def parse_cases() -> dict[str, str]:
    cases = {"resnet50": resnet50_text(), "odd_syntax": ODD_SYNTAX}
    for path in sorted(DATA.glob("*.prototxt")):
        cases[path.stem] = path.read_text()
    zoo = Path(P.__file__).resolve().parents[3] / "backbones"
    for path in sorted(zoo.glob("*.prototxt")):
        cases[f"zoo_{path.stem}"] = path.read_text()
    return cases


@pytest.mark.parametrize("name", sorted(parse_cases()))
def test_parse_equals_protobuf_text_format(name: str) -> None:
    text = parse_cases()[name]
    parsed, lines = P.parse(text, name)
    reference = text_format.Parse(text, caffe_pb2.NetParameter())
    assert parsed == reference
    layers = parsed.layer or parsed.layers
    assert len(lines.get("layer", lines.get("layers", []))) == len(layers)


def test_fast_path_handles_plain_files_and_defers_unusual_syntax() -> None:
    parsing._fast_parse(resnet50_text(), caffe_pb2.NetParameter())  # no fallback for the common subset
    parsing._fast_parse((DATA / "automtl_small.prototxt").read_text(), caffe_pb2.NetParameter())
    with pytest.raises(parsing._Fallback):
        parsing._fast_parse(ODD_SYNTAX, caffe_pb2.NetParameter())


def test_parse_list_values_and_enum_numbers() -> None:
    text = (
        'input: "d" input_shape { dim: [1, 3, 5, 5] }\nlayer { name: "p" type: "Pooling" bottom: "d" top: "p" '
        "pooling_param { pool: 1 kernel_size: 3 round_mode: FLOOR } }"
    )
    parsed, _ = P.parse(text)
    assert list(parsed.input_shape[0].dim) == [1, 3, 5, 5]
    assert parsed.layer[0].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    g = compile_(text)
    assert g["p"].kind == "avg_pool2d" and g["p"].shape == (1, 3, 3, 3) and not g["p"].attrs["ceil_mode"]


# ----------------------------------------------------------------------------- inputs
def test_input_dim_input_shape_and_input_layer() -> None:
    body = layer("r", "ReLU", "data", "r")
    g1 = compile_(net(body, (2, 3, 5, 7)))
    g2 = compile_('input: "data"\ninput_shape { dim: 2 dim: 3 dim: 5 dim: 7 }\n' + body)
    g3 = compile_(layer("in", "Input", [], "data", "input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } }") + body)
    for g in (g1, g2, g3):
        assert g.inputs == ["data"] and g["data"].shape == (2, 3, 5, 7) and g.outputs == ["r"]
    assert g3["data"].source.layer_type == "Input"


def test_any_input_blob_name_and_shape_override() -> None:
    text = 'input: "image"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n' + layer(
        "c", "Convolution", "image", "c", "convolution_param { num_output: 4 kernel_size: 3 }"
    )
    assert compile_(text)["c"].shape == (1, 4, 6, 6)
    g = compile_(text, input_shape=(1, 10, 12))  # (C, H, W): batch 1; a different channel count is fine
    assert g["image"].shape == (1, 1, 10, 12) and g["c"].attrs["in_channels"] == 1 and g["c"].shape == (1, 4, 8, 10)
    assert compile_(text, input_shape=(5, 3, 9, 9))["c"].shape == (5, 4, 7, 7)
    assert compile_(text, input_shape={"image": (3, 4, 4)})["c"].shape == (1, 4, 2, 2)


def test_input_layer_without_shape_needs_input_shape() -> None:
    text = layer("in", "Input", [], "data") + layer("r", "ReLU", "data", "r")
    with pytest.raises(CompileError, match=r"net\.prototxt:1: Input 'in': input 'data' has no shape.*input_shape"):
        compile_(text)
    assert compile_(text, input_shape=(3, 4, 4))["r"].shape == (1, 3, 4, 4)


def test_declared_input_without_shape_and_bad_input_dim() -> None:
    with pytest.raises(CompileError, match=r"net\.prototxt:1: input 'data'.*no shape.*pass input_shape"):
        compile_('input: "data"\n' + layer("r", "ReLU", "data", "r"))
    with pytest.raises(CompileError, match=r"net\.prototxt:1: input 'data'.*3 input_dim values for 1 input"):
        compile_('input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\n' + layer("r", "ReLU", "data", "r"))


def test_several_inputs_take_a_list_or_dict_of_shapes() -> None:
    text = layer("in", "Input", [], ["a", "b"]) + layer("s", "Eltwise", ["a", "b"], "s")
    with pytest.raises(CompileError, match="2 inputs"):
        compile_(text, input_shape=(3, 4, 4))
    assert compile_(text, input_shape=[(3, 4, 4), (3, 4, 4)])["s"].shape == (1, 3, 4, 4)
    assert compile_(text, input_shape={"a": (2, 3, 3), "b": (2, 3, 3)})["s"].shape == (1, 2, 3, 3)


# ----------------------------------------------------------------------------- blobs, names, sources
def test_in_place_layers_rebind_blobs() -> None:
    text = net(
        layer("conv", "Convolution", "data", "x", "convolution_param { num_output: 4 kernel_size: 1 }")
        + layer("relu", "ReLU", "x", "x")
        + layer("drop", "Dropout", "x", "x", "dropout_param { dropout_ratio: 0.25 }")
        + layer("sig", "Sigmoid", "x", "y")
    )
    g = compile_(text)
    assert [n.name for n in g] == ["data", "conv", "relu", "drop", "sig"]
    assert g["relu"].inputs == ["conv"] and g["drop"].inputs == ["relu"] and g["sig"].inputs == ["drop"]
    assert g["drop"].attrs == {"p": 0.25} and g.outputs == ["sig"]


def test_outputs_are_unconsumed_blobs_in_file_order() -> None:
    text = net(
        layer("a", "ReLU", "data", "a")
        + layer("b", "Sigmoid", "data", "b")
        + layer("c", "TanH", "a", "c")
        + layer("d", "ReLU", "b", "b")
    )
    assert compile_(text).outputs == ["c", "d"]


def test_repeated_names_are_suffixed() -> None:
    text = net(layer("act", "ReLU", "data", "x") + layer("act", "ReLU", "x", "x") + layer("act", "TanH", "x", "y"))
    g = compile_(text)
    assert [n.name for n in g][1:] == ["act", "act_1", "act_2"]
    assert [n.source.layer for n in g][1:] == ["act", "act", "act"]


def test_every_node_has_the_line_of_its_layer() -> None:
    text = """# layer { in a comment
name: "lines"
input: "data"   # the input
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "a # {" type: "ReLU" bottom: "data" top: "a" }

layer
{
  name: "b"  type: "Convolution"
  bottom: "a" top: "b"
  convolution_param { num_output: 2 kernel_size: 1 }   # layer {
}
layer { name: "c" type: "InnerProduct" bottom: "b" top: "c" inner_product_param { num_output: 3 } }
"""
    g = compile_(text)
    where = {n.name: (n.source.file, n.source.line, n.source.layer, n.source.layer_type) for n in g}
    assert where == {
        "data": (FILE, 3, "data", "input"),
        "a # {": (FILE, 5, "a # {", "ReLU"),
        "b": (FILE, 7, "b", "Convolution"),
        "c/flatten": (FILE, 13, "c", "InnerProduct"),
        "c": (FILE, 13, "c", "InnerProduct"),
    }


def test_split_aliases_and_slice_makes_one_narrow_per_top() -> None:
    text = net(
        layer("split", "Split", "data", ["s1", "s2"])
        + layer("slice", "Slice", "s1", ["p", "q", "r"], "slice_param { axis: 1 slice_point: 1 slice_point: 3 }")
        + layer("even", "Slice", "s2", ["u", "v"], "slice_param { axis: 3 }")
        + layer("cat", "Concat", ["r", "p", "q"], "cat"),
        (2, 4, 3, 6),
    )
    g = compile_(text)
    assert [g[n].shape for n in ("slice/p", "slice/q", "slice/r")] == [(2, 1, 3, 6), (2, 2, 3, 6), (2, 1, 3, 6)]
    assert g["slice/p"].inputs == ["data"] and g["even/u"].inputs == ["data"]  # Split made aliases, no nodes
    assert g.outputs == ["even/u", "even/v", "cat"]
    x = torch.randn(2, 4, 3, 6)
    u, v, cat = run(g, x)
    assert torch.equal(u, x[..., :3]) and torch.equal(v, x[..., 3:])
    assert torch.equal(cat, torch.cat([x[:, 3:], x[:, :1], x[:, 1:3]], 1))


def test_slice_errors() -> None:
    with pytest.raises(CompileError, match=r"net\.prototxt:\d+: Slice 's'.*does not split evenly"):
        compile_(net(layer("s", "Slice", "data", ["a", "b"]), (1, 3, 2, 2)))
    with pytest.raises(CompileError, match="1 slice_point.*3 tops"):
        compile_(net(layer("s", "Slice", "data", ["a", "b", "c"], "slice_param { slice_point: 1 }")))


# ----------------------------------------------------------------------------- normalisation
BN_SCALE = layer(
    "bn",
    "BatchNorm",
    "data",
    "data",
    "batch_norm_param { use_global_stats: true eps: 0.001 moving_average_fraction: 0.9 }",
) + layer("sc", "Scale", "data", "data", "scale_param { bias_term: true }")


def test_batch_norm_and_scale_fold_into_one_affine_batch_norm() -> None:
    g = compile_(net(BN_SCALE, (2, 3, 4, 4)))
    assert [n.kind for n in g] == ["input", "batch_norm"] and g.outputs == ["bn"]
    assert g["bn"].attrs == {"num_features": 3, "eps": 0.001, "momentum": 0.1, "affine": True}
    assert g["bn"].params == 6
    x = torch.randn(2, 3, 4, 4)
    gm = codegen(g).eval()
    fill_random(gm)
    bn = gm.bn
    want = (x - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + 0.001)
    want = want * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), want)


def test_scale_without_bias_folds_with_a_zero_bias() -> None:
    text = net(layer("bn", "BatchNorm", "data", "b") + layer("sc", "Scale", "b", "c"))
    g = compile_(text)
    assert [n.kind for n in g] == ["input", "batch_norm"] and g["bn"].attrs["affine"]
    assert g["bn"].attrs["momentum"] == pytest.approx(0.001)
    assert torch.equal(codegen(g).bn.bias.detach(), torch.zeros(3))


def test_batch_norm_alone_is_not_affine_and_scale_alone_is_scale() -> None:
    g = compile_(
        net(
            layer("bn", "BatchNorm", "data", "b")
            + layer("r", "ReLU", "b", "r")
            + layer("sc", "Scale", "r", "s", "scale_param { bias_term: true }")
        )
    )
    assert g["bn"].attrs["affine"] is False and g["bn"].params == 0
    assert g["sc"].kind == "scale" and g["sc"].attrs == {"num_features": 3, "bias": True} and g["sc"].params == 6
    x = torch.randn(1, 3, 8, 8)
    gm = codegen(g).eval()
    fill_random(gm)
    with torch.no_grad():
        z = F.relu(gm.bn(x))
        torch.testing.assert_close(gm(x), z * gm.sc.weight.view(1, -1, 1, 1) + gm.sc.bias.view(1, -1, 1, 1))


def test_scale_is_not_folded_when_the_batch_norm_output_is_also_read_elsewhere() -> None:
    text = net(layer("bn", "BatchNorm", "data", "b") + layer("r", "ReLU", "b", "r") + layer("sc", "Scale", "b", "s"))
    g = compile_(text)
    assert g["bn"].attrs["affine"] is False and g["sc"].kind == "scale"


def test_lrn_matches_caffes_formula() -> None:
    g = compile_(
        net(layer("n", "LRN", "data", "n", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }"), (1, 5, 2, 2))
    )
    assert g["n"].attrs == {"size": 3, "alpha": 0.5, "beta": 0.75, "k": 2.0}
    x = torch.randn(1, 5, 2, 2, dtype=torch.float64)
    sq = F.pad(x * x, (0, 0, 0, 0, 1, 1))
    scale = 2 + 0.5 / 3 * (sq[:, :-2] + sq[:, 1:-1] + sq[:, 2:])
    gm = codegen(g).double()
    with torch.no_grad():
        torch.testing.assert_close(gm(x), x * scale**-0.75)


def caffe_lrn_within_channel(x: torch.Tensor, size: int, alpha: float, beta: float) -> torch.Tensor:
    """Caffe's LRN WITHIN_CHANNEL from its definition: each value divided by
    ``(1 + alpha / size^2 * sum of squares over the zero-padded size x size window) ^ beta``."""
    h, w = x.shape[2:]
    pad = (size - 1) // 2
    sq = F.pad(x * x, (pad, pad, pad, pad))
    total = torch.zeros_like(x)
    for dy in range(size):
        for dx in range(size):
            total += sq[:, :, dy : dy + h, dx : dx + w]
    return x / (1 + alpha / size**2 * total) ** beta


@pytest.mark.parametrize(
    ("size", "alpha", "beta", "k"), [(3, 5e-05, 0.75, ""), (5, 2.0, 0.5, "k: 3"), (1, 0.5, 1.0, "")]
)
def test_lrn_within_channel_matches_caffes_definition(size: int, alpha: float, beta: float, k: str) -> None:
    """BVLC cifar10_full's norm layers; Caffe ignores k in this region (its shift is 1)."""
    params = f"lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} norm_region: WITHIN_CHANNEL {k} }}"
    g = compile_(net(layer("norm1", "LRN", "data", "norm1", params), (2, 4, 7, 6)))
    assert g["norm1"].kind == "lrn_within_channel" and g["norm1"].shape == (2, 4, 7, 6)
    assert g["norm1"].attrs == {"size": size, "alpha": alpha, "beta": beta} and g["norm1"].params == 0
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64) * 3
    gm = codegen(g).double()
    with torch.no_grad():
        torch.testing.assert_close(gm(x), caffe_lrn_within_channel(x, size, alpha, beta), rtol=1e-12, atol=1e-12)


def cifar10_full_text() -> str:
    """BVLC's examples/cifar10 cifar10_full deploy network (WITHIN_CHANNEL LRN after two poolings)."""
    conv = "convolution_param {{ num_output: {} pad: 2 kernel_size: 5 stride: 1 }}"
    pool = "pooling_param {{ pool: {} kernel_size: 3 stride: 2 }}"
    norm = "lrn_param { local_size: 3 alpha: 5e-05 beta: 0.75 norm_region: WITHIN_CHANNEL }"
    return (
        'name: "CIFAR10_full_deploy"\n'
        + layer("data", "Input", [], "data", "input_param { shape: { dim: 1 dim: 3 dim: 32 dim: 32 } }")
        + layer("conv1", "Convolution", "data", "conv1", conv.format(32))
        + layer("pool1", "Pooling", "conv1", "pool1", pool.format("MAX"))
        + layer("relu1", "ReLU", "pool1", "pool1")
        + layer("norm1", "LRN", "pool1", "norm1", norm)
        + layer("conv2", "Convolution", "norm1", "conv2", conv.format(32))
        + layer("relu2", "ReLU", "conv2", "conv2")
        + layer("pool2", "Pooling", "conv2", "pool2", pool.format("AVE"))
        + layer("norm2", "LRN", "pool2", "norm2", norm)
        + layer("conv3", "Convolution", "norm2", "conv3", conv.format(64))
        + layer("relu3", "ReLU", "conv3", "conv3")
        + layer("pool3", "Pooling", "conv3", "pool3", pool.format("AVE"))
        + layer("ip1", "InnerProduct", "pool3", "ip1", "inner_product_param { num_output: 10 }")
        + layer("prob", "Softmax", "ip1", "prob")
    )


def test_cifar10_full_deploy_file_equals_caffes_definitions() -> None:
    g = from_text(cifar10_full_text(), "cifar10_full.prototxt")
    assert g.params == 89_578 and g.outputs == ["prob"]
    assert (g["norm1"].shape, g["norm2"].shape, g["pool3"].shape) == ((1, 32, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4))
    gm = codegen(g).double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)

    def pool(y: torch.Tensor, method: str) -> torch.Tensor:
        return torch.from_numpy(caffe_pool(y.numpy(), 3, 2, 0, method, ceil=True))

    with torch.no_grad():
        y = pool(F.conv2d(x, gm.conv1.weight, gm.conv1.bias, padding=2), "MAX").relu()
        y = caffe_lrn_within_channel(y, 3, 5e-05, 0.75)
        y = pool(F.conv2d(y, gm.conv2.weight, gm.conv2.bias, padding=2).relu(), "AVE")
        y = caffe_lrn_within_channel(y, 3, 5e-05, 0.75)
        y = pool(F.conv2d(y, gm.conv3.weight, gm.conv3.bias, padding=2).relu(), "AVE")
        want = F.linear(y.flatten(1), gm.ip1.weight, gm.ip1.bias).softmax(1)
        torch.testing.assert_close(gm(x), want, rtol=1e-12, atol=1e-12)


def test_lrn_refuses_even_windows_and_non_image_inputs() -> None:
    for region in ("ACROSS_CHANNELS", "WITHIN_CHANNEL"):
        msg = error(net(layer("n", "LRN", "data", "n", f"lrn_param {{ local_size: 4 norm_region: {region} }}")))
        assert msg.startswith("net.prototxt:7: LRN 'n': LRN local_size must be odd, got 4")
    flat = layer("fc", "InnerProduct", "data", "fc", "inner_product_param { num_output: 4 }")
    msg = error(net(flat + layer("n", "LRN", "fc", "n", "lrn_param { norm_region: WITHIN_CHANNEL }")))
    assert msg.startswith("net.prototxt:14: LRN 'n': LRN expects a 4-d N,C,H,W input, got shape [1, 4]")


# ----------------------------------------------------------------------------- convolution and linear
def test_convolution_parameters() -> None:
    text = net(
        layer(
            "c1",
            "Convolution",
            "data",
            "c1",
            "convolution_param { num_output: 6 kernel_h: 3 kernel_w: 1 "
            "stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 group: 3 bias_term: false }",
        )
        + layer(
            "c2",
            "Convolution",
            "c1",
            "c2",
            "convolution_param { num_output: 4 kernel_size: 3 kernel_size: 2 pad: 2 dilation: 2 stride: 1 }",
        )
        + layer("d", "Deconvolution", "c2", "d", "convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 1 }"),
        (1, 3, 9, 7),
    )
    g = compile_(text)
    a = g["c1"].attrs
    assert (a["in_channels"], a["out_channels"], a["kernel_size"], a["stride"], a["padding"]) == (
        3,
        6,
        (3, 1),
        (2, 1),
        (1, 0),
    )
    assert a["groups"] == 3 and a["bias"] is False and g["c1"].shape == (1, 6, 5, 7)
    assert g["c1"].params == 6 * 1 * 3 * 1
    b = g["c2"].attrs
    assert (b["kernel_size"], b["padding"], b["dilation"], b["bias"]) == ((3, 2), (2, 2), (2, 2), True)
    assert g["c2"].shape == (1, 4, 5, 9)
    assert g["d"].kind == "conv_transpose2d" and g["d"].shape == (1, 2, 10, 18)
    x = torch.randn(1, 3, 9, 7)
    gm = codegen(g)
    with torch.no_grad():
        y = F.conv2d(x, gm.c1.weight, None, (2, 1), (1, 0), 1, 3)
        y = F.conv2d(y, gm.c2.weight, gm.c2.bias, 1, 2, 2)
        y = F.conv_transpose2d(y, gm.d.weight, gm.d.bias, 2, 1)
        torch.testing.assert_close(gm(x), y)


def test_inner_product_flattens_and_counts_parameters() -> None:
    g = compile_(
        net(
            layer("fc", "InnerProduct", "data", "fc", "inner_product_param { num_output: 10 }")
            + layer("fc2", "InnerProduct", "fc", "fc2", "inner_product_param { num_output: 2 bias_term: false }"),
            (2, 3, 4, 4),
        )
    )
    assert [n.kind for n in g] == ["input", "flatten", "linear", "linear"]
    assert g["fc/flatten"].shape == (2, 48) and g["fc"].shape == (2, 10) and g["fc2"].shape == (2, 2)
    assert g["fc"].params == 48 * 10 + 10 and g["fc2"].params == 20
    x = torch.randn(2, 3, 4, 4)
    gm = codegen(g)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), F.linear(F.linear(x.flatten(1), gm.fc.weight, gm.fc.bias), gm.fc2.weight))


# ----------------------------------------------------------------------------- pooling
def caffe_pool(x: np.ndarray, k: int, s: int, p: int, method: str, ceil: bool) -> np.ndarray:
    """Caffe's PoolingLayer forward, written from its definition (output size, windows, divisor)."""
    n, c, h, w = x.shape

    def size(d: int) -> int:
        out = (math.ceil if ceil else math.floor)((d + 2 * p - k) / s) + 1
        if p and (out - 1) * s >= d + p:
            out -= 1
        return out

    ph, pw = size(h), size(w)
    y = np.zeros((n, c, ph, pw))
    for i in range(ph):
        for j in range(pw):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            area = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we]
            y[:, :, i, j] = win.max(axis=(2, 3)) if method == "MAX" else win.sum(axis=(2, 3)) / area
    return y


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize(
    ("size", "k", "s", "p"), [(7, 3, 2, 0), (8, 3, 2, 1), (6, 2, 2, 1), (10, 3, 3, 1), (5, 4, 3, 2)]
)
@pytest.mark.parametrize("round_mode", ["", "round_mode: FLOOR", "ceil_mode: false", "ceil_mode: true"])
def test_pooling_matches_caffe(method: str, size: int, k: int, s: int, p: int, round_mode: str) -> None:
    """BVLC's round_mode and the forks' ceil_mode (pull request 3057: false is FLOOR) round as Caffe does."""
    params = f"pooling_param {{ pool: {method} kernel_size: {k} stride: {s} pad: {p} {round_mode} }}"
    g = compile_(net(layer("pool", "Pooling", "data", "pool", params), (2, 3, size, size)))
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    ceil = round_mode in ("", "ceil_mode: true")
    want = caffe_pool(x.numpy(), k, s, p, method, ceil=ceil)
    assert g["pool"].shape == want.shape
    assert g["pool"].attrs["ceil_mode"] is ceil
    np.testing.assert_allclose(run(g, x).numpy(), want, rtol=1e-12)


def test_ceil_rounding_differs_from_floor() -> None:
    text = net(
        layer("pool", "Pooling", "data", "pool", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"),
        (1, 1, 112, 112),
    )
    assert compile_(text)["pool"].shape == (1, 1, 56, 56)
    assert compile_(text.replace("stride: 2", "stride: 2 round_mode: FLOOR"))["pool"].shape == (1, 1, 55, 55)


def test_densenet_caffe_ceil_mode_false_rounds_down() -> None:
    """DenseNet-Caffe's pool1 (kernel 3, stride 2, pad 1, ``ceil_mode: false``) on its 112x112 map."""
    params = "pooling_param {{ pool: MAX kernel_size: 3 stride: 2 pad: 1 {} }}"
    shape = (1, 64, 112, 112)
    assert compile_(net(layer("pool1", "Pooling", "data", "pool1", params.format("")), shape))["pool1"].shape == (
        1,
        64,
        57,
        57,
    )
    g = compile_(net(layer("pool1", "Pooling", "data", "pool1", params.format("ceil_mode: false")), shape))
    assert g["pool1"].shape == (1, 64, 56, 56) and g["pool1"].attrs["ceil_mode"] is False
    assert caffe_pb2.PoolingParameter.DESCRIPTOR.fields_by_name["ceil_mode"].number == 1013
    both = params.format("ceil_mode: false round_mode: FLOOR")
    msg = error(net(layer("pool1", "Pooling", "data", "pool1", both), shape))
    assert msg == "net.prototxt:7: Pooling 'pool1': give either round_mode or ceil_mode, not both"


def test_global_pooling_and_pooling_errors() -> None:
    g = compile_(
        net(
            layer("gp", "Pooling", "data", "gp", "pooling_param { pool: AVE global_pooling: true }")
            + layer("gm", "Pooling", "data", "gm", "pooling_param { global_pooling: true }")
        )
    )
    assert g["gp"].kind == "adaptive_avg_pool2d" and g["gp"].shape == (1, 3, 1, 1)
    assert g["gm"].kind == "adaptive_max_pool2d" and g["gm"].attrs == {"output_size": (1, 1)}
    with pytest.raises(CompileError, match=r"net\.prototxt:\d+: Pooling 'p': STOCHASTIC pooling is not supported"):
        compile_(net(layer("p", "Pooling", "data", "p", "pooling_param { pool: STOCHASTIC kernel_size: 2 }")))
    with pytest.raises(CompileError, match="empty last window.*round_mode: FLOOR"):
        compile_(net(layer("p", "Pooling", "data", "p", "pooling_param { kernel_size: 1 stride: 2 }")))


# ----------------------------------------------------------------------------- element-wise and structure
def test_eltwise_sum_with_coefficients_prod_and_max() -> None:
    text = net(
        layer("a", "ReLU", "data", "a")
        + layer("b", "TanH", "data", "b")
        + layer(
            "sum",
            "Eltwise",
            ["data", "a", "b"],
            "sum",
            "eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }",
        )
        + layer("plain", "Eltwise", ["a", "b"], "plain", "eltwise_param { coeff: 1 coeff: 1 }")
        + layer("prod", "Eltwise", ["data", "a", "b"], "prod", "eltwise_param { operation: PROD }")
        + layer("max", "Eltwise", ["data", "b"], "max", "eltwise_param { operation: MAX }")
    )
    g = compile_(text)
    assert g["sum"].kind == "scaled_sum" and g["sum"].attrs == {"coeffs": [1.0, -0.5, 2.0]}
    assert (g["plain"].kind, g["prod"].kind, g["max"].kind) == ("add", "mul", "maximum")
    x = torch.randn(1, 3, 8, 8)
    a, b = x.relu(), x.tanh()
    s, plain, prod, mx = run(g, x)
    torch.testing.assert_close(s, x - 0.5 * a + 2 * b)
    torch.testing.assert_close(plain, a + b)
    torch.testing.assert_close(prod, x * a * b)
    torch.testing.assert_close(mx, torch.maximum(x, b))
    with pytest.raises(CompileError, match="coeff is only allowed with operation SUM"):
        compile_(
            net(layer("m", "Eltwise", ["data", "data"], "m", "eltwise_param { operation: MAX coeff: 1 coeff: 2 }"))
        )


def test_concat_axis_and_concat_dim() -> None:
    g = compile_(
        net(
            layer("a", "ReLU", "data", "a")
            + layer("c", "Concat", ["data", "a"], "c")
            + layer("h", "Concat", ["data", "a"], "h", "concat_param { axis: -2 }")
            + layer("w", "Concat", ["data", "a"], "w", "concat_param { concat_dim: 3 }")
        )
    )
    assert (g["c"].shape, g["h"].shape, g["w"].shape) == ((1, 6, 8, 8), (1, 3, 16, 8), (1, 3, 8, 16))
    assert g["h"].attrs == {"dim": 2}


def test_crop_offsets() -> None:
    text = layer(
        "in",
        "Input",
        [],
        ["x", "ref"],
        "input_param { shape { dim: 1 dim: 2 dim: 9 dim: 9 } shape { dim: 1 dim: 2 dim: 4 dim: 5 } }",
    )
    g = compile_(
        text
        + layer("c", "Crop", ["x", "ref"], "c", "crop_param { offset: 3 offset: 2 }")
        + layer("d", "Crop", ["x", "ref"], "d", "crop_param { axis: 1 offset: 0 offset: 1 offset: 3 }")
        + layer("e", "Crop", ["x", "ref"], "e", "crop_param { offset: 4 }")
    )
    assert g["c"].attrs == {"axis": 2, "offsets": [3, 2]} and g["c"].shape == (1, 2, 4, 5)
    assert g["e"].attrs["offsets"] == [4, 4]
    x, ref = torch.randn(1, 2, 9, 9), torch.randn(1, 2, 4, 5)
    c, d, e = run(g, x, ref)
    assert torch.equal(c, x[:, :, 3:7, 2:7]) and torch.equal(d, x[:, :, 1:5, 3:8]) and torch.equal(e, x[:, :, 4:8, 4:9])


# ----------------------------------------------------------------------------- activations and the rest
def test_activations_and_shape_layers() -> None:
    text = net(
        layer("leaky", "ReLU", "data", "l", "relu_param { negative_slope: 0.1 }")
        + layer("pr", "PReLU", "l", "pr")
        + layer("prs", "PReLU", "pr", "prs", "prelu_param { channel_shared: true }")
        + layer("elu", "ELU", "prs", "elu", "elu_param { alpha: 0.5 }")
        + layer("sw", "Swish", "elu", "sw")
        + layer("r6", "ReLU6", "sw", "r6")
        + layer("cl6", "Clip", "r6", "cl6", "clip_param { min: 0 max: 6 }")
        + layer("cl", "Clip", "cl6", "cl", "clip_param { min: -1 max: 0.5 }")
        + layer("sm", "Softmax", "cl", "sm", "softmax_param { axis: 2 }")
        + layer("fl", "Flatten", "sm", "fl", "flatten_param { axis: 2 }")
        + layer("pw", "Power", "fl", "pw", "power_param { scale: 2 shift: -1 }")
        + layer("rs", "Reshape", "pw", "rs", "reshape_param { shape { dim: 0 dim: -1 dim: 4 } }"),
        (2, 3, 4, 4),
    )
    g = compile_(text)
    kinds = {n.name: n.kind for n in g}
    assert kinds == {
        "data": "input",
        "leaky": "leaky_relu",
        "pr": "prelu",
        "prs": "prelu",
        "elu": "elu",
        "sw": "silu",
        "r6": "relu6",
        "cl6": "relu6",
        "cl": "clip",
        "sm": "softmax",
        "fl": "flatten",
        "pw/scale": "mul",
        "pw": "add",
        "rs": "reshape",
    }
    assert g["leaky"].attrs == {"negative_slope": 0.1} and g["pr"].params == 3 and g["prs"].params == 1
    assert g["cl"].attrs == {"min": -1.0, "max": 0.5} and g["sm"].attrs == {"dim": 2}
    assert g["fl"].shape == (2, 3, 16) and g["rs"].shape == (2, 12, 4)
    x = torch.randn(2, 3, 4, 4)
    gm = codegen(g)
    with torch.no_grad():
        y = F.prelu(F.prelu(F.leaky_relu(x, 0.1), gm.pr.weight), gm.prs.weight)
        y = F.silu(F.elu(y, 0.5))
        y = F.softmax(y.clamp(0, 6).clamp(-1, 0.5), 2).flatten(2) * 2 - 1
        torch.testing.assert_close(gm(x), y.reshape(2, 12, 4))


def test_interp_matches_deeplab_sizes() -> None:
    g = compile_(
        net(
            layer("up", "Interp", "data", "up", "interp_param { zoom_factor: 4 }")
            + layer("dn", "Interp", "data", "dn", "interp_param { shrink_factor: 2 }")
            + layer("hw", "Interp", "data", "hw", "interp_param { height: 5 width: 3 }"),
            (1, 3, 9, 9),
        )
    )
    assert (g["up"].shape, g["dn"].shape, g["hw"].shape) == ((1, 3, 33, 33), (1, 3, 5, 5), (1, 3, 5, 3))
    x = torch.randn(1, 3, 9, 9)
    up = run(g, x)[0]
    torch.testing.assert_close(up, F.interpolate(x, size=(33, 33), mode="bilinear", align_corners=True))
    torch.testing.assert_close(up[..., ::4, ::4], x)  # corners aligned: every 4th output is an input pixel


def caffe_shuffle_channel(x: torch.Tensor, group: int) -> torch.Tensor:
    """The ShuffleNet forks' ShuffleChannel from its definition: a (group, C / group) grid of
    channels read out transposed, so input channel ``g * (C / group) + i`` becomes ``i * group + g``."""
    per = x.shape[1] // group
    out = torch.empty_like(x)
    for g in range(group):
        for i in range(per):
            out[:, i * group + g] = x[:, g * per + i]
    return out


@pytest.mark.parametrize("group", [1, 2, 3, 6])
def test_shuffle_channel_matches_the_forks(group: int) -> None:
    params = f"shuffle_channel_param {{ group: {group} }}"
    g = compile_(net(layer("shuffle", "ShuffleChannel", "data", "shuffle", params), (2, 6, 3, 4)))
    assert g["shuffle"].kind == "channel_shuffle" and g["shuffle"].attrs == {"groups": group}
    assert g["shuffle"].shape == (2, 6, 3, 4) and g["shuffle"].params == 0
    x = torch.randn(2, 6, 3, 4)
    torch.testing.assert_close(run(g, x), caffe_shuffle_channel(x, group), rtol=0, atol=0)


def test_shufflenet_v2_unit_compiles_and_runs() -> None:
    """A ShuffleNet v2 unit as the forks write it: split the channels, convolve one half, concatenate,
    shuffle with group 2; the field is the forks' number 164 and the default group 1 is the identity."""
    conv = "convolution_param {{ num_output: 4 kernel_size: {} pad: {} group: {} bias_term: false }}"
    text = net(
        layer("split", "Slice", "data", ["left", "right"], "slice_param { slice_point: 4 }")
        + layer("pw", "Convolution", "right", "pw", conv.format(1, 0, 1))
        + layer("dw", "Convolution", "pw", "dw", conv.format(3, 1, 4))
        + layer("cat", "Concat", ["left", "dw"], "cat")
        + layer("shuffle", "ShuffleChannel", "cat", "shuffle", "shuffle_channel_param { group: 2 }")
        + layer("same", "ShuffleChannel", "shuffle", "same"),
        (1, 8, 5, 5),
    )
    g = compile_(text)
    assert g.outputs == ["same"] and g["same"].attrs == {"groups": 1}
    x = torch.randn(1, 8, 5, 5)
    gm = codegen(g).eval()
    with torch.no_grad():
        right = F.conv2d(F.conv2d(x[:, 4:], gm.pw.weight), gm.dw.weight, padding=1, groups=4)
        torch.testing.assert_close(gm(x), caffe_shuffle_channel(torch.cat([x[:, :4], right], 1), 2))
    assert caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["shuffle_channel_param"].number == 164
    for bad, want in [
        ("group: 0", "shuffle_channel_param.group is 0; it must be positive"),
        ("group: 4", "shuffle_channel_param.group 4 does not divide the 6 input channels"),
    ]:
        msg = error(net(layer("s", "ShuffleChannel", "data", "s", f"shuffle_channel_param {{ {bad} }}"), (1, 6, 2, 2)))
        assert msg == f"net.prototxt:7: ShuffleChannel 's': {want}"
    msg = error(net(layer("s", "ShuffleChannel", "data", "s", "shuffle_channel_param { groups: 2 }")))
    assert msg.startswith("net.prototxt:12: ShuffleChannel 's': cannot parse") and 'no field named "groups"' in msg


# ----------------------------------------------------------------------------- train_val files, V1, AutoMTL
def test_train_phase_and_loss_layers_are_skipped() -> None:
    g = from_prototxt(DATA / "train_val_small.prototxt")
    assert [n.name for n in g] == ["data", "conv1", "relu1", "fc/flatten", "fc"]
    assert g["data"].shape == (4, 3, 16, 16) and g.outputs == ["fc"]
    assert g["data"].source.layer_type == "MemoryData"


def test_label_blobs_only_feed_skipped_layers() -> None:
    text = (
        (DATA / "train_val_small.prototxt")
        .read_text()
        .replace('bottom: "conv1"\n  top: "fc"', 'bottom: "label"\n  top: "fc"')
    )
    with pytest.raises(CompileError, match="InnerProduct 'fc': bottom 'label' is a label"):
        compile_(text)


def test_include_and_exclude_rules_follow_the_net_state() -> None:
    body = (
        layer("a", "ReLU", "data", "a", "include { phase: TRAIN }")
        + layer("b", "TanH", "data", "b", 'exclude { stage: "deploy" }')
        + layer("c", "Sigmoid", "data", "c", "include { min_level: 1 }")
    )
    assert compile_(net(body)).outputs == ["b"]
    state = 'state { phase: TRAIN level: 2 stage: "deploy" }\n'
    assert compile_(state + net(body)).outputs == ["a", "c"]


def test_v1_layers_are_converted() -> None:
    g = from_prototxt(DATA / "lenet_v1.prototxt")
    assert [n.kind for n in g] == [
        "input",
        "conv2d",
        "max_pool2d",
        "conv2d",
        "max_pool2d",
        "flatten",
        "linear",
        "relu",
        "linear",
        "softmax",
    ]
    assert g["ip1"].shape == (64, 500) and g.params == 431080 and g.outputs == ["prob"]
    assert g["conv2"].source.line == 32 and g["conv2"].source.layer_type == "Convolution"


def test_automtl_dialect_detected_from_its_files() -> None:
    g = from_prototxt(DATA / "automtl_small.prototxt")
    assert g.inputs == ["blob1"] and g["conv1"].inputs == ["blob1"]
    assert g["batch_norm1"].attrs == {"num_features": 8, "eps": 1e-05, "momentum": 0.1, "affine": True}
    assert g["batch_norm2"].attrs["momentum"] == 0.05
    assert g["max_pool1"].attrs["ceil_mode"] is False and g["max_pool1"].shape == (1, 8, 7, 7)  # FLOOR default
    assert g["max_pool2"].attrs["ceil_mode"] is True and g["max_pool2"].shape == (1, 8, 8, 8)
    assert g.outputs == ["max_pool2", "relu2"]


def test_automtl_dialect_by_flag_or_by_fields() -> None:
    # one declared input that the first layer does not read, no dialect fields: still AutoMTL
    text = 'input: "blob1"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 7\ninput_dim: 7\n' + layer(
        "p", "Pooling", "data", "p", "pooling_param { kernel_size: 2 stride: 2 }"
    )
    assert compile_(text)["p"].shape == (1, 3, 3, 3)
    with pytest.raises(CompileError, match="missing bottom 'data'"):
        compile_(text, dialect="caffe")
    # BVLC-looking file with a dialect field: AutoMTL; forcing caffe rejects the field
    bvlc = net(
        layer("bn", "BatchNorm", "data", "bn", "batch_norm_param { affine: false eps: 0.001 }")
        + layer("p", "Pooling", "bn", "p", "pooling_param { kernel_size: 3 stride: 2 }"),
        (1, 3, 8, 8),
    )
    g = compile_(bvlc)
    assert g["bn"].attrs["affine"] is False and g["p"].shape == (1, 3, 3, 3)
    with pytest.raises(CompileError, match=r"batch_norm_param\.affine is not supported.*dialect='automtl'"):
        compile_(bvlc, dialect="caffe")
    assert compile_(
        net(layer("p", "Pooling", "data", "p", "pooling_param { kernel_size: 3 stride: 2 }")), dialect="automtl"
    )["p"].shape == (1, 3, 3, 3)
    with pytest.raises(CompileError, match="unknown dialect 'pytorch'"):
        compile_(bvlc, dialect="pytorch")


# ----------------------------------------------------------------------------- errors
def error(text: str, **kwargs) -> str:
    with pytest.raises(CompileError) as info:
        compile_(text, **kwargs)
    return str(info.value)


def test_malformed_text_names_file_line_column_and_layer() -> None:
    text = net(layer("ok", "ReLU", "data", "a") + 'layer {\n  name: "broken"\n  type: "ReLU"\n  bottom "a"\n}\n')
    msg = error(text)
    assert msg.startswith("net.prototxt:16: ReLU 'broken': cannot parse the prototxt (column 10)")
    unknown = error(net(layer("c", "Convolution", "data", "c", "convolution_param { num_outputs: 3 }")))
    assert unknown.startswith("net.prototxt:12: Convolution 'c'") and 'no field named "num_outputs"' in unknown


def test_unknown_layer_type_suggests_the_closest() -> None:
    msg = error(net(layer("bn", "BatchNorm", "data", "b") + layer("x", "Convolutoin", "b", "c")))
    assert msg.startswith("net.prototxt:13: Convolutoin 'x': unsupported layer type 'Convolutoin'")
    assert "did you mean 'Convolution'?" in msg
    msg = error(net(layer("x", "Zorg", "data", "c")))
    assert "supported: Accuracy, BatchNorm," in msg


def test_missing_and_out_of_order_bottoms() -> None:
    msg = error(net(layer("a", "ReLU", "dat", "a")))
    assert msg.startswith("net.prototxt:7: ReLU 'a': missing bottom 'dat'") and "did you mean 'data'?" in msg
    msg = error(net(layer("a", "ReLU", "b", "a") + layer("b", "ReLU", "a", "b")))
    assert msg.startswith("net.prototxt:7: ReLU 'a': bottom 'b' is only produced by a later layer, ReLU 'b' (line 13)")
    assert "out of order or form a cycle" in msg


def test_mismatched_shapes_name_the_layer() -> None:
    text = net(
        layer("c", "Convolution", "data", "c", "convolution_param { num_output: 4 kernel_size: 1 }")
        + layer("sum", "Eltwise", ["data", "c"], "sum")
    )
    msg = error(text)
    assert msg.startswith("net.prototxt:14: Eltwise 'sum':") and "[1, 3, 8, 8], [1, 4, 8, 8]" in msg
    msg = error(
        net(
            layer("p", "Pooling", "data", "p", "pooling_param { kernel_size: 2 stride: 2 }")
            + layer("cat", "Concat", ["data", "p"], "cat")
        )
    )
    assert msg.startswith("net.prototxt:14: Concat 'cat':") and "differ outside the concatenation axis" in msg


def test_empty_convolution_output_and_wrong_input_size() -> None:
    conv = layer("c", "Convolution", "data", "c", "convolution_param { num_output: 4 kernel_size: 5 }")
    msg = error(net(conv, (1, 3, 4, 4)))
    assert msg.startswith("net.prototxt:7: Convolution 'c': output would be empty: input size 4 with kernel 5")
    msg = error(net(conv), input_shape=(3, 3, 3))
    assert msg.startswith("net.prototxt:7: Convolution 'c': output would be empty")
    msg = error(net(conv), input_shape=(3, 0, 9))
    assert "non-positive dimension" in msg and msg.startswith("net.prototxt:2: input 'data'")
    msg = error(
        net(
            layer("fc", "InnerProduct", "data", "fc", "inner_product_param { num_output: 2 }")
            + layer("c", "Convolution", "fc", "c", "convolution_param { num_output: 4 kernel_size: 1 }")
        )
    )
    assert msg.startswith("net.prototxt:14: Convolution 'c': Convolution expects a 4-d N,C,H,W input")


def test_unsupported_fields_are_rejected_not_ignored() -> None:
    msg = error(
        net(layer("c", "Convolution", "data", "c", "convolution_param { num_output: 4 kernel_size: 1 axis: 2 }"))
    )
    assert msg.startswith("net.prototxt:7: Convolution 'c': convolution_param.axis 2 is not supported")
    msg = error(net(layer("s", "Scale", "data", "s", "scale_param { num_axes: 2 }")))
    assert msg.startswith("net.prototxt:7: Scale 's': only a per-channel Scale")
    msg = error(net(layer("p", "Power", "data", "p", "power_param { power: 2 }")))
    assert "Power with power 2" in msg
    msg = error(net(layer("c", "ReLU", "data", "c", "blobs { data: 1 }")))
    assert "weights stored in the prototxt" in msg


def test_from_prototxt_reads_paths_and_text(tmp_path: Path) -> None:
    path = tmp_path / "small.prototxt"
    path.write_text(net(layer("r", "ReLU", "data", "r")))
    g = from_prototxt(path)
    assert g["r"].source.file == str(path) and g.name == "t"
    assert from_prototxt(str(path)).outputs == ["r"]
    assert from_prototxt(net(layer("r", "ReLU", "data", "r")))["r"].source.file == "<string>"
    with pytest.raises(CompileError, match="no such file"):
        from_prototxt(tmp_path / "missing.prototxt")
    path.write_text("\ufeff" + net(layer("r", "ReLU", "data", "r")), encoding="utf-8")  # a byte-order mark
    assert from_prototxt(path).outputs == ["r"]


# ----------------------------------------------------------------------------- zoo and speed
def zoo_names() -> list[str]:
    from automtl import backbones

    return [n for n in backbones.names() if backbones.prototxt_path(n).exists()]


NUMERIC_ZOO = {"tiny_cnn", "resnet18", "deeplab_resnet34"}  # the rest: structure only (speed)


@pytest.mark.parametrize("name", zoo_names())
def test_zoo_prototxt_compiles_to_the_torch_backbone(name: str, randomize) -> None:
    """Same parameter count and output shape as the torch backbone; for NUMERIC_ZOO, the same values."""
    from automtl import backbones

    shape = (1, 3, 32, 32)
    g = from_prototxt(backbones.prototxt_path(name), input_shape=shape)
    with torch.device("meta"):
        meta = backbones.get(name).eval()
        out = meta(torch.empty(shape))
    assert g.params == sum(p.numel() for p in meta.parameters())
    assert [g[o].shape for o in g.outputs] == [tuple(out.shape)]
    if name not in NUMERIC_ZOO:
        return
    model = randomize(backbones.get(name), seed=1)
    for node in g:
        if node.kind in ("conv2d", "linear", "batch_norm", "prelu", "scale"):
            node.tensors = dict(model.get_submodule(node.name).state_dict())
    x = torch.randn(shape)
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(run(g, x), want)


def test_resnet50_deploy_file_compiles_with_torchvisions_counts() -> None:
    """Its speed is measured in benchmarks/bench_compile.py, never asserted here."""
    text = resnet50_text()
    g = from_text(text, "ResNet-50-deploy.prototxt")
    assert len(text.splitlines()) > 2000 and text.count("layer {") == 228
    assert len(g) == 177 and g.params == 25_557_032 and g.outputs == ["prob"]
    assert g["pool1"].shape == (1, 64, 56, 56) and g["fc1000"].shape == (1, 1000)
