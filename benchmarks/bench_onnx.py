"""onnxruntime latency: one exported model against T separate ones (the multi-task saving).

One plain ResNet-18 (batch 2, 64x64) against T = 3 sessions of it run one after the other, which
is what T single-task deployments cost. Then the real thing: a derived multi-task model (ResNet-18
trunk, T = 5 tasks, one session with one output per task) for an all-shared (bn="follow") and a
random architecture, against T single-task models (the trunk plus that task's head) run in turn;
the latency ratio goes to ``benchmark.extra_info`` and is printed. Each benchmark checks its
outputs, never its time. Also: reading the exported file back (``from_onnx``) and writing it
(``export_onnx``), and how reading scales with the file: CPU time and peak traced memory
(tracemalloc: numpy and Python objects) per MB of weights, for two sizes of a convolution stack
(the checker included; per-MB figures that stay flat are linear).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from automtl import backbones, build
from automtl.model.derive import MultiTaskModel

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from automtl.app.export import export_onnx  # noqa: E402
from automtl.compiler.frontends.onnx import from_onnx  # noqa: E402

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


# --- multi-task: one derived model against T single-task models ----------------------------------
MT_TASKS = 5
MT_NAMES = [f"task{i}" for i in range(MT_TASKS)]
MT_CUT = "layer4"
MT_GROUP = f"onnxruntime multi-task {BACKBONE} trunk, batch {BATCH} {SHAPE[1]}x{SHAPE[2]}, T={MT_TASKS}"
MT_ROUNDS = 3 if os.environ.get("AUTOMTL_BENCH_QUICK") == "1" else 20
MT_RESULTS: list[tuple[str, dict[str, float]]] = []


def _mt_heads(names: list[str]) -> dict[str, nn.Module]:
    return {t: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)) for t in names}


def _mt_derived(kind: str) -> MultiTaskModel:
    """The T-task model of an all-shared or a random architecture (every task a random branch per choice)."""
    torch.manual_seed(0)
    model = build(BACKBONE, _mt_heads(MT_NAMES), trunk_output=MT_CUT, bn="follow", input_shape=SHAPE)
    model.materialize()
    model.fill_specific()
    if kind == "shared":
        return model.derive(model.uniform_architecture("shared"))
    gen = torch.Generator().manual_seed(0)
    pick = torch.zeros(MT_TASKS, len(model.choices), dtype=torch.long)
    for c in model.choices:
        pick[:, c.index] = torch.randint(len(c.branches), (MT_TASKS,), generator=gen)
    return model.derive(model.architecture_from_indices(pick))


@pytest.fixture(scope="module")
def single_task_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """T single-task deployments (the trunk and one head each): T sessions, each loading its own copy.

    One file serves them all: the weights' values do not change the latency, and exporting once saves time.
    """
    torch.manual_seed(0)
    model = build(BACKBONE, _mt_heads(MT_NAMES[:1]), trunk_output=MT_CUT, input_shape=SHAPE)
    single = model.derive(model.uniform_architecture("shared"))
    path = tmp_path_factory.mktemp("single") / "single_task.onnx"
    export_onnx(single, path, SHAPE)
    return [path] * MT_TASKS


@pytest.fixture(scope="module", autouse=True)
def _mt_table() -> Any:
    yield
    if MT_RESULTS:
        print(f"\n\n{MT_GROUP}: one derived model / {MT_TASKS} single-task models (onnxruntime, median)")
        for kind, info in MT_RESULTS:
            print(f"  {kind:<8} latency {info['latency_ratio']:.2f}x ({info['derived_ms']:.1f} ms vs "
                  f"{info['separate_ms']:.1f} ms), FLOPs {info['flops_ratio']:.2f}x, "
                  f"params {info['params_ratio']:.2f}x, {info['onnx_convs']:.0f} Conv nodes")


def _median_ms(fns: list[Callable[[], Any]], rounds: int) -> list[float]:
    """Median wall time of each function; rounds interleave them so machine load hits all alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


def test_ort_multitask_separate(benchmark: Any, single_task_models: list[Path]) -> None:
    """T single-task sessions run in turn: the baseline of the derived models below."""
    benchmark.group = MT_GROUP
    sessions, feed = [_session(p) for p in single_task_models], _feed()
    outs = benchmark(lambda: [s.run(None, feed) for s in sessions])
    assert [o[0].shape for o in outs] == [(BATCH, 10)] * MT_TASKS


