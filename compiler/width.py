"""Channel widths of a compiled graph: which channel counts are tied together, and thinner copies.

A network cannot thin one layer at a time: a residual ``add`` needs equal channels on both sides, a
batch norm has as many channels as the convolution before it, a depthwise convolution as many as its
input, a concatenation as many as its parts together. :func:`channel_groups` derives these ties from
the IR alone (so it works on any compiled backbone, whatever the frontend) and returns one
:class:`ChannelGroup` per set of tied channel counts; :func:`scale_widths` returns a copy of the graph
with every group's channels scaled by its factor (every conv/linear/norm attribute updated, shapes,
params and FLOPs re-inferred); :func:`half_size` finds the one factor that brings the FLOPs to about
half and reports the ratio reached.

Rules (the stable API other passes build on):

* a group is named after the first operator, in graph order, whose output opens it (a convolution or
  linear layer's output channels, the graph input, an operator whose output width cannot be followed);
* the graph input's channels are never scaled; with ``keep_outputs=True`` (the default) neither are the
  channels of the graph outputs, so a classifier keeps its classes and consumers built for the full
  graph's outputs still fit. A trunk whose heads are rebuilt for ``graph.output_shapes()`` passes
  ``keep_outputs=False`` to thin its output too;
* a channel split of one group (``narrow``: ``chunk``, ``split``) is a part of that group and scales with it
  (start and length stay the same fractions; the group's ``multiple`` keeps them whole);
* channels read by an operator whose channel semantics the pass does not know (reshape, opaque calls,
  a split of a concatenation, a parameter read directly, ...) are ``fixed`` and keep their count;
* a scaled count is ``max(multiple, round(channels * factor / multiple) * multiple)``, where ``multiple``
  is the least common multiple of the group counts that divide it (grouped convolutions, group norms,
  channel shuffles); depthwise convolutions follow their input and take the new count as ``groups``;
* weights the source carried are kept for the leading channels of every group (a slimmable network's
  convention): a thinned graph with weights computes a sub-network of the original. Grouped (not
  depthwise) convolutions keep the leading input channels of each group's slice, and readers of a channel
  split its leading channels (initial weights there, not a sub-network).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

from .errors import CompileError
from .ir import Graph, Node
from .passes import infer

__all__ = ["ChannelGroup", "Pin", "Thinned", "channel_groups", "group_width", "half_size", "scale_widths"]

#: a caller's extra rule: the reason why the channels an operator reads and writes must keep their count
#: (``None``: no objection). The slimmable runtime pins what it cannot slice at run time.
Pin = Callable[[Node], "str | None"]

# operators whose output has the input's channel layout (element-wise, pooling, resizing, norms)
_SAME = {
    "identity", "relu", "relu6", "leaky_relu", "clip", "sigmoid", "tanh", "hardswish", "hardsigmoid", "silu",
    "gelu", "elu", "softmax", "log_softmax", "dropout", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
    "adaptive_max_pool2d", "interpolate", "lrn", "lrn_within_channel", "cast", "rsqrt", "batch_norm", "scale",
    "instance_norm", "prelu", "group_norm", "channel_shuffle",
}
_ONE = Fraction(1)
_MULTI = {"add", "mul", "maximum", "sub", "div", "scaled_sum"}
_NORM_ATTR = {"batch_norm": "num_features", "scale": "num_features", "instance_norm": "num_features",
              "group_norm": "num_channels"}


@dataclass(frozen=True)
class ChannelGroup:
    """Channel counts that must scale together.

    ``members`` lists ``(operator, attribute)`` pairs whose value is this group's count (or, for a
    concatenation's reader, includes it); ``fixed`` says why the group keeps its count (``""`` when it
    may scale); ``multiple`` is what a scaled count must stay a multiple of.
    """

    name: str
    channels: int
    fixed: str
    multiple: int
    members: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Thinned:
    """What :func:`half_size` returns: the thinner graph, the factor used, and the ratios reached."""

    graph: Graph
    factor: float
    flops_ratio: float
    params_ratio: float


# (space, repeat) per segment of axis 1; a segment is space * repeat wide. The repeat is a Fraction: depthwise
# multipliers and flattened spatial sizes make it larger than 1, a channel split (narrow) a part of 1.
Layout = tuple[tuple[int, Fraction], ...]


class _Analysis:
    """Channel spaces of every value (union-find), and each operator's input and output layouts."""

    def __init__(self, graph: Graph, keep_outputs: bool, pin: Pin | None = None) -> None:
        self.graph = graph
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[str] = []
        self.multiple: list[int] = []
        self.origin: list[str] = []
        self.members: dict[int, list[tuple[str, str]]] = {}
        self.layout: dict[str, Layout | None] = {}
        self.depthwise: set[str] = set()
        self.scaled_linear: set[str] = set()
        self.split: dict[str, tuple[Fraction, Fraction]] = {}  # channel narrows: start and length as fractions
        for node in graph:
            self.layout[node.name] = self._visit(node)
            why = pin(node) if pin is not None else None
            if why:
                for lay in [self.layout.get(i) for i in node.inputs] + [self.layout[node.name]]:
                    self._pin(lay, why)
        if keep_outputs:
            for out in graph.outputs:
                self._pin(self.layout.get(out), "a graph output (keep_outputs=True)")

    # --- union-find -----------------------------------------------------------------------------
    def _new(self, size: int, origin: str, fixed: str = "") -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.fixed.append(fixed)
        self.multiple.append(1)
        self.origin.append(origin)
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def _union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if b < a:
            a, b = b, a  # the older space (earlier origin) stays the root, so names follow graph order
        self.parent[b] = a
        self.fixed[a] = self.fixed[a] or self.fixed[b]
        self.multiple[a] = math.lcm(self.multiple[a], self.multiple[b])

    def _pin(self, layout: Layout | None, why: str) -> None:
        for s, _ in layout or ():
            r = self.find(s)
            self.fixed[r] = self.fixed[r] or why

    def _need_multiple(self, layout: Layout, m: int) -> None:
        """Every segment's count stays a multiple of ``m``, so the value's count does too."""
        for s, _ in layout:
            r = self.find(s)
            self.multiple[r] = math.lcm(self.multiple[r], m)

    def _member(self, layout: Layout | None, node: str, attr: str) -> None:
        for s, _ in layout or ():
            self.members.setdefault(s, []).append((node, attr))

    def _unify(self, layouts: list[Layout], why: str) -> None:
        first = layouts[0]
        for other in layouts[1:]:
            if len(other) == len(first) and all(
                ra == rb and self.size[self.find(a)] == self.size[self.find(b)]
                for (a, ra), (b, rb) in zip(first, other, strict=True)
            ):
                for (a, _), (b, _) in zip(first, other, strict=True):
                    self._union(a, b)
            else:
                for lay in layouts:
                    self._pin(lay, why)
                return

    def width(self, layout: Layout, sizes: Mapping[int, int] | None = None) -> int:
        """The channel count of a value under ``sizes`` (root space -> new count; the original when None)."""
        sizes = sizes if sizes is not None else {}
        return int(sum(sizes.get(self.find(s), self.size[self.find(s)]) * r for s, r in layout))

    def _in_rank(self, node: Node) -> int:
        return _rank(self.graph[node.inputs[0]].shape) or 0

    # --- one operator ---------------------------------------------------------------------------
    def _visit(self, node: Node) -> Layout | None:
        shape = node.shape
        ins = [self.layout.get(i) for i in node.inputs]
        rank = _rank(shape)
        k, a, name = node.kind, node.attrs, node.name
        if k == "input":
            return ((self._new(shape[1], name, "the graph input"), _ONE),) if rank and rank >= 2 else None
        x = ins[0] if ins else None
        if k == "conv2d" and x is not None:
            return self._conv(node, x)
        if k == "conv_transpose2d" and x is not None:
            if a["groups"] != 1:
                self._pin(x, f"read by the grouped transposed convolution {name!r}")
                return ((self._new(a["out_channels"], name, f"written by the grouped transposed convolution "
                                                             f"{name!r}"), _ONE),)
            self._member(x, name, "in_channels")
            out: Layout = ((self._new(a["out_channels"], name), _ONE),)
            self._member(out, name, "out_channels")
            return out
        if k == "linear" and x is not None:
            if self._in_rank(node) == 2:
                self.scaled_linear.add(name)
                self._member(x, name, "in_features")
                out = ((self._new(a["out_features"], name), _ONE),)
                self._member(out, name, "out_features")
                return out
            self._pin(x, f"read by {name!r}, a linear layer over a non-channel axis")
            return x
        if k in _SAME and x is not None:
            if k == "group_norm":
                self._need_multiple(x, int(a["num_groups"]))
            if k == "channel_shuffle":
                self._need_multiple(x, int(a["groups"]))
            if k in _NORM_ATTR:
                self._member(x, name, _NORM_ATTR[k])
            if k == "prelu" and a.get("num_parameters", 1) > 1:
                self._member(x, name, "num_parameters")
            return x
        if k == "layer_norm" and x is not None:
            if len(a["normalized_shape"]) >= (rank or 0) - 1:
                self._pin(x, f"normalised over by the layer norm {name!r}")
            return x
        if k in _MULTI and rank is not None and rank >= 2:
            return self._elementwise(node, ins)
        if k == "concat" and rank is not None and ins and all(lay is not None for lay in ins):
            if a["dim"] % rank == 1:
                return tuple(seg for lay in ins for seg in lay)  # type: ignore[union-attr]
            self._unify([lay for lay in ins if lay is not None], f"joined by {name!r}")
            return x
        if k == "narrow" and x is not None and len(x) == 1 and a["dim"] % self._in_rank(node) == 1:
            return self._split(node, x)
        if x is not None and self._keeps_channels(node):
            if k == "flatten" and a.get("start_dim", 1) % self._in_rank(node) == 1:
                src = self.graph[node.inputs[0]].shape
                end = a.get("end_dim", -1) % len(src)
                spread = math.prod(src[2 : end + 1])
                return tuple((s, r * spread) for s, r in x)
            return x
        # anything else: its inputs' channels keep their counts, and so does its output
        for lay in ins:
            self._pin(lay, f"read by {name!r} ({k}), whose channels cannot be scaled")
        if rank is not None and rank >= 2:
            return ((self._new(shape[1], name, f"written by {name!r} ({k})"), _ONE),)
        return None

    def _conv(self, node: Node, x: Layout) -> Layout:
        a, name = node.attrs, node.name
        g = int(a["groups"])
        self._member(x, name, "in_channels")
        if g > 1 and g == a["in_channels"]:  # depthwise (with a channel multiplier when out = m * in)
            self.depthwise.add(name)
            mult = a["out_channels"] // g
            out: Layout = tuple((s, r * mult) for s, r in x)
            self._member(out, name, "out_channels")
            return out
        out = ((self._new(a["out_channels"], name), _ONE),)
        if g > 1:
            self._need_multiple(x, g)
            self._need_multiple(out, g)
        self._member(out, name, "out_channels")
        return out

    def _split(self, node: Node, x: Layout) -> Layout:
        """A channel slice [start, start + length) of one space: a part of it that scales with it, so start and
        length stay the same fractions of the width (the space's count keeps them whole)."""
        (s, r), a = x[0], node.attrs
        width = self.width(x)
        start, length = Fraction(a["start"], width), Fraction(a["length"], width)
        # the space's new count c must keep c * r * start and c * r * length whole
        self._need_multiple(x, math.lcm((r * start).denominator, (r * length).denominator, r.denominator))
        self.split[node.name] = (start, length)
        return ((s, r * length),)

    def _elementwise(self, node: Node, ins: list[Layout | None]) -> Layout:
        shape, name, rank = node.shape, node.name, len(node.shape)
        carrying = []
        for i, lay in zip(node.inputs, ins, strict=True):
            s = self.graph[i].shape
            if lay is None or _rank(s) is None:
                continue
            if _rank(s) == rank and s[1] == shape[1]:
                carrying.append(lay)
            elif not (_rank(s) == rank and s[1] == 1):
                for other in ins:
                    self._pin(other, f"broadcast by {name!r} across the channel axis")
                return ((self._new(shape[1], name, f"broadcast by {name!r}"), _ONE),)
        if not carrying:
            return ((self._new(shape[1], name, f"written by {name!r}"), _ONE),)
        self._unify(carrying, f"joined by {name!r} with a different channel layout")
        return carrying[0]

    def _keeps_channels(self, node: Node) -> bool:
        """Operators that pass axis 1 through when they do not touch it (mean, pad, slices, flatten, crop)."""
        k, a = node.kind, node.attrs
        rank = self._in_rank(node)
        if rank < 2:
            return False
        if k == "flatten":
            return True
        if k == "mean":
            return 1 not in {d % rank for d in a["dim"]}
        if k == "pad":
            return len(a["pad"]) // 2 < rank - 1
        if k in ("slice", "narrow", "index_select"):
            dims = a["dims"] if k == "slice" else [a["dim"]]
            return all(d % rank != 1 for d in dims)
        if k == "crop":
            return a["axis"] % rank >= 2
        return False

    # --- results --------------------------------------------------------------------------------
    def groups(self) -> list[ChannelGroup]:
        roots: dict[int, list[int]] = {}
        for s in range(len(self.parent)):
            roots.setdefault(self.find(s), []).append(s)
        order = {n.name: i for i, n in enumerate(self.graph)}
        out = []
        for root, spaces in sorted(roots.items()):
            members = [m for s in spaces for m in self.members.get(s, [])]
            members.sort(key=lambda m: (order.get(m[0], -1), m[1]))
            out.append(ChannelGroup(self.origin[root], self.size[root], self.fixed[root], self.multiple[root],
                                    tuple(dict.fromkeys(members))))
        return out

    def new_sizes(self, factors: float | Mapping[str, float]) -> dict[int, int]:
        names = {self.origin[r]: r for r in {self.find(s) for s in range(len(self.parent))}}
        if isinstance(factors, Mapping):
            unknown = [n for n in factors if n not in names]
            if unknown:
                raise CompileError(f"no channel group named {unknown[0]!r}; the groups are named after the "
                                   f"operators opening them: {', '.join(sorted(names))}")
            per = {names[n]: float(f) for n, f in factors.items()}
        else:
            per = {r: float(factors) for r in names.values()}
        for r, f in per.items():
            if not (math.isfinite(f) and f > 0):
                raise CompileError(f"channel group {self.origin[r]!r}: factor {f!r} must be a positive number")
        sizes = {}
        for r in names.values():
            f = per.get(r, 1.0)
            if self.fixed[r] or f == 1.0:
                sizes[r] = self.size[r]
                continue
            sizes[r] = group_width(self.size[r], f, self.multiple[r])
        return sizes

    def keep_index(self, layout: Layout, sizes: Mapping[int, int]) -> torch.Tensor:
        """Indices of the kept channels of a value: the leading channels of each segment."""
        idx: list[int] = []
        offset = 0
        for s, r in layout:
            root = self.find(s)
            idx.extend(range(offset, offset + int(sizes[root] * r)))
            offset += int(self.size[root] * r)
        return torch.tensor(idx, dtype=torch.long)


