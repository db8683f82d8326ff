"""Measured latency: the one timing loop every report uses (derived, grouped, multi-domain and slim models)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from ..compiler.ir import Graph


def measure_latency(models: nn.Module | Sequence[nn.Module], shape: Sequence[int], rounds: int = 20) -> float:
    """Median milliseconds of one batch of ``shape`` through every model, after a warm-up pass.

    A model whose IR graph has several inputs (one per domain) gets one such batch per input.
    """
    models = [models] if isinstance(models, nn.Module) else list(models)
    device = next(models[0].parameters()).device
    inputs = [[torch.randn(tuple(shape), device=device) for _ in range(_inputs(m))] for m in models]
    times = []
    with torch.inference_mode():
        for m, xs in zip(models, inputs, strict=True):
            m.eval()(*xs)
        for _ in range(rounds):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for m, xs in zip(models, inputs, strict=True):
                m(*xs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    times.sort()
    return 1000 * times[len(times) // 2]


def _inputs(model: nn.Module) -> int:
    graph = getattr(model, "graph", None)
    return len(graph.inputs) if isinstance(graph, Graph) else 1
