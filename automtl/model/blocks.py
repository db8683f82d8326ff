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

from ..compiler.blocks import DomainBlocks, collapse_blocks, with_kernel_variants
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
    """Runs one block for every task: ``y_t = Σ_j g_t,j · block_j(x_t) + g_t,zero · x_t``.

    ``block_j`` is the block itself (option 0) or one of its kernel variants (options 2, 3, ...;
    option 1 is the zero block). Each runs once, on the tasks whose gate for it is not zero,
    stacked (one batch: batch norm sees them together, as the shared block it is); with a shared
    input it runs once for all. Gates that carry a gradient (a relaxed policy) run every option
    for every task.
    """

    def __init__(self, node: Node, in_shape: Shape, domain_bn: bool = False) -> None:
        super().__init__()
        a = node.attrs
        self.index, self.tasks, self.options = a["index"], a["tasks"], len(a["options"])
        self.domain_bn = domain_bn

        def make(graph: Graph) -> nn.Module:
            return DomainBlocks(graph, self.tasks) if domain_bn else codegen(graph, build_module, "Block")

        self.block = make(a["graph"])
        self.variants = nn.ModuleList(make(g) for g in a.get("variants", {}).values())
        self.name = node.name

    def _run(self, block: nn.Module, xs: list[torch.Tensor], x: torch.Tensor, active: list[int],
             shared_input: bool) -> list[torch.Tensor | None]:
        """``block`` on the active tasks' inputs: one call on their stacked batch (or on the shared input)."""
        T = self.tasks
        if not active:
            return [None] * T
        if self.domain_bn:
            return [block(xs[t], t) if t in active else None for t in range(T)]
        if shared_input:
            return [block(x)] * T
        ys: list[torch.Tensor | None] = [None] * T
        run = block(torch.cat([xs[t] for t in active]))
        for t, part in zip(active, run.chunk(len(active)), strict=True):
            ys[t] = part
        return ys

    def forward(self, x: torch.Tensor, gates: torch.Tensor, shared_input: bool) -> torch.Tensor:
        T = self.tasks
        g = gates[:, self.index, : self.options]
        zero = g[:, 1] if self.options > 1 else None
        relaxed = g.requires_grad
        if self.domain_bn and shared_input:
            raise ValueError(f"block {self.name!r} has per-domain batch norms (choice kind 'domain_block'): "
                             "it needs one input per domain, model({domain: x})")
        xs = [x] * T if shared_input else list(x.chunk(T))
        outs: list[torch.Tensor | None] = [None] * T
        for j, block in [(0, self.block), *((2 + i, v) for i, v in enumerate(self.variants))]:
            on = g[:, j]
            ys = self._run(block, xs, x, [t for t in range(T) if relaxed or bool(on[t] != 0)], shared_input)
            for t in range(T):
                if ys[t] is not None:
                    part = on[t].to(xs[t].dtype) * ys[t]
                    outs[t] = part if outs[t] is None else outs[t] + part
        for t in range(T):
            if zero is not None and (relaxed or bool(zero[t] != 0)):
                skip = zero[t].to(xs[t].dtype) * xs[t]
                outs[t] = skip if outs[t] is None else outs[t] + skip
        return torch.cat([o if o is not None else torch.zeros_like(xs[t]) for t, o in enumerate(outs)])


