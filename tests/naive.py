"""The slow, obvious reference for the supermodel: mix OUTPUTS, one task at a time.

The fast supermodel (:mod:`automtl.model.mixing`) folds a task's shared / specific / skip branches into
one mixed weight and runs all tasks at once on task-stacked values. This reference does neither:
for every task it walks the multi-task IR graph node by node on that task's own value and runs
every branch as its own operator call, then sums the branch outputs weighted by the gates. It
reads the model's parameters (so gradients can be compared) but none of its execution code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from automtl.compiler import ops
from automtl.compiler.codegen import attr_name
from automtl.compiler.mtl import BRANCHES
from automtl.model.architecture import Architecture
from automtl.model.mixing import MixedOp, TaskBatchNorm


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(i) for i in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def submodule_names(model: Any) -> dict[str, str]:
    """IR node name -> trunk attribute, named the way codegen names them (in graph order)."""
    taken: set[str] = set()
    names: dict[str, str] = {}
    for node in model.mtl_graph:
        kind = ops.get(node.kind)
        if node.kind == "input":
            attr_name(node.name, taken)  # placeholders take names too
        elif node.kind == "opaque":
            if isinstance(node.attrs.get("target"), nn.Module):
                names[node.name] = attr_name(node.name, taken)
        elif kind.module is not None:
            names[node.name] = attr_name(node.name, taken)
    return names


def fixed_indices(model: Any, architecture: Architecture) -> torch.Tensor:
    """``(T, V)`` branch index per task per choice node, read straight from the architecture."""
    idx = torch.zeros(len(model.task_names), max(len(model.choices), 1), dtype=torch.long)
    for c in model.choices:
        for t, task in enumerate(model.task_names):
            idx[t, c.index] = BRANCHES.index(architecture.choices[c.node][task])
    return idx


def _conv(x: torch.Tensor, node: Any, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    a = node.attrs
    return F.conv2d(x, w, b, _pair(a["stride"]), _pair(a["padding"]), _pair(a["dilation"]), a["groups"])


def mixed_op(x: torch.Tensor, node: Any, m: MixedOp, g: torch.Tensor, t: int) -> torch.Tensor:
    """``g_sh*op(x, W) + g_sp*op(x, W_sp[t]) + g_sk*skip(x)``, every branch its own call."""
    a = node.attrs
    conv = a["base_kind"] == "conv2d"
    filled = bool(m.filled)
    w_sp = m.specific_weight[t] if filled else m.weight
    b_sp = None if m.bias is None else (m.specific_bias[t] if filled else m.bias)
    if conv:
        y = g[0] * _conv(x, node, m.weight, m.bias) + g[1] * _conv(x, node, w_sp, b_sp)
    else:
        y = g[0] * F.linear(x, m.weight, m.bias) + g[1] * F.linear(x, w_sp, b_sp)
    if m.skip == "identity":
        y = y + g[2] * x
    elif m.skip == "projection":
        p = m.projection[t if m.projection.shape[0] > 1 else 0]
        if conv:
            skip = F.conv2d(x, p.view(*p.shape, 1, 1), None, _pair(a["stride"]), 0, 1, a["groups"])
        else:
            skip = F.linear(x, p)
        y = y + g[2] * skip
    else:
        assert m.skip is None, m.skip
    return y


def task_batch_norm(x: torch.Tensor, bn: TaskBatchNorm, gates: torch.Tensor, t: int) -> torch.Tensor:
    """``sum_b g_b * batch_norm(x, bank_b)``; batch statistics only in training (no buffer updates)."""
    y = None
    for b in bn.branches:
        if bn.gate is None:
            assert len(bn.branches) == 1
            g = 1.0
        else:
            g = gates[t, bn.gate, BRANCHES.index(b)]

        def bank(what: str, b: str = b) -> torch.Tensor | None:
            if b == "shared":
                return getattr(bn, what, None)
            v = getattr(bn, f"{b}_{what}", None)
            return None if v is None else v[t]

        stats = (None, None) if bn.training else (bank("running_mean"), bank("running_var"))
        out = F.batch_norm(x, *stats, bank("weight"), bank("bias"), training=bn.training, momentum=0.0, eps=bn.eps)
        y = g * out if y is None else y + g * out
    assert y is not None
    return y


def naive_forward(
    model: Any,
    x: torch.Tensor | Mapping[str, torch.Tensor],
    mode: str = "soft",
    tau: float = 1.0,
    architecture: Architecture | None = None,
    noise: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """What ``model(x, mode, tau, architecture, noise)`` must return, computed the slow way."""
    fixed = fixed_indices(model, architecture) if architecture is not None else None
    gates = model.policy.gates(mode, tau, fixed, noise)
    names = submodule_names(model)
    graph = model.mtl_graph
    (out_name,) = graph.outputs
    outputs = {}
    for t, task in enumerate(model.task_names):
        values: dict[str, Any] = {}
        for node in graph:
            ins = [values[i] for i in node.inputs]
            if node.kind == "input":
                if node.name == "gates":
                    values[node.name] = gates
                else:
                    values[node.name] = x[task] if isinstance(x, Mapping) else x
            elif node.kind in ("mtl_conv2d", "mtl_linear"):
                m = model.trunk.get_submodule(names[node.name])
                assert isinstance(m, MixedOp)
                values[node.name] = mixed_op(ins[0], node, m, gates[t, node.attrs["index"]], t)
            elif node.kind == "mtl_batch_norm":
                bn = model.trunk.get_submodule(names[node.name])
                assert isinstance(bn, TaskBatchNorm)
                values[node.name] = task_batch_norm(ins[0], bn, gates, t)
            elif node.kind == "tile_tasks":
                values[node.name] = ins[0]  # every task already holds its own copy
            elif node.kind == "opaque":
                a = node.attrs
                args = ops.fill_refs(a["args"], ins)
                kwargs = ops.fill_refs(a.get("kwargs", {}), ins)
                if node.name in names:
                    values[node.name] = model.trunk.get_submodule(names[node.name])(*args, **kwargs)
                elif a.get("method"):
                    values[node.name] = getattr(args[0], a["method"])(*args[1:], **kwargs)
                else:
                    values[node.name] = a["target"](*args, **kwargs)
            elif node.name in names:
                values[node.name] = model.trunk.get_submodule(names[node.name])(*ins)
            else:
                fn, args, kwargs = ops.get(node.kind).emit(node, ins)
                values[node.name] = fn(*args, **kwargs)
        outputs[task] = model.heads[task](values[out_name])
    return outputs
