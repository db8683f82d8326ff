"""Handlers for the ONNX operators that move data: reshaping, slicing, splitting, transposing,
gathering, expanding, padding, casting, dropout and ``Shape``. The batch axis (0) stays in place."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import BATCH, FLOAT_TYPES, is_sym, settle
from .fusion import ungrouped
from .table import handles

if TYPE_CHECKING:
    from .reader import Reader


def _axis(r: Reader, axis: Any, rank: int, what: str = "axis") -> int:
    axis = int(axis)
    if not -rank <= axis < rank:
        raise r.error(f"{what} {axis} is outside a {rank}-d tensor")
    return axis % rank


@handles("Flatten")
def _flatten(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    axis = int(a.get("axis", 1))
    if not -len(shape) <= axis <= len(shape):
        raise r.error(f"axis {axis} is outside the {len(shape)}-d input")
    axis = axis + len(shape) if axis < 0 else axis
    if axis == 1:
        r.out(x if len(shape) == 2 else r.add("flatten", {"start_dim": 1, "end_dim": -1}, [x]))
    elif axis > 1 and all(d == 1 for d in shape[1:axis]):
        r.out(r.add("reshape", {"shape": [math.prod(shape[axis:])]}, [x]))
    else:
        raise r.error(f"Flatten axis={a.get('axis', 1)} of shape {list(shape)} merges the batch dimension")


def reshape_to(r: Reader, x: str, target: Sequence[Any], allowzero: bool) -> str:
    """Reshape ``x`` to ``target`` (ONNX semantics); the batch dimension must stay first."""
    shape = r.shape(x)
    sample = math.prod(shape[1:])
    t = list(target)
    for i, d in enumerate(t):
        if isinstance(d, (int, np.integer)) and d == 0 and not allowzero and i < len(shape):
            t[i] = BATCH if i == 0 else shape[i]
    if any(d is BATCH for d in t[1:]):
        raise r.error(f"reshape to {t} moves the batch dimension")
    if not t or any(not (d is BATCH or d >= -1) for d in t):
        raise r.error(f"cannot reshape {list(shape)} to {t}")
    rest = [int(d) for d in t[1:]]
    head = t[0]
    known = math.prod(d for d in rest if d != -1)
    fits = rest.count(-1) <= 1 and known > 0 and (sample % known == 0 if -1 in rest else known == sample)
    batch = head is BATCH or head == shape[0] or head in r.static_batch
    keeps_batch = batch or (head == -1 and -1 not in rest and known == sample)
    if not (keeps_batch and fits):
        raise r.error(
            f"reshape of {list(shape)} to [{', '.join(map(str, t))}] does not keep the batch dimension",
            "automtl keeps the batch axis: the target must be [N | 0 | -1, ...] with the rest per sample",
        )
    rest = [sample // known if d == -1 else d for d in rest]
    if list(shape[1:]) == rest:
        return x
    gn = ungrouped(r, x, rest)
    if gn is not None:
        return gn
    if len(rest) == 1 and len(shape) > 1:
        return r.add("flatten", {"start_dim": 1, "end_dim": -1}, [x])
    return r.add("reshape", {"shape": rest}, [x])


@handles("Reshape")
def _reshape(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    if r.opset < 5:
        target = list(a["shape"])
    else:
        name = node.input[1]
        if name in r.values:
            raise r.error("the target shape is computed at run time; it must be constant (but for the batch)")
        target = list(r.consts[name].reshape(-1)) if name in r.consts else list(r.const(name, "shape"))
    target = [d if d is BATCH else int(d) for d in target]
    r.out(reshape_to(r, x, target, bool(a.get("allowzero", 0))))


@handles("Squeeze", "Unsqueeze")
def _squeeze(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    axes = a.get("axes") if r.opset < 13 else r.opt_const(node, 1, "axes")
    if axes is not None:
        axes = [int(i) for i in np.asarray(axes).reshape(-1)]
    if node.op_type == "Squeeze":
        rank = len(shape)
        if axes is None:
            axes = [i for i, d in enumerate(shape) if d == 1 and i > 0]
        axes = [_axis(r, i, rank) for i in axes]
        if 0 in axes or any(shape[i] != 1 for i in axes):
            raise r.error(f"cannot squeeze axes {axes} of shape {list(shape)}")
        new = [d for i, d in enumerate(shape) if i not in axes]
    else:
        if axes is None:
            raise r.error("Unsqueeze without axes")
        rank = len(shape) + len(axes)
        axes = sorted(_axis(r, i, rank) for i in axes)
        if len(set(axes)) != len(axes):
            raise r.error(f"Unsqueeze axes {axes} repeat an axis")
        new = list(shape)
        for i in axes:
            new.insert(i, 1)
        if new[0] != shape[0] or 0 in axes:
            raise r.error(f"unsqueezing axis 0 moves the batch dimension of {list(shape)}")
    r.out(reshape_to(r, x, [BATCH, *new[1:]], False))


@handles("Slice")
def _slice(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    if r.opset < 10:
        starts, ends = a["starts"], a["ends"]
        axes, steps = a.get("axes"), None
    else:
        starts, ends = r.const(node.input[1], "starts"), r.const(node.input[2], "ends")
        axes, steps = r.opt_const(node, 3, "axes"), r.opt_const(node, 4, "steps")
    starts, ends = [int(v) for v in np.asarray(starts).reshape(-1)], [int(v) for v in np.asarray(ends).reshape(-1)]
    axes = list(range(len(starts))) if axes is None else [_axis(r, i, len(shape)) for i in np.reshape(axes, -1)]
    if not len(starts) == len(ends) == len(axes) or (steps is not None and steps.size != len(axes)):
        raise r.error(f"starts, ends, axes and steps differ in length ({len(starts)}, {len(ends)}, {len(axes)})")
    step_list = [1] * len(axes) if steps is None else [int(v) for v in steps.reshape(-1)]
    cuts = []  # (axis, start, end, step) of every axis the slice changes
    for axis, lo, hi, step in zip(axes, starts, ends, step_list, strict=True):
        size = shape[axis]
        if step <= 0:
            raise r.error(f"Slice with step {step} is not supported (only positive steps)")
        lo = max(0, min(size, lo + size if lo < 0 else lo))
        hi = max(0, min(size, hi + size if hi < 0 else hi))
        if lo == 0 and hi == size and step == 1:
            continue
        if axis == 0:
            raise r.error("slicing the batch dimension is not supported")
        if hi <= lo:
            raise r.error(f"slice [{lo}, {hi}) of axis {axis} (size {size}) is empty")
        cuts.append((axis, lo, hi, step))
    if any(step != 1 for *_, step in cuts):
        attrs = {k: [c[i] for c in cuts] for i, k in enumerate(("dims", "starts", "ends", "steps"))}
        r.out(r.add("slice", attrs, [x]))
        return
    for axis, lo, hi, _ in cuts:
        x = r.add("narrow", {"dim": axis, "start": lo, "length": hi - lo}, [x])
    r.out(x)


@handles("Split")
def _split(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    axis = _axis(r, a.get("axis", 0), len(shape))
    size, n = shape[axis], len(node.output)
    given = a.get("split") if r.opset < 13 else r.opt_const(node, 1, "split")
    if given is not None:
        sizes = [int(s) for s in np.asarray(given).reshape(-1)]
    else:
        n = int(a.get("num_outputs", n))
        chunk = size // n if size % n == 0 else size // n + 1  # uneven: equal chunks, a smaller last one
        sizes = [chunk] * (n - 1) + [size - chunk * (n - 1)]
    if len(sizes) != len(node.output) or min(sizes) < 0 or sum(sizes) != size:
        raise r.error(f"split sizes {sizes} do not cut axis {axis} of {list(shape)} into {len(node.output)} outputs")
    if axis == 0 and len(sizes) > 1:
        raise r.error("splitting the batch dimension is not supported")
    start = 0
    for k, (name, length) in enumerate(zip(node.output, sizes, strict=True)):
        if name and length == size:
            r.values[name] = x
        elif name and length:
            r.values[name] = r.add("narrow", {"dim": axis, "start": start, "length": length}, [x],
                                   hint=r.hint_suffix(str(k)))
        elif name and r.uses.get(name, 0):
            raise r.error(f"output {k} ({name!r}) of the split is empty")
        start += length


@handles("Transpose")
def _transpose(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    rank = len(r.shape(x))
    perm = [int(p) for p in a.get("perm", range(rank - 1, -1, -1))]
    if sorted(perm) != list(range(rank)):
        raise r.error(f"perm {perm} is not a permutation of the {rank} axes")
    if perm[0] != 0:
        raise r.error(f"perm {perm} moves the batch dimension")
    r.out(x if perm == sorted(perm) else r.add("permute", {"dims": tuple(perm)}, [x]))


@handles("Gather")
def _gather(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    if node.input[1] in r.values:
        raise r.error("Gather with computed indices is not supported (the indices must be constant)")
    idx = r.const(node.input[1], "indices")
    axis = _axis(r, a.get("axis", 0), len(shape))
    if axis == 0:
        raise r.error("gathering along the batch dimension is not supported")
    if idx.dtype.kind not in "iu":
        raise r.error(f"indices of type {idx.dtype} are not integers")
    n = shape[axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise r.error(f"indices {idx.reshape(-1).tolist()} are outside axis {axis} of size {n}")
    if idx.size == 0:
        raise r.error("Gather with no indices gives an empty tensor")
    flat = [int(i) % n for i in idx.reshape(-1)]
    if idx.ndim == 1 and flat == list(range(flat[0], flat[0] + len(flat))):
        r.out(r.add("narrow", {"dim": axis, "start": flat[0], "length": len(flat)}, [x]))
        return
    attrs = {"dim": axis, "index": tuple(flat), "index_shape": tuple(int(d) for d in idx.shape)}
    r.out(r.add("index_select", attrs, [x]))


@handles("Expand")
def _expand(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    name = node.input[1]
    value = r.consts.get(name)
    target = value if value is not None and is_sym(value) else r.const(name, "shape")
    target = [shape[0] if d is BATCH else int(d) for d in np.asarray(target).reshape(-1)]
    if len(target) > len(shape):
        raise r.error(f"expanding {list(shape)} to {target} adds leading axes (it moves the batch dimension)")
    target = [1] * (len(shape) - len(target)) + target
    out = []
    for d, t in zip(shape, target, strict=True):
        if d != t and d != 1 and t != 1:
            raise r.error(f"cannot expand {list(shape)} to {target}")
        out.append(d if t == 1 else t)
    if out[0] != shape[0]:
        raise r.error(f"expanding {list(shape)} to {target} changes the batch dimension")
    r.out(x if out == list(shape) else r.add("expand", {"shape": tuple(out[1:])}, [x]))


@handles("Dropout")
def _dropout(r: Reader, node: Any, a: dict[str, Any]) -> None:
    r.unused(node, 1, "mask")
    training = r.opt_const(node, 2, "training_mode") if r.opset >= 12 else None
    if training is not None and bool(np.asarray(training).reshape(-1)[0]):
        raise r.error("Dropout with training_mode=True drops random values: only inference-mode models are read",
                      "export the model in eval mode")
    ratio = r.opt_const(node, 1, "ratio") if r.opset >= 12 else None
    p = float(a.get("ratio", 0.5)) if ratio is None else r.scalar(ratio, "ratio")
    if not 0.0 <= p < 1.0:
        raise r.error(f"ratio {p} is outside [0, 1)")
    r.out(r.add("dropout", {"p": p}, [r.x(node)]))


@handles("Pad")
def _pad(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    rank = len(r.shape(x))
    if r.opset < 11:
        pads, value, axes = list(a.get("pads", a.get("paddings", []))), float(a.get("value", 0.0)), None
    else:
        pads = [int(p) for p in r.const(node.input[1], "pads").reshape(-1)]
        v = r.opt_const(node, 2, "constant_value")
        value = 0.0 if v is None else r.scalar(v, "constant_value")
        ax = r.opt_const(node, 3, "axes")
        axes = None if ax is None else [_axis(r, i, rank, "pad axis") for i in ax.reshape(-1)]
    axes = list(range(rank)) if axes is None else axes
    n = len(axes)
    if len(pads) != 2 * n:
        raise r.error(f"{len(pads)} pads for {n} axes (must be 2 per axis)")
    if min(pads, default=0) < 0:
        raise r.error(f"negative pads {pads} (cropping) are not supported")
    begin, end = dict(zip(axes, pads[:n], strict=True)), dict(zip(axes, pads[n:], strict=True))
    if begin.get(0, 0) or end.get(0, 0):
        raise r.error("padding the batch dimension is not supported")
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(
        a.get("mode", "constant"))
    if mode is None:
        raise r.error(f"Pad mode {a.get('mode')!r} is not supported")
    torch_pads: list[int] = []
    for axis in reversed(range(1, rank)):
        torch_pads += [begin.get(axis, 0), end.get(axis, 0)]
    while torch_pads and not torch_pads[-1] and not torch_pads[-2]:
        torch_pads = torch_pads[:-2]
    if not torch_pads:
        r.out(x)
        return
    if mode != "constant" and len(torch_pads) > 2 * min(rank - 2, 3):
        raise r.error(f"{a.get('mode')} padding of the channel dimension is not supported")
    if mode in ("reflect", "circular"):
        shape = r.shape(x)
        limit = {"reflect": 0, "circular": 1}[mode]  # reflect: pad < size; wrap: pad <= size
        if any(max(begin.get(i, 0), end.get(i, 0)) >= shape[i] + limit for i in range(1, rank)):
            raise r.error(f"{a.get('mode')} pads {pads} reach beyond the input {list(shape)}")
    attrs: dict[str, Any] = {"pad": torch_pads, "mode": mode}
    if mode == "constant":
        attrs["value"] = value
    r.out(r.add("pad", attrs, [x]))


@handles("Cast", "CastLike")
def _cast(r: Reader, node: Any, a: dict[str, Any]) -> None:
    from onnx import TensorProto, helper

    if node.op_type == "CastLike":
        like = r.const(node.input[1], "target_type")
        try:
            to = helper.np_dtype_to_tensor_dtype(like.dtype)
        except (KeyError, TypeError, ValueError):
            to = TensorProto.UNDEFINED
    else:
        to = int(a.get("to", TensorProto.UNDEFINED))
    dtype = FLOAT_TYPES.get(to)
    if dtype not in ("float32", "float16", "float64"):
        name = TensorProto.DataType.Name(to) if to in TensorProto.DataType.values() else str(to)
        raise r.error(f"casting a computed tensor to {name} is not supported",
                      "only float32, float16 and float64 results are computed")
    x = r.x(node)
    r.out(x if r.dtypes[x] == dtype else r.add("cast", {"dtype": dtype}, [x], dtype=dtype))


@handles("Shape")
def _shape(r: Reader, node: Any, a: dict[str, Any]) -> None:
    shape = r.shape(r.x(node))
    v = np.array([BATCH, *shape[1:]], dtype=object)
    start, end = a.get("start", 0), a.get("end")
    r.consts[node.output[0]] = settle(v[start:end])
