"""Prototxt frontend scaling on hostile inputs: parse and compile time per layer as the layer count
grows, and peak traced memory (tracemalloc) per MB of input.

Inputs: chains of in-place layers (all named alike, the case that used to be quadratic in the
name de-duplication, and all named apart), and files made of one long quoted string (the case
whose string pattern used to cost ~140 bytes of regex stack per character). Each benchmark times
its largest input with pytest-benchmark and stores its scaling ratios in ``extra_info`` (per-layer
CPU time at the largest size / at the smallest: 1 is linear, the size factor is quadratic) and prints
a table. ``AUTOMTL_BENCH_QUICK=1`` shrinks the inputs so the file runs in seconds. Nothing here
asserts a time; what it checks is the result.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from automtl.compiler.errors import CompileError
from automtl.compiler.frontends.prototxt import MAX_NAME, from_text, parse

QUICK = os.environ.get("AUTOMTL_BENCH_QUICK") == "1"
LAYERS = (500, 2_000) if QUICK else (2_000, 8_000, 32_000)
STRING_MB = (1, 2) if QUICK else (4, 16)
ROUNDS = 1 if QUICK else 3
HEAD = 'name: "bench"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n'
RESULTS: list[tuple[str, str, float]] = []


def _median(fn: Callable[[], object], rounds: int = ROUNDS) -> float:
    """Median CPU time of ``fn()`` (process time: other jobs on a shared machine do not count)."""
    times = []
    for _ in range(rounds):
        gc.collect()  # a full collection of earlier garbage is not this call's cost
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def _peak(fn: Callable[[], object]) -> float:
    """Peak traced memory of ``fn()`` in bytes (an expected CompileError counts as a result)."""
    tracemalloc.start()
    try:
        fn()
    except CompileError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _chain(n: int, same_names: bool) -> str:
    """``n`` in-place layers (ReLU, Scale, Dropout in turn) on one blob."""
    kinds = ("ReLU", "Scale", "Dropout")
    body = "".join(
        f'layer {{\n  name: "{"block" if same_names else f"block{i}"}"\n  type: "{kinds[i % 3]}"\n'
        f'  bottom: "data"\n  top: "data"\n}}\n'
        for i in range(n)
    )
    return HEAD + body


def _long_string(mb: int, in_name: bool) -> str:
    """One convolution whose filler type (accepted) or layer name (refused) is ``mb`` MB long."""
    s = "x" * (mb << 20)
    name = s if in_name else "conv"
    filler = "gaussian" if in_name else s
    return HEAD + (
        f'layer {{\n  name: "{name}"\n  type: "Convolution"\n  bottom: "data"\n  top: "c"\n'
        f'  convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "{filler}" }} }}\n}}\n'
    )


@pytest.fixture(scope="module", autouse=True)
def _table():
    yield
    print("\n\nprototxt scaling (same run):")
    for group, name, value in RESULTS:
        print(f"  {group:<34} {name:<44} {value:10.3f}")


@pytest.mark.parametrize("same_names", [True, False], ids=["same-names", "distinct-names"])
@pytest.mark.parametrize("stage", ["parse", "compile"])
def test_time_per_layer(benchmark: Any, stage: str, same_names: bool) -> None:
    """Time per layer at each size; ``extra_info["ratio"]`` is largest / smallest (linear: ~1)."""
    group = f"{stage} in-place chain, {'same' if same_names else 'distinct'} names"
    fn = parse if stage == "parse" else from_text
    per_layer = {}
    fn(_chain(LAYERS[0], same_names), "warm-up.prototxt")  # one-time costs (imports, caches) out of the ratio
    for n in LAYERS:
        text = _chain(n, same_names)
        per_layer[n] = _median(lambda text=text: fn(text, "chain.prototxt")) / n
        RESULTS.append((group, f"us per layer at {n:,} layers", per_layer[n] * 1e6))
    ratio = per_layer[LAYERS[-1]] / per_layer[LAYERS[0]]
    RESULTS.append((group, f"ratio {LAYERS[-1]:,} / {LAYERS[0]:,} layers", ratio))
    benchmark.group = group
    benchmark.extra_info.update({"ratio": ratio, "us_per_layer": {n: t * 1e6 for n, t in per_layer.items()}})
    result = benchmark(fn, _chain(LAYERS[-1], same_names), "chain.prototxt")
    if stage == "parse":
        assert len(result[0].layer) == LAYERS[-1]
    else:
        assert len(result) == LAYERS[-1] + 1  # the input and one operator per layer


@pytest.mark.parametrize("in_name", [False, True], ids=["long-filler-string", "long-layer-name"])
@pytest.mark.parametrize("stage", ["parse", "compile"])
def test_memory_per_input_mb(benchmark: Any, stage: str, in_name: bool) -> None:
    """Peak traced memory / input size for a file made of one long string (``extra_info``)."""
    group = f"{stage} one long {'layer name' if in_name else 'filler string'}"
    fn = parse if stage == "parse" else from_text
    ratios = {}
    for mb in STRING_MB:
        text = _long_string(mb, in_name)
        ratios[mb] = _peak(lambda text=text: fn(text, "long.prototxt")) / len(text)
        RESULTS.append((group, f"peak bytes per input byte at {mb} MB", ratios[mb]))
    benchmark.group = group
    benchmark.extra_info.update({"peak_per_input_byte": ratios})
    text = _long_string(STRING_MB[0], in_name)
    if stage == "compile" and in_name:
        with pytest.raises(CompileError, match=f"at most {MAX_NAME:,}"):
            benchmark(fn, text, "long.prototxt")
    else:
        result = benchmark(fn, text, "long.prototxt")
        assert result is not None


@pytest.mark.parametrize("stage", ["parse", "compile"])
def test_memory_per_input_mb_of_layers(benchmark: Any, stage: str) -> None:
    """Peak traced memory / input size for a file of many small layers (``extra_info``)."""
    group = f"{stage} many layers"
    fn = parse if stage == "parse" else from_text
    text = _chain(LAYERS[-1], same_names=False)
    ratio = _peak(lambda: fn(text, "chain.prototxt")) / len(text)
    RESULTS.append((group, f"peak bytes per input byte, {LAYERS[-1]:,} layers", ratio))
    benchmark.group = group
    benchmark.extra_info["peak_per_input_byte"] = ratio
    assert benchmark(fn, text, "chain.prototxt") is not None
