"""Fusing what exporters spell out back into one typed operator.

torch's TorchScript exporter writes ``GroupNorm(G, C)`` as ``Reshape(N, G, -1) ->
InstanceNormalization(scale 1, bias 0) -> Reshape(back) -> Mul(weight) -> Add(bias)``. Read
literally, the weight and bias are constants and the instance norm counts G scales that do nothing;
fused, it is one ``group_norm`` with C weights and biases computing the same numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .common import is_sym

if TYPE_CHECKING:
    from .reader import Reader


def group_norm_from_instance_norm(r: Reader, node: Any, eps: float, scale: np.ndarray, bias: np.ndarray) -> bool:
    """At an InstanceNormalization of an ``(N, G, -1)`` reshape of an ``(N, C, ...)`` tensor that neither
    scales nor shifts: a ``group_norm`` of that tensor (viewed back as ``(N, G, -1)`` for this value)."""
    grouped = r.graph[r.values.get(node.input[0], "")] if node.input[0] in r.values else None
    if grouped is None or grouped.kind != "reshape" or r.uses.get(node.input[0], 0) != 1:
        return False
    full, groups = r.shape(grouped.inputs[0]), r.shape(grouped.name)[1]
    if len(full) < 3 or len(r.shape(grouped.name)) != 3 or full[1] % groups:
        return False
    if not (np.all(scale == 1) and np.all(bias == 0)):
        return False
    c = full[1]
    attrs = {"num_groups": groups, "num_channels": c, "eps": eps, "affine": True}
    gn = r.add("group_norm", attrs, [grouped.inputs[0]], {"weight": np.ones(c, np.float32),
                                                           "bias": np.zeros(c, np.float32)})
    view = r.add("reshape", {"shape": list(r.shape(grouped.name)[1:])}, [gn], hint=r.hint_suffix("grouped"))
    r.fused[view] = gn
    r.affine[gn] = "scale"
    r.out(view)
    return True


def ungrouped(r: Reader, x: str, rest: list[int]) -> str | None:
    """The fused group norm when ``x`` is its grouped view and ``rest`` its own per-sample shape."""
    gn = r.fused.get(x)
    return gn if gn is not None and list(r.shape(gn)[1:]) == rest else None


def fold_affine(r: Reader, node: Any) -> bool:
    """``Mul`` then ``Add`` of a fused group norm's output by per-channel constants: its weight and bias."""
    ins = [i for i in node.input if i]
    if node.op_type not in ("Mul", "Add") or len(ins) != 2:
        return False
    for value, const in ((ins[0], ins[1]), (ins[1], ins[0])):
        if value not in r.values or const not in r.consts or is_sym(r.consts[const]) or r.uses.get(value, 0) != 1:
            continue
        ir = r.graph[r.values[value]]
        stage = r.affine.get(ir.name)
        if stage is None or (node.op_type == "Mul" and stage != "scale"):
            continue
        c, v = ir.attrs["num_channels"], np.asarray(r.consts[const])
        per_channel = (1,) * (len(ir.shape) - v.ndim) + v.shape == (1, c) + (1,) * (len(ir.shape) - 2)
        if not per_channel or v.ndim > len(ir.shape) or v.dtype.kind != "f":
            continue
        vec = torch.from_numpy(v.reshape(c).astype(np.float32))
        if node.op_type == "Mul":
            ir.tensors["weight"].mul_(vec)
            ir.tensors["bias"].mul_(vec)
            r.affine[ir.name] = "shift"
        else:
            ir.tensors["bias"].add_(vec)
            del r.affine[ir.name]
        r.out(ir.name)
        return True
    return False
