"""Codegen: IR :class:`Graph` -> ``torch.fx.GraphModule`` whose ``code`` a person can read.

Operators with weights become submodules (named after the IR node); the rest become calls of
plain torch functions. Weights the frontend carried (``Node.tensors``) are loaded; without them
the modules keep torch's default initialisation.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .ir import Graph, Node
from .ops import fill_refs, get

ModuleFactory = Callable[[Node, list[Any]], nn.Module]


def attr_name(name: str, taken: set[str]) -> str:
    """A Python identifier for a node name (``layer1.0/conv1`` -> ``layer1_0_conv1``), unique."""
    ident = re.sub(r"\W", "_", name)
    if not ident or ident[0].isdigit():
        ident = "_" + ident
    base, i = ident, 1
    while ident in taken:
        ident = f"{base}_{i}"
        i += 1
    taken.add(ident)
    return ident


def build_module(node: Node, shapes: list[Any]) -> nn.Module:
    """The node's torch module, with the frontend's weights loaded when it has them."""
    kind = get(node.kind)
    assert kind.module is not None
    if node.tensors and not kind.loads_tensors:
        with torch.device("meta"):
            mod = kind.module(node, shapes)
        mod = mod.to_empty(device="cpu")
        missing = set(mod.state_dict()) - set(node.tensors) - {"num_batches_tracked"}
        if missing:
            raise ValueError(f"operator {node.name!r} has no value for {sorted(missing)}")
        for key, value in node.tensors.items():
            target = mod.get_parameter(key) if key in dict(mod.named_parameters()) else mod.get_buffer(key)
            with torch.no_grad():
                target.copy_(value.reshape(target.shape))
        if hasattr(mod, "num_batches_tracked") and "num_batches_tracked" not in node.tensors:
            mod.num_batches_tracked.zero_()
        return mod
    return kind.module(node, shapes)


def codegen(
    graph: Graph, module_factory: ModuleFactory = build_module, class_name: str = "CompiledModel"
) -> fx.GraphModule:
    """Emit ``graph`` as a GraphModule; one placeholder per graph input, one or more outputs."""
    root = nn.Module()
    g = fx.Graph()
    values: dict[str, fx.Node] = {}
    taken: set[str] = set()
    reuse = _reusable(graph)
    for node in graph:
        ins = [values[i] for i in node.inputs]
        kind = get(node.kind)
        ident = re.sub(r"\W", "_", node.name)
        if node.kind == "input":
            values[node.name] = g.placeholder(attr_name(node.name, taken))
        elif node.kind == "opaque":
            values[node.name] = _emit_opaque(g, root, node, ins, taken, ident)
        elif kind.module is not None:
            attr = attr_name(node.name, taken)
            root.add_module(attr, module_factory(node, [graph[i].shape for i in node.inputs]))
            args = (*ins, *kind.module_args(node))
            values[node.name] = g.create_node("call_module", attr, args, {}, name=attr)
        else:
            fn, args, kwargs = kind.emit(node, ins)
            if node.name in reuse:
                kwargs = {**kwargs, "inplace": True}
            values[node.name] = g.create_node("call_function", fn, args, kwargs, name=ident)
    outs = [values[o] for o in graph.outputs]
    g.output(outs[0] if len(outs) == 1 else tuple(outs))
    gm = fx.GraphModule(root, g, class_name=class_name)
    # IR node name -> submodule attribute, so callers never re-derive codegen's naming
    gm.meta["modules"] = {n.name: v.target for n, v in ((graph[k], values[k]) for k in values) if v.op == "call_module"}
    gm.meta["nodes"] = {k: v.name for k, v in values.items()}  # IR node name -> fx node name
    return gm


def _reusable(graph: Graph) -> set[str]:
    """Nodes that may overwrite their input: an ``inplace`` kind reading the only use of a fresh value."""
    uses: dict[str, int] = {}
    for node in graph:
        for i in node.inputs:
            uses[i] = uses.get(i, 0) + 1
    keep = set(graph.outputs)
    return {
        node.name for node in graph
        if get(node.kind).inplace and len(node.inputs) == 1 and uses[node.inputs[0]] == 1
        and node.inputs[0] not in keep and get(graph[node.inputs[0]].kind).fresh_output
    }


def node_modules(gm: fx.GraphModule) -> dict[str, nn.Module]:
    """The submodule codegen made for each IR node that has one, by IR node name."""
    return {name: gm.get_submodule(attr) for name, attr in gm.meta["modules"].items()}


def _emit_opaque(
    g: fx.Graph, root: nn.Module, node: Node, ins: list[fx.Node], taken: set[str], ident: str
) -> fx.Node:
    a = node.attrs
    args = fill_refs(a["args"], ins)
    kwargs = fill_refs(a.get("kwargs", {}), ins)
    target = a.get("target")
    if isinstance(target, nn.Module):
        attr = attr_name(node.name, taken)
        root.add_module(attr, target)
        return g.create_node("call_module", attr, tuple(args), kwargs, name=attr)
    if a.get("method"):
        return g.create_node("call_method", a["method"], tuple(args), kwargs, name=ident)
    return g.create_node("call_function", target, tuple(args), kwargs, name=ident)