class BlockChoice(ChoiceKind):
    """Block / zero per task for every collapsed block whose input and output shapes match, plus the
    block's kernel variants where it holds them (:func:`~automtl.compiler.blocks.with_kernel_variants`):
    options ``block``, ``zero``, then ``k5``, ``k7``, ... (each its own bank, shared by its users)."""

    name = "block"

    def offer(self, node: Node, in_shape: Shape, options: MTLOptions) -> tuple[Option, ...] | None:
        if node.kind != "block" or tuple(in_shape) != tuple(node.shape):
            return None
        variants = tuple(Option(v, f"block:{node.name}:{v}") for v in node.attrs.get("variants", {}))
        return (block_option(node.name), ZERO, *variants)

    def module(self, node: Node, in_shape: Shape) -> nn.Module:
        return BlockModule(node, in_shape)

    @staticmethod
    def region(node: Node, option: Option) -> Graph:
        """The region graph ``option`` runs: the block's own, or its kernel variant's."""
        return node.attrs["graph"] if option.name == "block" else node.attrs["variants"][option.name]

    def cost(self, node: Node, in_shape: Shape, option: Option) -> tuple[int, int]:
        if option.bank is None:
            return 0, 0
        probe = Node(node.name, "block", list(node.inputs), {"graph": self.region(node, option)})
        kind = get_op("block")
        return kind.params(probe, [in_shape]), kind.flops(probe, [in_shape], node.shape)

    def is_identity(self, choice: Choice, option: Option) -> bool:
        return option.bank is None

    def derive(self, module: nn.Module, node: Node, option: Option, task: int) -> Derived | None:
        if option.bank is None:
            return None
        attrs = {k: v for k, v in node.attrs.items() if k not in MTL_ATTRS and k != "variants"}
        attrs["graph"] = self.region(node, option)
        block: Any = module
        picked = block.block if option.name == "block" else block.variants[list(node.attrs["variants"]).index(
            option.name)]
        tensors = {k: v.detach().clone() for k, v in picked.state_dict().items()}
        return Derived("block", attrs, tensors)


class DomainBlockChoice(BlockChoice):
    """Block / zero like ``block``, but each domain keeps its own batch norms inside a shared block
    (the convolutions are one bank). For multi-domain inputs (one input per domain), where the
    domains' feature statistics differ: multi-domain networks usually keep domain-specific batch
    norms. The derived model holds one :class:`~automtl.compiler.blocks.DomainBlocks` per block
    used, called with the domain's index, holding the batch norms of the domains that run it (so a
    domain's path costs what :class:`~automtl.search.paths.PathCost` counts)."""

    name = "domain_block"

    def module(self, node: Node, in_shape: Shape) -> nn.Module:
        return BlockModule(node, in_shape, domain_bn=True)

    def held_params(self, node: Node, in_shape: Shape, options: tuple[Option, ...]) -> tuple[int, int]:
        """As ``block``, but every bank's batch norms are held once per domain."""
        once, per_task = super().held_params(node, in_shape, options)
        regions = {o.bank: self.region(node, o) for o in options if o.bank is not None}
        norms = sum(n.params for g in regions.values() for n in g if n.kind == "batch_norm")
        return once - norms, per_task + norms

    def derive(self, module: nn.Module, node: Node, option: Option, task: int) -> Derived | None:
        """The block with the batch norms of the domains that run it (``bank_users``), called with ``task``."""
        d = super().derive(module, node, option, task)
        if d is None:
            return None
        users = list(node.attrs.get("bank_users") or range(node.attrs["tasks"]))
        d.attrs.update(domain=task, domains=users)
        return Derived(d.kind, d.attrs, DomainBlocks.keep(d.tensors, users))


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
                 kernels: Sequence[int] = (), **build_options: Any) -> Any:
    """The supermodel of ``backbone`` whose blocks are block / zero choices per task.

    ``blocks`` names the submodules that are blocks (default: :func:`find_blocks` of an
    ``nn.Module`` backbone); ``trunk_output`` cuts the backbone first (``"layer4"``: the heads
    read that submodule's output). ``domain_bn=True`` gives each domain its own batch norms: inside
    shared blocks (the ``domain_block`` kind, for one input per domain) and, unless ``bn`` is given,
    outside them too (``bn="specific"``). ``kernels=(5, 7)`` adds each block's kernel variants as
    options (its spatial convolutions at 5x5, 7x7; a MobileNetV3-like space), each its own bank.
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
    graph = with_kernel_variants(collapse_blocks(graph, list(blocks)), kernels)
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


def with_blocks(model: Any, blocks: Sequence[str] | None = None, domain_bn: bool = False,
                kernels: Sequence[int] = ()) -> Any:
    """The block supermodel of an existing supermodel's backbone and heads (a config's model):
    its blocks (default :func:`find_graph_blocks`) become block / zero choices (and ``kernels``
    variants, as :func:`build_blocks`)."""
    from .supermodel import build

    names = list(blocks) if blocks is not None else find_graph_blocks(model.graph)
    if not names:
        raise ValueError(f"blocks: the backbone {model.graph.name!r} has no residual block to search; name its blocks")
    graph = with_kernel_variants(collapse_blocks(model.graph, names), kernels)
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
