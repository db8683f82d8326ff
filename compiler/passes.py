"""Graph passes: validation, shape and cost inference, clean-up.

Each pass takes a :class:`Graph`, checks or rewrites it in place, and raises a
:class:`CompileError` naming the operator and its source location when something is wrong.
"""

from __future__ import annotations

from .errors import CompileError
from .ir import Graph
from .ops import get


def validate(graph: Graph) -> Graph:
    """Structural checks: known kinds, arity, acyclic, inputs and outputs present."""
    if not graph.inputs:
        raise CompileError(f"graph {graph.name!r} has no input", _where(graph))
    if not graph.outputs:
        raise CompileError(f"graph {graph.name!r} has no output", _where(graph))
    for node in graph:
        try:
            kind = get(node.kind)
        except KeyError as exc:
            raise CompileError(str(exc.args[0]), node.where()) from None
        for inp in node.inputs:
            if inp not in graph:
                raise CompileError(f"input {inp!r} is not produced by any operator", node.where())
        lo, hi = kind.arity
        if len(node.inputs) < lo or (hi is not None and len(node.inputs) > hi):
            want = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else 'n'}"
            raise CompileError(f"{node.kind} takes {want} inputs, got {len(node.inputs)}", node.where())
    for out in graph.outputs:
        if out not in graph:
            raise CompileError(f"output {out!r} is not produced by any operator", _where(graph))
    if not graph.is_acyclic():
        raise CompileError(f"graph {graph.name!r} has a cycle", _where(graph))
    return graph


def infer(graph: Graph) -> Graph:
    """Fill every node's output shape, learnable parameter count and FLOPs, in graph order."""
    for node in graph:
        kind = get(node.kind)
        shapes = [graph[i].shape for i in node.inputs]
        node.shape = kind.infer(node, shapes)
        node.params = kind.params(node, shapes)
        node.flops = kind.flops(node, shapes, node.shape)
    return graph


def prune(graph: Graph) -> Graph:
    """Drop operators that no output depends on (e.g. a classifier after a cut)."""
    live = set(graph.outputs)
    for node in reversed(list(graph)):
        if node.name in live:
            live.update(node.inputs)
    for node in reversed(list(graph)):
        if node.name not in live and node.kind != "input":
            graph.remove(node.name)
    return graph


def cut(graph: Graph, output: str) -> Graph:
    """Make ``output`` the graph's only output and drop what comes after it."""
    if output not in graph:
        names = [n.name for n in graph]
        import difflib

        close = difflib.get_close_matches(output, names, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see `automtl compile` for the names"
        raise CompileError(f"no operator named {output!r} to cut the graph at", _where(graph), hint)
    graph.outputs = [output]
    return prune(graph)


def run_all(graph: Graph) -> Graph:
    """The standard pipeline every frontend result goes through."""
    return infer(validate(graph))


def _where(graph: Graph):
    from .errors import Source

    return Source(file=graph.file, layer=graph.name, layer_type="net")