@pytest.mark.parametrize("kind", ["shared", "random"])
def test_ort_multitask_derived(benchmark: Any, kind: str, single_task_models: list[Path], tmp_path: Path) -> None:
    """One session computing all T tasks of a derived model; its latency ratio to T sessions."""
    benchmark.group = MT_GROUP
    derived = _mt_derived(kind).eval()
    proto = export_onnx(derived, tmp_path / f"{kind}.onnx", SHAPE)
    assert [o.name for o in proto.graph.output] == MT_NAMES
    session, singles, feed = _session(tmp_path / f"{kind}.onnx"), [_session(p) for p in single_task_models], _feed()
    outs = benchmark(session.run, None, feed)
    with torch.no_grad():
        want = derived(torch.from_numpy(feed["input"]))
    for got, w in zip(outs, want, strict=True):
        assert got.shape == (BATCH, 10)
        assert np.abs(got - w.numpy()).max() <= 1e-4 * max(1.0, float(w.abs().max()))
    derived_ms, separate_ms = _median_ms(
        [lambda: session.run(None, feed), lambda: [s.run(None, feed) for s in singles]], MT_ROUNDS
    )
    report = derived.report()
    info = {
        "latency_ratio": derived_ms / separate_ms, "derived_ms": derived_ms, "separate_ms": separate_ms,
        "flops_ratio": report["flops_ratio"], "params_ratio": report["params_ratio"],
        "onnx_convs": float(sum(n.op_type == "Conv" for n in proto.graph.node)),
    }
    benchmark.extra_info.update(info)
    MT_RESULTS.append((kind, info))
    print(f"\n{kind}: latency ratio {info['latency_ratio']:.3f} (derived {derived_ms:.2f} ms, "
          f"{MT_TASKS} single-task {separate_ms:.2f} ms), FLOPs ratio {info['flops_ratio']:.3f}")
    if kind == "shared":  # the trunk once: 20 convolutions, not T x 20
        assert info["onnx_convs"] == 20


# --- reading scales with the file: time and memory per MB ----------------------------------------
SCALE_MB = (1, 4) if os.environ.get("AUTOMTL_BENCH_QUICK") == "1" else (4, 32)
SCALE_RESULTS: dict[int, dict[str, float]] = {}


def _conv_stack(path: Path, mb: int, channels: int = 64) -> int:
    """A chain of 3x3 convolution + ReLU layers holding about ``mb`` MB of float32 weights; its layer count."""
    from onnx import TensorProto, helper, numpy_helper

    layers = max(1, round(mb * 2**20 / (channels * channels * 9 * 4)))
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        weight = f"layer{i}.weight"
        inits.append(numpy_helper.from_array(rng.standard_normal((channels, channels, 3, 3), np.float32) * 0.05,
                                             weight))
        nodes += [helper.make_node("Conv", [x, weight], [f"c{i}"], name=f"/layer{i}/Conv", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"/layer{i}/Relu")]
        x = f"r{i}"
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "stack", [value("x", TensorProto.FLOAT, ["N", channels, 8, 8])],
                              [value(x, TensorProto.FLOAT, ["N", channels, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return layers


@pytest.mark.parametrize("mb", SCALE_MB)
def test_from_onnx_per_mb(benchmark: Any, mb: int, tmp_path: Path) -> None:
    """ONNX file -> IR for a conv stack of ``mb`` MB: CPU ms and peak traced MB per MB of file."""
    benchmark.group = "onnx import scaling (conv stack)"
    path = tmp_path / f"stack{mb}.onnx"
    layers = _conv_stack(path, mb)
    size = path.stat().st_size / 2**20
    graph = benchmark.pedantic(from_onnx, (path,), rounds=3, iterations=1)
    assert sum(n.kind == "conv2d" for n in graph) == layers
    gc.collect()
    start = time.process_time()
    from_onnx(path)
    cpu = time.process_time() - start
    tracemalloc.start()
    try:
        from_onnx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    info = {"file_mb": size, "cpu_ms_per_mb": 1e3 * cpu / size, "peak_mb_per_mb": peak / 2**20 / size}
    benchmark.extra_info.update(info)
    SCALE_RESULTS[mb] = info
    print(f"\nfrom_onnx {size:.1f} MB ({layers} convs): {info['cpu_ms_per_mb']:.1f} ms CPU per MB, "
          f"peak traced memory {info['peak_mb_per_mb']:.2f} MB per MB")
    if len(SCALE_RESULTS) == len(SCALE_MB):
        small, large = (SCALE_RESULTS[m] for m in SCALE_MB)
        cpu_ratio = large["cpu_ms_per_mb"] / small["cpu_ms_per_mb"]
        memory_ratio = large["peak_mb_per_mb"] / small["peak_mb_per_mb"]
        print(f"per-MB ratio {SCALE_MB[1]} MB / {SCALE_MB[0]} MB: CPU {cpu_ratio:.2f}, memory {memory_ratio:.2f} "
              "(1 is linear)")