def group_width(channels: int, factor: float, multiple: int = 1) -> int:
    """Channels a group of ``channels`` keeps at width ``factor``: rounded to a multiple of ``multiple``, at least one
    multiple."""
    return max(multiple, int(round(channels * factor / multiple)) * multiple)


def _rank(shape: Any) -> int | None:
    if isinstance(shape, tuple) and shape and all(isinstance(d, int) for d in shape):
        return len(shape)
    return None


def _check(graph: Graph) -> None:
    if any(n.shape is None for n in graph):
        raise CompileError(f"graph {graph.name!r} has operators without shapes; run compiler.passes.infer first")


def channel_groups(graph: Graph, keep_outputs: bool = True) -> list[ChannelGroup]:
    """The graph's channel groups, in graph order of the operators that open them (see the module doc)."""
    _check(graph)
    return _Analysis(graph, keep_outputs).groups()


def scale_widths(graph: Graph, factors: float | Mapping[str, float], keep_outputs: bool = True) -> Graph:
    """A thinner (or wider) copy of ``graph``: each channel group scaled by its factor.

    ``factors`` is one number for every group, or ``{group name: factor}`` (groups not named keep
    their width). Fixed groups never change. The copy is re-inferred (shapes, params, FLOPs); the
    original graph is left as it was.
    """
    _check(graph)
    return _scaled(_Analysis(graph, keep_outputs), factors)


