"""Slimmable networks: one weight bank of a compiled backbone, run at any width configuration.

Why widths are a runtime argument of one weight bank and not a choice kind: a width choice is not
local to one operator. Cutting a convolution's output channels cuts the input channels of every
reader, and channels tied through residual adds and concatenations must be cut together (the
compiler's width pass, :mod:`automtl.compiler.width`, finds these groups on the IR). A choice kind decides
and derives each operator on its own (``derive(module, node, option, task)`` sees one node), so it cannot keep
tied channels equal or slice a reader's input. Slimmable networks (Yu et al., 2019) run the same
weights at many widths, switching per forward pass; SlimDA trains several widths in every step
(the model batch), so the bank takes a width configuration per call: ``net(x, factors)``.

A width configuration maps each cuttable channel group's name to a fraction of its channels
(:func:`~automtl.compiler.width.group_width` rounds; groups left out stay full). The kept
channels are a prefix of each group, as in slimmable networks. One analysis of the IR
(:class:`~automtl.compiler.width_plan.WidthPlan`) gives the groups, every value's kept channels at
run time, and the thin graph: :meth:`SlimmableNet.thin` emits the plain compact network of a
configuration (the bank's weights sliced into it), and :meth:`SlimmableNet.flops` counts it exactly
with the compiler. What the runtime cannot slice on the fly stays full width (:func:`runtime_pin`):
grouped (not depthwise) convolutions, channel splits, group and instance norms.

Batch norm: in training every width normalises with its batch's statistics (nothing is tracked,
since shared running statistics of many widths mean nothing); before evaluating a configuration,
:meth:`SlimmableNet.calibrate` recomputes its statistics on a few batches (as universally
slimmable networks do). In eval mode the bank's running statistics, sliced, are used.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..compiler.codegen import build_module, codegen, node_modules
from ..compiler.ir import Graph, Node
from ..compiler.width_plan import WidthPlan

Widths = dict[str, float]


def _pick(t: torch.Tensor, dim: int, idx: torch.Tensor | None) -> torch.Tensor:
    """``t`` restricted to ``idx`` along ``dim`` (a slice when ``idx`` is a prefix: no copy)."""
    if idx is None or len(idx) == t.shape[dim]:
        return t
    n = len(idx)
    if int(idx[-1]) == n - 1:  # kept channels are sorted: the last index tells a prefix
        return t.narrow(dim, 0, n)
    return t.index_select(dim, idx.to(t.device))


class SlimOp(nn.Module):
    """A weighted operator (conv, linear, BN, scale, PReLU) run on the kept channels of its input and output."""

    def __init__(self, node: Node, op: nn.Module) -> None:
        super().__init__()
        self.kind = node.kind
        self.depthwise = node.kind == "conv2d" and node.attrs["groups"] == node.attrs["in_channels"] > 1
        self.op = op
        self.idx_in: torch.Tensor | None = None
        self.idx_out: torch.Tensor | None = None
        self.calibrating = False
        self.calibrated = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op: Any = self.op
        i, o = self.idx_in, self.idx_out
        if self.kind == "conv2d":
            if self.depthwise:  # one group per kept input channel (a channel multiplier keeps its filters together)
                w = _pick(op.weight, 0, o)
                groups = x.shape[1]
            else:
                w = _pick(_pick(op.weight, 0, o), 1, i)
                groups = op.groups
            b = None if op.bias is None else _pick(op.bias, 0, o)
            if op.padding_mode != "zeros":
                x = F.pad(x, op._reversed_padding_repeated_twice, mode=op.padding_mode)
                return F.conv2d(x, w, b, op.stride, 0, op.dilation, groups)
            return F.conv2d(x, w, b, op.stride, op.padding, op.dilation, groups)
        if self.kind == "conv_transpose2d":
            w = _pick(_pick(op.weight, 0, i), 1, o)
            b = None if op.bias is None else _pick(op.bias, 0, o)
            return F.conv_transpose2d(x, w, b, op.stride, op.padding, op.output_padding, op.groups, op.dilation)
        if self.kind == "linear":
            b = None if op.bias is None else _pick(op.bias, 0, o)
            return F.linear(x, _pick(_pick(op.weight, 0, o), 1, i), b)
        if self.kind == "batch_norm":
            return self._batch_norm(x, op, o)
        if self.kind == "scale":
            view = (1, -1) + (1,) * (x.dim() - 2)
            y = x * _pick(op.weight, 0, o).view(view)
            return y if op.bias is None else y + _pick(op.bias, 0, o).view(view)
        if self.kind == "prelu":
            w = op.weight if op.weight.numel() == 1 else _pick(op.weight, 0, o)
            return F.prelu(x, w)
        raise AssertionError(self.kind)

    def _batch_norm(self, x: torch.Tensor, op: Any, o: torch.Tensor | None) -> torch.Tensor:
        w = None if op.weight is None else _pick(op.weight, 0, o)
        b = None if op.bias is None else _pick(op.bias, 0, o)
        if self.calibrating:  # cumulative average of the batch statistics of the kept channels
            idx = torch.arange(op.num_features, device=x.device) if o is None else o.to(x.device)
            mean, var = op.running_mean[idx].clone(), op.running_var[idx].clone()
            y = F.batch_norm(x, mean, var, w, b, True, 1.0 / (self.calibrated + 1), op.eps)
            with torch.no_grad():
                op.running_mean.index_copy_(0, idx, mean)
                op.running_var.index_copy_(0, idx, var)
            self.calibrated += 1
            return y
        if self.training:
            return F.batch_norm(x, None, None, w, b, True, 0.0, op.eps)
        return F.batch_norm(x, _pick(op.running_mean, 0, o), _pick(op.running_var, 0, o), w, b, False, 0.0, op.eps)


_SLIM_KINDS = ("conv2d", "conv_transpose2d", "linear", "batch_norm", "scale", "prelu")


def runtime_pin(node: Node) -> str | None:
    """Why the bank keeps the channels ``node`` reads and writes at full width (None: it slices them at run time).

    The compiler scales grouped convolutions in multiples and channel splits by their fractions; the bank
    runs the full graph's code, whose group counts, split bounds and norm sizes are fixed attributes."""
    k, a = node.kind, node.attrs
    if k in ("conv2d", "conv_transpose2d") and a["groups"] != 1 and not (k == "conv2d" and a["groups"] ==
                                                                         a["in_channels"]):
        return f"the grouped convolution {node.name!r} is not sliced at run time"
    if k == "narrow" and isinstance(node.shape, tuple) and a["dim"] % len(node.shape) == 1:
        return f"the channel split {node.name!r} is not sliced at run time"
    if k in ("group_norm", "instance_norm"):
        return f"the {k} {node.name!r} is not sliced at run time"
    return None


