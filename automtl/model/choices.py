"""The registry of choice kinds (DESIGN §3): what a choice node offers, how it runs, costs and derives.

A choice node holds named :class:`Option` s. An option names the weight *bank* it uses
(``"shared"``: one bank for all tasks; ``"task"``: each task its own; ``"group:<g>"`` /
``"block:<b>"``: a bank shared by whoever picks it; ``None``: no weights, a skip or a zero block)
and, where it applies, a channel ``width``. A :class:`ChoiceKind` owns, for its nodes:

* :meth:`~ChoiceKind.offer`: the options for one operator (or ``None``: the operator stays plain);
* :meth:`~ChoiceKind.module`: the module that executes mixed gates ``(T, K)`` of its options;
* :meth:`~ChoiceKind.cost`: exact params and FLOPs of one task's copy of each option;
* :meth:`~ChoiceKind.derive`: the plain operator (kind, attributes, weights) a picked option
  becomes, or ``None`` for an identity.

Option *positions* (the column of the gates each option reads) are known only to the kind's
entry: everyone else reads options by name through the :class:`~automtl.compiler.mtl.Choice`.
``branches`` (shared / specific / skip, AutoMTL's) is the built-in kind; a new kind is one
:func:`register_choice_kind` call, like an operator kind in ``compiler/ops/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..compiler.ir import Node, Shape
from ..compiler.mtl import Choice, MTLOptions, Option, skip_form
from ..compiler.ops import get as get_op
from ..compiler.registry import Registry


@dataclass
class Derived:
    """The plain operator a picked option becomes: its kind, attributes and weights."""

    kind: str
    attrs: dict[str, Any]
    tensors: dict[str, torch.Tensor]


class ChoiceKind:
    """One kind of choice. Subclass it, set :attr:`name`, and :func:`register_choice_kind` an instance."""

    name: str = ""

    def offer(self, node: Node, in_shape: Shape, options: MTLOptions) -> tuple[Option, ...] | None:
        """The options of ``node`` (its first input of shape ``in_shape``), or None to leave it plain."""
        raise NotImplementedError

    def held_params(self, node: Node, in_shape: Shape, options: tuple[Option, ...]) -> tuple[int, int]:
        """The params the supermodel holds for ``node``: (held once, held once per task), from :meth:`cost`.

        Each named bank is held once however many options read it; every ``task`` option is its own
        per-task copy; an option without a bank holds nothing."""
        once = per_task = 0
        seen: set[str] = set()
        for o in options:
            if o.bank is None or o.bank in seen:
                continue
            params, _ = self.cost(node, in_shape, o)
            if o.bank == "task":
                per_task += params
            else:
                seen.add(o.bank)
                once += params
        return once, per_task

    def module(self, node: Node, in_shape: Shape) -> nn.Module:
        """The module computing ``node`` for every task from ``(x, gates, shared_input)``."""
        raise NotImplementedError

    def cost(self, node: Node, in_shape: Shape, option: Option) -> tuple[int, int]:
        """Params and FLOPs of one copy of ``option`` (a shared bank counts once however many use it)."""
        raise NotImplementedError

    def is_identity(self, choice: Choice, option: Option) -> bool:
        """Whether the option passes its input through unchanged (derive adds no operator)."""
        return False

    def derive(self, module: nn.Module, node: Node, option: Option, task: int) -> Derived | None:
        """The plain operator ``option`` becomes for ``task``; None for an identity.

        ``node.attrs["bank_users"]`` lists the tasks whose picks read the option's bank (one derived
        module serves them all)."""
        raise NotImplementedError


CHOICE_KINDS: Registry[ChoiceKind] = Registry("choice kind")


def register_choice_kind(kind: ChoiceKind) -> ChoiceKind:
    """Add a choice kind to the one registry (names are unique)."""
    if not kind.name:
        raise ValueError(f"{type(kind).__name__} has no name")
    return CHOICE_KINDS.add(kind.name, kind)


def get_choice_kind(name: str) -> ChoiceKind:
    return CHOICE_KINDS.find(name)


# --- the built-in kind: AutoMTL's shared / specific / skip ---------------------------------------
SHARED = Option("shared", "shared")
SPECIFIC = Option("specific", "task")
SKIP = Option("skip", None)  # an identity skip: no weights
SKIP_PROJECTION = Option("skip", "task")  # a projection skip: each task its own 1x1 map


class Branches(ChoiceKind):
    """AutoMTL's three branches for a convolution or linear layer: ``shared``, ``specific``, ``skip``.

    The skip is an identity where input and output shapes match, else a per-task 1x1 projection
    (stride as the operator); it is offered only where it folds exactly into the operator's kernel
    (:func:`~automtl.compiler.mtl.skip_form`). Executed by :class:`~automtl.model.mixing.MixedOp`,
    which mixes weights, not outputs.
    """

    name = "branches"

    def offer(self, node: Node, in_shape: Shape, options: MTLOptions) -> tuple[Option, ...] | None:
        if node.kind not in options.searchable:
            return None
        form = skip_form(node, in_shape, node.shape) if options.skip else None
        node.attrs["skip"] = form
        if form is None:
            return (SHARED, SPECIFIC)
        return (SHARED, SPECIFIC, SKIP if form == "identity" else SKIP_PROJECTION)

    def module(self, node: Node, in_shape: Shape) -> nn.Module:
        from .mixing import MixedOp

        return MixedOp(node, in_shape)

    def cost(self, node: Node, in_shape: Shape, option: Option) -> tuple[int, int]:
        base = get_op(node.attrs["base_kind"])
        params = base.params(node, [in_shape])
        flops = base.flops(node, [in_shape], node.shape)
        if option.name != "skip":
            return params, flops
        if node.attrs["skip"] == "identity":
            return 0, 0
        one = Node(node.name, node.attrs["base_kind"], node.inputs, {**node.attrs, "bias": False})
        if node.attrs["base_kind"] == "conv2d":
            one.attrs.update(kernel_size=(1, 1), padding=(0, 0), dilation=(1, 1))
        return _projection_params(node), base.flops(one, [in_shape], node.shape)

    def is_identity(self, choice: Choice, option: Option) -> bool:
        return option.name == "skip" and choice.skip == "identity"

    def derive(self, module: nn.Module, node: Node, option: Option, task: int) -> Derived | None:
        m: Any = module
        a = node.attrs
        base = {k: v for k, v in a.items() if k not in MTL_ATTRS}
        kind = a["base_kind"]
        if option.name == "skip":
            if a["skip"] == "identity":
                return None
            w = m.projection[task if m.projection.shape[0] > 1 else 0].detach()  # one copy until filled
            if kind == "conv2d":
                base.update(kernel_size=(1, 1), padding=(0, 0), dilation=(1, 1), bias=False)
                w = w.reshape(*w.shape, 1, 1)
            else:
                base.update(bias=False)
            return Derived(kind, base, {"weight": w.clone()})
        if option.name == "specific" and bool(m.filled):
            tensors = {"weight": m.specific_weight[task].detach().clone()}
            if m.bias is not None:
                tensors["bias"] = m.specific_bias[task].detach().clone()
        else:  # shared, or specific before warm-up ended (it still reads the shared weight)
            tensors = {"weight": m.weight.detach().clone()}
            if m.bias is not None:
                tensors["bias"] = m.bias.detach().clone()
        return Derived(kind, base, tensors)


# attributes the rewrite adds to a choice node; derive drops them
MTL_ATTRS = {"base_kind", "index", "tasks", "skip", "branches", "options", "choice_kind", "shared_input",
             "param_copies", "held_params", "bank_users", "gate"}


def _projection_params(node: Node) -> int:
    a = node.attrs
    if a["base_kind"] == "linear":
        return a["out_features"] * a["in_features"]
    return a["out_channels"] * a["in_channels"] // a["groups"]


register_choice_kind(Branches())


def choose(options: MTLOptions):  # noqa: ANN201 - the rewrite's callback, typed in compiler.mtl
    """The rewrite's callback: which choice kind (and options) an operator gets under ``options``."""
    kind = get_choice_kind(options.choice)

    def offer(node: Node, in_shape: Shape) -> tuple[str, tuple[Option, ...]] | None:
        offered = kind.offer(node, in_shape, options)
        if offered is None:
            return None
        probe = Node(node.name, node.kind, list(node.inputs), {**node.attrs, "base_kind": node.kind}, shape=node.shape)
        node.attrs["held_params"] = kind.held_params(probe, in_shape, offered)  # the IR's exact count
        return kind.name, offered

    return offer
