"""Build-time checks of a supermodel: what would otherwise fail, or be silently wrong, at its first forward.

Typed operators are exact on task-stacked batches by construction. Two things are not known in
advance and are checked here, so that ``build`` names the operator and the fix instead of leaving
a torch error (or wrong numbers) for the first forward:

- the heads: each runs once on a dummy trunk output and must return one tensor;
- operators the compiler could not type (``opaque`` calls of the user's code, ``tied_module``
  calls of a module used at several places). One that holds parameters works, but its weights are
  one bank for every task (never task-specific) and, when opaque, are not in the params count: a
  :class:`OpaqueWeightsWarning` names it. One that reads a task-stacked value (``T*N`` samples)
  runs once, in eval mode and without gradients, on a small stacked batch: it must not fail, and
  it must treat each task's slice of the batch as it treats that slice alone (code that hard-codes
  the batch size or mixes samples would compute something else than the derived model does).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import nn

from ..compiler.errors import CompileError, Source
from ..compiler.ir import Graph

if TYPE_CHECKING:
    from .supermodel import SuperModel

UNTYPED = ("opaque", "tied_module")
TRIAL_BATCH = 2  # samples per task in the trial run


class OpaqueWeightsWarning(UserWarning):
    """An operator the compiler could not type holds parameters: every task shares them."""


def check_heads(model: SuperModel) -> None:
    """Run every head once on a dummy trunk output and name the one that does not fit."""
    shape = model.graph[model.graph.outputs[0]].shape
    dummy = torch.zeros((2, *shape[1:]))
    for name in model.task_names:
        head = model.heads[name]
        with _eval(head), torch.no_grad():
            try:
                out = head(dummy)
            except Exception as exc:  # noqa: BLE001 - any failure means the head does not fit
                raise ValueError(
                    f"the head of task {name!r} does not accept the trunk output of shape {list(shape)} "
                    f"(batch shown as 2): {type(exc).__name__}: {exc}"
                ) from None
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"the head of task {name!r} returns a {type(out).__name__}, not a tensor: a head gives "
                             "one output per task (wrap it to return the tensor the task's loss reads)")


def check_untyped(model: SuperModel, trunk: fx.GraphModule | None = None, graph: Graph | None = None) -> None:
    """Warn about untyped operators holding weights; trial-run those that read task-stacked values.

    By default the trunk for one input shared by all tasks; ``trunk``/``graph`` name another trunk
    emitted from the same backbone (the multi-domain one, where every value is stacked: it is
    checked when first made, and warns nothing again).
    """
    if trunk is None or graph is None:
        trunk, graph = model.trunk, model.mtl_graph
        for node in graph:
            if node.kind in UNTYPED:
                _warn_weights(node)
    untyped = [n for n in graph if n.kind in UNTYPED]
    stacked = getattr(graph, "stacked", {})
    risky = {n.name for n in untyped if any(stacked.get(i, False) for i in n.inputs)}
    if risky and len(model.task_names) > 1:
        _trial(model, trunk, graph, risky)


def _what(node: Any) -> str:
    """``'s' (opaque call of Scale)``: how an operator is named in these messages."""
    target = node.attrs.get("target")
    if node.attrs.get("method"):
        called = f"Tensor.{node.attrs['method']}"
    elif isinstance(target, nn.Module):
        called = type(target).__name__
    else:
        called = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    how = "module called at several places" if node.kind == "tied_module" else "opaque call"
    return f"operator {node.name!r} ({how} of {called})"


def _warn_weights(node: Any) -> None:
    target = node.attrs.get("target")
    if not isinstance(target, nn.Module) or node.attrs.get("tie"):
        return
    count = sum(p.numel() for p in target.parameters())
    if not count:
        return
    if node.kind == "tied_module":
        message = (f"{_what(node)} holds {count:,} parameters: every call and every task uses this one bank, "
                   "so no task can specialise it; give each call its own module instance to make them choices")
    else:
        message = (f"{_what(node)} holds {count:,} parameters that no task can specialise and the params count "
                   "leaves out; trace it into typed operators (do not list its class in leaf_modules=, or write "
                   "it with torch.nn layers or functional conv/norm/linear calls)")
    warnings.warn(f"{_where(node)}{message}", OpaqueWeightsWarning, stacklevel=4)


def _where(node: Any) -> str:
    src = node.source
    return f"{src.file}: " if isinstance(src, Source) and src.file else ""


def _fail(node: Any, what: str) -> CompileError:
    return CompileError(
        f"{_what(node)} {what}; the supermodel runs it once on every task's samples stacked along the batch",
        Source(file=node.source.file) if isinstance(node.source, Source) and node.source.file else None,
        hint="make it treat each sample alone (read the batch size from its input: x.view(x.size(0), ...)), keep "
             "the module holding this code as one operator with leaf_modules=[ThatModule] or the function with "
             "wrap_functions=[fn] if that one handles any batch, or end the trunk before it (trunk_output=)",
    )


class _Trial(fx.Interpreter):
    """Runs the trunk; each risky operator also runs on each task's slice, and the two must agree."""

    def __init__(self, trunk: fx.GraphModule, graph: Graph, tasks: int, risky: set[str]) -> None:
        super().__init__(trunk)
        self.T = tasks
        names = trunk.meta["nodes"]
        self.ir = {fx_name: graph[ir_name] for ir_name, fx_name in names.items()}
        self.risky = {names[r] for r in risky}
        self.stacked = {fx_name: graph.stacked.get(ir_name, False) for ir_name, fx_name in names.items()}

    def run_node(self, n: fx.Node) -> Any:
        if n.name not in self.risky:
            return super().run_node(n)
        node = self.ir[n.name]
        try:
            full = super().run_node(n)
        except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
            raise _fail(node, f"fails on {self.T * TRIAL_BATCH} samples ({type(exc).__name__}: {exc})") from None
        if not isinstance(full, torch.Tensor) or not self.stacked.get(n.name):
            return full
        parts = []
        for t in range(self.T):
            def value(a: fx.Node, t: int = t) -> Any:
                v = self.env[a]
                return v.chunk(self.T)[t] if self.stacked.get(a.name) and isinstance(v, torch.Tensor) else v

            args, kwargs = fx.node.map_arg(n.args, value), fx.node.map_arg(n.kwargs, value)
            try:
                parts.append(getattr(self, n.op)(n.target, args, kwargs))
            except Exception as exc:  # noqa: BLE001
                raise _fail(node, f"fails on one task's {TRIAL_BATCH} samples ({type(exc).__name__}: {exc})") from None
        alone = torch.cat(parts) if all(isinstance(p, torch.Tensor) for p in parts) else None
        if alone is None or alone.shape != full.shape or not torch.allclose(alone, full, rtol=1e-4, atol=1e-5):
            raise _fail(node, "gives other values on the stacked batch than on each task's samples alone "
                              "(it mixes samples or depends on the batch size)")
        return full


def _trial(model: SuperModel, trunk: fx.GraphModule, graph: Graph, risky: set[str]) -> None:
    model.materialize()  # the random draws the first forward would make, in the same order
    T = len(model.task_names)
    x_name = graph.inputs[0]
    batch = TRIAL_BATCH * (T if graph.stacked.get(x_name) else 1)  # one batch per task when inputs are
    with torch.random.fork_rng(devices=[]), _eval(model), torch.no_grad():
        torch.manual_seed(0)
        x = torch.randn(batch, *graph[x_name].shape[1:])
        gates = model.policy.gates("soft", 1.0)  # every task a different mixture, so the slices differ
        _Trial(trunk, graph, T, risky).run(x, gates)


@contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)