class SlimmableNet(nn.Module):
    """A compiled backbone as one weight bank runnable at any width configuration (see the module doc)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        if len(graph.outputs) != 1:
            raise ValueError(f"a slimmable network needs one output; graph {graph.name!r} has {graph.outputs}")
        self.graph = graph
        self.plan = WidthPlan(graph, keep_outputs=False, pin=runtime_pin)
        self.net = codegen(graph, self._factory, class_name="SlimmableNet")
        self.slim: dict[str, SlimOp] = {n: m for n, m in node_modules(self.net).items() if isinstance(m, SlimOp)}
        self.factors: Widths = {}
        self.out_index: torch.Tensor | None = None
        self._flops: dict[tuple[tuple[str, float], ...], int] = {}
        self.set_widths({})

    def _factory(self, node: Node, shapes: list[Any]) -> nn.Module:
        mod = build_module(node, shapes)
        a = node.attrs
        cuttable = node.kind in _SLIM_KINDS and (node.kind not in ("conv2d", "conv_transpose2d") or a["groups"] == 1
                                                 or (node.kind == "conv2d" and a["groups"] == a["in_channels"]))
        return SlimOp(node, mod) if cuttable else mod

    # --- widths ------------------------------------------------------------------------------------
    @property
    def groups(self) -> list[str]:
        """The cuttable channel groups, in graph order."""
        return self.plan.thinnable

    def full(self) -> Widths:
        """The largest configuration: every group at its full width."""
        return dict.fromkeys(self.groups, 1.0)

    def uniform(self, factor: float) -> Widths:
        return dict.fromkeys(self.groups, float(factor))

    def random(self, widths: Sequence[float], rng: random.Random) -> Widths:
        """Each group's width drawn uniformly from ``widths``."""
        return {g: float(rng.choice(list(widths))) for g in self.groups}

    def set_widths(self, factors: Mapping[str, float]) -> None:
        """Run at ``factors`` from now on (missing groups at full width)."""
        keep = self.plan.kept_channels(factors)
        for name, mod in self.slim.items():
            node = self.graph[name]
            mod.idx_in = keep.get(node.inputs[0]) if node.inputs else None
            mod.idx_out = keep[name]
        self.factors = dict(factors)
        self.out_index = keep[self.graph.outputs[0]]

    def forward(self, x: torch.Tensor, factors: Mapping[str, float] | None = None) -> torch.Tensor:
        if factors is not None:
            self.set_widths(factors)
        return self.net(x)

    # --- costs and the compact network -----------------------------------------------------------
    def thin_graph(self, factors: Mapping[str, float], weights: bool = False) -> Graph:
        """The compiler's graph of the thin network at ``factors`` (with the bank's weights sliced in)."""
        if not weights:
            return self.plan.scale(factors)
        graph = self.graph.copy(tensors=False)
        for name, mod in node_modules(self.net).items():
            plain = mod.op if isinstance(mod, SlimOp) else mod
            state = {k: v.detach().clone() for k, v in plain.state_dict().items() if k != "num_batches_tracked"}
            if state:
                graph[name].tensors = state
        return self.plan.scale(factors, graph)

    def flops(self, factors: Mapping[str, float]) -> int:
        """FLOPs of the thin network at ``factors``, counted by the compiler (exact, cached)."""
        key = tuple(sorted((g, float(f)) for g, f in factors.items() if f != 1.0))
        if key not in self._flops:
            self._flops[key] = self.thin_graph(factors).flops
        return self._flops[key]

    def params(self, factors: Mapping[str, float]) -> int:
        return self.thin_graph(factors).params

    def thin(self, factors: Mapping[str, float]) -> fx.GraphModule:
        """The plain compact network at ``factors``: thin operators holding the bank's weights."""
        gm = codegen(self.thin_graph(factors, weights=True), class_name="ThinNet")
        return gm.eval()

    # --- batch norm --------------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, factors: Mapping[str, float], batches: Iterable[torch.Tensor]) -> int:
        """Recompute the batch-norm statistics of ``factors`` as the average over ``batches``; returns
        how many batches were used. The other channels' statistics are left as they were."""
        self.set_widths(factors)
        bns = [m for m in self.slim.values() if m.kind == "batch_norm"]
        was = self.training
        self.eval()
        for m in bns:
            m.calibrating, m.calibrated = True, 0
        n = 0
        try:
            for x in batches:
                self.net(x)
                n += 1
        finally:
            for m in bns:
                m.calibrating = False
            self.train(was)
        return n


