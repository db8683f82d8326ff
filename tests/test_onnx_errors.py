"""ONNX frontend errors: invalid and hostile files, weights given as graph inputs, opsets and op versions.

Every refusal is one :class:`CompileError` line naming the file and, where there is one, the node.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from onnx_util import assert_matches_ort, make_model, run_ir, run_ort, torch_export, w
from torch import nn

import automtl
from automtl.compiler.errors import CompileError
from automtl.compiler.frontends import onnx as onnx_frontend
from automtl.compiler.frontends.onnx import Reader, from_onnx, max_opset

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest)


def refused(model: onnx.ModelProto | bytes | Path, match: str, **kwargs) -> str:
    """The one-line message ``from_onnx`` refuses the model with (it must match ``match``)."""
    with pytest.raises(CompileError, match=match) as info:
        from_onnx(model, **kwargs)
    text = str(info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def conv_model(**conv_attrs) -> onnx.ModelProto:
    conv = helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv1", **conv_attrs)
    return make_model([conv], {"x": (1, 3, 4, 4)}, ["y"], {"W": w(2, 3, 1, 1), "B": w(2)})


# --- not ONNX, opsets ----------------------------------------------------------------------------
def test_not_an_onnx_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x08\xff\xff\xff\xff\xff not a protobuf at all \x00\x17")
    refused(bad, r"garbage.onnx: not an ONNX model")
    text = tmp_path / "net.onnx"
    text.write_text('name: "LeNet"\nlayer { name: "conv1" type: "Convolution" }\n')
    refused(text, r"net.onnx: not an ONNX model")
    with pytest.raises(CompileError, match="not an ONNX model"):
        automtl.compile(bad)


def test_opset_newer_than_onnx_knows() -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (1, 3)}, ["y"])
    model.opset_import[0].version = max_opset() + 5
    refused(model, rf"opset {max_opset() + 5} is newer than the newest the installed onnx package knows "
                   rf"\({max_opset()}\)")


def test_opsets_up_to_the_newest_onnx_knows() -> None:
    """No fixed cap: every opset from 26 to the newest the installed onnx knows is read."""
    for opset in range(26, max_opset() + 1):
        model = conv_model(pads=[0, 0, 0, 0])
        model.opset_import[0].version = opset
        graph = from_onnx(model)
        assert [n.kind for n in graph if n.kind != "input"] == ["conv2d"]
    assert onnx_frontend.MAX_OPSET == max_opset() == onnx.defs.onnx_opset_version()


def test_op_version_newer_than_its_handler_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An opset selecting a newer version of an op than the frontend was written for refuses that op."""
    monkeypatch.setitem(onnx_frontend.VERSIONS, "Relu", 6)
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="act")], {"x": (1, 3)}, ["y"], opset=14)
    refused(model, r"Relu 'act': Relu-14 \(opset 14\) is newer than the versions automtl reads \(up to Relu-6\)")
    model.opset_import[0].version = 12  # Relu-6 there
    assert [n.kind for n in from_onnx(model) if n.kind != "input"] == ["relu"]


def test_op_table_is_consistent() -> None:
    """Every claimed op has a handler (Constant is folded by the reader) and a version the installed onnx knows."""
    assert set(onnx_frontend.HANDLERS) | {"Constant"} == onnx_frontend.SUPPORTED_OPS == set(onnx_frontend.VERSIONS)
    for op, version in onnx_frontend.VERSIONS.items():
        assert onnx.defs.get_schema(op, version, "").since_version == version, op


def test_symbolic_spatial_dims_need_input_shape() -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": ("N", 3, "H", "W")}, ["y"])
    refused(model, r"input 'x' has symbolic dimension\(s\) H \(axis 2\), W \(axis 3\).*input_shape")
    assert from_onnx(model, input_shape=(3, 8, 9))["x"].shape == (1, 3, 8, 9)
    refused(model, "is Nx3xHxW in the model but input_shape gives", input_shape=(4, 8, 9))


def test_unsupported_operator_names_node_and_opset() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Einsum", ["r", "r"], ["y"], equation="ij,ij->i")]
    refused(make_model(nodes, {"x": (2, 3)}, ["y"]), r"Einsum '#1': unsupported ONNX operator Einsum \(opset 17\)")