def _scaled(an: _Analysis, factors: float | Mapping[str, float]) -> Graph:
    graph = an.graph
    sizes = an.new_sizes(factors)
    out = graph.copy(tensors=True)
    for node in out:
        if not node.inputs:
            continue
        x, y = an.layout.get(node.inputs[0]), an.layout.get(node.name)
        if x is None or y is None:
            continue
        attrs = dict(node.attrs)
        k = node.kind
        if k in ("conv2d", "conv_transpose2d") and (k == "conv2d" or attrs["groups"] == 1):
            attrs["in_channels"], attrs["out_channels"] = an.width(x, sizes), an.width(y, sizes)
            if node.name in an.depthwise:
                attrs["groups"] = attrs["in_channels"]
        elif k == "linear" and node.name in an.scaled_linear:
            attrs["in_features"], attrs["out_features"] = an.width(x, sizes), an.width(y, sizes)
        elif k in _NORM_ATTR:
            attrs[_NORM_ATTR[k]] = an.width(y, sizes)
        elif k == "prelu" and attrs.get("num_parameters", 1) > 1:
            attrs["num_parameters"] = an.width(y, sizes)
        elif node.name in an.split:
            start, length = an.split[node.name]
            attrs["start"], attrs["length"] = int(start * an.width(x, sizes)), int(length * an.width(x, sizes))
        if attrs != node.attrs:
            if node.tensors:
                node.tensors = _slice_tensors(an, graph[node.name], attrs, x, y, sizes)
            node.attrs = attrs
    try:
        infer(out)
    except CompileError as exc:  # a tie the analysis missed: say so rather than emit a broken graph
        raise CompileError(f"scaling the widths of {graph.name!r} broke a shape: {exc}") from exc
    return out


