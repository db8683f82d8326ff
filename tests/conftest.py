"""Shared fixtures: non-trivial BN statistics, an eager-vs-compiled equality check, one thread per module."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch
from torch import nn

from automtl.compiler.codegen import codegen
from automtl.compiler.ir import Graph

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One thread for a module of small models: as fast, and unaffected when the machine is busy
    (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def deterministic():
    """One thread and deterministic algorithms for a module (bit-exact resume checks)."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(threads)


def randomize_norms(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial affine parameters and running statistics; return eval()."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
                if m.track_running_stats:
                    m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                    m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    return module.eval()


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def max_abs_diff(
    reference: nn.Module, compiled: nn.Module, inputs: Sequence[torch.Tensor]
) -> float:
    """Largest absolute difference over all outputs (shapes must match exactly)."""
    reference.eval()
    compiled.eval()
    with torch.no_grad():
        want = _as_tuple(reference(*inputs))
        got = _as_tuple(compiled(*inputs))
    assert len(want) == len(got), f"{len(got)} outputs, expected {len(want)}"
    worst = 0.0
    for w, g in zip(want, got, strict=True):
        assert w.shape == g.shape, f"output shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        worst = max(worst, (w - g).abs().max().item() if w.numel() else 0.0)
    return worst


def check_equal(
    module: nn.Module, graph: Graph, batch: int = 2, seed: int = 0
) -> torch.fx.GraphModule:
    """codegen(graph) computes what ``module`` computes (eval mode) on random inputs of the graph's shapes.

    The check runs at ``batch`` samples even when the graph was inferred at batch 1, and also checks
    that every graph output's inferred shape matches torch's (batch axis replaced).
    """
    gm = codegen(graph)
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(batch, *graph[i].shape[1:], generator=gen) for i in graph.inputs]
    diff = max_abs_diff(module, gm, inputs)
    assert diff <= TOLERANCE, f"compiled model differs from the eager module by {diff}"
    with torch.no_grad():
        outs = _as_tuple(module(*inputs))
    for name, out in zip(graph.outputs, outs, strict=True):
        shape = graph[name].shape
        if isinstance(shape, tuple) and shape and isinstance(shape[0], int) and out.dim() == len(shape):
            torch_shape = tuple(out.shape)
            assert torch_shape[1:] == tuple(shape[1:]), f"{name}: inferred {shape}, torch {torch_shape}"
    return gm


@pytest.fixture(scope="session")
def randomize() -> Callable[..., nn.Module]:
    """``randomize(module, seed=0)``: non-trivial BN parameters and statistics, eval mode."""
    return randomize_norms


@pytest.fixture(scope="session")
def assert_same() -> Callable[..., torch.fx.GraphModule]:
    """``assert_same(module, graph)``: the compiled graph equals the eager module; returns the GraphModule."""
    return check_equal


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if no GPU were present (config tests that resolve ``device: auto``)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
