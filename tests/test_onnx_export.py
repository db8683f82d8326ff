"""ONNX export of compiled and multi-task models: names, dynamic batch, onnxruntime checks, reading back."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx_util import calibrate, kinds, run_ort
from torch import nn

from automtl.app.export import ExportCheckError, check_onnx, export_onnx
from automtl.compiler.codegen import codegen
from automtl.compiler.frontends.onnx import from_onnx

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest)


# --- export --------------------------------------------------------------------------------------
class TwoHeads(nn.Module):
    """One shared conv feeding two task heads."""

    task_names = ("seg", "cls")

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 2, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.bn(self.conv(x))
        seg = self.head(F.relu(y))
        cls = self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu6(y), 1), 1))
        return seg, cls


def test_export_codegen_graph_module(tmp_path: Path) -> None:
    import automtl

    source = calibrate(TwoHeads(), (3, 16, 16))
    graph = automtl.compile(source, (3, 16, 16))
    gm = codegen(graph).eval()
    path = tmp_path / "two.onnx"
    proto = export_onnx(gm, path, (3, 16, 16), output_names=["seg", "cls"])
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == ["seg", "cls"]
    assert sum(n.op_type == "Conv" for n in proto.graph.node) == kinds(graph).count("conv2d") == 2
    for batch in (1, 3):
        x = torch.randn(batch, 3, 16, 16)
        diffs = check_onnx(path, gm, x)
        assert set(diffs) == {"seg", "cls"} and max(diffs.values()) <= 1e-4
        seg, cls = run_ort(path, x.numpy())
        assert seg.shape == (batch, 2, 16, 16) and cls.shape == (batch, 4)
    # the exported file reads back into the same IR shape
    back = from_onnx(path, input_shape=(3, 16, 16))
    assert [back[o].shape for o in back.outputs] == [(1, 2, 16, 16), (1, 4)]


def test_export_names_from_task_names_and_default(tmp_path: Path) -> None:
    model = TwoHeads().eval()
    proto = export_onnx(model, tmp_path / "a.onnx", (3, 8, 8), dynamic_batch=False, opset=17)
    assert [o.name for o in proto.graph.output] == ["seg", "cls"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
    proto = export_onnx(plain, tmp_path / "b.onnx", (2, 3, 8, 8))
    assert [o.name for o in proto.graph.output] == ["output_0"]
    with pytest.raises(ValueError, match="returns 1 outputs but 2 names"):
        export_onnx(plain, tmp_path / "c.onnx", (3, 8, 8), output_names=["a", "b"])


def test_check_onnx_names_the_differing_output(tmp_path: Path) -> None:
    model = TwoHeads().eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, (3, 8, 8))
    with torch.no_grad():
        model.fc.bias.add_(1.0)  # the PyTorch side no longer matches the file
    with pytest.raises(ExportCheckError, match=r"output 'cls' differs from PyTorch by up to 1"):
        check_onnx(path, model, torch.randn(2, 3, 8, 8))
