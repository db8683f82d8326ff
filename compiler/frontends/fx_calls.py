"""Calls on tensors -> typed IR operators: layout (reshape, permute, slicing, split pieces), then the
dispatch of every function and method call the fx frontend types.

Layout calls read the static shapes the tracer replayed and are typed only when axis 0 stays the batch.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from .fx_convert import (
    BINARY,
    BINARY_METHODS,
    SIGNATURES,
    SPLITS,
    UNARY_FUNCTIONS,
    UNARY_METHODS,
    WEIGHTED,
    Typed,
    Unsupported,
    batch_shape,
    binary,
    bind,
    const,
    dims_of,
    is_batch_size,
    norm_kwargs,
    out_shape,
)
from .fx_trace import is_batched, static_value

# --- layout: reshapes, permutations, slices, pieces of a split -------------------------------------
Plain = tuple[str, dict[str, Any], list[fx.Node]]


def _reshape(node: fx.Node, x: Any, shape: Sequence[Any]) -> Plain:
    """``view``/``reshape`` that keeps axis 0 as the batch: to ``(b, ...)`` or ``(-1, <one sample>)``."""
    in_shape = batch_shape(x)
    if shape and is_batch_size(shape[0], x):
        rest = [int(const(d)) for d in shape[1:]]
        if rest == [-1]:
            return "flatten", {"start_dim": 1, "end_dim": -1}, [x]
        return "reshape", {"shape": rest}, [x]
    rest = [const(d) for d in shape[1:]] if shape else []
    sample = 1
    for d in in_shape[1:]:
        sample *= d
    product = 1
    for d in rest:
        product *= d if isinstance(d, int) else 0
    if shape and shape[0] == -1 and rest and all(isinstance(d, int) and d > 0 for d in rest) and product == sample:
        return "reshape", {"shape": rest}, [x]  # `x.view(-1, c * h * w)`: the -1 is the batch
    raise Unsupported


def _same_batch(node: fx.Node, x: Any) -> Plain:
    """An op that only inserts or removes unit axes after the batch: a reshape to its static output."""
    in_shape, out = batch_shape(x), out_shape(node)
    if out[:1] != in_shape[:1]:
        raise Unsupported
    return "reshape", {"shape": list(out[1:])}, [x]


def _permute(x: Any, dims: Sequence[Any]) -> Plain:
    rank = len(batch_shape(x))
    dims = [int(const(d)) % rank for d in dims]
    if sorted(dims) != list(range(rank)) or dims[0] != 0:
        raise Unsupported
    return "permute", {"dims": dims}, [x]


def _transpose(x: Any, a: Any, b: Any) -> Plain:
    rank = len(batch_shape(x))
    dims = list(range(rank))
    a, b = int(const(a)) % rank, int(const(b)) % rank
    dims[a], dims[b] = dims[b], dims[a]
    return _permute(x, dims)


def _squeeze(node: fx.Node, x: Any, dims: Any, grow: bool) -> Plain:
    rank = len(batch_shape(x)) + (1 if grow else 0)
    if dims is None or any(int(d) % rank == 0 for d in dims_of(dims)):
        raise Unsupported  # `squeeze()` with no axis would drop a batch of one
    return _same_batch(node, x)


def _expand(node: fx.Node, x: Any, sizes: Sequence[Any]) -> Plain:
    in_shape = batch_shape(x)
    if len(sizes) != len(in_shape) or not (sizes[0] == -1 or is_batch_size(sizes[0], x)):
        raise Unsupported
    return "expand", {"shape": list(out_shape(node)[1:])}, [x]


def _piece(node: fx.Node, split: fx.Node, index: int) -> Plain:
    """One piece of a ``split`` / ``chunk`` of a batched tensor: a narrow of the split's input."""
    x = split.args[0]
    in_shape = batch_shape(x)
    pieces = [tuple(p.shape) for p in static_value(split)]
    index %= len(pieces)
    differ = {d for p in pieces for d in range(len(in_shape)) if len(p) != len(in_shape) or p[d] != in_shape[d]}
    if any(len(p) != len(in_shape) for p in pieces) or len(differ) > 1 or 0 in differ:
        raise Unsupported
    if not differ:
        return "identity", {}, [x]
    (dim,) = differ
    start = sum(p[dim] for p in pieces[:index])
    return "narrow", {"dim": dim, "start": start, "length": pieces[index][dim]}, [x]


