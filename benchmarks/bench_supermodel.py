"""Supermodel benchmarks: build time, search-step cost and derived inference, as ratios within one run.

Full settings (the issue's): steps at batch 8, 3x128x128, T = 5; inference at batch 2, 3x64x64.
``AUTOMTL_BENCH_QUICK=1`` shrinks inputs and rounds so CI can run the file in seconds; ratios are
then only indicative. Each benchmark stores its ratio in ``extra_info`` (kept in the JSON) and
the module prints a table at the end.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import automtl
from automtl.compiler.codegen import codegen
from automtl.model.supermodel import SuperModel, build

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from naive import naive_forward  # noqa: E402

QUICK = os.environ.get("AUTOMTL_BENCH_QUICK") == "1"
STEP_INPUT = (2, 3, 64, 64) if QUICK else (8, 3, 128, 128)
INFER_INPUT = (2, 3, 64, 64)
T = 5
CUTS = {"resnet50": "layer4", "resnet18": "layer4", "mobilenet_v2": "features", "deeplab_resnet34": None,
        "mnasnet": "layers"}
RESULTS: list[tuple[str, str, float]] = []


def _median(fn: Callable[[], object], rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _heads(n: int) -> dict[str, nn.Module]:
    return {f"t{i}": nn.Identity() for i in range(n)}


@pytest.fixture(scope="module", autouse=True)
def _table():
    yield
    print("\n\nsupermodel benchmark ratios (median / plain median, same run):")
    for group, name, ratio in RESULTS:
        print(f"  {group:<28} {name:<46} {ratio:6.2f}x")


def _record(benchmark, group: str, name: str, reference: float) -> None:
    ratio = benchmark.stats.stats.median / reference
    benchmark.extra_info["ratio"] = ratio
    RESULTS.append((group, name, ratio))


# --- build --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["resnet50", "deeplab_resnet34", "mobilenet_v2"])
@pytest.mark.parametrize("tasks", [2, 3, 5])
def test_build(benchmark, backbone: str, tasks: int) -> None:
    """Rewrite + codegen of a compiled trunk (weights allocated, initialised on first use)."""
    benchmark.group = f"build-{backbone}"
    graph = automtl.compile(backbone)
    cut = CUTS[backbone]
    model = benchmark(lambda: build(graph, _heads(tasks), trunk_output=cut, check_heads=False))
    assert isinstance(model, SuperModel) and len(model.choices) > 0
    benchmark.extra_info["choices"] = len(model.choices)


# --- search steps -------------------------------------------------------------------------------
def _step_model(backbone: str, shape: tuple[int, ...]) -> tuple[SuperModel, nn.Module]:
    torch.manual_seed(0)
    model = build(backbone, _heads(T), input_shape=shape[1:], trunk_output=CUTS[backbone], check_heads=False)
    model.materialize().fill_specific()
    plain = codegen(model.graph)
    return model, plain


@pytest.mark.parametrize("backbone", ["deeplab_resnet34", "mobilenet_v2"])
def test_steps(benchmark, backbone: str) -> None:
    """Soft and hard steps (fwd+bwd, all tasks) against one plain backbone step; and the naive loop."""
    benchmark.group = f"step-{backbone}"
    model, plain = _step_model(backbone, STEP_INPUT)
    x = torch.randn(STEP_INPUT)
    rounds = 1 if QUICK else 3

    def plain_step() -> None:
        plain(x).mean().backward()

    def step(mode: str) -> Callable[[], None]:
        def run() -> None:
            out = model(x, mode=mode, tau=1.0)
            sum(o.mean() for o in out.values()).backward()

        return run

    def naive_step() -> None:
        out = naive_forward(model, x, "soft", 1.0)
        sum(o.mean() for o in out.values()).backward()

    base = _median(plain_step, rounds)
    for mode in ("soft", "hard"):
        t = _median(step(mode), rounds)
        RESULTS.append((f"step-{backbone}", f"{mode} step / plain step (T={T})", t / base))
    t = _median(naive_step, 1)
    RESULTS.append((f"step-{backbone}", f"naive soft step / plain step (T={T})", t / base))
    benchmark.pedantic(step("soft"), rounds=rounds, iterations=1)
    _record(benchmark, f"step-{backbone}", "soft step (pytest-benchmark median)", base)


# --- derive -------------------------------------------------------------------------------------
def test_derive_deep_residual(benchmark) -> None:
    """Derive a 22-block residual chain (value keys that nested took ~20 s here, doubling per block)."""
    from derive_helpers import deep_residual, random_architecture

    benchmark.group = "derive"
    model = build(deep_residual(22), _heads(2), input_shape=(2, 4, 4), check_heads=False)
    model.materialize()
    arch = random_architecture(model, seed=0)
    derived = benchmark(lambda: model.derive(arch))
    assert len(derived.task_names) == 2
    benchmark.extra_info["seconds"] = benchmark.stats.stats.median


# --- derived inference --------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("arch", ["shared", "specific", "random"])
def test_derived_inference(benchmark, backbone: str, arch: str) -> None:
    """All-task inference of the derived model against one plain backbone forward (bn='follow')."""
    benchmark.group = f"infer-{backbone}"
    torch.manual_seed(0)
    model = build(backbone, _heads(T), input_shape=INFER_INPUT[1:], trunk_output=CUTS[backbone], bn="follow",
                  check_heads=False)
    model.materialize().fill_specific()
    if arch == "random":
        rng = random.Random(0)
        idx = torch.tensor([[rng.randrange(len(c.branches)) for c in model.choices] for _ in model.task_names])
        a = model.architecture_from_indices(idx)
    else:
        a = model.uniform_architecture(arch)
    derived = model.derive(a).eval()
    plain = codegen(model.graph).eval()
    x = torch.randn(INFER_INPUT)
    with torch.inference_mode():
        base = _median(lambda: plain(x), 5 if QUICK else 20)
        naive = _median(lambda: naive_forward(model.eval(), x, "fixed", architecture=a), 3)
        benchmark(lambda: derived(x))
    _record(benchmark, f"infer-{backbone}", f"derived {arch} / plain forward", base)
    RESULTS.append((f"infer-{backbone}", f"naive fixed {arch} / plain forward", naive / base))
