"""Blocks: a compiler pass that collapses a named submodule's operators into one ``block`` operator.

Multi-path search (MPNAS) chooses per domain whether each *block* of a backbone (a residual or
inverted-residual block, or any submodule a user names) is run or skipped. A block spans many
operators, so :func:`collapse_blocks` first turns each named block into a single IR node:

* its *region* is every operator named ``<block>`` or ``<block>.*``, plus the anonymous operators
  wired inside it: an operator whose inputs all come from the region or its entry and that a
  region operator reads (ResNet's ``out + identity`` before the last ReLU), or that joins the
  block's input with a region value (MobileNetV2's residual ``x + conv(x)`` after the block's
  last named operator);
* the region must have one entry value and one exit value, else a :class:`CompileError` names
  the block and the values that cross its border;
* the ``block`` node reads the entry and holds the region as its own :class:`Graph`
  (``attrs["graph"]``, weights included). Its params and FLOPs are the exact sums of the
  region's, its module is the region emitted by the one codegen, so the model and its cost stay
  what they were before the pass.

The multi-task rewrite then sees one ``block`` operator, which the runtime's ``block`` choice
kind (:mod:`automtl.model.blocks`) offers as block / zero; ``mtl_block`` is its choice node.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .codegen import build_module, codegen
from .errors import CompileError, Source
from .ir import Graph, Node, Shape
from .mtl import _mtl_flops, _mtl_infer, _mtl_module, _mtl_params
from .ops import OpKind, ShapeError, register

__all__ = ["block_region", "collapse_blocks", "kernel_variant", "with_kernel_variants"]


def block_region(graph: Graph, block: str) -> tuple[list[str], str, str]:
    """The operators of ``block`` (graph order), its entry value and its exit value."""
    members = {n.name for n in graph if n.kind != "input" and (n.name == block or n.name.startswith(block + "."))}
    if not members:
        raise CompileError(f"block {block!r}: no operator is named {block!r} or '{block}.*'",
                           _where(graph), "name a submodule (see `automtl compile` for the operator names)")
    entries = _entries(graph, members)
    changed = True
    while changed:  # the anonymous operators wired inside the block (a residual add)
        changed = False
        for node in graph:
            if node.name in members or node.kind == "input" or not node.inputs:
                continue
            if not all(i in members or i in entries for i in node.inputs):
                continue
            read_inside = any(u in members for u in graph.users(node.name))
            join = any(i in entries for i in node.inputs) and any(i in members for i in node.inputs)
            if read_inside or join:
                members.add(node.name)
                changed = True
        entries = _entries(graph, members)
    if len(entries) != 1:
        raise CompileError(f"block {block!r} reads {len(entries)} values from outside it {sorted(entries)}; "
                           "a block needs exactly one input", _where(graph), "name a submodule with one input")
    exits = [n for n in members if n in graph.outputs or any(u not in members for u in graph.users(n))]
    if len(exits) != 1:
        raise CompileError(f"block {block!r} gives {len(exits)} values to the rest of the network {sorted(exits)}; "
                           "a block needs exactly one output", _where(graph), "name a submodule with one output")
    order = [n.name for n in graph if n.name in members]
    return order, next(iter(entries)), exits[0]


def _where(graph: Graph) -> Source:
    return Source(file=graph.file, layer=graph.name, layer_type="net")


def _entries(graph: Graph, members: set[str]) -> set[str]:
    return {i for n in members for i in graph[n].inputs if i not in members}


def collapse_blocks(graph: Graph, blocks: Sequence[str]) -> Graph:
    """A copy of ``graph`` where every named block is one ``block`` operator named after it."""
    from .passes import infer

    out = graph
    for block in blocks:
        names, entry, exit_ = block_region(out, block)
        region = set(names)
        sub = Graph(block, file=graph.file)
        sub.add(Node(entry, "input", [], {"shape": out[entry].shape}))
        for name in names:
            node = copy.copy(out[name])
            node.inputs, node.attrs = list(node.inputs), dict(node.attrs)
            sub.add(node)
        sub.outputs = [exit_]
        infer(sub)
        new = Graph(out.name, file=out.file)
        for node in out:
            if node.name in region and node.name != exit_:
                continue
            if node.name == exit_:
                new.add(Node(block, "block", [entry], {"graph": sub, "block": block, "members": tuple(names)},
                             node.source))
                continue
            copied = copy.copy(node)
            copied.inputs = [block if i == exit_ else i for i in node.inputs]
            new.add(copied)
        new.outputs = [block if o == exit_ else o for o in out.outputs]
        out = infer(new)
    return out if blocks else graph.copy()


def kernel_variant(sub: Graph, kernel: int) -> Graph | None:
    """A copy of a block's region graph whose spatial convolutions use ``kernel`` x ``kernel``
    (MobileNetV3-like search spaces vary the kernel of a block), or ``None`` if none can.

    A convolution varies when its kernel is square and larger than 1, with "same" padding
    (``kernel // 2``), dilation 1: its padding becomes ``kernel // 2``, so every shape in the
    block stays what it was and the block remains a drop-in for the original. Params and FLOPs are
    inferred again (exact); the weights are new (codegen initialises them).
    """
    from .passes import infer

    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel variants: a kernel must be odd and positive (same padding), got {kernel}")
    out = sub.copy()
    changed = False
    for node in out:
        a = node.attrs
        if node.kind != "conv2d":
            continue
        k = tuple(a["kernel_size"])
        if k[0] != k[1] or k[0] == 1 or tuple(a["padding"]) != (k[0] // 2, k[0] // 2) or \
                tuple(a["dilation"]) != (1, 1):
            continue
        if k[0] != kernel:
            node.attrs = {**a, "kernel_size": (kernel, kernel), "padding": (kernel // 2, kernel // 2)}
            node.tensors = {key: v for key, v in node.tensors.items() if key != "weight"}  # a new kernel
            changed = True
    if not changed:
        return None
    out.name = f"{sub.name}.k{kernel}"
    return infer(out)


def with_kernel_variants(graph: Graph, kernels: Sequence[int]) -> Graph:
    """A copy of ``graph`` (its blocks collapsed) where each skippable ``block`` node (input and output
    shapes equal) also holds its kernel variants, ``attrs["variants"] = {"k5": region, ...}`` (only
    kernels that change the block);
    the block choice kind offers them as options beside the block itself and the zero block."""
    out = graph.copy()
    for node in out:
        if node.kind != "block" or tuple(out[node.inputs[0]].shape) != tuple(node.shape):
            continue  # only a block that a path may skip is a choice, and so can have variants
        variants = {}
        for k in kernels:
            v = kernel_variant(node.attrs["graph"], int(k))
            if v is not None:
                variants[f"k{int(k)}"] = v
        if variants:
            node.attrs = {**node.attrs, "variants": variants}
    return out


# --- the operator kinds ------------------------------------------------------------------------
def _region(node: Node, shapes: list[Shape]) -> Graph:
    """The block's graph, re-inferred when the block is called at another input shape."""
    from .passes import infer

    sub: Graph = node.attrs["graph"]
    entry = sub[sub.inputs[0]]
    if tuple(shapes[0]) != tuple(entry.shape):
        if tuple(shapes[0][1:]) != tuple(entry.shape[1:]):
            raise ShapeError(f"block {node.name!r} expects inputs of shape {list(entry.shape)} (batch aside), "
                             f"got {list(shapes[0])}", node.where())
        sub = sub.copy()
        sub[sub.inputs[0]].attrs["shape"] = tuple(shapes[0])
        infer(sub)
    return sub


def _block_infer(node: Node, shapes: list[Shape]) -> Shape:
    sub = _region(node, shapes)
    return sub[sub.outputs[0]].shape


def _block_params(node: Node, shapes: list[Shape]) -> int:
    return _region(node, shapes).params


def _block_flops(node: Node, shapes: list[Shape], out: Shape) -> int:
    return _region(node, shapes).flops


class DomainBlocks(nn.Module):
    """One block for several domains: the convolutions (every weight but batch norms') shared, each
    domain its own batch norms. ``domains`` is how many (every domain has a copy) or which domain
    indices have one (a derived block keeps the domains that run it). ``forward(x, domain)`` runs
    domain ``domain``'s copy."""

    def __init__(self, graph: Graph, domains: int | Sequence[int]) -> None:
        super().__init__()
        self.domains = list(range(domains)) if isinstance(domains, int) else [int(d) for d in domains]
        self.copies = nn.ModuleList(codegen(graph, build_module, class_name="Block") for _ in self.domains)
        first = dict(self.copies[0].named_modules())
        for copy_ in list(self.copies)[1:]:
            for name, m in copy_.named_modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    continue
                for pname, p in list(first[name].named_parameters(recurse=False)):
                    setattr(m, pname, p)  # the same Parameter: one set of weights

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        return self.copies[self.domains.index(domain)](x)

    @staticmethod
    def keep(state: dict[str, torch.Tensor], domains: Sequence[int]) -> dict[str, torch.Tensor]:
        """The part of a state dict of every domain's copies that ``DomainBlocks(graph, domains)`` loads."""
        kept = {}
        for key, value in state.items():  # "copies.<position>.<name>", renumbered over ``domains``
            _, position, rest = key.split(".", 2)
            if int(position) in domains:
                kept[f"copies.{list(domains).index(int(position))}.{rest}"] = value
        return kept


def _block_module(node: Node, shapes: list[Shape]) -> nn.Module:
    """The block's region as one module (:class:`DomainBlocks` when it has per-domain batch norms);
    weights from ``node.tensors`` when a derivation gave them."""
    if "domains" in node.attrs:
        module: nn.Module = DomainBlocks(node.attrs["graph"], node.attrs["domains"])
    else:
        module = codegen(node.attrs["graph"], build_module, class_name="Block")
    if node.tensors:
        missing, unexpected = module.load_state_dict(node.tensors, strict=False)
        if missing or unexpected:
            raise ValueError(f"block {node.name!r}: weights do not fit (missing {missing}, unexpected {unexpected})")
    return module


def block_graph(node: Node) -> Any:
    """The region graph a ``block`` or ``mtl_block`` node holds."""
    return node.attrs["graph"]


register(OpKind("block", _block_infer, params=_block_params, flops=_block_flops, module=_block_module,
                loads_tensors=True, module_args=lambda n: (n.attrs["domain"],) if "domain" in n.attrs else ()))
register(OpKind("mtl_block", _mtl_infer, arity=(2, 2), params=_mtl_params, flops=_mtl_flops, module=_mtl_module,
                module_args=lambda n: (n.attrs["shared_input"],), loads_tensors=True))