def _index(node: fx.Node, x: Any, index: Any) -> Plain:
    """``x[:, a:b]``, ``x[..., ::2]``, ``x[:, :, None]`` on a batched tensor; never the batch axis."""
    shape = batch_shape(x)
    items = list(index) if isinstance(index, tuple) else [index]
    if sum(it is Ellipsis for it in items) > 1:
        raise Unsupported
    used = sum(it is not None and it is not Ellipsis for it in items)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at : at + 1] = [slice(None)] * (len(shape) - used)
    else:
        items += [slice(None)] * (len(shape) - used)
    picks = [(d, it) for d, it in enumerate(it for it in items if it is not None)
             if isinstance(it, int) and not isinstance(it, bool)]
    if picks and len(picks) == 1 and len(items) == len(shape) and all(
            it == slice(None) for it in items if not isinstance(it, int)) and 0 < picks[0][0]:
        d, i = picks[0]  # `x[:, 0]`: one integer index drops its axis
        if not -shape[d] <= i < shape[d]:
            raise Unsupported
        return "index_select", {"dim": d, "index": [i % shape[d]], "index_shape": []}, [x]
    cuts: list[tuple[int, int, int, int]] = []
    dim = 0
    for it in items:
        if it is None:
            continue
        if not isinstance(it, slice):
            raise Unsupported  # integer indices mixed with slices
        if (it.start, it.stop, it.step) != (None, None, None):
            if dim == 0:
                raise Unsupported
            a, b, s = slice(const(it.start), const(it.stop), const(it.step)).indices(shape[dim])
            if s <= 0 or len(range(a, b, s)) == 0:
                raise Unsupported
            cuts.append((dim, a, b, s))
        dim += 1
    if any(it is None for it in items):
        if cuts or items[0] is None:
            raise Unsupported
        return _same_batch(node, x)
    if not cuts:
        return "identity", {}, [x]
    if len(cuts) == 1 and cuts[0][3] == 1:
        d, a, b, _ = cuts[0]
        return "narrow", {"dim": d, "start": a, "length": b - a}, [x]
    return "slice", {"dims": [c[0] for c in cuts], "starts": [c[1] for c in cuts], "ends": [c[2] for c in cuts],
                     "steps": [c[3] for c in cuts]}, [x]


def is_split(node: Any) -> bool:
    """True for a ``split`` / ``chunk`` / ``tensor_split`` call (function or method)."""
    if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method"):
        return False
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return target in SPLITS


def _getitem(node: fx.Node) -> Plain:
    src, index = node.args
    value = static_value(src)
    if isinstance(value, (tuple, list)) and isinstance(index, int):
        if is_split(src) and is_batched(src):
            return _piece(node, src, index)
        return "getitem", {"index": index}, [src]
    if isinstance(value, torch.Tensor):
        return _index(node, src, index)
    raise Unsupported


# --- dispatch ----------------------------------------------------------------------------------------
def _unary(args: tuple[Any, ...], kwargs: dict[str, Any]) -> fx.Node:
    """The input of ``f(x)`` / ``f(x, inplace)`` / ``f(x, inplace=...)``; in place or not, the value is the same."""
    kwargs = {k: v for k, v in kwargs.items() if not (k == "approximate" and v == "none")}  # F.gelu's default
    if len(args) > 2 or (len(args) == 2 and not isinstance(args[1], bool)) or any(k != "inplace" for k in kwargs):
        raise Unsupported
    return args[0]


def _clip(x: Any, lo: Any, hi: Any) -> Plain:
    lo, hi = const(lo), const(hi)
    if (lo is None and hi is None) or not all(v is None or isinstance(v, (int, float)) for v in (lo, hi)):
        raise Unsupported
    return "clip", {"min": lo, "max": hi}, [x]


def _mean(x: Any, dim: Any, keep: Any) -> Plain:
    if dim is None:
        raise Unsupported
    return "mean", {"dim": dims_of(dim), "keepdim": bool(const(keep))}, [x]


