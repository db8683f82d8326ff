"""Compile-time benchmarks for every zoo backbone, grouped by backbone.

Stages: (a) prototxt parse only (``text_format.Merge`` into a ``NetParameter``, and the frontend's
fast parser), (b) prototxt -> graph with shapes and costs, (c) torch.fx trace -> graph, (d) codegen
of the graph into a GraphModule. Each benchmark checks its result, never its time.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
from google.protobuf import text_format
from torch import nn

from automtl import backbones
from automtl.compiler.codegen import codegen
from automtl.compiler.frontends import prototxt
from automtl.compiler.frontends.fx import from_module
from automtl.compiler.ir import Graph
from automtl.proto import caffe_pb2

NAMES = backbones.names()


@cache
def _text(name: str) -> str:
    return backbones.prototxt_path(name).read_text()


@cache
def _module(name: str) -> nn.Module:
    return backbones.get(name).eval()


@cache
def _fx_graph(name: str) -> Graph:
    return from_module(_module(name), backbones.input_shape(name))


def _parse_text_format(text: str) -> Any:
    net = caffe_pb2.NetParameter()
    text_format.Merge(text, net)
    return net


@pytest.mark.parametrize("name", NAMES)
def test_prototxt_parse_text_format(benchmark: Any, name: str) -> None:
    """(a) protobuf's text_format.Merge into a NetParameter, nothing else."""
    benchmark.group = name
    net = benchmark(_parse_text_format, _text(name))
    assert len(net.layer) > 0


@pytest.mark.parametrize("name", NAMES)
def test_prototxt_parse_fast(benchmark: Any, name: str) -> None:
    """(a') the frontend's own parser (same NetParameter, plus line numbers)."""
    benchmark.group = name
    net, _lines = benchmark(prototxt.parse, _text(name), f"{name}.prototxt")
    assert net == _parse_text_format(_text(name))


@pytest.mark.parametrize("name", NAMES)
def test_prototxt_to_graph(benchmark: Any, name: str) -> None:
    """(b) prototxt file -> IR graph with shapes, params and FLOPs (file read included)."""
    benchmark.group = name
    path = backbones.prototxt_path(name)
    graph = benchmark(prototxt.from_prototxt, path)
    assert graph.params == _fx_graph(name).params


@pytest.mark.parametrize("name", NAMES)
def test_fx_to_graph(benchmark: Any, name: str) -> None:
    """(c) torch.fx trace of the zoo module -> IR graph with weights, shapes and costs."""
    benchmark.group = name
    module = _module(name)
    graph = benchmark(from_module, module, backbones.input_shape(name))
    assert graph.params == sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_codegen(benchmark: Any, name: str) -> None:
    """(d) IR graph (from fx, with weights) -> torch.fx.GraphModule with the weights loaded."""
    benchmark.group = name
    graph = _fx_graph(name)
    gm = benchmark(codegen, graph)
    assert sum(p.numel() for p in gm.parameters()) == graph.params
