"""Converters for Caffe's normalisation, neuron and common layers (BatchNorm, Scale, Eltwise,
Concat, Slice, Split, InnerProduct, activations, Dropout, Softmax, Flatten, Clip, Power, Reshape).

``BatchNorm`` + ``Scale`` fold into one affine ``batch_norm``; a ``Scale`` without a bias term
folds too, its bias (fixed at 0 in Caffe) becomes a learnable bias initialised to 0.
``momentum = 1 - moving_average_fraction``. ``use_global_stats`` only matters in training mode
(eval mode always uses the running statistics) and is not represented.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ....proto import caffe_pb2
from ...errors import CompileError
from .builder import Builder, Layer, axis_of, f32, positive


def batch_norm(b: Builder, layer: Layer) -> None:
    allowed = ["use_global_stats", "moving_average_fraction", "eps"]
    if b.dialect == "automtl":
        allowed += ["track_running_stats", "momentum", "affine"]
    p = b.params(layer, "batch_norm_param", allowed)
    (x,) = b.bottoms(layer)
    shape = b.shape(x)
    if len(shape) not in (2, 3, 4):
        raise CompileError(f"BatchNorm expects a 2-, 3- or 4-d input, got shape {list(shape)}", layer.src)
    if not p.eps >= 0:  # torch refuses it when the layer runs
        raise CompileError(f"batch_norm_param.eps {f32(p.eps)} must not be negative", layer.src)
    if b.dialect == "automtl":
        if not p.track_running_stats:
            raise CompileError("track_running_stats: false is not supported", layer.src)
        momentum = f32(p.momentum) if not p.HasField("moving_average_fraction") else None
        affine = bool(p.affine)
    else:
        momentum, affine = None, False
    if momentum is None:  # Caffe keeps this fraction of the running average; torch's momentum is the rest
        momentum = float(f"{1.0 - f32(p.moving_average_fraction):.12g}")
    attrs = {"num_features": shape[1], "eps": f32(p.eps), "momentum": momentum, "affine": affine}
    node = b.add(layer, "batch_norm", attrs, [x])
    b.folded_bn[node.name] = affine
    b.bind(layer, node)


def scale(b: Builder, layer: Layer) -> None:
    p = b.params(layer, "scale_param", ("axis", "num_axes", "filler", "bias_term", "bias_filler"))
    if len(layer.msg.bottom) != 1:
        raise CompileError("Scale with a second bottom (a computed scale) is not supported", layer.src)
    if p.axis != 1 or p.num_axes != 1:
        raise CompileError("only a per-channel Scale (axis 1, num_axes 1) is supported", layer.src)
    (x,) = b.bottoms(layer)
    prev = b.graph[x]
    unread = b.graph.nx.out_degree(x) == 0 and x not in b.silenced
    if prev.kind == "batch_norm" and b.folded_bn.get(x) is False and unread:
        # Caffe's BatchNorm has no affine part; the Scale after it is that part.
        prev.attrs["affine"] = True
        b.folded_bn[x] = True
        b.bind(layer, prev)
        return
    shape = b.shape(x)
    if len(shape) < 2:
        raise CompileError(f"Scale expects an input with channels, got shape {list(shape)}", layer.src)
    b.bind(layer, b.add(layer, "scale", {"num_features": shape[1], "bias": bool(p.bias_term)}, [x]))


def eltwise(b: Builder, layer: Layer) -> None:
    E = caffe_pb2.EltwiseParameter
    p = b.params(layer, "eltwise_param", ("operation", "coeff", "stable_prod_grad"))
    xs = b.bottoms(layer, (2, None))
    coeffs = [f32(c) for c in p.coeff]
    if coeffs and p.operation != E.SUM:
        raise CompileError("eltwise_param.coeff is only allowed with operation SUM", layer.src)
    if coeffs and len(coeffs) != len(xs):
        raise CompileError(f"eltwise_param has {len(coeffs)} coeff for {len(xs)} bottoms", layer.src)
    if p.operation == E.SUM and coeffs and any(c != 1.0 for c in coeffs):
        node = b.add(layer, "scaled_sum", {"coeffs": coeffs}, xs)
    else:
        node = b.add(layer, {E.SUM: "add", E.PROD: "mul", E.MAX: "maximum"}[p.operation], {}, xs)
    b.bind(layer, node)


def concat(b: Builder, layer: Layer) -> None:
    p = b.params(layer, "concat_param", ("axis", "concat_dim"))
    xs = b.bottoms(layer, (1, None))
    if p.HasField("axis") and p.HasField("concat_dim"):
        raise CompileError("give either axis or concat_dim, not both", layer.src)
    axis = int(p.concat_dim) if p.HasField("concat_dim") else int(p.axis)
    dim = axis_of(layer, axis, len(b.shape(xs[0])), "concat axis")
    b.bind(layer, b.add(layer, "concat", {"dim": dim}, xs))


def slice_(b: Builder, layer: Layer) -> None:
    p = b.params(layer, "slice_param", ("axis", "slice_point", "slice_dim"))
    (x,) = b.bottoms(layer)
    shape = b.shape(x)
    if p.HasField("axis") and p.HasField("slice_dim"):
        raise CompileError("give either axis or slice_dim, not both", layer.src)
    dim = axis_of(layer, int(p.slice_dim) if p.HasField("slice_dim") else int(p.axis), len(shape), "slice axis")
    tops = list(layer.msg.top)
    if not tops:
        raise CompileError("Slice needs at least one top", layer.src)
    size = shape[dim]
    points = [int(v) for v in p.slice_point]
    if points:
        if len(points) != len(tops) - 1:
            raise CompileError(f"{len(points)} slice_point(s) for {len(tops)} tops (need {len(tops) - 1})", layer.src)
        bounds = [0, *points, size]
        if any(lo >= hi for lo, hi in zip(bounds, bounds[1:], strict=False)):
            raise CompileError(f"slice_point {points} must increase strictly inside (0, {size})", layer.src)
    else:
        if size % len(tops):
            raise CompileError(f"axis {dim} of size {size} does not split evenly into {len(tops)} tops", layer.src)
        step = size // len(tops)
        bounds = [i * step for i in range(len(tops) + 1)]
    for top, lo, hi in zip(tops, bounds, bounds[1:], strict=False):
        node = b.add(layer, "narrow", {"dim": dim, "start": lo, "length": hi - lo}, [x], name=f"{layer.name}/{top}")
        b.blobs[top] = node.name


def split(b: Builder, layer: Layer) -> None:
    (x,) = b.bottoms(layer)
    for top in layer.msg.top:
        b.blobs[top] = x


def inner_product(b: Builder, layer: Layer) -> None:
    p = b.params(
        layer, "inner_product_param", ("num_output", "bias_term", "weight_filler", "bias_filler", "axis", "transpose")
    )
    if not p.HasField("num_output"):
        raise CompileError("inner_product_param.num_output is required", layer.src)
    positive(layer, "inner_product_param", num_output=int(p.num_output))
    (x,) = b.bottoms(layer)
    shape = b.shape(x)
    axis = axis_of(layer, int(p.axis), len(shape), "inner_product axis")
    if axis == 0:
        raise CompileError("InnerProduct over the batch axis (axis 0) is not supported", layer.src)
    if axis < len(shape) - 1:
        x = b.add(layer, "flatten", {"start_dim": axis, "end_dim": -1}, [x], name=f"{layer.name}/flatten").name
    attrs = {"in_features": b.shape(x)[-1], "out_features": int(p.num_output), "bias": bool(p.bias_term)}
    b.bind(layer, b.add(layer, "linear", attrs, [x]))


def relu(b: Builder, layer: Layer) -> None:
    allowed = ["negative_slope", "engine"] + (["inplace"] if b.dialect == "automtl" else [])
    p = b.params(layer, "relu_param", allowed)
    (x,) = b.bottoms(layer)
    if p.negative_slope != 0:
        node = b.add(layer, "leaky_relu", {"negative_slope": f32(p.negative_slope)}, [x])
    else:
        node = b.add(layer, "relu", {}, [x])
    b.bind(layer, node)


def prelu(b: Builder, layer: Layer) -> None:
    p = b.params(layer, "prelu_param", ("filler", "channel_shared"))
    (x,) = b.bottoms(layer)
    shape = b.shape(x)
    n = 1 if p.channel_shared else (shape[1] if len(shape) > 1 else 1)
    b.bind(layer, b.add(layer, "prelu", {"num_parameters": n}, [x]))


def unary(kind: str, param: str | None = None) -> Callable[[Builder, Layer], None]:
    """A converter for a parameter-free layer (its ``param`` message may only set ``engine``)."""

    def convert(b: Builder, layer: Layer) -> None:
        if param:
            b.params(layer, param, ("engine",))
        (x,) = b.bottoms(layer)
        b.bind(layer, b.add(layer, kind, {}, [x]))

    return convert


def dropout(b: Builder, layer: Layer) -> None:
    p = b.params(layer, "dropout_param", ["dropout_ratio"] + (["inplace"] if b.dialect == "automtl" else []))
    (x,) = b.bottoms(layer)
    ratio = f32(p.dropout_ratio)
    if not 0 <= ratio < 1:
        raise CompileError(f"dropout_param.dropout_ratio {ratio} must be in [0, 1)", layer.src)
    b.bind(layer, b.add(layer, "dropout", {"p": ratio}, [x]))


def elu(b: Builder, layer: Layer) -> None:
    p = b.params(layer, "elu_param", ["alpha"] + (["inplace"] if b.dialect == "automtl" else []))
    (x,) = b.bottoms(layer)
    b.bind(layer, b.add(layer, "elu", {"alpha": f32(p.alpha)}, [x]))


def swish(b: Builder, layer: Layer) -> None:
    p = b.params(layer, "swish_param", ("beta",))
    if p.beta != 1:
        raise CompileError(f"Swish with beta {p.beta} is not supported (only beta 1, SiLU)", layer.src)
    (x,) = b.bottoms(layer)
    b.bind(layer, b.add(layer, "silu", {}, [x]))


def softmax(b: Builder, layer: Layer) -> None:
    p = b.params(layer, "softmax_param", ("engine", "axis"))
    (x,) = b.bottoms(layer)
    dim = axis_of(layer, int(p.axis), len(b.shape(x)), "softmax axis")
    b.bind(layer, b.add(layer, "softmax", {"dim": dim}, [x]))


def flatten(b: Builder, layer: Layer) -> None:
    p = b.params(layer, "flatten_param", ("axis", "end_axis"))
    (x,) = b.bottoms(layer)
    rank = len(b.shape(x))
    start = axis_of(layer, int(p.axis), rank, "flatten axis")
    end = axis_of(layer, int(p.end_axis), rank, "flatten end_axis")
    if end < start:
        raise CompileError(f"flatten end_axis {p.end_axis} comes before axis {p.axis}", layer.src)
    b.bind(layer, b.add(layer, "flatten", {"start_dim": start, "end_dim": end}, [x]))


def clip(b: Builder, layer: Layer) -> None:
    p = b.params(layer, "clip_param", ("min", "max"))
    if not (p.HasField("min") and p.HasField("max")):
        raise CompileError("clip_param needs both min and max", layer.src)
    (x,) = b.bottoms(layer)
    lo, hi = f32(p.min), f32(p.max)
    if not lo <= hi:
        raise CompileError(f"clip_param min {lo} is above max {hi}", layer.src)
    node = (
        b.add(layer, "relu6", {}, [x]) if (lo, hi) == (0.0, 6.0) else b.add(layer, "clip", {"min": lo, "max": hi}, [x])
    )
    b.bind(layer, node)


def power(b: Builder, layer: Layer) -> None:
    p = b.params(layer, "power_param", ("power", "scale", "shift"))
    if p.power != 1:
        raise CompileError(f"Power with power {p.power} is not supported (only power 1: scale * x + shift)", layer.src)
    (x,) = b.bottoms(layer)
    node = x
    if p.scale != 1:
        node = b.add(
            layer, "mul", {"scalar": f32(p.scale)}, [node], name=f"{layer.name}/scale" if p.shift != 0 else None
        ).name
    if p.shift != 0:
        node = b.add(layer, "add", {"scalar": f32(p.shift)}, [node]).name
    if node == x:
        node = b.add(layer, "identity", {}, [x]).name
    b.bind(layer, node)


def reshape(b: Builder, layer: Layer) -> None:
    p = b.params(layer, "reshape_param", ("shape", "axis", "num_axes"))
    (x,) = b.bottoms(layer)
    shape = list(b.shape(x))
    rank = len(shape)
    start = int(p.axis) if p.axis >= 0 else rank + 1 + int(p.axis)
    end = rank if p.num_axes == -1 else start + int(p.num_axes)
    if not (0 <= start <= end <= rank):
        raise CompileError(f"reshape axis {p.axis} / num_axes {p.num_axes} do not fit a {rank}-d input", layer.src)
    dims = [int(d) for d in p.shape.dim]
    if any(d == 0 and start + i >= rank for i, d in enumerate(dims)):
        raise CompileError(f"reshape_param.shape {dims} copies (0) an axis the {rank}-d input lacks", layer.src)
    new = [shape[start + i] if d == 0 else d for i, d in enumerate(dims)]
    if any(d < -1 for d in new) or new.count(-1) > 1:
        raise CompileError(f"reshape_param.shape {dims} is invalid", layer.src)
    out = shape[:start] + new + shape[end:]
    total = math.prod(shape)
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or total % known:
            raise CompileError(f"cannot reshape {shape} to {dims}", layer.src)
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise CompileError(f"cannot reshape {shape} ({total} values) to {out}", layer.src)
    if not out or out[0] != shape[0]:
        got = out[0] if out else "no axis"
        raise CompileError(f"reshape changes the batch dimension ({shape[0]} -> {got})", layer.src)
    b.bind(layer, b.add(layer, "reshape", {"shape": out[1:]}, [x]))
