"""Property tests: random conv/pool/concat/add/relu stacks; IR shapes equal torch's everywhere.

torch is the oracle: a drawn layer that torch rejects on the current shape is dropped while drawing,
so every stack is valid; the IR must then infer exactly torch's shape at every node, and the
compiled module must compute exactly what the eager one does.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from automtl.compiler import passes
from automtl.compiler.frontends.fx import from_module
from automtl.compiler.ir import Graph, Node
from automtl.compiler.ops import ShapeError

Spec = tuple[Any, ...]
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Stack(nn.Module):
    """Applies ``specs`` in order; ``add``/``concat`` combine the newest value with an earlier one."""

    def __init__(self, specs: list[Spec], layers: list[nn.Module]) -> None:
        super().__init__()
        self.specs = specs
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = [x]
        for spec, layer in zip(self.specs, self.layers, strict=True):
            kind, cur = spec[0], values[-1]
            if kind == "add":
                y = cur + values[spec[1]]
            elif kind == "concat":
                y = torch.cat([cur, values[spec[1]]], 1)
            elif kind == "relu":
                y = F.relu(cur)
            elif kind == "fpool":
                fn = F.max_pool2d if spec[1] == "max" else F.avg_pool2d
                y = fn(cur, **spec[2])
            else:
                y = layer(cur)
            values.append(y)
        return values[-1]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _draw_conv(draw: st.DrawFn, cin: int) -> nn.Module:
    groups = draw(st.sampled_from(_divisors(cin)))
    cout = groups * draw(st.integers(1, 3))
    k = draw(st.integers(1, 4))
    kw = draw(st.one_of(st.just(k), st.integers(1, 4)))
    return nn.Conv2d(
        cin, cout, (k, kw), stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        padding=(draw(st.integers(0, 2)), draw(st.integers(0, 2))), dilation=draw(st.integers(1, 2)),
        groups=groups, bias=draw(st.booleans()),
    )


def _draw_pool_kwargs(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    k = draw(st.integers(1, 4))
    kw: dict[str, Any] = {
        "kernel_size": k, "stride": draw(st.integers(1, 4)), "padding": draw(st.integers(0, k // 2)),
        "ceil_mode": draw(st.booleans()),
    }
    if kind == "max":
        kw["dilation"] = draw(st.integers(1, 2))
    else:
        kw["count_include_pad"] = draw(st.booleans())
    return kw


@st.composite
def stacks(draw: st.DrawFn) -> tuple[Stack, tuple[int, int, int, int]]:
    """A valid random stack and its (N, C, H, W) input shape."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 14)), draw(st.integers(1, 14)))
    values = [torch.zeros(shape)]
    specs: list[Spec] = []
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 7))):
        cur = values[-1]
        kind = draw(st.sampled_from(["conv", "conv", "pool", "fpool", "relu", "add", "concat", "bn"]))
        spec: Spec = (kind,)
        layer: nn.Module = nn.Identity()
        if kind == "conv":
            layer = _draw_conv(draw, cur.shape[1])
        elif kind == "bn":
            layer = nn.BatchNorm2d(cur.shape[1])
        elif kind in ("pool", "fpool"):
            which = draw(st.sampled_from(["max", "avg"]))
            kw = _draw_pool_kwargs(draw, which)
            if kind == "pool":
                layer = nn.MaxPool2d(**kw) if which == "max" else nn.AvgPool2d(**kw)
            else:
                spec = ("fpool", which, kw)
        elif kind in ("add", "concat"):
            same = [i for i, v in enumerate(values[:-1])
                    if (v.shape == cur.shape if kind == "add" else v.shape[2:] == cur.shape[2:])]
            if not same:
                continue
            spec = (kind, draw(st.sampled_from(same)))
        probe = Stack([*specs, spec], [*layers, layer]).eval()
        try:
            with torch.no_grad():
                out = probe(values[0])
        except RuntimeError:
            continue  # torch rejects this layer here (e.g. an empty output): draw the next one
        specs.append(spec)
        layers.append(layer)
        values.append(out)
    if not specs:
        specs, layers = [("relu",)], [nn.Identity()]
    return Stack(specs, layers), shape


def torch_shapes(module: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Shape of every traced value, keyed the way the fx frontend names IR nodes."""
    gm = fx.symbolic_trace(module)
    ShapeProp(gm).propagate(x)
    return {
        (str(n.target) if n.op == "call_module" else n.name): tuple(n.meta["tensor_meta"].shape)
        for n in gm.graph.nodes
        if n.op not in ("output",) and "tensor_meta" in n.meta
    }


def randomize_bn(module: nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)


@SETTINGS
@given(case=stacks())
def test_inferred_shapes_equal_torch_at_every_node(case: tuple[Stack, tuple[int, ...]]) -> None:
    module, shape = case
    graph = from_module(module.eval(), shape)
    want = torch_shapes(module, torch.randn(shape))
    for node in graph:
        assert node.name in want, f"{node.name} ({node.kind}) has no traced counterpart"
        assert node.shape == want[node.name], f"{node!r}: torch gives {want[node.name]}"
    expected_params = sum(p.numel() for p in module.parameters())
    assert graph.params == expected_params


@SETTINGS
@given(case=stacks(), batch=st.integers(1, 3))
def test_compiled_stack_equals_eager(case: tuple[Stack, tuple[int, ...]], batch: int, assert_same) -> None:
    module, shape = case
    randomize_bn(module)
    graph = from_module(module.eval(), shape)
    assert_same(module, graph, batch=batch)


# --- single operators, including invalid ones: IR rejects exactly what torch rejects ---------------
def _single(kind: str, attrs: dict[str, Any], shape: tuple[int, ...]) -> Graph:
    g = Graph("single")
    g.add(Node("x", "input", attrs={"shape": shape}))
    g.add(Node("op", kind, ["x"], attrs))
    g.outputs = ["op"]
    return g


@settings(max_examples=250, deadline=None)
@given(
    kind=st.sampled_from(["max_pool2d", "avg_pool2d", "conv2d"]),
    size=st.integers(1, 9),
    k=st.integers(1, 5),
    s=st.integers(1, 4),
    p=st.integers(0, 3),
    d=st.integers(1, 3),
    ceil=st.booleans(),
)
def test_single_op_shape_or_error_matches_torch(kind: str, size: int, k: int, s: int, p: int, d: int,
                                                ceil: bool) -> None:
    x = torch.zeros(1, 2, size, size + 1)
    if kind == "conv2d":
        attrs = {"in_channels": 2, "out_channels": 3, "kernel_size": k, "stride": s, "padding": p,
                 "dilation": d, "groups": 1, "bias": True}
        call = lambda: F.conv2d(x, torch.zeros(3, 2, k, k), stride=s, padding=p, dilation=d)  # noqa: E731
    else:
        attrs = {"kernel_size": k, "stride": s, "padding": p, "ceil_mode": ceil}
        if kind == "max_pool2d":
            attrs["dilation"] = d
            call = lambda: F.max_pool2d(x, k, s, p, dilation=d, ceil_mode=ceil)  # noqa: E731
        else:
            call = lambda: F.avg_pool2d(x, k, s, p, ceil_mode=ceil)  # noqa: E731
    try:
        want = tuple(call().shape)
    except RuntimeError:
        want = None
    g = _single(kind, attrs, tuple(x.shape))
    if want is None or 0 in want:
        with pytest.raises(ShapeError, match="'op'"):
            passes.run_all(g)
    else:
        assert passes.run_all(g)["op"].shape == want