def _slice_tensors(an: _Analysis, src: Node, attrs: dict[str, Any], x: Layout, y: Layout,
                   sizes: Mapping[int, int]) -> dict[str, torch.Tensor]:
    """The source's tensors cut to the kept channels (leading channels of every group)."""
    out_idx = an.keep_index(y, sizes)
    full_out = an.width(y)
    tensors = {}
    for key, value in src.tensors.items():
        t = value
        if t.dim() == 0:
            tensors[key] = t.clone()
            continue
        if src.kind == "conv2d" and key == "weight":
            t = t.index_select(0, out_idx)
            if attrs["groups"] == 1:
                t = t.index_select(1, an.keep_index(x, sizes))
            elif src.name not in an.depthwise:
                t = t[:, : attrs["in_channels"] // attrs["groups"]]
        elif src.kind == "conv_transpose2d" and key == "weight":
            t = t.index_select(0, an.keep_index(x, sizes)).index_select(1, out_idx)
        elif src.kind == "linear" and key == "weight":
            t = t.index_select(0, out_idx).index_select(1, an.keep_index(x, sizes))
        elif t.numel() == full_out:  # biases, norm weights and statistics: one value per output channel
            t = t.reshape(-1).index_select(0, out_idx)
        tensors[key] = t.clone()
    return tensors


def half_size(graph: Graph, target: float = 0.5, keep_outputs: bool = True) -> Thinned:
    """Thin every scalable group by one factor so that the FLOPs are about ``target`` of the original.

    Bisects the factor (rounding makes FLOPs a step function of it) and keeps the factor whose FLOPs
    ratio is closest to ``target``. ``Thinned.flops_ratio`` is the ratio reached: with many fixed
    channels (a wide input, ``keep_outputs``) it can stay above ``target``.
    """
    _check(graph)
    if not 0 < target <= 1:
        raise CompileError(f"target {target!r} must be in (0, 1]: a fraction of the graph's FLOPs")
    an = _Analysis(graph, keep_outputs)
    base_flops, base_params = max(graph.flops, 1), max(graph.params, 1)
    tried: dict[float, Graph] = {}

    def ratio(f: float) -> float:
        if f not in tried:
            tried[f] = _scaled(an, f)
        return tried[f].flops / base_flops

    lo, hi = 0.01, 1.0
    for _ in range(24):
        mid = (lo + hi) / 2
        if ratio(mid) > target:
            hi = mid
        else:
            lo = mid
    best = min(tried, key=lambda f: (abs(ratio(f) - target), -f))
    g = tried[best]
    return Thinned(g, best, g.flops / base_flops, g.params / base_params)
