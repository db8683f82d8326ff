"""Channel groups and width scaling (an IR pass): which channels of a graph must be cut together, and the thin graph.

A convolution's output channels can be cut to a fraction of their width only together with every
channel they are *tied* to: the channels of a residual ``add`` (and any other elementwise op with
several tensor inputs) are one space, a depthwise convolution keeps its input's channels, batch norm,
activations and pooling pass them through, and a ``concat`` along the channels lays its inputs'
spaces side by side. :func:`channel_groups` finds these spaces on any compiled graph (one
union-find over the IR), so width scaling works on every backbone a frontend reads.

A group is *fixed* (never cut) when it touches what cannot be sliced safely: the graph input,
an operator whose meaning depends on the channel count (reshape, LRN across channels, group norm, a
softmax, a grouped but not depthwise convolution, opaque calls...). Everything else may be cut.

:func:`scale_widths` returns the thin graph for a factor per group (channel counts changed, shapes,
params and FLOPs inferred again, weights carried by the nodes sliced), and :func:`kept_channels` which
channels of every value a thin network keeps (the first ``k`` of each group: slimmable networks keep
a prefix).

The compiler's width pass (``compiler/width.py``) has the same API and scales more (grouped
convolutions in multiples, channel splits); this analysis is the slimmable runtime's: it also gives
every value's kept indices, and keeps fixed what cannot be sliced at run time. Both find the same
groups and FLOPs where both cut (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..compiler.errors import CompileError
from ..compiler.ir import Graph, Node
from ..compiler.passes import infer

__all__ = ["ChannelGroup", "WidthPlan", "channel_groups", "group_width", "kept_channels", "scale_widths"]

# operators whose output channels are their input's, one for one
_PASS_THROUGH = {
    "identity", "batch_norm", "scale", "prelu", "dropout", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
    "adaptive_max_pool2d", "interpolate", "cast", "relu", "relu6", "leaky_relu", "clip", "sigmoid", "tanh",
    "hardswish", "hardsigmoid", "silu", "gelu", "elu", "rsqrt",
}
# elementwise operators whose tensor inputs share one channel space
_TIE = {"add", "mul", "sub", "div", "maximum", "scaled_sum"}
# operators whose weights follow their channels (sliced by scale_widths)
_CHANNELWISE_WEIGHTS = {"batch_norm", "scale", "prelu"}

Segment = tuple[int, int]  # (group id, channels of the full-width value)


@dataclass
class ChannelGroup:
    """One set of channels cut together: its name (the first operator producing it), full size, members."""

    name: str
    channels: int
    members: list[str] = field(default_factory=list)
    fixed: str | None = None  # why it may not be cut (None: it may)


@dataclass
class WidthPlan:
    """The groups of a graph and the channel layout of every value (a list of group segments)."""

    graph: Graph
    groups: dict[str, ChannelGroup]
    layout: dict[str, list[tuple[str, int]] | None]

    @property
    def thinnable(self) -> list[str]:
        """Names of the groups that may be cut, in graph order."""
        return [g for g, grp in self.groups.items() if grp.fixed is None]

    def check(self, factors: Mapping[str, float]) -> None:
        """Refuse an unknown group, a fixed group cut, or a factor outside (0, 1]."""
        for name, f in factors.items():
            if name not in self.groups:
                raise CompileError(f"width factor for unknown channel group {name!r}; groups: {self.thinnable}")
            if not isinstance(f, int | float) or not 0 < f <= 1:
                raise CompileError(f"channel group {name!r}: width factor must be in (0, 1], got {f!r}")
            if f < 1 and self.groups[name].fixed is not None:
                raise CompileError(f"channel group {name!r} may not be cut: {self.groups[name].fixed}")


class _Union:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: dict[int, str] = {}

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
            why = self.fixed.pop(max(ra, rb), None)
            if why is not None:
                self.fixed.setdefault(min(ra, rb), why)

    def fix(self, a: int, why: str) -> None:
        self.fixed.setdefault(self.find(a), why)


def _channels_of(shape: object) -> int | None:
    if isinstance(shape, tuple) and len(shape) >= 2 and all(isinstance(d, int) for d in shape):
        return shape[1]
    return None


def channel_groups(graph: Graph) -> WidthPlan:
    """The channel groups of a compiled (shape-inferred) graph and every value's channel layout."""
    uf = _Union()
    layout: dict[str, list[Segment] | None] = {}
    producer: dict[int, str] = {}

    def fresh(node: Node, why: str | None = None) -> list[Segment] | None:
        c = _channels_of(node.shape)
        if c is None:
            return None
        g = uf.new(c)
        producer[g] = node.name
        if why is not None:
            uf.fix(g, why)
        return [(g, c)]

    def fix_all(segs: list[Segment] | None, why: str) -> None:
        for g, _ in segs or []:
            uf.fix(g, why)

    for node in graph:
        ins = [layout.get(i) for i in node.inputs]
        k, a = node.kind, node.attrs
        if node.shape is None:
            raise CompileError(f"{node.name!r} has no inferred shape; run the compiler's inference first", node.where())
        if k == "input":
            out = fresh(node, f"it carries the graph input {node.name!r}")
        elif k in ("conv2d", "conv_transpose2d") and a["groups"] == 1:
            out = fresh(node)
        elif k == "conv2d" and a["groups"] == a["in_channels"] == a["out_channels"]:
            out = ins[0]  # depthwise: one filter per channel, the channels stay tied
        elif k == "linear" and len(node.shape) == 2:
            out = fresh(node)
        elif k in _PASS_THROUGH and ins and ins[0] is not None and _channels_of(node.shape) == _channels_of(
                graph[node.inputs[0]].shape):
            out = ins[0]
        elif k in _TIE:
            out = _tie(uf, node, graph, ins)
        elif k == "concat" and a["dim"] % len(node.shape) == 1 and all(s is not None for s in ins):
            out = [seg for s in ins for seg in s]  # type: ignore[union-attr]
        elif k == "mean" and 1 not in {d % len(graph[node.inputs[0]].shape) for d in a["dim"]} and ins[0]:
            out = ins[0]
        elif k == "flatten" and ins[0] is not None and _flatten_keeps_channels(node, graph):
            out = ins[0]
        elif k == "crop" and ins[0] is not None and a.get("axis", 2) % 4 >= 2:
            out = ins[0]
        else:
            why = f"{node.kind} {node.name!r} depends on its channel count"
            for s in ins:
                fix_all(s, why)
            out = fresh(node, why)
        layout[node.name] = out
    # graph outputs may be cut too: whoever reads them (the heads) slices its input features alike
    return _plan(graph, uf, layout, producer)


