"""ONNX export of derived multi-task models: one graph, one named output per task, shared work once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from automtl import build
from automtl.app.export import export_onnx
from automtl.model.derive import MultiTaskModel
from automtl.model.supermodel import SuperModel

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest)


# backbone -> (trunk_output, channels, input size)
CASES = {"tiny_cnn": ("block.relu2", 16, 32), "mobilenet_v2": ("features", 1280, 32), "resnet18": ("layer4", 512, 32)}
TASKS = ("cls", "seg", "depth")
HEAD_CONVS = 2  # seg and depth end in a 1x1 convolution each


def heads(channels: int) -> dict[str, nn.Module]:
    return {
        "cls": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3)),
        "seg": nn.Sequential(nn.Conv2d(channels, 2, 1)),
        "depth": nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid()),
    }


def supermodel(name: str, bn: str = "follow") -> SuperModel:
    cut, channels, size = CASES[name]
    torch.manual_seed(0)
    model = build(name, heads(channels), trunk_output=cut, bn=bn, input_shape=(3, size, size))
    model.materialize()
    model.fill_specific()
    with torch.no_grad():
        for m in model.mixed_modules():
            m.specific_weight.add_(torch.randn_like(m.specific_weight) * 0.05)
    return model


def random_architecture(model: SuperModel, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    pick = torch.zeros(len(model.task_names), len(model.choices), dtype=torch.long)
    for c in model.choices:
        pick[:, c.index] = torch.randint(len(c.branches), (len(model.task_names),), generator=gen)
    return model.architecture_from_indices(pick)


def run_ort(path: Path, x: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    return [o.name for o in session.get_outputs()], session.run(None, {inp.name: x})


def export_and_check(derived: MultiTaskModel, path: Path, size: int) -> onnx.ModelProto:
    """Export with a dynamic batch; onnxruntime == PyTorch at batch 1 and 3, outputs named by task."""
    proto = export_onnx(derived, path, (3, size, size), dynamic_batch=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert len(proto.graph.input) == 1  # one graph, one input, every task inside
    assert [o.name for o in proto.graph.output] == derived.task_names
    derived.eval()
    for batch in (1, 3):
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            want = derived(x)
        names, got = run_ort(path, x.numpy())
        assert names == derived.task_names
        for name, g, w in zip(names, got, want, strict=True):
            assert g.shape == tuple(w.shape) and g.shape[0] == batch, name
            scale = max(1.0, float(w.abs().max()))
            assert np.abs(g - w.numpy()).max() <= 1e-4 * scale, f"{name} at batch {batch}"
    return proto


def onnx_convs(proto: onnx.ModelProto) -> int:
    return sum(n.op_type == "Conv" for n in proto.graph.node)


def ir_convs(derived: MultiTaskModel) -> int:
    return sum(n.kind == "conv2d" for n in derived.graph)


@pytest.mark.parametrize("name", list(CASES))
def test_all_shared_exports_the_trunk_once(name: str, tmp_path: Path) -> None:
    model = supermodel(name)
    derived = model.derive(model.uniform_architecture("shared"))
    proto = export_and_check(derived, tmp_path / f"{name}.onnx", CASES[name][2])
    backbone = sum(n.kind == "conv2d" for n in model.graph)
    # BN is folded into the convolutions by the exporter: Conv nodes are exactly the IR's conv2d operators
    assert onnx_convs(proto) == ir_convs(derived) == backbone + HEAD_CONVS
    assert onnx_convs(proto) < len(TASKS) * backbone


@pytest.mark.parametrize(("name", "kind"), [("tiny_cnn", "specific"), ("tiny_cnn", "random"),
                                            ("mobilenet_v2", "random")])
def test_branched_architectures_export(name: str, kind: str, tmp_path: Path) -> None:
    model = supermodel(name, bn="specific" if kind == "random" else "follow")
    arch = random_architecture(model) if kind == "random" else model.uniform_architecture(kind)
    derived = model.derive(arch)
    proto = export_and_check(derived, tmp_path / f"{name}-{kind}.onnx", CASES[name][2])
    assert onnx_convs(proto) == ir_convs(derived)
    backbone = sum(n.kind == "conv2d" for n in model.graph)
    if kind == "specific":
        assert ir_convs(derived) == len(TASKS) * backbone + HEAD_CONVS
    else:  # tasks share a prefix, so fewer convs than T copies; skips and projections change the count
        assert ir_convs(derived) < len(TASKS) * backbone + HEAD_CONVS
    # the ONNX file holds only the derived model's weights (no unused branches)
    stored = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    held = sum(p.numel() for p in derived.parameters()) + sum(b.numel() for b in derived.buffers())
    assert stored <= held < sum(p.numel() for m in model.mixed_modules() for p in m.parameters())