def sandwich(net: SlimmableNet, widths: Sequence[float], m: int, rng: random.Random) -> list[Widths]:
    """The model batch of one step (the sandwich rule): the largest and the smallest network always,
    plus ``m - 2`` random configurations."""
    if m < 2:
        raise ValueError(f"a model batch holds the largest and the smallest network: m must be >= 2, got {m}")
    batch = [net.uniform(max(widths)), net.uniform(min(widths))]
    return batch + [net.random(widths, rng) for _ in range(m - 2)]


# --- a classifier bank for domain adaptation ------------------------------------------------------
HEADS = ("cs", "ct", "ca")


class SlimClassifier(nn.Module):
    """A slimmable trunk with classifier heads over its ``(N, C)`` features: SlimDA's model bank.

    The heads are SymNet's source and target classifiers ``cs`` and ``ct`` and SlimDA's third
    classifier ``ca``; each reads the kept features of the trunk at the current widths.
    ``model(x)`` returns ``{task: logits of the deployed head}`` at the current widths (the one-task
    form every loop and evaluation reads); :meth:`derive` emits one width's compact classifier.
    """

    def __init__(self, trunk: SlimmableNet, num_classes: int, task: str = "digit", deploy: str = "ca") -> None:
        super().__init__()
        shape = trunk.graph[trunk.graph.outputs[0]].shape
        if len(shape) != 2:
            raise ValueError(f"the trunk's output {trunk.graph.outputs[0]!r} has shape {list(shape)}; the classifier "
                             "heads need (N, C) features: end the backbone with a global pool and a flatten, or pass "
                             "trunk_output=<a pooled operator>")
        if deploy not in HEADS:
            raise ValueError(f"deploy must be one of {HEADS}, got {deploy!r}")
        self.trunk = trunk
        self.task_names = [task]
        self.num_classes = num_classes
        self.deploy = deploy
        self.heads = nn.ModuleDict({h: nn.Linear(shape[1], num_classes) for h in HEADS})

    def features(self, x: torch.Tensor, factors: Mapping[str, float] | None = None) -> torch.Tensor:
        return self.trunk(x, factors)

    def logits(self, features: torch.Tensor, head: str, detach_weights: bool = False) -> torch.Tensor:
        """The head's logits on features of the current widths (``detach_weights``: no gradient to the head)."""
        lin = self.heads[head]
        w, b = _pick(lin.weight, 1, self.trunk.out_index), lin.bias
        if detach_weights:
            w, b = w.detach(), b.detach()
        return F.linear(features, w, b)

    def forward(self, x: torch.Tensor, factors: Mapping[str, float] | None = None,
                head: str | None = None) -> dict[str, torch.Tensor]:
        return {self.task_names[0]: self.logits(self.features(x, factors), head or self.deploy)}

    def flops(self, factors: Mapping[str, float]) -> int:
        """FLOPs of the compact classifier at ``factors``: the thin trunk's (the compiler's count) and one head's."""
        keep = self.trunk.plan.kept_channels(factors)[self.trunk.graph.outputs[0]]
        return self.trunk.flops(factors) + 2 * len(keep) * self.num_classes  # type: ignore[arg-type]

    def derive(self, factors: Mapping[str, float], head: str | None = None) -> CompactClassifier:
        """The plain compact classifier at ``factors`` (calibrate the widths' batch norm first)."""
        self.trunk.set_widths(factors)
        lin = self.heads[head or self.deploy]
        out = nn.Linear(len(self.trunk.out_index), self.num_classes)  # type: ignore[arg-type]
        with torch.no_grad():
            out.weight.copy_(_pick(lin.weight, 1, self.trunk.out_index))
            out.bias.copy_(lin.bias)
        return CompactClassifier(self.trunk.thin(factors), out, self.task_names[0]).eval()