def _tie(uf: _Union, node: Node, graph: Graph, ins: list[list[Segment] | None]) -> list[Segment] | None:
    """Elementwise inputs with the output's channel count share one space (segment by segment)."""
    c = _channels_of(node.shape)
    full = [s for s, name in zip(ins, node.inputs, strict=True)
            if s is not None and _channels_of(graph[name].shape) == c and c != 1]
    if not full:
        return [(uf.new(c), c)] if c is not None else None
    first = full[0]
    for other in full[1:]:
        if [n for _, n in other] == [n for _, n in first]:
            for (ga, _), (gb, _) in zip(first, other, strict=True):
                uf.union(ga, gb)
        else:  # differently concatenated spaces: cut none of them
            for g, _ in first + other:
                uf.fix(g, f"{node.kind} {node.name!r} adds differently laid out channels")
    return first


def _flatten_keeps_channels(node: Node, graph: Graph) -> bool:
    shape = graph[node.inputs[0]].shape
    start = node.attrs.get("start_dim", 1) % len(shape)
    end = node.attrs.get("end_dim", -1) % len(shape)
    return start == 1 and all(d == 1 for d in shape[2 : end + 1])


def _plan(graph: Graph, uf: _Union, layout: dict[str, list[Segment] | None], producer: dict[int, str]) -> WidthPlan:
    names: dict[int, str] = {}
    groups: dict[str, ChannelGroup] = {}
    for g in range(len(uf.parent)):
        root = uf.find(g)
        if root not in names:
            names[root] = producer[root]
            groups[names[root]] = ChannelGroup(names[root], uf.size[root], fixed=uf.fixed.get(root))
    named: dict[str, list[tuple[str, int]] | None] = {}
    for value, segs in layout.items():
        named[value] = None if segs is None else [(names[uf.find(g)], n) for g, n in segs]
        for gname, _ in named[value] or []:
            groups[gname].members.append(value)
    return WidthPlan(graph, groups, named)


