"""torch.fx frontend: any traceable ``nn.Module`` -> IR :class:`Graph`.

The module is traced with static shapes (:mod:`.fx_trace`), then each fx node becomes one operator:

- modules, functions and methods the registry knows become typed operators carrying their weights
  (:mod:`.fx_convert`, :mod:`.fx_calls`); functional norms, convolutions and linear maps absorb the
  parameters and buffers they read, so their parameters are counted like the module forms';
- any other parameter or buffer the code reads (a layer scale ``x * self.gamma.view(1, -1, 1, 1)``)
  becomes a ``parameter`` operator (its views folded in), so every parameter is counted once;
- a module instance called at several places gets one operator per call (``relu``, ``relu_1``); a
  module with weights or buffers called so becomes ``tied_module`` operators that all run one copy
  of it (one weight bank, its parameters counted at the first call; not searchable, always shared);
- anything else stays an *opaque* operator that calls the original code (always shared, listed in
  one warning), so the compiled model still computes exactly what the source computes.
"""

from __future__ import annotations

import copy
import operator
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import CompileError, Source
from ..ir import Graph, Node
from ..ops import Ref
from ..passes import prune, run_all
from .fx_calls import convert_call
from .fx_convert import WEIGHTED, Typed, Unsupported, convert_module, fetch
from .fx_trace import static_shape, static_value, trace

__all__ = ["OpaqueOperatorWarning", "from_module", "trace"]

# shape-only calls on a parameter: folded into its ``parameter`` operator's view
_VIEW_METHODS = {"view", "reshape", "unsqueeze", "squeeze", "flatten", "contiguous"}
_VIEW_FUNCTIONS = {torch.reshape, torch.unsqueeze, torch.squeeze, torch.flatten}


class OpaqueOperatorWarning(UserWarning):
    """Some calls were not recognised and are kept as opaque, always-shared operators."""


class _Constant(nn.Module):
    """Holds a non-tensor value an fx ``get_attr`` read, so opaque code can use it."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value

    def forward(self) -> Any:
        return self.value


def _template(value: Any, refs: dict[fx.Node, int], order: list[fx.Node]) -> Any:
    """Args with every fx Node replaced by a Ref to the opaque node's i-th input."""
    if isinstance(value, fx.Node):
        if value not in refs:
            refs[value] = len(order)
            order.append(value)
        return Ref(refs[value])
    if isinstance(value, (list, tuple)):
        return type(value)(_template(v, refs, order) for v in value)
    if isinstance(value, dict):
        return {k: _template(v, refs, order) for k, v in value.items()}
    return value


TYPED = "automtl_typed"  # node.meta key: the call's typed operator, converted while tracing


def _typed(root: nn.Module, node: fx.Node) -> Typed | None:
    """The tracer's view of a call: its typed operator, kept for the conversion when it cannot change."""
    try:
        if node.op == "call_module":
            typed = convert_module(root.get_submodule(str(node.target)), node)
        else:
            typed = convert_call(root, node)  # type: ignore[arg-type]
    except (Unsupported, KeyError, TypeError, IndexError, ValueError, AttributeError):
        return None
    if node.target not in WEIGHTED:  # those check who else reads their weights: only known after tracing
        node.meta[TYPED] = typed
    return typed


def _shapes(module_name: str, input_shape: Any) -> list[tuple[int, ...]]:
    if input_shape is None:
        raise CompileError(f"compiling {module_name} needs input_shape=(C, H, W) (or one per input)")
    shapes = [input_shape] if isinstance(input_shape[0], int) else list(input_shape)
    return [tuple(int(d) for d in (s if len(s) == 4 or len(s) == 2 else (1, *s))) for s in shapes]


