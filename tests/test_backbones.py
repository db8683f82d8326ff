"""Tests for the backbone zoo: torch definitions, registry and the generated Caffe deploy files."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from torch import Tensor, nn

from automtl import backbones
from automtl.backbones import make_prototxt

NAMES = ["resnet18", "resnet34", "resnet50", "mobilenet_v2", "mnasnet", "deeplab_resnet34", "tiny_cnn"]
PARAMETRIC = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)

# Reference parameter counts of the standard ImageNet definitions (1000 classes).
PARAM_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "mnasnet": 4_383_312,
    "deeplab_resnet34": 21_797_672 - (512 * 1000 + 1000),  # resnet34 without its classifier
}


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """These inputs are tiny: one intra-op thread is faster and immune to oversubscribed CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_input(name: str) -> Tensor:
    """A small input the net accepts: 64x64 for the ImageNet nets, the default shape for tiny_cnn."""
    c, h, w = backbones.input_shape(name)
    if name != "tiny_cnn":
        h = w = 64
    return torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(1))


@functools.cache
def model(name: str) -> nn.Module:
    """The backbone in eval mode, with random (non-trivial) batch-norm statistics and affine parameters."""
    torch.manual_seed(0)
    m = backbones.get(name).eval()
    g = torch.Generator().manual_seed(2)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return m


@functools.cache
def reference(name: str) -> Tensor:
    """The torch model's output on ``small_input(name)``."""
    with torch.no_grad():
        return model(name)(small_input(name))


@functools.cache
def traced(name: str) -> torch.fx.GraphModule:
    return torch.fx.symbolic_trace(model(name))


def parametric_modules(name: str) -> list[tuple[str, nn.Module]]:
    """(module path, module) of every conv / bn / linear call, in the traced graph's topological order."""
    gm = traced(name)
    mods = dict(gm.named_modules())
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    return [(t, mods[t]) for t in calls if isinstance(mods[t], PARAMETRIC)]


# ---------------------------------------------------------------------------------------------- registry


def test_names() -> None:
    assert backbones.names() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_input_shape_and_prototxt_path(name: str) -> None:
    shape = backbones.input_shape(name)
    assert shape == ((3, 32, 32) if name == "tiny_cnn" else (3, 224, 224))
    path = backbones.prototxt_path(name)
    assert path == Path(backbones.__file__).parent / f"{name}.prototxt"
    assert path.is_file()


@pytest.mark.parametrize("lookup", [backbones.get, backbones.input_shape, backbones.prototxt_path])
def test_unknown_name_suggests_closest(lookup: Callable[[str], object]) -> None:
    with pytest.raises(KeyError) as info:
        lookup("resnet-18")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "did you mean 'resnet18'" in message
    assert all(n in message for n in NAMES)
    with pytest.raises(ValueError, match="known backbones") as info:
        lookup("zzz")
    assert "did you mean" not in str(info.value)


def test_get_builds_fresh_models_and_forwards_kwargs() -> None:
    a, b = backbones.get("tiny_cnn"), backbones.get("tiny_cnn", num_classes=3)
    assert a is not backbones.get("tiny_cnn")
    assert a.fc.out_features == 10 and b.fc.out_features == 3