# --- weights given as graph inputs ---------------------------------------------------------------
def weights_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Conv + BN whose weights are graph inputs (as exported with parameters as inputs)."""
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], name="bn1")]
    weights = {"W": w(4, 3, 3, 3), "B": w(4), "s": w(4), "b": w(4), "m": w(4), "v": np.abs(w(4)) + 0.5}
    inputs = {"x": (2, 3, 6, 6), **{k: v.shape for k, v in weights.items()}}
    return make_model(nodes, inputs, ["y"]), weights


def test_weights_as_graph_inputs_refused_with_the_hint() -> None:
    model, _ = weights_model()
    refused(model, r"Conv 'conv1': weight 'W' is a graph input, not an initializer "
                   r"\(pass its value: weights_as_inputs=\{'W': array\}\)")


def test_weights_as_inputs_accepted(tmp_path: Path) -> None:
    model, weights = weights_model()
    x = w(2, 3, 6, 6)
    (want,) = run_ort(model, x, *weights.values())
    graph = from_onnx(model, weights_as_inputs=weights)
    assert graph.inputs == ["x"] and [n.kind for n in graph if n.kind != "input"] == ["conv2d", "batch_norm"]
    (got,) = run_ir(graph, x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    path = tmp_path / "weights_as_inputs.onnx"
    onnx.save(model, path)
    torch_weights = {k: torch.from_numpy(v) for k, v in weights.items()}  # tensors are accepted too
    (got,) = run_ir(automtl.compile(path, weights_as_inputs=torch_weights), x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_weights_as_inputs_checked() -> None:
    model, weights = weights_model()
    refused(model, r"weights_as_inputs gives 'W2', which is not a graph input of the model \(graph inputs: B, W, b",
            weights_as_inputs={**weights, "W2": weights["W"]})
    refused(model, r"weights_as_inputs\['W'\] has shape \[4, 3, 1, 1\] but the model declares 4x3x3x3",
            weights_as_inputs={**weights, "W": w(4, 3, 1, 1)})
    with pytest.raises(CompileError, match="weights_as_inputs is read for .onnx files only"):
        automtl.compile("resnet18", weights_as_inputs=weights)


def test_computed_weight_refused() -> None:
    nodes = [helper.make_node("Relu", ["W0"], ["W"]), helper.make_node("Conv", ["x", "W"], ["y"], name="conv1")]
    model = make_model(nodes, {"x": (1, 3, 4, 4), "W0": (2, 3, 1, 1)}, ["y"])
    refused(model, r"Conv 'conv1': weight 'W' is computed at run time")


# --- invalid and hostile files -------------------------------------------------------------------
def test_checker_refuses_a_conv_retyped_to_sigmoid() -> None:
    model = conv_model()
    model.graph.node[0].op_type = "Sigmoid"  # the weights would be silently dropped
    refused(model, r"Sigmoid 'conv1': the ONNX checker rejects the model: .*input size 3 not in range")


def test_checker_refuses_two_nodes_writing_one_value() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="a"), helper.make_node("Sigmoid", ["x"], ["y"], name="b")]
    refused(make_model(nodes, {"x": (1, 3)}, ["y"]), r"the ONNX checker rejects the model: .*static single "
            r"assignment|the ONNX checker rejects the model: .*single static assignment")


def test_checker_refuses_negative_initializer_dims() -> None:
    model = conv_model()
    model.graph.initializer[0].dims[0] = -2
    refused(model, r"the ONNX checker rejects the model: Negative dimension value \(tensor name: W\)")


def test_checker_refuses_a_missing_input() -> None:
    conv = helper.make_node("Conv", ["x", "W"], ["y"], name="conv1")
    refused(make_model([conv], {"x": (1, 3, 4, 4)}, ["y"]), r"the ONNX checker rejects the model: .*'W'")


@pytest.mark.parametrize(
    ("nodes", "inits", "match"),
    [
        pytest.param([helper.make_node("Conv", ["x", "W"], ["y"], name="c", kernel_shape=[3, 3])],
                     {"W": w(2, 3, 1, 1)}, r"Conv 'c': kernel_shape \[3, 3\] differs from the weight's \[1, 1\]",
                     id="kernel-shape"),
        pytest.param([helper.make_node("Conv", ["x", "W", "B"], ["y"], name="c")], {"W": w(2, 3, 1, 1), "B": w(5)},
                     r"Conv 'c': bias has 5 values for 2 channels", id="conv-bias"),
        pytest.param([helper.make_node("Conv", ["x", "W"], ["y"], name="c")], {"W": w(2, 5, 1, 1)},
                     r"'c'.*expects 5 input channels", id="conv-channels"),
        pytest.param([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")],
                     {"s": w(3), "b": w(3), "m": w(4), "v": w(3)}, r"BatchNormalization 'bn': running_mean has 4 "
                     r"values for 3 channels", id="bn-stats"),
        pytest.param([helper.make_node("Split", ["x", "s"], ["a", "b"], name="sp", axis=1)],
                     {"s": np.array([1, 1], np.int64)}, r"Split 'sp': split sizes \[1, 1\] do not cut axis 1",
                     id="split-sizes"),
        pytest.param([helper.make_node("Gather", ["x", "i"], ["y"], name="g", axis=1)],
                     {"i": np.array([0, 7], np.int64)}, r"Gather 'g': indices \[0, 7\] are outside axis 1 of size 3",
                     id="gather-range"),
        pytest.param([helper.make_node("Expand", ["x", "s"], ["y"], name="e")],
                     {"s": np.array([1, 5, 4, 4], np.int64)}, r"Expand 'e': cannot expand \[1, 3, 4, 4\]",
                     id="expand"),
        pytest.param([helper.make_node("Reshape", ["x", "s"], ["y"], name="r")],
                     {"s": np.array([1, -1, -1], np.int64)}, r"Reshape 'r'", id="reshape-two-minus-one"),
        pytest.param([helper.make_node("Pad", ["x", "p"], ["y"], name="p", mode="reflect")],
                     {"p": np.array([0, 0, 5, 0, 0, 0, 0, 0], np.int64)}, r"Pad 'p': reflect pads .* reach beyond",
                     id="reflect-pad"),
    ],
)
def test_bad_shapes_refused_by_node_name(nodes: list, inits: dict, match: str) -> None:
    """Refused by name, by the checker or the frontend; the frontend's own check names it too."""
    model = make_model(nodes, {"x": (1, 3, 4, 4)}, list(nodes[0].output), inits)
    node = f"{nodes[0].op_type} '{nodes[0].name}': "
    assert node in refused(model, re.escape(node))
    with pytest.raises(CompileError, match=match) as info:
        Reader(model, "m.onnx", None).read()  # without the checker in front
    assert "\n" not in str(info.value)


