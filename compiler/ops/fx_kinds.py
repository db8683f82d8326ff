"""Operator kinds the torch.fx frontend maps source code onto: parameters read directly, one module
called at several places, norms over trailing axes, and layout ops (permute, strided slices, expand)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ir import Node, Shape
from .base import OpKind, _channels, _fail, _need_rank, _unary, get, numel, register
from .opaque import _shape_of


# --- kinds the torch.fx frontend maps source code onto: parameters read directly, a module called
# at several places, norms over trailing axes, and layout ops (permute, strided slices, expand) ----
class Constant(nn.Module):
    """A parameter or buffer the source reads directly (a layer scale ``gamma``), seen through ``view``."""

    def __init__(self, shape: Sequence[int], view: Sequence[int], learnable: bool, dtype: Any = None) -> None:
        super().__init__()
        value = torch.zeros(tuple(shape), dtype=dtype)
        if learnable:
            self.value = nn.Parameter(value)
        else:
            self.register_buffer("value", value)
        self.view = tuple(view)

    def forward(self) -> torch.Tensor:
        return self.value if tuple(self.value.shape) == self.view else self.value.reshape(self.view)


register(
    OpKind(
        "parameter", lambda n, s: tuple(n.attrs["view"]), arity=(0, 0),
        params=lambda n, s: numel(n.attrs["shape"]) if n.attrs["learnable"] else 0,
        module=lambda n, s: Constant(n.attrs["shape"], n.attrs["view"], n.attrs["learnable"], n.attrs.get("dtype")),
        weights=("value",),
    )
)


def _infer_module_call(node: Node, shapes: list[Shape]) -> Shape:
    """Run the module on meta tensors: its shape without computing anything or touching its buffers."""
    mod = node.attrs["target"]
    state = {k: v.to("meta") for k, v in (*mod.named_parameters(), *mod.named_buffers())}
    try:
        with torch.no_grad():
            out = torch.func.functional_call(mod, state, tuple(torch.empty(s, device="meta") for s in shapes))
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything
        raise _fail(node, f"calling it on inputs of shape {shapes} failed: {exc}") from exc
    return _shape_of(out)


def _tied_flops(node: Node, shapes: list[Shape], out: Shape) -> int:
    """The FLOPs of the kind the module is (``base_kind`` / ``base_attrs``, when the frontend knows it)."""
    base = node.attrs.get("base_kind")
    return get(base).flops(Node(node.name, base, attrs=node.attrs["base_attrs"]), shapes, out) if base else 0


# One module instance the source calls at several places: every call runs that one module (one weight
# bank, never copied); its parameters count once, at the call without a ``tie`` (the first).
register(
    OpKind(
        "tied_module", _infer_module_call, arity=(1, None),
        params=lambda n, s: 0 if n.attrs.get("tie") else sum(p.numel() for p in n.attrs["target"].parameters()),
        flops=_tied_flops, module=lambda n, s: n.attrs["target"], loads_tensors=True,
    )
)


def _infer_layer_norm(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    ns = tuple(node.attrs["normalized_shape"])
    if len(ns) >= len(x) or tuple(x[len(x) - len(ns) :]) != ns:
        raise _fail(node, f"normalizes the last axes {list(ns)} but its input has shape {list(x)}")
    return x


def _norm_params(n: Node, count: int) -> int:
    return count * (int(n.attrs["affine"]) + int(n.attrs["affine"] and n.attrs.get("bias", True)))


register(
    OpKind(
        "layer_norm", _infer_layer_norm,
        params=lambda n, s: _norm_params(n, numel(tuple(n.attrs["normalized_shape"]))),
        flops=lambda n, s, o: 5 * numel(o),  # statistics, normalisation and affine: about 5 per element
        module=lambda n, s: nn.LayerNorm(tuple(n.attrs["normalized_shape"]), n.attrs["eps"], n.attrs["affine"],
                                         bias=n.attrs.get("bias", True)),
        weights=("weight", "bias"),
    )
)


def _infer_group_norm(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    _need_rank(node, x, (2, 3, 4))
    _channels(node, x, node.attrs["num_channels"], "num_channels")
    if node.attrs["num_channels"] % node.attrs["num_groups"]:
        raise _fail(node, f"{node.attrs['num_channels']} channels do not split into {node.attrs['num_groups']} groups")
    return x


register(
    OpKind(
        "group_norm", _infer_group_norm,
        params=lambda n, s: _norm_params(n, n.attrs["num_channels"]),
        flops=lambda n, s, o: 5 * numel(o),
        module=lambda n, s: nn.GroupNorm(n.attrs["num_groups"], n.attrs["num_channels"], n.attrs["eps"],
                                         n.attrs["affine"]),
        weights=("weight", "bias"),
    )
)


def _infer_permute(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    dims = [d % len(x) for d in node.attrs["dims"]]
    if sorted(dims) != list(range(len(x))) or dims[0] != 0:
        raise _fail(node, f"dims {node.attrs['dims']} are not a permutation of {len(x)} axes keeping the batch first")
    return tuple(x[d] for d in dims)


register(OpKind("permute", _infer_permute, function=torch.permute, kwargs=lambda n: {"dims": tuple(n.attrs["dims"])}))


def slice_axes(x: torch.Tensor, dims: Sequence[int], starts: Sequence[int], ends: Sequence[int],
               steps: Sequence[int]) -> torch.Tensor:
    """``x[..., start:end:step, ...]`` on each of ``dims`` (a strided slice, as ``x[:, :, ::2]``)."""
    index: list[Any] = [slice(None)] * x.dim()
    for d, a, b, s in zip(dims, starts, ends, steps, strict=True):
        index[d] = slice(a, b, s)
    return x[tuple(index)]


def _infer_slice(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    a = node.attrs
    out = list(x)
    for d, start, end, step in zip(a["dims"], a["starts"], a["ends"], a["steps"], strict=True):
        if not 0 < d < len(x) or step <= 0 or start < 0 or end < 0:
            raise _fail(node, f"slice {start}:{end}:{step} of axis {d} is not supported on shape {list(x)}")
        out[d] = len(range(start, min(end, x[d]), step))
        if out[d] == 0:
            raise _fail(node, f"slice {start}:{end}:{step} of axis {d} is empty on shape {list(x)}")
    return tuple(out)


register(
    OpKind(
        "slice", _infer_slice, function=slice_axes,
        kwargs=lambda n: {k: tuple(n.attrs[k]) for k in ("dims", "starts", "ends", "steps")},
    )
)


def expand_keep_batch(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Broadcast every sample to ``shape`` (``-1`` keeps an axis), keeping the batch dimension."""
    return x.expand(x.shape[0], *shape)


def _infer_expand(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    shape = list(node.attrs["shape"])
    if len(shape) != len(x) - 1 or any(d != -1 and s not in (1, d) for s, d in zip(x[1:], shape, strict=True)):
        raise _fail(node, f"cannot expand a sample of shape {list(x[1:])} to {shape}")
    return (x[0], *(s if d == -1 else d for s, d in zip(x[1:], shape, strict=True)))


register(
    OpKind("expand", _infer_expand, function=expand_keep_batch, kwargs=lambda n: {"shape": tuple(n.attrs["shape"])})
)
_unary("mish", F.mish)  # x * tanh(softplus(x)) (CSPDarknet)
