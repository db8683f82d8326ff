"""The ``block`` choice kind: per task, run a whole block of the backbone or skip it (a zero block).

MPNAS searches over *blocks* (a residual or inverted-residual block of a zoo network, or any
submodule a user names), not single operators. The compiler pass
:func:`~automtl.compiler.blocks.collapse_blocks` first makes each named block one ``block``
operator (its region's exact params and FLOPs, its region as the module); this kind then
offers, for every block whose input and output shapes match:

* ``block``: the block itself; its bank ``block:<name>`` is one set of weights shared by every
  task (domain) whose path uses it;
* ``zero``: no weights, the identity (the path skips the block).

A block whose shapes differ (a stride or a channel change) has no exact zero block, so it is not
offered: it stays a plain operator every path runs. ``domain_block`` is the same choice with
per-domain batch norms inside a shared block (:class:`DomainBlockChoice`). Why a collapsed operator rather than a
choice on the block's last operator: derivation then emits exactly the picked blocks (a skipped
block leaves no operator behind, so ``derive == fixed mode`` and the derived model's params and
FLOPs are the path's), and :meth:`BlockChoice.cost` is the region's exact sum.

:func:`build_blocks` compiles a backbone, collapses its blocks (found by :func:`find_blocks` or
named) and builds the supermodel with ``choice="block"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..compiler.blocks import DomainBlocks, collapse_blocks
from ..compiler.codegen import build_module, codegen
from ..compiler.ir import Graph, Node, Shape
from ..compiler.mtl import Choice, MTLOptions, Option
from ..compiler.ops import get as get_op
from ..compiler.passes import cut
from .choices import CHOICE_KINDS, MTL_ATTRS, ChoiceKind, Derived, register_choice_kind

__all__ = ["BlockChoice", "BlockModule", "DomainBlockChoice", "SmallResNet", "build_blocks", "find_blocks",
           "find_graph_blocks", "with_blocks"]

ZERO = Option("zero", None)


def block_option(node_name: str) -> Option:
    """The ``block`` option of a block node: its own bank, shared by whoever picks it."""
    return Option("block", f"block:{node_name}")


class BlockModule(nn.Module):
    """Runs one block for every task: ``y_t = g_t,block · block(x_t) + g_t,zero · x_t``.

    The block runs once, on the tasks whose ``block`` gate is not zero, stacked (one batch: batch
    norm sees them together, as the shared block it is); with a shared input it runs once for all.
    Gates that carry a gradient (a relaxed policy) always run the block for every task.
    """

    def __init__(self, node: Node, in_shape: Shape, domain_bn: bool = False) -> None:
        super().__init__()
        a = node.attrs
        self.index, self.tasks, self.options = a["index"], a["tasks"], len(a["options"])
        self.domain_bn = domain_bn
        self.block = DomainBlocks(a["graph"], self.tasks) if domain_bn else codegen(a["graph"], build_module, "Block")
        self.name = node.name

    def forward(self, x: torch.Tensor, gates: torch.Tensor, shared_input: bool) -> torch.Tensor:
        T = self.tasks
        g = gates[:, self.index, : self.options]
        on = g[:, 0]
        zero = g[:, 1] if self.options > 1 else None
        relaxed = g.requires_grad
        active = [t for t in range(T) if relaxed or bool(on[t] != 0)]
        if self.domain_bn:
            if shared_input:
                raise ValueError(f"block {self.name!r} has per-domain batch norms (choice kind 'domain_block'): "
                                 "it needs one input per domain, model({domain: x})")
            xs = list(x.chunk(T))
            ys = [self.block(xs[t], t) if t in active else None for t in range(T)]
        elif shared_input:
            y = self.block(x) if active else None
            xs = [x] * T
            ys = [y] * T
        else:
            xs = list(x.chunk(T))
            ys = [None] * T
            if active:
                run = self.block(torch.cat([xs[t] for t in active]))
                for t, part in zip(active, run.chunk(len(active)), strict=True):
                    ys[t] = part
        outs = []
        for t in range(T):
            out = on[t].to(xs[t].dtype) * ys[t] if ys[t] is not None else None
            if zero is not None and (relaxed or bool(zero[t] != 0)):
                skip = zero[t].to(xs[t].dtype) * xs[t]
                out = skip if out is None else out + skip
            outs.append(out if out is not None else torch.zeros_like(xs[t]))
        return torch.cat(outs)


class BlockChoice(ChoiceKind):
    """Block / zero per task for every collapsed block whose input and output shapes match."""

    name = "block"

    def offer(self, node: Node, in_shape: Shape, options: MTLOptions) -> tuple[Option, ...] | None:
        if node.kind != "block" or tuple(in_shape) != tuple(node.shape):
            return None
        node.attrs["param_copies"] = 1  # one bank, however many tasks use it
        return (block_option(node.name), ZERO)

    def param_copies(self, options: tuple[Option, ...], tasks: int) -> float:
        return 1

    def module(self, node: Node, in_shape: Shape) -> nn.Module:
        return BlockModule(node, in_shape)

    def cost(self, node: Node, in_shape: Shape, option: Option) -> tuple[int, int]:
        if option.bank is None:
            return 0, 0
        kind = get_op("block")
        return kind.params(node, [in_shape]), kind.flops(node, [in_shape], node.shape)

    def is_identity(self, choice: Choice, option: Option) -> bool:
        return option.bank is None

    def derive(self, module: nn.Module, node: Node, option: Option, task: int) -> Derived | None:
        if option.bank is None:
            return None
        attrs = {k: v for k, v in node.attrs.items() if k not in MTL_ATTRS}
        block: Any = module
        tensors = {k: v.detach().clone() for k, v in block.block.state_dict().items()}
        return Derived("block", attrs, tensors)


class DomainBlockChoice(BlockChoice):
    """Block / zero like ``block``, but each domain keeps its own batch norms inside a shared block
    (the convolutions are one bank). For multi-domain inputs (one input per domain), where the
    domains' feature statistics differ: multi-domain networks usually keep domain-specific batch
    norms. The derived model holds one :class:`~automtl.compiler.blocks.DomainBlocks` per block
    used, called with the domain's index; a path's cost counts its own batch norms, the derived
    model holds one set per domain (a few hundred parameters per block)."""

    name = "domain_block"

    def module(self, node: Node, in_shape: Shape) -> nn.Module:
        return BlockModule(node, in_shape, domain_bn=True)

    def derive(self, module: nn.Module, node: Node, option: Option, task: int) -> Derived | None:
        d = super().derive(module, node, option, task)
        if d is not None:
            d.attrs.update(domain=task, domains=node.attrs["tasks"])
        return d


for _kind in (BlockChoice(), DomainBlockChoice()):
    if _kind.name not in CHOICE_KINDS:
        register_choice_kind(_kind)


# --- finding blocks and building ---------------------------------------------------------------
BLOCK_CLASSES = ("BasicBlock", "Bottleneck", "InvertedResidual")


def find_blocks(module: nn.Module) -> list[str]:
    """Names of the residual / inverted-residual blocks of ``module`` (the zoo's ``BasicBlock``,
    ``Bottleneck``, ``InvertedResidual``, or any class whose name ends with ``Block``), outermost first."""
    found: list[str] = []
    for name, sub in module.named_modules():
        if not name or any(name.startswith(f + ".") for f in found):
            continue
        cls = type(sub).__name__
        if cls in BLOCK_CLASSES or cls.endswith("Block"):
            found.append(name)
    return found


def build_blocks(backbone: Any, heads: Mapping[str, nn.Module], *, blocks: Sequence[str] | None = None,
                 input_shape: Any = None, trunk_output: str | None = None, domain_bn: bool = False,
                 **build_options: Any) -> Any:
    """The supermodel of ``backbone`` whose blocks are block / zero choices per task.

    ``blocks`` names the submodules that are blocks (default: :func:`find_blocks` of an
    ``nn.Module`` backbone); ``trunk_output`` cuts the backbone first (``"layer4"``: the heads
    read that submodule's output). ``domain_bn=True`` gives each domain its own batch norms: inside
    shared blocks (the ``domain_block`` kind, for one input per domain) and, unless ``bn`` is given,
    outside them too (``bn="specific"``).
    """
    from ..api import compile as compile_backbone
    from .supermodel import _resolve, build

    graph = backbone if isinstance(backbone, Graph) else compile_backbone(backbone, input_shape)
    if trunk_output is not None:
        graph = cut(graph.copy(), _resolve(graph, trunk_output))
    if blocks is None:
        if not isinstance(backbone, nn.Module):
            raise ValueError("blocks: name the backbone's blocks (submodule names) for a backbone that is not an "
                             "nn.Module")
        live = {n.name for n in graph}
        blocks = [b for b in find_blocks(backbone) if any(x == b or x.startswith(b + ".") for x in live)]
        if not blocks:
            raise ValueError(f"blocks: {type(backbone).__name__} has no residual block to search; name its blocks")
    graph = collapse_blocks(graph, list(blocks))
    if domain_bn:
        build_options.setdefault("bn", "specific")
    return build(graph, heads, choice="domain_block" if domain_bn else "block", **build_options)


def find_graph_blocks(graph: Graph) -> list[str]:
    """The skippable blocks of a compiled backbone, found by name: each two-level submodule
    (``layer1.0``, ``features.3``) whose operators form one region with one input and one output
    of the same shape (a residual block; see :func:`~automtl.compiler.blocks.block_region`)."""
    from ..compiler.blocks import block_region
    from ..compiler.errors import CompileError

    found: list[str] = []
    for node in graph:
        parts = node.name.split(".")
        if len(parts) < 3 or ".".join(parts[:2]) in found:
            continue
        prefix = ".".join(parts[:2])
        try:
            _, entry, exit_ = block_region(graph, prefix)
        except CompileError:
            continue
        if tuple(graph[entry].shape) == tuple(graph[exit_].shape) and prefix not in found:
            found.append(prefix)
    return found


def with_blocks(model: Any, blocks: Sequence[str] | None = None, domain_bn: bool = False) -> Any:
    """The block supermodel of an existing supermodel's backbone and heads (a config's model):
    its blocks (default :func:`find_graph_blocks`) become block / zero choices."""
    from .supermodel import build

    names = list(blocks) if blocks is not None else find_graph_blocks(model.graph)
    if not names:
        raise ValueError(f"blocks: the backbone {model.graph.name!r} has no residual block to search; name its blocks")
    graph = collapse_blocks(model.graph, names)
    return build(graph, dict(model.heads), bn=model.options.bn, choice="domain_block" if domain_bn else "block",
                 batching=model.batching)


class _Residual(nn.Module):
    """conv-bn-relu, conv-bn, plus the input, relu (a ResNet basic block, small)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + x)


class ResidualBlock(_Residual):
    """A small residual block (found by :func:`find_blocks`)."""


class SmallResNet(nn.Module):
    """A small residual network for fast multi-domain searches: a stem, ``stages`` of
    ``blocks_per_stage`` residual blocks each (the first stage at ``width`` channels, each next one
    doubling them after a strided convolution), global pooling left to the heads."""

    def __init__(self, width: int = 16, stages: int = 2, blocks_per_stage: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        ch = width
        for s in range(stages):
            if s > 0:
                layers.append(nn.Sequential(nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1, bias=False),
                                            nn.BatchNorm2d(ch * 2), nn.ReLU()))
                ch *= 2
            layers.extend(ResidualBlock(ch) for _ in range(blocks_per_stage))
        self.layers = nn.Sequential(*layers)
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))