class CompactClassifier(nn.Module):
    """One width of the bank as a plain network: the thin trunk (an fx GraphModule) and one linear head."""

    def __init__(self, trunk: fx.GraphModule, head: nn.Linear, task: str) -> None:
        super().__init__()
        self.trunk, self.head, self.task_names = trunk, head, [task]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def build_slim_classifier(backbone: Any, num_classes: int, *, input_shape: Any = None, trunk_output: str | None = None,
                          task: str = "digit", deploy: str = "ca", **compile_options: Any) -> SlimClassifier:
    """Compile ``backbone`` (anything :func:`automtl.compile` takes, or a Graph) into a :class:`SlimClassifier`.

    ``trunk_output`` names the operator (or submodule) the heads read; a feature map there is
    average-pooled and flattened to ``(N, C)`` features first."""
    from ..api import compile as compile_backbone
    from ..compiler.passes import cut
    from .supermodel import _resolve

    graph = backbone if isinstance(backbone, Graph) else compile_backbone(backbone, input_shape, **compile_options)
    if trunk_output is not None:
        graph = cut(graph.copy(), _resolve(graph, trunk_output))
    if len(graph.outputs) == 1 and isinstance(graph[graph.outputs[0]].shape, tuple) and \
            len(graph[graph.outputs[0]].shape) == 4:
        graph = _global_pool(graph)
    return SlimClassifier(SlimmableNet(graph), num_classes, task, deploy)


def _global_pool(graph: Graph) -> Graph:
    """A copy of ``graph`` whose ``(N, C, H, W)`` output is average-pooled and flattened to ``(N, C)`` features."""
    from ..compiler.passes import infer

    out = graph.copy()
    last = out.outputs[0]
    out.add(Node("features_pool", "adaptive_avg_pool2d", [last], {"output_size": (1, 1)}))
    out.add(Node("features", "flatten", ["features_pool"], {"start_dim": 1, "end_dim": -1}))
    out.outputs = ["features"]
    return infer(out)