def _concat(tensors: Any, dim: Any) -> Plain:
    if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, fx.Node) for t in tensors):
        raise Unsupported
    dim = int(const(dim))
    rank = len(batch_shape(tensors[0])) if is_batched(tensors[0]) else None
    if dim == 0 or (rank is not None and dim % rank == 0):
        raise Unsupported  # the IR keeps the batch axis: concatenating along it stays opaque
    return "concat", {"dim": dim}, list(tensors)


def _pad(kw: dict[str, Any]) -> Plain:
    pads, mode = [int(p) for p in const(kw["pad"])], const(kw.get("mode", "constant"))
    value = const(kw.get("value", None))
    if len(pads) % 2 or len(pads) // 2 >= len(batch_shape(kw["input"])) or mode not in ("constant", "reflect",
                                                                                           "replicate", "circular"):
        raise Unsupported
    return "pad", {"pad": pads, "mode": mode, "value": 0.0 if value is None else float(value)}, [kw["input"]]


def _pool_attrs(t: Any, kw: dict[str, Any]) -> Plain:
    kernel = const(kw["kernel_size"])
    attrs = {"kernel_size": kernel, "stride": const(kw.get("stride")) or kernel,
             "padding": const(kw.get("padding", 0)), "ceil_mode": const(kw.get("ceil_mode", False))}
    if t is F.max_pool2d:
        if kw.get("return_indices"):
            raise Unsupported
        return "max_pool2d", {**attrs, "dilation": const(kw.get("dilation", 1))}, [kw["input"]]
    if kw.get("divisor_override") is not None:
        raise Unsupported
    return "avg_pool2d", {**attrs, "count_include_pad": const(kw.get("count_include_pad", True))}, [kw["input"]]


def _plain_function(node: fx.Node) -> Plain:
    t, args, kwargs = node.target, node.args, dict(node.kwargs)
    if t is F.gelu and kwargs.get("approximate") == "tanh":
        return "gelu_tanh", {}, [_unary(args, {k: v for k, v in kwargs.items() if k != "approximate"})]
    if t in UNARY_FUNCTIONS:
        return UNARY_FUNCTIONS[t], {}, [_unary(args, kwargs)]
    if t in BINARY:
        if kwargs:
            raise Unsupported
        return binary(BINARY[t], args[0], args[1])
    if t is operator.getitem:
        return _getitem(node)
    if t in (torch.cat, torch.concat):
        return _concat(args[0] if args else kwargs.get("tensors"), args[1] if len(args) > 1 else kwargs.get("dim", 0))
    if t in (torch.clamp, torch.clip):
        kw = bind(SIGNATURES[t], args, kwargs)
        return _clip(kw["input"], kw.get("min"), kw.get("max"))
    if t is F.pad:
        return _pad(bind(SIGNATURES[t], args, kwargs))
    if t is torch.reshape:
        return _reshape(node, args[0], list(args[1]) if len(args) > 1 else list(kwargs["shape"]))
    if t is torch.permute:
        return _permute(args[0], args[1] if len(args) > 1 else kwargs["dims"])
    if t in (torch.transpose, torch.swapaxes, torch.swapdims) and len(args) == 3:
        return _transpose(*args)
    if t in (torch.unsqueeze, torch.squeeze) and len(args) == 2 and not kwargs:
        return _squeeze(node, args[0], args[1], grow=t is torch.unsqueeze)
    kw = norm_kwargs(t, args, kwargs)  # everything below has an unambiguous torch schema
    if t is torch.flatten:
        if kw.get("start_dim", 0) == 0:
            raise Unsupported  # flattens the batch axis too: stays opaque
        return "flatten", {"start_dim": const(kw["start_dim"]), "end_dim": const(kw.get("end_dim", -1))}, \
            [kw["input"]]
    if t in (F.max_pool2d, F.avg_pool2d):
        return _pool_attrs(t, kw)
    if t in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        if kw.get("return_indices"):
            raise Unsupported
        return t.__name__, {"output_size": const(kw["output_size"])}, [kw["input"]]
    if t is F.interpolate:
        if kw.get("recompute_scale_factor") or kw.get("antialias"):
            raise Unsupported
        return "interpolate", {"size": const(kw.get("size")), "scale_factor": const(kw.get("scale_factor")),
                               "mode": const(kw.get("mode", "nearest")),
                               "align_corners": bool(const(kw.get("align_corners")))}, [kw["input"]]
    if t is F.leaky_relu:
        return "leaky_relu", {"negative_slope": const(kw.get("negative_slope", 0.01))}, [kw["input"]]
    if t is F.hardtanh:
        return "clip", {"min": const(kw.get("min_val", -1.0)), "max": const(kw.get("max_val", 1.0))}, [kw["input"]]
    if t is F.dropout:
        return "dropout", {"p": const(kw.get("p", 0.5))}, [kw["input"]]
    if t in (F.softmax, torch.softmax):
        if kw.get("dim") is None:
            raise Unsupported
        return "softmax", {"dim": const(kw["dim"])}, [kw["input"]]
    if t is torch.mean:
        return _mean(kw["input"], kw.get("dim"), kw.get("keepdim", False))
    if t is torch.maximum:
        return "maximum", {}, [kw["input"], kw["other"]]
    raise Unsupported


