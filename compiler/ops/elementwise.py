"""Operator kinds: element-wise ops over several inputs (broadcasting) and concatenation."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..ir import Node, Shape
from .base import OpKind, _fail, numel, register


# --- element-wise over several inputs ----------------------------------------------------------
def _infer_broadcast(node: Node, shapes: list[Shape]) -> Shape:
    """Numpy broadcasting of the input shapes, in plain Python (it runs once per element-wise op)."""
    rank = max(len(s) for s in shapes)
    out = [1] * rank
    for s in shapes:
        for i, d in enumerate(s, start=rank - len(s)):
            if d != out[i] and d != 1 and out[i] != 1:
                raise _fail(
                    node, f"input shapes {[list(x) for x in shapes]} do not match",
                    "every input must have the same shape",
                )
            out[i] = d if out[i] == 1 else out[i]
    return tuple(out)


def scaled_sum(*xs: torch.Tensor, coeffs: Sequence[float]) -> torch.Tensor:
    """``sum(c * x)``: Caffe's Eltwise SUM with coefficients."""
    out = xs[0] * coeffs[0]
    for c, x in zip(coeffs[1:], xs[1:], strict=True):
        out = out + x * c
    return out


def _nary(fn2: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def apply(*xs: Any) -> Any:
        out = xs[0]
        for x in xs[1:]:
            out = fn2(out, x)
        return out

    apply.__name__ = f"{fn2.__name__}_n"
    apply.__qualname__ = apply.__name__
    return apply


add_n = _nary(operator.add)
mul_n = _nary(operator.mul)
maximum_n = _nary(torch.maximum)


def _elementwise(name: str, fn: Callable[..., Any], n_ary: Callable[..., Any] | None, fresh: bool = False) -> None:
    def call(node: Node, ins: list[Any]) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        if "scalar" in node.attrs:
            c = node.attrs["scalar"]
            return fn, ((c, ins[0]) if node.attrs.get("scalar_first") else (ins[0], c))
        return (fn if len(ins) <= 2 else n_ary), tuple(ins)

    register(
        OpKind(
            name, _infer_broadcast, arity=(1, None) if n_ary else (1, 2),
            flops=lambda n, s, o: numel(o) * max(1, len(s) - 1 + ("scalar" in n.attrs)),
            function=fn, elementwise=True, call=call, fresh_output=fresh,
        )
    )


# Binary and scalar forms are emitted as plain ``operator`` calls so generated code reads `a + b`.
_elementwise("add", operator.add, add_n, fresh=True)  # its backward reads neither inputs nor output
_elementwise("mul", operator.mul, mul_n)
_elementwise("maximum", torch.maximum, maximum_n)
_elementwise("sub", operator.sub, None)
_elementwise("div", operator.truediv, None)

register(
    OpKind(
        "scaled_sum", _infer_broadcast, arity=(1, None), flops=lambda n, s, o: 2 * numel(o) * len(s),
        function=scaled_sum, kwargs=lambda n: {"coeffs": tuple(n.attrs["coeffs"])}, elementwise=True,
    )
)


def _infer_concat(node: Node, shapes: list[Shape]) -> Shape:
    rank = len(shapes[0])
    dim = node.attrs["dim"] % rank
    if dim == 0:
        raise _fail(node, "concatenation along the batch dimension is not supported")
    for s in shapes[1:]:
        if len(s) != rank or any(s[i] != shapes[0][i] for i in range(rank) if i != dim):
            raise _fail(
                node,
                f"inputs {[list(x) for x in shapes]} differ outside the concatenation axis {dim}",
                "every input must match except along the axis",
            )
    return (*shapes[0][:dim], sum(s[dim] for s in shapes), *shapes[0][dim + 1 :])


register(
    OpKind(
        "concat", _infer_concat, arity=(1, None), function=torch.cat, list_input=True,
        kwargs=lambda n: {"dim": n.attrs["dim"]},
    )
)

