"""One width analysis of a graph, kept for repeated use: its channel groups, every value's kept channels, thin graphs.

:mod:`compiler.width` finds the channel groups of a graph (one union-find over the IR) and scales
them; :class:`WidthPlan` runs that analysis once and answers the questions a runtime asks again and
again for many width configurations: which groups may be cut (:attr:`WidthPlan.thinnable`), which
channels of every value a thin network keeps (:meth:`WidthPlan.kept_channels`, the leading channels
of each group, as slimmable networks keep), and the thin graph itself (:meth:`WidthPlan.scale`, with
the nodes' weights sliced when they carry any, shapes, params and FLOPs inferred again).

A configuration is checked strictly (:meth:`WidthPlan.check`): an unknown group, a factor outside
(0, 1] or a cut of a fixed group is a :class:`~compiler.errors.CompileError` naming the group, where
:func:`compiler.width.scale_widths` quietly keeps a fixed group's count. ``pin`` adds the caller's own
reasons to keep channels (see :data:`compiler.width.Pin`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .errors import CompileError
from .ir import Graph
from .width import ChannelGroup, Pin, _Analysis, _scaled

__all__ = ["WidthPlan"]


class WidthPlan:
    """The channel groups of ``graph`` (``keep_outputs``, ``pin``: as :func:`compiler.width.channel_groups`)."""

    def __init__(self, graph: Graph, keep_outputs: bool = True, pin: Pin | None = None) -> None:
        if any(n.shape is None for n in graph):
            raise CompileError(f"graph {graph.name!r} has operators without shapes; run compiler.passes.infer first")
        self.graph = graph
        self.keep_outputs = keep_outputs
        self.pin = pin
        self._an = _Analysis(graph, keep_outputs, pin)
        self.groups: dict[str, ChannelGroup] = {g.name: g for g in self._an.groups()}

    @property
    def thinnable(self) -> list[str]:
        """Names of the groups that may be cut, in graph order of the operators opening them."""
        return [name for name, g in self.groups.items() if not g.fixed]

    def layout(self, value: str) -> list[tuple[str, int]] | None:
        """The channel layout of ``value``: ``(group, channels)`` per segment along axis 1 (None: no channels)."""
        lay = self._an.layout.get(value)
        if lay is None:
            return None
        an = self._an
        return [(an.origin[an.find(s)], int(an.size[an.find(s)] * r)) for s, r in lay]

    def check(self, factors: Mapping[str, float]) -> None:
        """Refuse an unknown group, a factor outside (0, 1], or a cut of a fixed group (naming it)."""
        for name, f in factors.items():
            if name not in self.groups:
                raise CompileError(f"width factor for unknown channel group {name!r}; groups: {self.thinnable}")
            if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1:
                raise CompileError(f"channel group {name!r}: width factor must be in (0, 1], got {f!r}")
            if f < 1 and self.groups[name].fixed:
                raise CompileError(f"channel group {name!r} may not be cut: {self.groups[name].fixed}")

    def kept_channels(self, factors: Mapping[str, float]) -> dict[str, torch.Tensor | None]:
        """For every value with channels, the indices (into its full-width channels) a thin network keeps."""
        self.check(factors)
        an = self._an
        sizes = an.new_sizes(dict(factors))
        return {value: None if lay is None else an.keep_index(lay, sizes) for value, lay in an.layout.items()}

    def scale(self, factors: Mapping[str, float], graph: Graph | None = None) -> Graph:
        """The thin graph at ``factors`` (checked); with ``graph`` (this plan's graph with weights on its nodes),
        that graph's weights sliced into it."""
        self.check(factors)
        an = self._an if graph is None else _Analysis(graph, self.keep_outputs, self.pin)
        return _scaled(an, dict(factors))
