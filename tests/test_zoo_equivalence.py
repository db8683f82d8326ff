"""Every zoo backbone: compiled(torch definition) == the module, and its prototxt == its torch version."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import torch

from automtl import backbones
from automtl.compiler.frontends.fx import from_module
from automtl.compiler.frontends.prototxt import from_prototxt
from automtl.compiler.ir import Graph

NAMES = backbones.names()
PARAMETRIC = ("conv2d", "batch_norm", "linear")


def small_shape(name: str) -> tuple[int, int, int]:
    return (3, 32, 32) if name == "tiny_cnn" else (3, 64, 64)


def parametric(graph: Graph) -> list[str]:
    return [n.name for n in graph if n.kind in PARAMETRIC]


def transfer_tensors(src: Graph, dst: Graph) -> None:
    """Give ``dst``'s parametric nodes (conv2d, batch_norm, linear) ``src``'s tensors, matched in graph order."""
    a, b = parametric(src), parametric(dst)
    assert len(a) == len(b), f"{len(a)} parametric operators vs {len(b)}"
    for s, d in zip(a, b, strict=True):
        ns, nd = src[s], dst[d]
        assert ns.kind == nd.kind, f"{s} ({ns.kind}) vs {d} ({nd.kind})"
        assert ns.params == nd.params, f"{s}: {ns.params} params vs {d}: {nd.params}"
        nd.tensors = {k: v.clone() for k, v in ns.tensors.items()}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a small, busy CPU, thread hand-offs cost more than these small inputs gain."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=NAMES)
def zoo(request: pytest.FixtureRequest, randomize) -> tuple[str, torch.nn.Module, Graph]:
    """(name, the module with non-trivial BN statistics in eval mode, its fx graph at a small input)."""
    name = request.param
    torch.manual_seed(0)
    module = randomize(backbones.get(name), seed=1)
    return name, module, from_module(module, small_shape(name))


def test_zoo_names_are_covered() -> None:
    assert {"resnet18", "resnet50", "mobilenet_v2", "tiny_cnn"} <= set(NAMES)


def test_compiled_torch_definition_equals_module(zoo: tuple[str, torch.nn.Module, Graph], assert_same) -> None:
    """Max abs difference <= 1e-5 in eval mode, same weights, batch 2 (assert_same)."""
    name, module, graph = zoo
    assert [n.kind for n in graph if n.kind == "opaque"] == []
    assert graph.params == sum(p.numel() for p in module.parameters())
    assert_same(module, graph, seed=2)


def test_prototxt_matches_torch_definition(zoo: tuple[str, torch.nn.Module, Graph], assert_same) -> None:
    """Same parametric ops, output shapes, params and FLOPs; with the torch weights, the same output."""
    name, module, fx_graph = zoo
    proto = from_prototxt(backbones.prototxt_path(name), input_shape=small_shape(name))
    count = lambda g: Counter(n.kind for n in g if n.kind in PARAMETRIC)  # noqa: E731
    assert count(proto) == count(fx_graph)
    assert list(proto.output_shapes().values()) == list(fx_graph.output_shapes().values())
    assert proto.params == fx_graph.params
    assert [proto[n].shape for n in parametric(proto)] == [fx_graph[n].shape for n in parametric(fx_graph)]
    assert proto.flops == fx_graph.flops

    transfer_tensors(fx_graph, proto)
    assert_same(module, proto, seed=3)


def test_prototxt_default_shape_matches_zoo_input_shape() -> None:
    for name in NAMES:
        graph = from_prototxt(backbones.prototxt_path(name))
        assert graph[graph.inputs[0]].shape == (1, *backbones.input_shape(name)), name
