"""Folding the shape arithmetic exporters emit around the batch size.

``x.view(x.size(0), -1)`` becomes ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``: these
values are folded while reading, with the batch size kept as the symbol :data:`BATCH` (object
arrays); everything else in them must be static.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .common import BATCH, attrs, is_sym
from .table import folds

if TYPE_CHECKING:
    from .reader import Reader


def _axes(node: Any, ins: list[Any], attr: str = "axes") -> list[int] | None:
    a = attrs(node)
    if attr in a:
        return [int(i) for i in a[attr]]
    if len(ins) > 1 and ins[1] is not None:
        return [int(i) for i in np.asarray(ins[1]).reshape(-1)]
    return None


@folds("Unsqueeze")
def _unsqueeze(r: Reader, node: Any, ins: list[Any]) -> np.ndarray:
    v = ins[0]
    axes = _axes(node, ins) or []
    rank = v.ndim + len(axes)
    for ax in sorted(i % rank for i in axes):
        v = np.expand_dims(v, ax)
    return v


@folds("Squeeze")
def _squeeze(r: Reader, node: Any, ins: list[Any]) -> np.ndarray:
    v = ins[0]
    axes = _axes(node, ins)
    return np.squeeze(v, axis=None if axes is None else tuple(i % v.ndim for i in axes))


@folds("Gather")
def _gather(r: Reader, node: Any, ins: list[Any]) -> np.ndarray:
    if is_sym(ins[1]):
        raise r.error("Gather indices that depend on the batch size are not supported")
    return np.take(ins[0], ins[1].astype(np.int64), axis=int(attrs(node).get("axis", 0)))


@folds("Concat")
def _concat(r: Reader, node: Any, ins: list[Any]) -> np.ndarray:
    return np.concatenate([np.asarray(v).astype(object) for v in ins if v is not None],
                          axis=int(attrs(node)["axis"]))


@folds("Slice")
def _slice(r: Reader, node: Any, ins: list[Any]) -> np.ndarray:
    v = ins[0]
    a = attrs(node)
    if r.opset < 10:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = ins[1], ins[2]
        axes = ins[3] if len(ins) > 3 else None
        steps = ins[4] if len(ins) > 4 else None
    index = [slice(None)] * v.ndim
    for k in range(len(starts)):
        ax = int(axes[k]) % v.ndim if axes is not None else k
        index[ax] = slice(int(starts[k]), int(ends[k]), int(steps[k]) if steps is not None else 1)
    return v[tuple(index)]


@folds("Identity", "Cast", "CastLike")
def _same(r: Reader, node: Any, ins: list[Any]) -> np.ndarray:
    return ins[0]


@folds("Reshape")
def _reshape(r: Reader, node: Any, ins: list[Any]) -> np.ndarray:
    if is_sym(ins[1]):
        raise r.error("a reshape whose target depends on the batch size is not supported here")
    return ins[0].reshape([int(d) for d in ins[1]])


_NEUTRAL = {"Add": 0, "Sub": 0, "Mul": 1, "Div": 1}


@folds("Add", "Sub", "Mul", "Div")
def _arith(r: Reader, node: Any, ins: list[Any]) -> np.ndarray:
    """Element-wise integer arithmetic on shapes; the batch size passes only unchanged (n * 1, n - 0)."""
    op = node.op_type

    def one(a: Any, b: Any) -> Any:
        if a is BATCH or b is BATCH:
            other = a if b is BATCH else b
            commutes = op in ("Add", "Mul") or a is BATCH
            if other is BATCH or not commutes or other != _NEUTRAL[op]:
                raise r.error(f"{op} on the batch size is not supported: the batch size must stay symbolic")
            return BATCH
        if op == "Div":
            integer = isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer))
            if integer and b == 0:
                raise r.error("division by zero in shape arithmetic")
            return int(a / b) if integer else a / b
        return a + b if op == "Add" else a - b if op == "Sub" else a * b

    a, b = (np.asarray(v).astype(object) for v in ins[:2])
    return np.asarray(np.frompyfunc(one, 2, 1)(a, b), dtype=object)
