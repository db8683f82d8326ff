"""The Caffe prototxt frontend: parsing, inputs, blob names and sources, train_val and V1 files, the AutoMTL
dialect, and the zoo. The schema and bindings are checked in test_prototxt_schema.py, error messages in
test_prototxt_errors.py, layer numerics in test_prototxt_layers.py and test_prototxt_norms.py, hostile
files and fuzzing in test_prototxt_fuzz.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from prototxt_helpers import (
    DATA,
    FILE,
    compile_,
    layer,
    net,
    run,
)

from automtl.compiler.errors import CompileError
from automtl.compiler.frontends import prototxt as P
from automtl.compiler.frontends.prototxt import from_prototxt, from_text, parsing
from automtl.proto import caffe_pb2


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