def _method(node: fx.Node) -> Plain:
    t, args, kwargs = str(node.target), node.args, dict(node.kwargs)
    x, rest = args[0], list(args[1:])
    if t in UNARY_METHODS and not rest and not kwargs:
        return UNARY_METHODS[t], {}, [x]
    if t in BINARY_METHODS and len(rest) == 1 and not kwargs:
        return binary(BINARY_METHODS[t], x, rest[0])
    if t in ("view", "reshape") and not kwargs:
        return _reshape(node, x, list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest)
    if t == "contiguous" and not rest and not kwargs:
        return "identity", {}, [x]
    if t == "permute" and not kwargs:
        return _permute(x, rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest)
    if t in ("transpose", "swapaxes", "swapdims") and len(rest) == 2 and not kwargs:
        return _transpose(x, *rest)
    if t in ("unsqueeze", "squeeze") and len(rest) == 1 and not kwargs:
        return _squeeze(node, x, rest[0], grow=t == "unsqueeze")
    if t == "expand" and not kwargs:
        return _expand(node, x, list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest)
    if t == "expand_as" and len(rest) == 1 and is_batched(rest[0]):
        return _expand(node, x, [-1] * len(batch_shape(x)))
    if t in ("clamp_min", "clamp_min_", "clamp_max", "clamp_max_") and len(rest) == 1 and not kwargs:
        return _clip(x, *((rest[0], None) if "min" in t else (None, rest[0])))
    if t in ("clamp", "clamp_", "clip", "clip_"):
        kw = {**dict(zip(("min", "max"), rest, strict=False)), **kwargs}
        return _clip(x, kw.get("min"), kw.get("max"))
    if t == "flatten":
        start = rest[0] if rest else kwargs.get("start_dim", 0)
        end = rest[1] if len(rest) > 1 else kwargs.get("end_dim", -1)
        if start == 0:
            raise Unsupported  # flattens the batch axis too: stays opaque
        return "flatten", {"start_dim": const(start), "end_dim": const(end)}, [x]
    if t == "mean":
        return _mean(x, rest[0] if rest else kwargs.get("dim"), rest[1] if len(rest) > 1 else kwargs.get("keepdim",
                                                                                                         False))
    if t == "softmax":
        dim = rest[0] if rest else kwargs.get("dim")
        if dim is None:
            raise Unsupported
        return "softmax", {"dim": const(dim)}, [x]
    raise Unsupported


def convert_call(gm: fx.GraphModule, node: fx.Node) -> Typed:
    """A ``call_function`` / ``call_method`` node -> its typed operator (Unsupported when there is none)."""
    if node.op == "call_function" and node.target in WEIGHTED:
        return WEIGHTED[node.target](gm, node, bind(SIGNATURES[node.target], node.args, dict(node.kwargs)))
    kind, attrs, inputs = _plain_function(node) if node.op == "call_function" else _method(node)
    if not all(isinstance(i, fx.Node) for i in inputs):
        raise Unsupported
    return kind, attrs, inputs, {}
