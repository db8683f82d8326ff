"""Operator kinds for calls the compiler does not know: opaque calls (shape by running once) and getitem."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..ir import Node, Shape
from .base import OpKind, _fail, register


# --- opaque calls ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    """Placeholder for the i-th input inside an opaque call's argument template."""

    index: int


def fill_refs(template: Any, values: Sequence[Any]) -> Any:
    """Replace every :class:`Ref` in a nested args template by the matching value."""
    if isinstance(template, Ref):
        return values[template.index]
    if isinstance(template, (list, tuple)):
        return type(template)(fill_refs(t, values) for t in template)
    if isinstance(template, dict):
        return {k: fill_refs(v, values) for k, v in template.items()}
    return template


@dataclass(frozen=True)
class Value:
    """The "shape" of a non-tensor value an opaque call returns (``x.size()``): the value itself."""

    value: Any


def _shape_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(_shape_of(v) for v in value)
    return Value(value)


def _infer_opaque(node: Node, shapes: list[Shape]) -> Shape:
    """Run the call once on zeros of the input shapes: the only way to know an unknown op's shape."""
    a = node.attrs

    def zeros(s: Any) -> Any:
        if isinstance(s, Value):
            return s.value
        if s and isinstance(s[0], tuple):
            return tuple(zeros(x) for x in s)
        return torch.zeros(s)

    args = fill_refs(a["args"], [zeros(s) for s in shapes])
    kwargs = fill_refs(a.get("kwargs", {}), [zeros(s) for s in shapes])
    try:
        with torch.no_grad():
            if a.get("method"):
                out = getattr(args[0], a["method"])(*args[1:], **kwargs)
            else:
                out = a["target"](*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        raise _fail(node, f"calling it on inputs of shape {shapes} failed: {exc}") from exc
    return _shape_of(out)


register(OpKind("opaque", _infer_opaque, arity=(0, None)))


def _infer_getitem(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    idx = node.attrs["index"]
    if not isinstance(x, tuple) or not x or not isinstance(x[0], tuple):
        raise _fail(node, f"indexes a value that is not a tuple of tensors (shape {x})")
    return x[idx]


register(
    OpKind(
        "getitem", _infer_getitem,
        call=lambda n, ins: (operator.getitem, (ins[0], n.attrs["index"])),
    )
)