def from_module(
    module: nn.Module,
    input_shape: Any = None,
    leaf_modules: Iterable[type[nn.Module] | str] = (),
    wrap_functions: Iterable[Callable[..., Any]] = (),
) -> Graph:
    """Trace ``module`` and convert its fx graph into the IR, with weights, shapes and costs.

    ``input_shape`` is ``(C, H, W)`` (batch 1) or ``(N, C, H, W)``, or a list with one per input.
    """
    name = type(module).__name__
    shapes = _shapes(name, input_shape)
    gm = trace(module, tuple(leaf_modules), tuple(wrap_functions), shapes, _typed)
    n_inputs = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
    if len(shapes) != n_inputs:
        raise CompileError(f"{name}.forward takes {n_inputs} inputs but {len(shapes)} input shapes were given")
    builder = _Builder(gm, name, shapes)
    for node in gm.graph.nodes:
        builder.add(node)
    graph = builder.graph
    prune(graph)
    kept = [n for n in builder.opaque if n in graph]
    if kept:
        warnings.warn(
            f"{name}: {len(kept)} operator(s) are not in the registry and stay opaque (always shared): "
            + ", ".join(kept),
            OpaqueOperatorWarning,
            stacklevel=2,
        )
    return run_all(graph)


class _Builder:
    """Adds one IR operator per fx node, naming each uniquely and tracking parameters and tied modules."""

    def __init__(self, gm: fx.GraphModule, name: str, shapes: list[tuple[int, ...]]) -> None:
        self.gm = gm
        self.shapes = shapes
        self.graph = Graph(name, file=name)
        self.ir_name: dict[fx.Node, str] = {}
        self.opaque: list[str] = []
        self.fx_names = {n.name for n in gm.graph.nodes}
        calls = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
        # modules with weights or buffers called more than once: one weight bank for all their calls, as
        # `tied_module` operators when every call passes tensors only (else all stay opaque calls of it)
        repeated = {t for t, k in calls.items() if k > 1 and _has_state(gm.get_submodule(t))}
        self.tied = {t: all(_plain_call(n) for n in gm.graph.nodes if n.op == "call_module" and n.target == t)
                     for t in repeated}
        self.first_call: dict[str, str] = {}
        self.copies: dict[str, nn.Module] = {}

    def unique(self, preferred: str, node: fx.Node) -> str:
        """``preferred`` when free, else ``preferred_1``, ``preferred_2``... (never another fx node's name)."""
        def free(n: str) -> bool:
            return n not in self.graph and (n not in self.fx_names or n == node.name)

        if free(preferred):
            return preferred
        i = 1
        while not free(f"{preferred}_{i}"):
            i += 1
        return f"{preferred}_{i}"

    def add(self, node: fx.Node) -> None:
        src = Source(file=self.graph.name, layer=str(node.target) if node.op == "call_module" else node.name)
        if node.op == "placeholder":
            shape = self.shapes[len(self.graph.inputs)]
            self.ir_name[node] = self.graph.add(Node(node.name, "input", attrs={"shape": shape}, source=src)).name
            return
        if node.op == "output":
            outs = node.args[0]
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            if not all(isinstance(o, fx.Node) for o in outs):
                raise CompileError(f"{self.graph.name}.forward must return a tensor or a tuple of tensors", src)
            self.graph.outputs = [self.ir_name[o] for o in outs]
            return
        if self._fold_view(node):
            return
        ir = self._convert(node, src)
        if ir.kind == "opaque":
            refs: dict[fx.Node, int] = {}
            order: list[fx.Node] = []
            ir.attrs["args"] = _template(tuple(node.args), refs, order)
            ir.attrs["kwargs"] = _template(dict(node.kwargs), refs, order)
            ir.inputs = [self.ir_name[n] for n in order]
            self.opaque.append(ir.name)
        else:
            ir.inputs = [self.ir_name[n] for n in ir.inputs]  # type: ignore[index]
        self.ir_name[node] = self.graph.add(ir).name

    def _convert(self, node: fx.Node, src: Source) -> Node:
        """One fx node -> one IR node (inputs still as fx nodes; opaque when unrecognised)."""
        if node.op == "get_attr":
            return self._parameter(node, src)
        mod = self.gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        if mod is not None:
            src = Source(file=src.file, layer=str(node.target), layer_type=type(mod).__name__)
            name = self.unique(str(node.target), node)
            if str(node.target) in self.tied:
                return self._tied(node, mod, name, src)
        else:
            name = self.unique(self._preferred(node), node)
            if name != node.name:
                src = Source(file=src.file, layer=name, layer_type=_module_type(node))
        try:
            if TYPED in node.meta:  # converted while tracing
                kind, attrs, inputs, tensors = node.meta[TYPED]
            elif mod is not None:
                kind, attrs, inputs, tensors = convert_module(mod, node)
            elif node.op in ("call_function", "call_method"):
                kind, attrs, inputs, tensors = convert_call(self.gm, node)
            else:
                raise Unsupported
            return Node(name, kind, inputs=list(inputs), attrs=attrs, source=src, tensors=tensors)
        except (Unsupported, KeyError, TypeError, IndexError, ValueError):
            if mod is not None:
                return Node(name, "opaque", attrs={"target": mod}, source=src)
            if node.op == "call_method":
                return Node(name, "opaque", attrs={"method": node.target}, source=src)
            return Node(name, "opaque", attrs={"target": node.target}, source=src)

    def _preferred(self, node: fx.Node) -> str:
        """A functional norm/conv/linear is named after the module whose forward calls it (``layer1.0.bn1``)."""
        stack = node.meta.get("nn_module_stack") or {}
        if node.op == "call_function" and node.target in WEIGHTED and stack:
            return str(next(reversed(stack)))
        return node.name

    def _parameter(self, node: fx.Node, src: Source) -> Node:
        """A parameter or buffer read directly: a ``parameter`` operator holding it (counted once)."""
        value = fetch(self.gm, str(node.target))
        name = self.unique(str(node.target), node)
        if not isinstance(value, torch.Tensor):
            return Node(name, "opaque", attrs={"target": _Constant(value)}, source=src)
        learnable = isinstance(value, nn.Parameter)  # counted as the source counts it, frozen or not
        attrs = {"shape": tuple(value.shape), "view": tuple(value.shape), "learnable": learnable,
                 "dtype": value.dtype}
        src = Source(file=src.file, layer=str(node.target), layer_type="Parameter" if learnable else "buffer")
        return Node(name, "parameter", attrs=attrs, source=src, tensors={"value": value.detach()})

    def _fold_view(self, node: fx.Node) -> bool:
        """``self.gamma.view(1, -1, 1, 1)``, ``gamma[:, None, None]``: one ``parameter`` operator, viewed."""
        if node.op == "call_method":
            ok = node.target in _VIEW_METHODS
        elif node.op == "call_function":
            ok = node.target in _VIEW_FUNCTIONS or (node.target is operator.getitem and _is_unit_index(node))
        else:
            return False
        src = node.args[0] if node.args else None
        if not ok or not isinstance(src, fx.Node) or src not in self.ir_name or len(src.users) != 1:
            return False
        ir = self.graph[self.ir_name[src]]
        shape = static_shape(node)
        if ir.kind != "parameter" or shape is None or _numel(shape) != _numel(ir.attrs["shape"]):
            return False
        ir.attrs["view"] = tuple(shape)
        self.ir_name[node] = ir.name
        return True

    def _tied(self, node: fx.Node, mod: nn.Module, name: str, src: Source) -> Node:
        """One call of a module called at several places: all calls run the one module."""
        target = str(node.target)
        if not self.tied[target]:  # still one weight bank (the same module object), but not counted
            return Node(name, "opaque", attrs={"target": mod}, source=src)
        if target not in self.first_call:  # the compiled model gets its own copy, as typed operators do
            self.first_call[target], self.copies[target] = name, copy.deepcopy(mod)
        tie = self.first_call[target]
        attrs = {"target": self.copies[target], "tie": None if tie == name else tie}
        try:  # what kind of operator each call is, for its FLOPs
            attrs["base_kind"], attrs["base_attrs"] = convert_module(mod, node)[:2]
        except (Unsupported, KeyError, TypeError, ValueError):
            pass
        return Node(name, "tied_module", inputs=list(node.args), attrs=attrs, source=src)


def _plain_call(node: fx.Node) -> bool:
    """A module call on tensors only, with a known output shape."""
    return not node.kwargs and all(isinstance(a, fx.Node) for a in node.args) and static_value(node) is not None


def _has_state(mod: nn.Module) -> bool:
    return any(True for _ in mod.parameters()) or any(True for _ in mod.buffers())


def _module_type(node: fx.Node) -> str | None:
    """The class name of the innermost module whose forward made this call."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    inner = stack[next(reversed(stack))]
    cls = inner[-1] if isinstance(inner, tuple) else inner
    return cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1]


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def _is_unit_index(node: fx.Node) -> bool:
    """``t[:, None, None]`` / ``t[..., None]``: only full slices, Ellipsis and None."""
    index = node.args[1]
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or i == slice(None) for i in items)
