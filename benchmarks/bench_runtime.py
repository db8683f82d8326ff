"""Runtime benchmarks: is what the compiler emits as fast as what the user wrote?

- a training step (forward + backward) of the compiled single-task DeepLab-ResNet-34 against the
  same step of its eager source module, batch 8, 3x128x128, 2 threads (target: ratio <= 1.05);
- building a 5-task ResNet-50 supermodel from its compiled graph plus its first forward (which
  initialises the weights build only allocated), batch 2, 3x64x64 (target: <= 0.4 s), next to a
  second forward so the part that is initialisation shows.

``AUTOMTL_BENCH_QUICK=1`` shrinks inputs and rounds so CI runs the file in seconds; the ratios are
then only indicative. Nothing asserts a time: each benchmark stores its figure in ``extra_info``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

import automtl
from automtl import backbones
from automtl.compiler.codegen import codegen
from automtl.model.supermodel import build

QUICK = os.environ.get("AUTOMTL_BENCH_QUICK") == "1"
STEP_INPUT = (2, 3, 64, 64) if QUICK else (8, 3, 128, 128)
FIRST_INPUT = (2, 3, 64, 64)
ROUNDS = 2 if QUICK else 7
RESULTS: list[tuple[str, float, str]] = []


@pytest.fixture(scope="module", autouse=True)
def _two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
    print("\n\nruntime benchmark figures (same run):")
    for name, value, unit in RESULTS:
        print(f"  {name:<52} {value:8.3f} {unit}")


def _step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    params = list(model.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        model(x).mean().backward()

    return step


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_compiled_step_vs_eager(benchmark) -> None:
    """The compiled module's training step, as a ratio of the eager source's (measured interleaved)."""
    benchmark.group = "step-compiled-vs-eager"
    torch.manual_seed(0)
    eager = backbones.get("deeplab_resnet34").train()
    compiled = codegen(automtl.compile(eager, STEP_INPUT[1:])).train()
    x = torch.randn(STEP_INPUT)
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(x), eager.eval()(x), rtol=1e-4, atol=1e-4)
    compiled.train(), eager.train()
    eager_step, compiled_step = _step(eager, x), _step(compiled, x)
    eager_step(), compiled_step()  # warm-up
    eager_times, compiled_times = [], []
    for _ in range(ROUNDS):  # interleaved, so drift of the machine hits both alike
        eager_times.append(_seconds(eager_step))
        compiled_times.append(_seconds(compiled_step))
    benchmark.pedantic(compiled_step, rounds=ROUNDS, warmup_rounds=1)
    ratio = statistics.median(compiled_times) / statistics.median(eager_times)
    benchmark.extra_info.update(ratio=ratio, eager_s=statistics.median(eager_times))
    RESULTS.append(("compiled step / eager step (DeepLab-ResNet-34)", ratio, "x"))


def test_build_and_first_forward(benchmark) -> None:
    """Build a 5-task ResNet-50 supermodel from its graph, then its first forward."""
    benchmark.group = "build-first-forward"
    graph = automtl.compile("resnet50")
    heads = {f"t{i}": nn.Identity() for i in range(5)}
    x = torch.randn(FIRST_INPUT)
    parts: dict[str, list[float]] = {"build": [], "first": [], "second": []}

    def build_and_forward() -> None:
        t0 = time.perf_counter()
        model = build(graph, heads, trunk_output="layer4", check_heads=False)
        t1 = time.perf_counter()
        model(x)
        t2 = time.perf_counter()
        model(x)
        t3 = time.perf_counter()
        parts["build"].append(t1 - t0)
        parts["first"].append(t2 - t1)
        parts["second"].append(t3 - t2)

    benchmark.pedantic(build_and_forward, rounds=ROUNDS, warmup_rounds=1)
    med = {k: statistics.median(v) for k, v in parts.items()}
    benchmark.extra_info.update({f"{k}_s": v for k, v in med.items()})
    RESULTS.append(("ResNet-50, 5 tasks: build + first forward", med["build"] + med["first"], "s"))
    RESULTS.append(("  of which build", med["build"], "s"))
    RESULTS.append(("  a second forward (no initialisation)", med["second"], "s"))
