"""onnxruntime latency: one exported model against T separate ones (the multi-task saving).

For now the "multi-task" model is one ResNet-18 (batch 2, 64x64) and the baseline is T = 3
sessions of it run one after the other, which is what T single-task deployments cost. The lead
swaps in a derived multi-task model (one session, one output per task) for ``_multi_task``.
Each benchmark checks its outputs, never its time. Also: reading the exported file back
(``from_onnx``) and writing it (``export_onnx``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from automtl import backbones

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from automtl.compiler.frontends.onnx import from_onnx  # noqa: E402
from automtl.export import export_onnx  # noqa: E402

BACKBONE = "resnet18"
SHAPE = (3, 64, 64)
BATCH = 2
TASKS = 3
GROUP = f"onnxruntime {BACKBONE} batch {BATCH} {SHAPE[1]}x{SHAPE[2]}, T={TASKS}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / f"{BACKBONE}.onnx"
    export_onnx(backbones.get(BACKBONE).eval(), path, SHAPE)
    return path


def _session(path: Path) -> Any:
    options = ort.SessionOptions()
    # idle sessions must not spin on the cores the running one needs (T sessions side by side)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feed() -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(0).standard_normal((BATCH, *SHAPE)).astype(np.float32)}


def test_ort_one_model(benchmark: Any, exported: Path) -> None:
    """One session: what a multi-task model that shares everything costs."""
    benchmark.group = GROUP
    session, feed = _session(exported), _feed()
    outs = benchmark(session.run, None, feed)
    assert outs[0].shape == (BATCH, 1000)


def test_ort_separate_models(benchmark: Any, exported: Path) -> None:
    """T sessions, one per task, run in turn: the single-task baseline."""
    benchmark.group = GROUP
    sessions, feed = [_session(exported) for _ in range(TASKS)], _feed()

    def run_all() -> list[Any]:
        return [s.run(None, feed) for s in sessions]

    outs = benchmark(run_all)
    assert len(outs) == TASKS and all(o[0].shape == (BATCH, 1000) for o in outs)


def test_export_onnx(benchmark: Any, tmp_path: Path) -> None:
    """torch -> ONNX file (TorchScript exporter, checker included)."""
    benchmark.group = f"onnx export / import {BACKBONE}"
    model = backbones.get(BACKBONE).eval()
    proto = benchmark.pedantic(export_onnx, (model, tmp_path / "m.onnx", SHAPE), rounds=3, iterations=1)
    assert sum(n.op_type == "Conv" for n in proto.graph.node) == 20


def test_from_onnx(benchmark: Any, exported: Path) -> None:
    """ONNX file -> IR graph with weights, shapes and costs."""
    benchmark.group = f"onnx export / import {BACKBONE}"
    graph = benchmark(from_onnx, exported)
    assert sum(n.kind == "conv2d" for n in graph) == 20  # BN folded into them by the exporter
    assert list(graph.output_shapes().values()) == [(1, 1000)]