def test_zero_sized_weight_refused() -> None:
    conv = helper.make_node("Conv", ["x", "W"], ["y"], name="conv1")
    model = make_model([conv], {"x": (1, 3, 4, 4)}, ["y"], {"W": np.zeros((0, 3, 1, 1), np.float32)})
    refused(model, r"Conv 'conv1': gives an empty tensor of shape \[1, 0, 4, 4\]")


def test_corrupt_initializer_named() -> None:
    model = conv_model()
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]  # one float short
    text = refused(model, r"'W'|W")
    assert "W" in text


def test_numpy_errors_name_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error inside a handler that is not a CompileError still comes out as one line naming the node."""
    def broken(r, node, a):  # noqa: ANN001 - the handler signature
        np.zeros(3).reshape(2)

    monkeypatch.setitem(onnx_frontend.HANDLERS, "Relu", broken)
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="act")], {"x": (1, 3)}, ["y"])
    refused(model, r"Relu 'act': invalid Relu node: ValueError: cannot reshape array of size 3")


def test_dropout_in_training_mode_refused() -> None:
    node = helper.make_node("Dropout", ["x", "r", "t"], ["y"], name="drop")
    model = make_model([node], {"x": (2, 3)}, ["y"], {"r": np.array(0.5, np.float32), "t": np.array(True)})
    refused(model, r"Dropout 'drop': Dropout with training_mode=True drops random values")
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array(False), "t"))
    assert_matches_ort(model, (2, 3))


def test_cast_to_integer_refused() -> None:
    node = helper.make_node("Cast", ["x"], ["y"], name="to_int", to=TensorProto.INT64)
    model = make_model([node], {"x": (2, 3)}, ["y"], out_dtype=TensorProto.INT64)
    refused(model, r"Cast 'to_int': casting a computed tensor to INT64 is not supported")


# --- fuzzing: mutants of a real export -----------------------------------------------------------
class _Mixed(nn.Module):
    """Convolutions, a split, a channels-last LayerNorm, x[:, i:j].expand_as, pooling, resizing, padding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 8, 3, padding=1), nn.LayerNorm(8)
        self.up, self.deconv = nn.Upsample(scale_factor=2), nn.ConvTranspose2d(8, 4, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        a, b = torch.split(x, [3, 5], 1)
        y = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        z = F.max_pool2d(torch.cat([b, a], 1) * y[:, 1:2].expand_as(y), 2)
        return self.deconv(F.pad(self.up(z), (1, 1, 1, 1))).flatten(1).softmax(-1)


def _mutant(base: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    """One random corruption: an op type, an input, an attribute, an initializer, an output, the order, the opset."""
    m = onnx.ModelProto()
    m.CopyFrom(base)
    g, kind = m.graph, rng.randrange(9)
    node = rng.choice(list(g.node))
    if kind == 0:
        node.op_type = rng.choice(sorted(onnx_frontend.SUPPORTED_OPS))
    elif kind == 1 and node.input:
        del node.input[rng.randrange(len(node.input))]
    elif kind == 2:
        node.input.append(rng.choice([t.name for t in g.initializer]))
    elif kind == 3 and node.attribute:
        a = rng.choice(list(node.attribute))
        if a.type == onnx.AttributeProto.INT:
            a.i = rng.randint(-3, 10)
        elif a.type == onnx.AttributeProto.INTS and a.ints:
            a.ints[rng.randrange(len(a.ints))] = rng.randint(-3, 10)
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = rng.choice([0.0, -1.0, 1e30, float("nan")])
    elif kind == 4:
        t = rng.choice([t for t in g.initializer if t.dims])
        t.dims[rng.randrange(len(t.dims))] = rng.choice([0, -1, 1, 2, 7, 10**6])
    elif kind == 5:
        t = rng.choice([t for t in g.initializer if t.raw_data])
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data))]
    elif kind == 6:
        node.output[0] = rng.choice(list(g.node)).output[0]
    elif kind == 7:
        i, j = rng.sample(range(len(g.node)), 2)
        first = onnx.NodeProto()
        first.CopyFrom(g.node[i])
        g.node[i].CopyFrom(g.node[j])
        g.node[j].CopyFrom(first)
    else:
        m.opset_import[0].version = rng.randint(1, max_opset() + 2)
    return m


def test_fuzzed_exports_compile_exactly_or_are_refused_in_one_line(tmp_path: Path) -> None:
    """Mutants of an export: a one-line CompileError, or a model that runs and equals onnxruntime where it runs."""
    torch.manual_seed(0)
    path = tmp_path / "mixed.onnx"
    torch_export(_Mixed().eval(), torch.randn(2, 3, 8, 8), path)
    base, rng = onnx.load(path), random.Random(0)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    outcome = Counter()
    for _ in range(80):
        model = _mutant(base, rng)
        try:
            graph = from_onnx(model)
        except CompileError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 700
            outcome["refused"] += 1
            continue
        x = w(*graph[graph.inputs[0]].shape)
        (got,) = run_ir(graph, x)  # compiled: it must run
        try:
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            (want,) = session.run(None, {session.get_inputs()[0].name: x})
        except Exception:  # noqa: BLE001 - onnxruntime refuses some mutants the frontend reads
            outcome["onnxruntime refuses"] += 1
            continue
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4
        outcome["equal"] += 1
    assert outcome["refused"] > 20 and outcome["equal"] > 10, outcome
