"""The one intermediate representation: a DAG of operators over a networkx ``DiGraph``.

Every frontend (torch.fx, prototxt, ONNX) produces a :class:`Graph`; every pass reads and
rewrites one; codegen turns one into a ``torch.fx.GraphModule``. A node has exactly one output
value; operators with several outputs (Caffe ``Slice``) become several nodes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch

from .errors import CompileError, Source

Shape = tuple[int, ...]


@dataclass(eq=False)
class Node:
    """One operator: its kind (a key of the op registry), attributes and ordered inputs.

    ``tensors`` holds initial weights and buffers when the source had them (fx, ONNX);
    ``shape``, ``params`` and ``flops`` are filled by shape/cost inference.
    """

    name: str
    kind: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    source: Source | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    shape: Any = None
    params: int = 0
    flops: int = 0

    def where(self) -> Source:
        """The source location, or one that names this node when the frontend gave none."""
        return self.source if self.source is not None else Source(layer=self.name, layer_type=self.kind)

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.kind}, inputs={self.inputs}, shape={self.shape})"


class Graph:
    """A DAG of :class:`Node` s in insertion (topological) order with named inputs and outputs."""

    def __init__(self, name: str = "graph", file: str | None = None) -> None:
        self.name = name
        self.file = file
        self.nx = nx.DiGraph()
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self._order: list[str] = []

    # construction -------------------------------------------------------------------------
    def add(self, node: Node) -> Node:
        """Append ``node``; its inputs must already be in the graph (so order stays topological)."""
        if node.name in self.nx:
            raise CompileError(f"duplicate operator name {node.name!r}", node.source)
        for inp in node.inputs:
            if inp not in self.nx:
                raise CompileError(f"input {inp!r} is not produced by any earlier operator", node.where())
        self.nx.add_node(node.name, op=node)
        for inp in node.inputs:
            self.nx.add_edge(inp, node.name)
        self._order.append(node.name)
        if node.kind == "input":
            self.inputs.append(node.name)
        return node

    def remove(self, name: str) -> None:
        """Remove a node that no other node reads."""
        if any(True for _ in self.nx.successors(name)):
            raise CompileError(f"cannot remove {name!r}: it is still read", self[name].where())
        self.nx.remove_node(name)
        self._order.remove(name)
        if name in self.inputs:
            self.inputs.remove(name)
        if name in self.outputs:
            self.outputs.remove(name)

    def replace_uses(self, old: str, new: str) -> None:
        """Make every reader of ``old`` (and the graph outputs) read ``new`` instead."""
        for succ in list(self.nx.successors(old)):
            node = self[succ]
            node.inputs = [new if i == old else i for i in node.inputs]
            self.nx.remove_edge(old, succ)
            self.nx.add_edge(new, succ)
        self.outputs = [new if o == old else o for o in self.outputs]

    def copy(self, tensors: bool = True) -> Graph:
        """A graph of shallow node copies (own input lists), optionally without their tensors."""
        out = Graph(self.name, file=self.file)
        for node in self:
            new = copy.copy(node)
            new.inputs = list(node.inputs)
            if not tensors:
                new.tensors = {}
            out.add(new)
        out.outputs = list(self.outputs)
        return out

    # access -------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Node:
        try:
            return self.nx.nodes[name]["op"]
        except KeyError:
            raise KeyError(f"no operator named {name!r} in graph {self.name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.nx

    def __iter__(self) -> Iterator[Node]:
        """Nodes in topological order (the order they were added in)."""
        nodes = self.nx.nodes
        return (nodes[n]["op"] for n in self._order)

    def __len__(self) -> int:
        return len(self._order)

    def users(self, name: str) -> list[str]:
        """Names of the nodes that read ``name``, in graph order."""
        succ = set(self.nx.successors(name))
        return [n for n in self._order if n in succ]

    def is_acyclic(self) -> bool:
        return nx.is_directed_acyclic_graph(self.nx)

    # totals -------------------------------------------------------------------------------
    @property
    def params(self) -> int:
        """Learnable parameters of all operators (buffers such as BN running stats excluded)."""
        return sum(n.params for n in self)

    @property
    def flops(self) -> int:
        """FLOPs of one forward pass at the inferred input shape (a multiply-add counts as 2)."""
        return sum(n.flops for n in self)

    def output_shapes(self) -> dict[str, Shape]:
        return {o: self[o].shape for o in self.outputs}

    def summary(self) -> list[dict[str, Any]]:
        """One row per operator: name, kind, output shape, params, FLOPs."""
        return [
            {"name": n.name, "kind": n.kind, "shape": n.shape, "params": n.params, "flops": n.flops}
            for n in self
        ]

    def table(self) -> str:
        """A readable op table with totals, as ``automtl compile`` prints it."""
        rows = [("name", "kind", "output shape", "params", "FLOPs")]
        for n in self:
            shape = "x".join(map(str, n.shape)) if isinstance(n.shape, tuple) else str(n.shape)
            rows.append((n.name, n.kind, shape, f"{n.params:,}", f"{n.flops:,}"))
        rows.append(("total", "", "", f"{self.params:,}", f"{self.flops:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = []
        for i, r in enumerate(rows):
            cells = [r[c].ljust(widths[c]) if c < 3 else r[c].rjust(widths[c]) for c in range(5)]
            lines.append("  ".join(cells).rstrip())
            if i == 0 or i == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self)} ops, inputs={self.inputs}, outputs={self.outputs})"