def group_width(channels: int, factor: float) -> int:
    """Channels kept of a group of ``channels`` at width ``factor``: rounded, at least one."""
    return max(1, min(channels, int(round(channels * factor))))


def kept_channels(plan: WidthPlan, factors: Mapping[str, float]) -> dict[str, torch.Tensor | None]:
    """For every value with channels, the indices (into its full-width channels) a thin network keeps."""
    plan.check(factors)
    keep = {g: group_width(grp.channels, factors.get(g, 1.0)) for g, grp in plan.groups.items()}
    out: dict[str, torch.Tensor | None] = {}
    for value, segs in plan.layout.items():
        if segs is None:
            out[value] = None
            continue
        parts, offset = [], 0
        for g, n in segs:
            parts.append(torch.arange(offset, offset + keep[g]))
            offset += n
        out[value] = torch.cat(parts)
    return out


def scale_widths(graph: Graph | WidthPlan, factors: Mapping[str, float]) -> Graph:
    """The thin graph at ``factors`` (group name -> fraction in (0, 1]; absent groups stay full).

    Channel attributes are changed, the nodes' weights (when they carry any) are sliced to the kept
    channels, and shapes, params and FLOPs are inferred again, so the thin graph's counts are exact.
    """
    plan = graph if isinstance(graph, WidthPlan) else channel_groups(graph)
    keep = kept_channels(plan, factors)
    thin = plan.graph.copy()
    for node in thin:
        a = dict(node.attrs)
        node.attrs = a
        src = node.inputs[0] if node.inputs else None
        idx_in = keep.get(src) if src is not None else None
        idx_out = keep.get(node.name)
        tensors = dict(node.tensors)
        if node.kind in ("conv2d", "conv_transpose2d"):
            n_in, n_out = len(idx_in), len(idx_out)  # type: ignore[arg-type]
            depthwise = node.kind == "conv2d" and a["groups"] == a["in_channels"] == a["out_channels"] > 1
            if depthwise:
                a.update(in_channels=n_out, out_channels=n_out, groups=n_out)
            elif a["groups"] == 1:
                a.update(in_channels=n_in, out_channels=n_out)
            if "weight" in tensors and (depthwise or a["groups"] == 1):
                w = tensors["weight"]
                if node.kind == "conv2d":
                    w = w.index_select(0, idx_out) if depthwise else w.index_select(0, idx_out).index_select(1, idx_in)
                else:
                    w = w.index_select(0, idx_in).index_select(1, idx_out)
                tensors["weight"] = w
            if tensors.get("bias") is not None:
                tensors["bias"] = tensors["bias"].index_select(0, idx_out)
        elif node.kind == "linear" and idx_out is not None:
            a.update(in_features=len(idx_in), out_features=len(idx_out))  # type: ignore[arg-type]
            if "weight" in tensors:
                tensors["weight"] = tensors["weight"].index_select(0, idx_out).index_select(1, idx_in)
            if tensors.get("bias") is not None:
                tensors["bias"] = tensors["bias"].index_select(0, idx_out)
        elif node.kind in _CHANNELWISE_WEIGHTS and idx_out is not None:
            if node.kind == "prelu":
                if a.get("num_parameters", 1) > 1:
                    a["num_parameters"] = len(idx_out)
                    if "weight" in tensors:
                        tensors["weight"] = tensors["weight"].reshape(-1).index_select(0, idx_out)
            else:
                a["num_features"] = len(idx_out)
                for key, t in list(tensors.items()):
                    if t is not None and t.dim() >= 1 and t.shape[0] == plan.graph[node.name].attrs["num_features"]:
                        tensors[key] = t.index_select(0, idx_out)
        node.tensors = tensors
    return infer(thin)