# ---------------------------------------------------------------------------------------------- torch models


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_param_count(name: str) -> None:
    assert sum(p.numel() for p in model(name).parameters()) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape(name: str) -> None:
    x, y = small_input(name), reference(name)
    if name == "deeplab_resnet34":
        assert y.shape == (2, 512, x.shape[2] // 8, x.shape[3] // 8)
    else:
        assert y.shape == (2, 10 if name == "tiny_cnn" else 1000)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mnasnet", "tiny_cnn"])
def test_num_classes(name: str) -> None:
    m = backbones.get(name, num_classes=7).eval()
    with torch.no_grad():
        assert m(small_input(name)).shape == (2, 7)


def test_deeplab_dilations() -> None:
    m = model("deeplab_resnet34")
    convs = {path: mod for path, mod in m.named_modules() if isinstance(mod, nn.Conv2d)}
    for stage, dilation in (("layer1", 1), ("layer2", 1), ("layer3", 2), ("layer4", 4)):
        in_stage = [c for path, c in convs.items() if path.startswith(stage) and c.kernel_size == (3, 3)]
        assert {(c.dilation, c.padding, c.stride) for c in in_stage} <= {
            ((dilation, dilation), (dilation, dilation), (1, 1)),
            ((dilation, dilation), (dilation, dilation), (2, 2)),
        }
        assert len(in_stage) == 2 * len(getattr(m, stage))


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace(name: str) -> None:
    gm = traced(name)
    # Every operator is a module call except the residual additions.
    functions = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert functions <= {operator.add}
    assert not any(n.op == "call_method" for n in gm.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(gm(small_input(name)), reference(name))


# ---------------------------------------------------------------------------------------------- prototxt

# The subset of Caffe's NetParameter schema (caffe.proto: names, types, defaults) that deploy files use.
_SCHEMA: dict[str, list[tuple[str, str, str, str | None]]] = {
    "BlobShape": [("dim", "repeated", "int64", None)],
    "NetParameter": [
        ("name", "optional", "string", None),
        ("input", "repeated", "string", None),
        ("input_shape", "repeated", "BlobShape", None),
        ("input_dim", "repeated", "int32", None),
        ("layer", "repeated", "LayerParameter", None),
    ],
    "LayerParameter": [
        ("name", "optional", "string", None),
        ("type", "optional", "string", None),
        ("bottom", "repeated", "string", None),
        ("top", "repeated", "string", None),
        ("input_param", "optional", "InputParameter", None),
        ("convolution_param", "optional", "ConvolutionParameter", None),
        ("batch_norm_param", "optional", "BatchNormParameter", None),
        ("scale_param", "optional", "ScaleParameter", None),
        ("relu_param", "optional", "ReLUParameter", None),
        ("clip_param", "optional", "ClipParameter", None),
        ("pooling_param", "optional", "PoolingParameter", None),
        ("eltwise_param", "optional", "EltwiseParameter", None),
        ("dropout_param", "optional", "DropoutParameter", None),
        ("inner_product_param", "optional", "InnerProductParameter", None),
    ],
    "InputParameter": [("shape", "repeated", "BlobShape", None)],
    "ConvolutionParameter": [
        ("num_output", "optional", "uint32", None),
        ("bias_term", "optional", "bool", "true"),
        ("pad", "repeated", "uint32", None),
        ("kernel_size", "repeated", "uint32", None),
        ("group", "optional", "uint32", "1"),
        ("stride", "repeated", "uint32", None),
        ("dilation", "repeated", "uint32", None),
    ],
    "BatchNormParameter": [
        ("use_global_stats", "optional", "bool", None),
        ("eps", "optional", "float", "1e-5"),
    ],
    "ScaleParameter": [("bias_term", "optional", "bool", "false")],
    "ReLUParameter": [("negative_slope", "optional", "float", "0")],
    "ClipParameter": [("min", "required", "float", None), ("max", "required", "float", None)],
    "PoolingParameter": [
        ("pool", "optional", "PoolMethod", "MAX"),
        ("pad", "optional", "uint32", "0"),
        ("kernel_size", "optional", "uint32", None),
        ("stride", "optional", "uint32", "1"),
        ("global_pooling", "optional", "bool", "false"),
        ("round_mode", "optional", "RoundMode", "CEIL"),
    ],
    "EltwiseParameter": [("operation", "optional", "EltwiseOp", "SUM"), ("coeff", "repeated", "float", None)],
    "DropoutParameter": [("dropout_ratio", "optional", "float", "0.5")],
    "InnerProductParameter": [
        ("num_output", "optional", "uint32", None),
        ("bias_term", "optional", "bool", "true"),
    ],
}
_ENUMS = {
    "PoolingParameter": {"PoolMethod": ["MAX", "AVE", "STOCHASTIC"], "RoundMode": ["CEIL", "FLOOR"]},
    "EltwiseParameter": {"EltwiseOp": ["PROD", "SUM", "MAX"]},
}


@functools.cache
def net_parameter_class() -> type:
    """Build the schema subset above as a protobuf message class (no generated code needed)."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="test_caffe_subset.proto", package="subset", syntax="proto2"
    )
    fd = descriptor_pb2.FieldDescriptorProto
    scalars = {
        "string": fd.TYPE_STRING,
        "bool": fd.TYPE_BOOL,
        "float": fd.TYPE_FLOAT,
        "int32": fd.TYPE_INT32,
        "int64": fd.TYPE_INT64,
        "uint32": fd.TYPE_UINT32,
    }
    labels = {"optional": fd.LABEL_OPTIONAL, "repeated": fd.LABEL_REPEATED, "required": fd.LABEL_REQUIRED}
    for msg_name, fields in _SCHEMA.items():
        msg = fdp.message_type.add(name=msg_name)
        enums = _ENUMS.get(msg_name, {})
        for enum_name, values in enums.items():
            enum = msg.enum_type.add(name=enum_name)
            for number, value in enumerate(values):
                enum.value.add(name=value, number=number)
        for number, (field, label, kind, default) in enumerate(fields, start=1):
            f = msg.field.add(name=field, number=number, label=labels[label])
            if kind in scalars:
                f.type = scalars[kind]
            elif kind in enums:
                f.type, f.type_name = fd.TYPE_ENUM, f".subset.{msg_name}.{kind}"
            else:
                f.type, f.type_name = fd.TYPE_MESSAGE, f".subset.{kind}"
            if default is not None:
                f.default_value = default
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("subset.NetParameter"))


@functools.cache
def parsed(name: str):
    net = net_parameter_class()()
    text_format.Parse(backbones.prototxt_path(name).read_text(encoding="utf-8"), net)
    return net


@pytest.mark.parametrize("name", NAMES)
def test_prototxt_is_up_to_date_and_deterministic(name: str) -> None:
    text = make_prototxt.generate(name)
    assert text == make_prototxt.generate(name)
    assert backbones.prototxt_path(name).read_text(encoding="utf-8") == text


def test_make_prototxt_check_mode(tmp_path: Path) -> None:
    assert make_prototxt.main(["--check", "--out", str(tmp_path)]) == 1
    assert make_prototxt.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.prototxt" for n in NAMES)
    assert make_prototxt.main(["--check", "--out", str(tmp_path)]) == 0
    assert make_prototxt.main(["--check"]) == 0  # the committed files are current


def _declared_input(net) -> tuple[str, list[int]]:
    if net.input_shape:
        return "input_shape", list(net.input_shape[0].dim)
    if net.input_dim:
        return "input_dim", list(net.input_dim)
    first = net.layer[0]
    assert first.type == "Input"
    return "layer", list(first.input_param.shape[0].dim)


@pytest.mark.parametrize("name", NAMES)
def test_prototxt_declares_input(name: str) -> None:
    form, dims = _declared_input(parsed(name))
    assert form == make_prototxt.INPUT_FORMS[name]
    assert dims == [1, *backbones.input_shape(name)]


def test_all_input_forms_appear() -> None:
    assert {_declared_input(parsed(n))[0] for n in NAMES} == {"input_shape", "input_dim", "layer"}


@pytest.mark.parametrize("name", NAMES)
def test_prototxt_layers_mirror_torch(name: str) -> None:
    """Conv / BN / linear layers follow the torch topological order, with torch module paths and shapes."""
    layers = [la for la in parsed(name).layer if la.type in ("Convolution", "BatchNorm", "InnerProduct")]
    mods = parametric_modules(name)
    assert [la.name for la in layers] == [path for path, _ in mods]
    for la, (_, m) in zip(layers, mods, strict=True):
        if isinstance(m, nn.Conv2d):
            p = la.convolution_param
            assert la.type == "Convolution" and not p.bias_term and m.bias is None
            assert (p.num_output, p.group) == (m.out_channels, m.groups)
            assert (list(p.kernel_size), list(p.stride), list(p.pad)) == (
                [m.kernel_size[0]],
                [m.stride[0]],
                [m.padding[0]],
            )
            assert list(p.dilation or [1]) == [m.dilation[0]]
        elif isinstance(m, nn.BatchNorm2d):
            assert la.type == "BatchNorm" and la.batch_norm_param.use_global_stats
            assert la.batch_norm_param.eps == pytest.approx(m.eps)
        else:
            assert la.type == "InnerProduct" and la.inner_product_param.num_output == m.out_features


@pytest.mark.parametrize("name", NAMES)
def test_prototxt_conventions(name: str) -> None:
    net = parsed(name)
    layers = list(net.layer)
    for i, la in enumerate(layers):
        if la.type in ("BatchNorm", "Scale", "ReLU", "Clip", "Dropout"):
            assert list(la.top) == list(la.bottom), f"{la.name} is not in place"
        if la.type == "BatchNorm":
            scale = layers[i + 1]
            assert (scale.type, scale.name, scale.scale_param.bias_term) == (
                "Scale",
                f"{la.name}/scale",
                True,
            )
        if la.type == "Pooling" and not la.pooling_param.global_pooling:
            assert la.pooling_param.round_mode == la.pooling_param.FLOOR
        if la.type == "Pooling" and la.pooling_param.global_pooling:
            assert la.pooling_param.pool == la.pooling_param.AVE
    assert len({la.name for la in layers}) == len(layers), "layer names are not unique"
    # Non-parametric operators: one layer per traced call.
    gm = traced(name)
    mods = dict(gm.named_modules())
    calls = [type(mods[n.target]) for n in gm.graph.nodes if n.op == "call_module"]
    adds = sum(n.target is operator.add for n in gm.graph.nodes)
    counts = {
        kind: sum(la.type == kind for la in layers)
        for kind in ("ReLU", "Clip", "Dropout", "Pooling", "Eltwise")
    }
    assert counts == {
        "ReLU": calls.count(nn.ReLU),
        "Clip": calls.count(nn.ReLU6),
        "Dropout": calls.count(nn.Dropout),
        "Pooling": calls.count(nn.MaxPool2d) + calls.count(nn.AdaptiveAvgPool2d),
        "Eltwise": adds,
    }


def run_prototxt(net, x: Tensor, modules: list[nn.Module]) -> Tensor:
    """Evaluate a parsed deploy net with torch ops, taking parameters from ``modules`` in order."""
    params = iter(modules)
    blobs: dict[str, Tensor] = {name: x for name in net.input}
    bn: nn.BatchNorm2d | None = None
    top = ""
    for la in net.layer:
        xs = [blobs[b] for b in la.bottom]
        if la.type == "Input":
            y = x
        elif la.type == "Convolution":
            m, p = next(params), la.convolution_param
            assert isinstance(m, nn.Conv2d) and m.weight.shape[:1] == (p.num_output,)
            dil = p.dilation[0] if p.dilation else 1
            y = F.conv2d(xs[0], m.weight, None, p.stride[0], p.pad[0], dil, p.group)
        elif la.type == "BatchNorm":
            bn = next(params)
            assert isinstance(bn, nn.BatchNorm2d)
            y = F.batch_norm(xs[0], bn.running_mean, bn.running_var, eps=la.batch_norm_param.eps)
        elif la.type == "Scale":
            assert bn is not None
            y = xs[0] * bn.weight[:, None, None] + bn.bias[:, None, None]
        elif la.type == "ReLU":
            y = F.relu(xs[0])
        elif la.type == "Clip":
            y = xs[0].clamp(la.clip_param.min, la.clip_param.max)
        elif la.type == "Pooling":
            p = la.pooling_param
            if p.global_pooling:
                assert p.pool == p.AVE
                y = xs[0].mean((2, 3), keepdim=True)
            else:
                assert p.pool == p.MAX
                y = F.max_pool2d(xs[0], p.kernel_size, p.stride, p.pad, ceil_mode=p.round_mode == p.CEIL)
        elif la.type == "Eltwise":
            assert la.eltwise_param.operation == la.eltwise_param.SUM
            y = functools.reduce(operator.add, xs)
        elif la.type == "Dropout":
            y = xs[0]
        elif la.type == "InnerProduct":
            m = next(params)
            assert isinstance(m, nn.Linear)
            y = F.linear(xs[0].flatten(1), m.weight, m.bias if la.inner_product_param.bias_term else None)
        else:
            raise AssertionError(f"unexpected layer type {la.type}")
        top = la.top[0]
        blobs[top] = y
    assert next(params, None) is None, "torch model has more parametric layers than the prototxt"
    return blobs[top]


@pytest.mark.parametrize("name", NAMES)
def test_prototxt_computes_the_torch_model(name: str) -> None:
    """Copying torch parameters into the prototxt's layers in order reproduces the torch output."""
    expected = reference(name)
    with torch.no_grad():
        got = run_prototxt(parsed(name), small_input(name), [m for _, m in parametric_modules(name)])
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("name", NAMES)
def test_prototxt_parses_with_project_schema(name: str) -> None:
    """When the project's Caffe schema has been generated, the files parse with it too."""
    from automtl.proto import caffe_pb2
    net = text_format.Parse(
        backbones.prototxt_path(name).read_text(encoding="utf-8"), caffe_pb2.NetParameter()
    )
    assert [la.name for la in net.layer] == [la.name for la in parsed(name).layer]
