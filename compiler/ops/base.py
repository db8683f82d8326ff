"""The operator registry itself: :class:`OpKind`, ``REGISTRY``, ``register``/``get`` and the shape helpers.

Each :class:`OpKind` says, in one place, how its output shape follows from its inputs, what it
costs (learnable parameters and FLOPs; a multiply-add counts as 2 FLOPs), whether the
multi-task rewrite may search over it, and how codegen emits it (a ``torch.nn`` module or a
function). The kinds themselves live in this package's family modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import CompileError
from ..ir import Node, Shape
from ..registry import Registry


class ShapeError(CompileError):
    """An operator's inputs do not fit it, or its output would be empty."""


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def numel(shape: Shape) -> int:
    return math.prod(shape) if shape else 1


@dataclass(frozen=True)
class OpKind:
    """Everything the compiler knows about one kind of operator."""

    name: str
    infer: Callable[[Node, list[Shape]], Shape]
    arity: tuple[int, int | None] = (1, 1)
    params: Callable[[Node, list[Shape]], int] = lambda node, shapes: 0
    flops: Callable[[Node, list[Shape], Shape], int] = lambda node, shapes, out: 0
    module: Callable[[Node, list[Shape]], nn.Module] | None = None
    function: Callable[..., Any] | None = None
    kwargs: Callable[[Node], dict[str, Any]] = lambda node: {}
    list_input: bool = False
    searchable: bool = False
    elementwise: bool = False
    weights: tuple[str, ...] = field(default_factory=tuple)
    call: Callable[[Node, list[Any]], tuple[Callable[..., Any], tuple[Any, ...]]] | None = None
    module_args: Callable[[Node], tuple[Any, ...]] = lambda node: ()
    loads_tensors: bool = False  # the module builder takes Node.tensors itself
    # in-place emission (what eager code gets from ``nn.ReLU(inplace=True)``): codegen passes
    # ``inplace=True`` to an ``inplace`` kind whose input is a ``fresh_output`` kind's value that
    # nothing else reads; ``fresh_output``: a new tensor whose backward never reads it
    inplace: bool = False
    fresh_output: bool = False

    def emit(self, node: Node, inputs: list[Any]) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """The function, positional args and keyword args codegen calls for ``node``."""
        if self.call is not None:
            fn, args = self.call(node, inputs)
        else:
            fn, args = self.function, ((list(inputs),) if self.list_input else tuple(inputs))
        return fn, args, self.kwargs(node)


REGISTRY: Registry[OpKind] = Registry("operator kind", KeyError)


def register(kind: OpKind) -> OpKind:
    """Add an operator kind to the one registry (names are unique)."""
    return REGISTRY.add(kind.name, kind)


def get(name: str) -> OpKind:
    """The operator kind ``name`` (a KeyError listing the known kinds when there is none)."""
    return REGISTRY.find(name)


def _fail(node: Node, msg: str, hint: str | None = None) -> ShapeError:
    return ShapeError(msg, node.where(), hint)


def _need_rank(node: Node, shape: Shape, rank: int | tuple[int, ...], what: str = "input") -> None:
    ranks = (rank,) if isinstance(rank, int) else rank
    if not isinstance(shape, tuple) or len(shape) not in ranks:
        want = " or ".join(f"{r}-d" for r in ranks)
        raise _fail(node, f"expects a {want} {what}, got shape {shape}")


def _channels(node: Node, shape: Shape, expected: int, attr: str) -> None:
    if shape[1] != expected:
        raise _fail(
            node,
            f"expects {expected} input channels ({attr}) but its input has {shape[1]} (shape {list(shape)})",
        )


def _spatial(node: Node, size: int, k: int, s: int, p: int, d: int, ceil: bool = False) -> int:
    eff = d * (k - 1) + 1
    span = size + 2 * p - eff
    out = (-(-span // s) if ceil else span // s) + 1  # ceil mode may start a last, partial window
    if ceil and (out - 1) * s >= size + p:
        out -= 1  # the last window must start inside the input (torch; Caffe checks this only when p > 0)
    if out <= 0:
        raise _fail(
            node,
            f"output would be empty: input size {size} with kernel {k}, dilation {d}, padding {p}",
            "use a larger input shape",
        )
    return out


def _same(node: Node, shapes: list[Shape]) -> Shape:
    return shapes[0]


def _unary(
    name: str, fn: Callable[..., Any], kwargs: Callable[[Node], dict[str, Any]] | None = None, inplace: bool = False
) -> None:
    register(
        OpKind(
            name, _same, flops=lambda n, s, o: numel(o), function=fn, kwargs=kwargs or (lambda n: {}),
            elementwise=True, inplace=inplace,
        )
    )
