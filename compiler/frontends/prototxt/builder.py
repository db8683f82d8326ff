"""The state of one prototxt conversion (blob bindings, the graph so far) and helpers the layer
converters share: field checks, kernel/stride/pad pairs, axes, float32 field values."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from ...errors import CompileError, Source
from ...ir import Graph, Node, Shape
from ...ops import get
from .parsing import is_repeated, quoted, shown

# Fields of AutoMTL's prototxt dialect, by parameter message (accepted only in that dialect).
AUTOMTL_FIELDS = {
    "batch_norm_param": ("track_running_stats", "momentum", "affine"),
    "relu_param": ("inplace",),
    "dropout_param": ("inplace",),
    "elu_param": ("inplace",),
}
_SUGGEST_AMONG = 2000  # a missing bottom is compared with at most this many (most recent) blob names


@dataclass
class Layer:
    """One layer to convert, with where it came from."""

    msg: Any
    type: str
    name: str
    src: Source


@dataclass
class Builder:
    """Blob name -> node name bindings and the graph being built, for one file."""

    file: str
    dialect: str
    graph: Graph
    blobs: dict[str, str] = field(default_factory=dict)
    labels: set[str] = field(default_factory=set)
    silenced: set[str] = field(default_factory=set)
    later: dict[str, Layer] = field(default_factory=dict)
    folded_bn: dict[str, bool] = field(default_factory=dict)
    suffix: dict[str, int] = field(default_factory=dict)  # next suffix to try per repeated name

    def unique(self, name: str) -> str:
        """``name``, or ``name_<i>`` with the first free ``i`` (amortised O(1) per repeated name)."""
        name = name or "layer"
        if name not in self.graph:
            return name
        i = self.suffix.get(name, 1)
        while f"{name}_{i}" in self.graph:
            i += 1
        self.suffix[name] = i + 1
        return f"{name}_{i}"

    def add(
        self,
        layer: Layer,
        kind: str,
        attrs: dict[str, Any],
        inputs: Sequence[str],
        name: str | None = None,
    ) -> Node:
        """Create a node and infer its shape now (later layers need it, e.g. for in_channels)."""
        node = Node(self.unique(name or layer.name), kind, list(inputs), attrs, source=layer.src)
        self.graph.add(node)
        node.shape = get(kind).infer(node, [self.graph[i].shape for i in node.inputs])
        return node

    def bottom(self, layer: Layer, blob: str) -> str:
        """The node that blob ``blob`` names now, or an error saying why there is none."""
        if blob in self.labels:
            raise CompileError(
                f"bottom {quoted(blob)} is a label from a data layer; only loss and accuracy layers may read it",
                layer.src,
            )
        node = self.blobs.get(blob)
        if node is None:
            producer = self.later.get(blob)
            if producer is not None:
                raise CompileError(
                    f"bottom {quoted(blob)} is only produced by a later layer, {shown(producer.type)} "
                    f"'{shown(producer.name)}' (line {producer.src.line}): the layers are out of order or form a cycle",
                    layer.src,
                )
            recent = list(islice(reversed(self.blobs), _SUGGEST_AMONG))
            known = difflib.get_close_matches(blob, recent, n=1) if len(blob) <= 200 else []
            hint = f"did you mean {quoted(known[0])}?" if known else None
            raise CompileError(
                f"missing bottom {quoted(blob)}: no earlier layer or input produces it", layer.src, hint
            )
        return node

    def bottoms(self, layer: Layer, count: int | tuple[int, int | None] = 1) -> list[str]:
        names = list(layer.msg.bottom)
        lo, hi = (count, count) if isinstance(count, int) else count
        if len(names) < lo or (hi is not None and len(names) > hi):
            want = str(lo) if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise CompileError(f"{layer.type} takes {want} bottom(s), got {len(names)}", layer.src)
        return [self.bottom(layer, b) for b in names]

    def tops(self, layer: Layer, count: int = 1) -> list[str]:
        tops = list(layer.msg.top)
        if len(tops) != count:
            raise CompileError(f"{layer.type} must have {count} top(s), got {len(tops)}", layer.src)
        return tops

    def bind(self, layer: Layer, node: Node | str) -> None:
        """The layer's single top now names ``node``."""
        (top,) = self.tops(layer)
        self.blobs[top] = node if isinstance(node, str) else node.name

    def shape(self, node: str) -> Shape:
        return self.graph[node].shape

    def params(self, layer: Layer, name: str, allowed: Sequence[str]) -> Any:
        """The layer's ``name`` message, rejecting any field set in it that is not in ``allowed``."""
        msg = getattr(layer.msg, name)
        for fd, _ in msg.ListFields():
            if fd.name not in allowed:
                hint = None
                if name in AUTOMTL_FIELDS and fd.name in AUTOMTL_FIELDS[name]:
                    hint = "this is an AutoMTL dialect field; pass dialect='automtl'"
                raise CompileError(f"{name}.{fd.name} is not supported by the prototxt frontend", layer.src, hint)
        return msg


def hw(layer: Layer, p: Any, name: str, prefix: str, default: int) -> tuple[int, int]:
    """kernel / stride / pad as (h, w) from ``name`` (one or two values) or ``prefix_h``/``prefix_w``."""
    fd = p.DESCRIPTOR.fields_by_name[name]
    if is_repeated(fd):
        values = [int(v) for v in getattr(p, name)]
    else:
        values = [int(getattr(p, name))] if p.HasField(name) else []
    h, w = f"{prefix}_h", f"{prefix}_w"
    has_h, has_w = p.HasField(h), p.HasField(w)
    if has_h or has_w:
        if values:
            raise CompileError(f"give either {name} or {h}/{w}, not both", layer.src)
        if prefix != "pad" and not (has_h and has_w):
            raise CompileError(f"{h} and {w} must be given together", layer.src)
        return int(getattr(p, h)), int(getattr(p, w))
    if not values:
        return default, default
    if len(values) <= 2:
        return values[0], values[-1]
    raise CompileError(f"{name} has {len(values)} values; only 2-d layers are supported", layer.src)


def positive(layer: Layer, param: str, **values: int | tuple[int, ...]) -> None:
    """Refuse a zero or negative size (``kernel_size=(3, 0)``), naming the field and its value."""
    for key, value in values.items():
        vals = value if isinstance(value, tuple) else (value,)
        if min(vals) <= 0:
            given = vals[0] if len(set(vals)) == 1 else list(vals)
            raise CompileError(f"{param}.{key} is {given}; it must be positive", layer.src)


def f32(x: float) -> float:
    """A float32 field value as the short decimal it was written as (``1e-05``, not ``9.99e-06``)."""
    return float(str(np.float32(x)))


def axis_of(layer: Layer, axis: int, rank: int, what: str) -> int:
    """``axis`` (negative counts from the end) as an index into a ``rank``-d shape."""
    if not -rank <= axis < rank:
        raise CompileError(f"{what} {axis} is out of range for a {rank}-d input", layer.src)
    return axis % rank
