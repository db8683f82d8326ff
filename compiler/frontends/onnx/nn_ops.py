"""Handlers for the ONNX operators with weights, the activations, element-wise ops and pooling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .common import is_sym, to_torch
from .fusion import fold_affine, group_norm_from_instance_norm
from .table import handles

if TYPE_CHECKING:
    from .reader import Reader


def weight(r: Reader, node: Any, index: int, what: str) -> np.ndarray:
    """A required constant input of the node (a weight, a scale ...)."""
    if len(node.input) <= index or not node.input[index]:
        raise r.error(f"has no {what} input")
    return r.const(node.input[index], what)


def _ints(r: Reader, a: dict[str, Any], key: str, default: tuple[int, ...], positive: bool = True) -> tuple[int, ...]:
    v = tuple(int(i) for i in a.get(key, default))
    if len(v) != len(default) or (positive and min(v) < 1):
        raise r.error(f"{key}={list(v)} is not {len(default)} positive integers (only 2-D is supported)")
    return v


def _sized(r: Reader, v: np.ndarray | None, n: int, what: str) -> np.ndarray | None:
    if v is not None and v.size != n:
        raise r.error(f"{what} has {v.size} values for {n} channels (shape {list(v.shape)})")
    return None if v is None else v.reshape(n)


# --- convolution, linear -------------------------------------------------------------------------
@handles("Conv")
def _conv(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    w = weight(r, node, 1, "weight")
    if w.ndim != 4:
        raise r.error(f"only 2-D convolutions are supported (weight shape {list(w.shape)})")
    k = _ints(r, a, "kernel_shape", tuple(w.shape[2:]))
    if k != tuple(w.shape[2:]):
        raise r.error(f"kernel_shape {list(k)} differs from the weight's {list(w.shape[2:])}")
    s, d = _ints(r, a, "strides", (1, 1)), _ints(r, a, "dilations", (1, 1))
    g = int(a.get("group", 1))
    if g < 1 or w.shape[0] % g:
        raise r.error(f"group={g} does not divide the {w.shape[0]} output channels")
    b = _sized(r, r.opt_const(node, 2, "bias"), w.shape[0], "bias")
    x, pad = r.split_pads(r.pads(a, r.shape(x), k, s, d), x, 0.0)
    tensors = {"weight": w} if b is None else {"weight": w, "bias": b}
    attrs = {"in_channels": w.shape[1] * g, "out_channels": w.shape[0], "kernel_size": k, "stride": s,
             "padding": pad, "dilation": d, "groups": g, "bias": b is not None}
    r.out(r.add("conv2d", attrs, [x], tensors))


@handles("ConvTranspose")
def _conv_transpose(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    w = weight(r, node, 1, "weight")
    if w.ndim != 4:
        raise r.error(f"only 2-D transposed convolutions are supported (weight shape {list(w.shape)})")
    if tuple(a.get("kernel_shape", w.shape[2:])) != tuple(w.shape[2:]):
        raise r.error(f"kernel_shape {list(a['kernel_shape'])} differs from the weight's {list(w.shape[2:])}")
    g = int(a.get("group", 1))
    if g < 1:
        raise r.error(f"group={g} is not positive")
    b = _sized(r, r.opt_const(node, 2, "bias"), w.shape[1] * g, "bias")
    s, d = _ints(r, a, "strides", (1, 1)), _ints(r, a, "dilations", (1, 1))
    op = _ints(r, a, "output_padding", (0, 0), positive=False)
    if any(o < 0 or (o >= st and o >= di) for o, st, di in zip(op, s, d, strict=True)):
        raise r.error(f"output_padding {list(op)} must be smaller than the stride or the dilation")
    begin, end = _deconv_pads(r, a, r.shape(x), tuple(w.shape[2:]), s, d, op)
    sym = tuple(min(p, q) for p, q in zip(begin, end, strict=True))
    attrs = {"in_channels": w.shape[0], "out_channels": w.shape[1] * g, "kernel_size": tuple(w.shape[2:]),
             "stride": s, "padding": sym, "dilation": d, "groups": g, "bias": b is not None, "output_padding": op}
    tensors = {"weight": w} if b is None else {"weight": w, "bias": b}
    y = r.add("conv_transpose2d", attrs, [x], tensors)
    for i in range(2):  # asymmetric pads: crop the rest of one side
        cut_begin, cut_end = begin[i] - sym[i], end[i] - sym[i]
        if cut_begin or cut_end:
            length = r.shape(y)[i + 2] - cut_begin - cut_end
            y = r.add("narrow", {"dim": i + 2, "start": cut_begin, "length": length}, [y],
                      hint=r.hint_suffix(f"crop{i}"))
    r.out(y)


def _deconv_pads(
    r: Reader, a: dict[str, Any], x: tuple[int, ...], k: tuple[int, ...], s: tuple[int, ...], d: tuple[int, ...],
    op: tuple[int, ...],
) -> tuple[list[int], list[int]]:
    """ConvTranspose's (begin, end) pads per spatial axis: given, or from ``output_shape`` / ``auto_pad``."""
    auto = a.get("auto_pad", "NOTSET")
    if "output_shape" not in a and auto not in ("SAME_UPPER", "SAME_LOWER"):
        p = [0, 0, 0, 0] if auto == "VALID" else [int(v) for v in a.get("pads", [0, 0, 0, 0])]
        if len(p) != 4 or min(p) < 0:
            raise r.error(f"pads {p} are not 4 non-negative values (only 2-D is supported)")
        return p[:2], p[2:]
    want = [int(v) for v in a["output_shape"]][-2:] if "output_shape" in a else [x[i + 2] * s[i] for i in range(2)]
    total = [s[i] * (x[i + 2] - 1) + op[i] + (k[i] - 1) * d[i] + 1 - want[i] for i in range(2)]
    if min(total) < 0:
        raise r.error(f"output_shape {want} is larger than the full transposed convolution")
    if auto == "SAME_UPPER":
        return [t // 2 for t in total], [t - t // 2 for t in total]
    return [t - t // 2 for t in total], [t // 2 for t in total]


@handles("Gemm")
def _gemm(r: Reader, node: Any, a: dict[str, Any]) -> None:
    if a.get("transA", 0):
        raise r.error("transA=1 is not supported (the input must be (batch, features))")
    x = r.x(node)
    w = weight(r, node, 1, "weight")
    if w.ndim != 2:
        raise r.error(f"Gemm weight of shape {list(w.shape)} is not 2-D")
    w = w if a.get("transB", 0) else w.T
    w = w * np.float32(a.get("alpha", 1.0))
    c = r.opt_const(node, 2, "bias")
    tensors = {"weight": w}
    if c is not None:
        beta = np.float32(a.get("beta", 1.0))
        if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1) or c.size not in (1, w.shape[0]):
            raise r.error(f"bias of shape {list(c.shape)} is not one value per output feature ({w.shape[0]})")
        tensors["bias"] = np.broadcast_to(c.reshape(-1), (w.shape[0],)) * beta
    attrs = {"in_features": w.shape[1], "out_features": w.shape[0], "bias": c is not None}
    r.out(r.add("linear", attrs, [x], tensors))


@handles("MatMul")
def _matmul(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    if node.input[1] in r.values:
        raise r.error("MatMul of two computed tensors is not supported; the second must be a constant weight")
    w = r.const(node.input[1], "weight")
    if w.ndim != 2 or len(r.shape(x)) < 2:
        raise r.error(f"MatMul of {list(r.shape(x))} by a weight of shape {list(w.shape)} is not supported "
                      "(the weight must be 2-D: in x out)")
    attrs = {"in_features": w.shape[0], "out_features": w.shape[1], "bias": False}
    r.out(r.add("linear", attrs, [x], {"weight": w.T}))


def _matmul_bias(r: Reader, node: Any) -> bool:
    """``Add(MatMul(x, W), b)`` -> the linear node gets ``b`` as its bias (exporters split Linear so)."""
    ins = list(node.input)
    for i, j in ((0, 1), (1, 0)):
        lin, bias = ins[i], ins[j]
        if lin not in r.values or bias not in r.consts or is_sym(r.consts[bias]) or r.uses.get(lin, 0) != 1:
            continue
        ir = r.graph[r.values[lin]]
        if ir.kind != "linear" or ir.attrs["bias"] or ir.source is None or ir.source.layer_type != "MatMul":
            continue
        b = r.consts[bias]
        n = ir.attrs["out_features"]
        if b.size != n or b.shape[-1:] != (n,) or b.ndim > len(ir.shape):
            continue
        ir.attrs["bias"] = True
        ir.tensors["bias"] = to_torch(b.reshape(n))
        r.out(ir.name)
        return True
    return False


# --- normalisation -------------------------------------------------------------------------------
@handles("BatchNormalization")
def _batch_norm(r: Reader, node: Any, a: dict[str, Any]) -> None:
    if a.get("training_mode", 0) or not a.get("spatial", 1):
        raise r.error("only inference-mode, spatial batch normalization is supported")
    r.unused(node, 1, "running-statistics")
    x = r.x(node)
    shape = r.shape(x)
    if len(shape) < 2:
        raise r.error(f"BatchNormalization of a {len(shape)}-d input {list(shape)} has no channel axis")
    c = shape[1]
    names = ("weight", "bias", "running_mean", "running_var")
    tensors = {k: _sized(r, weight(r, node, i + 1, k.replace("_", " ")), c, k) for i, k in enumerate(names)}
    attrs = {"num_features": c, "eps": float(a.get("epsilon", 1e-5)),
             "momentum": round(1.0 - float(a.get("momentum", 0.9)), 6), "affine": True}
    r.out(r.add("batch_norm", attrs, [x], tensors))


@handles("LayerNormalization")
def _layer_norm(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    axis = int(a.get("axis", -1))
    if not -len(shape) <= axis < len(shape):
        raise r.error(f"axis {axis} is outside the {len(shape)}-d input {list(shape)}")
    axis %= len(shape)
    if axis == 0:
        raise r.error("normalizing over the batch dimension (axis 0) is not supported")
    norm = tuple(shape[axis:])
    tensors = {"weight": _broadcast(r, weight(r, node, 1, "scale"), norm, "scale")}
    bias = r.opt_const(node, 2, "bias")
    if bias is not None:
        tensors["bias"] = _broadcast(r, bias, norm, "bias")
    eps = float(a.get("epsilon", 1e-5))
    r.out(r.add("layer_norm", {"normalized_shape": norm, "eps": eps, "affine": True, "bias": bias is not None},
                [x], tensors))
    stats = [k for k in (1, 2) if len(node.output) > k and node.output[k] and r.uses.get(node.output[k], 0)]
    if stats:  # the optional Mean and InvStdDev outputs, over the normalized axes (kept as 1s)
        dims = list(range(axis, len(shape)))
        mean = r.add("mean", {"dim": dims, "keepdim": True}, [x], hint=r.hint_suffix("mean"))
        r.out(mean, 1)
        if 2 in stats:
            d = r.add("sub", {}, [x, mean], hint=r.hint_suffix("centered"))
            var = r.add("mean", {"dim": dims, "keepdim": True}, [r.add("mul", {}, [d, d], hint=r.hint_suffix("sq"))],
                        hint=r.hint_suffix("var"))
            r.out(r.add("rsqrt", {}, [r.add("add", {"scalar": eps}, [var], hint=r.hint_suffix("var_eps"))],
                        hint=r.hint_suffix("inv_std")), 2)


def _broadcast(r: Reader, v: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    while v.ndim > len(shape) and v.shape[0] == 1:
        v = v[0]
    try:
        return np.broadcast_to(v, shape)
    except ValueError:
        raise r.error(f"{what} of shape {list(v.shape)} does not broadcast to the normalized shape "
                      f"{list(shape)}") from None


@handles("InstanceNormalization")
def _instance_norm(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    if len(shape) not in (3, 4, 5):
        raise r.error(f"InstanceNormalization of a {len(shape)}-d input {list(shape)}: only 3-d to 5-d is supported")
    c = shape[1]
    tensors = {"weight": _sized(r, weight(r, node, 1, "scale"), c, "scale"),
               "bias": _sized(r, weight(r, node, 2, "bias"), c, "bias")}
    eps = float(a.get("epsilon", 1e-5))
    if group_norm_from_instance_norm(r, node, eps, tensors["weight"], tensors["bias"]):
        return
    r.out(r.add("instance_norm", {"num_features": c, "eps": eps, "affine": True}, [x], tensors))


@handles("GroupNormalization")
def _group_norm(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    if len(shape) < 3:
        raise r.error(f"GroupNormalization of a {len(shape)}-d input {list(shape)} is not supported")
    c, groups = shape[1], int(a.get("num_groups", 0))
    if groups < 1 or c % groups:
        raise r.error(f"num_groups={groups} does not divide the {c} channels")
    scale, bias = weight(r, node, 1, "scale"), weight(r, node, 2, "bias")
    # (version 18, one scale per group, is deprecated: onnx.checker refuses it before this)
    tensors = {"weight": _sized(r, scale, c, "scale"), "bias": _sized(r, bias, c, "bias")}
    attrs = {"num_groups": groups, "num_channels": c, "eps": float(a.get("epsilon", 1e-5)), "affine": True}
    r.out(r.add("group_norm", attrs, [x], tensors))


# --- activations ---------------------------------------------------------------------------------
_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSwish": "hardswish", "Erf": "erf",
          "Softplus": "softplus"}


@handles(*_UNARY)
def _unary(r: Reader, node: Any, a: dict[str, Any]) -> None:
    r.out(r.add(_UNARY[node.op_type], {}, [r.x(node)]))


@handles("Identity")
def _identity(r: Reader, node: Any, a: dict[str, Any]) -> None:
    r.out(r.x(node))


@handles("LeakyRelu")
def _leaky_relu(r: Reader, node: Any, a: dict[str, Any]) -> None:
    r.out(r.add("leaky_relu", {"negative_slope": float(a.get("alpha", 0.01))}, [r.x(node)]))


@handles("Elu")
def _elu(r: Reader, node: Any, a: dict[str, Any]) -> None:
    r.out(r.add("elu", {"alpha": float(a.get("alpha", 1.0))}, [r.x(node)]))


@handles("Gelu")
def _gelu(r: Reader, node: Any, a: dict[str, Any]) -> None:
    kind = {"none": "gelu", "tanh": "gelu_tanh"}.get(a.get("approximate", "none"))
    if kind is None:
        raise r.error(f"Gelu approximate={a['approximate']!r} is not supported (only 'none' and 'tanh')")
    r.out(r.add(kind, {}, [r.x(node)]))


@handles("PRelu")
def _prelu(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    slope = weight(r, node, 1, "slope")
    shape = r.shape(x)
    # one slope, or one per channel: (C,) for (N, C), (C, 1, 1) for (N, C, H, W) (ONNX broadcasts from the right)
    per_channel = (len(shape) >= 2 and slope.ndim == len(shape) - 1 and slope.shape[0] == shape[1]
                   and slope.size == shape[1])
    if not per_channel and not (slope.size == 1 and slope.ndim <= len(shape)):
        _prelu_broadcast(r, x, shape, slope)
        return
    r.out(r.add("prelu", {"num_parameters": int(slope.size)}, [x], {"weight": slope.reshape(-1)}))


def _prelu_broadcast(r: Reader, x: str, shape: tuple[int, ...], slope: np.ndarray) -> None:
    """Slopes broadcast along other axes than torch's PReLU: ``relu(x) + min(x, 0) * slope``, exactly,
    with the slope a learnable parameter."""
    if slope.ndim > len(shape) or np.broadcast_shapes(slope.shape, shape) != tuple(shape):
        raise r.error(f"slope of shape {list(slope.shape)} does not broadcast to the input {list(shape)}")
    p = r.add("parameter", {"shape": slope.shape, "view": slope.shape, "learnable": True}, [], {"value": slope},
              hint=r.hint_suffix("slope"))
    neg = r.add("mul", {}, [r.add("clip", {"min": None, "max": 0.0}, [x], hint=r.hint_suffix("neg")), p],
                hint=r.hint_suffix("scaled"))
    r.out(r.add("add", {}, [r.add("relu", {}, [x], hint=r.hint_suffix("pos")), neg]))


@handles("Clip")
def _clip(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    if r.opset < 11:
        lo, hi = a.get("min"), a.get("max")
        lo = None if lo is None or lo <= -3.4e38 else float(lo)
        hi = None if hi is None or hi >= 3.4e38 else float(hi)
    else:
        lo_v, hi_v = r.opt_const(node, 1, "min"), r.opt_const(node, 2, "max")
        lo = None if lo_v is None else r.scalar(lo_v, "min")
        hi = None if hi_v is None else r.scalar(hi_v, "max")
    if lo is None and hi is None:
        r.out(x)  # no bound: the identity
    elif lo == 0.0 and hi == 6.0:
        r.out(r.add("relu6", {}, [x]))
    elif lo == 0.0 and hi is None:
        r.out(r.add("relu", {}, [x]))
    else:
        r.out(r.add("clip", {"min": lo, "max": hi}, [x]))


@handles("HardSigmoid")
def _hardsigmoid(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    if abs(alpha - 1 / 6) < 1e-6 and abs(beta - 0.5) < 1e-6:
        r.out(r.add("hardsigmoid", {}, [x]))
        return
    # max(0, min(1, alpha * x + beta)), exactly, when the parameters are not torch's
    y = r.add("mul", {"scalar": alpha}, [x], hint=r.hint_suffix("alpha"))
    y = r.add("add", {"scalar": beta}, [y], hint=r.hint_suffix("beta"))
    r.out(r.add("clip", {"min": 0.0, "max": 1.0}, [y]))


@handles("Softmax", "LogSoftmax")
def _softmax(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    axis = int(a.get("axis", 1 if r.opset < 13 else -1))
    if not -len(shape) <= axis < len(shape):
        raise r.error(f"axis {axis} is outside the {len(shape)}-d input {list(shape)}")
    axis %= len(shape)
    if r.opset < 13 and int(np.prod(shape[axis + 1 :])) != 1:
        raise r.error(
            f"{node.op_type} (opset {r.opset}) over the flattened axes {axis}.. of {list(shape)} is not read",
            "only a softmax over one axis is (the last non-unit axis)",
        )
    if axis == 0:
        raise r.error("softmax over the batch dimension is not supported")
    r.out(r.add("softmax" if node.op_type == "Softmax" else "log_softmax", {"dim": axis}, [x]))


# --- element-wise --------------------------------------------------------------------------------
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Sum": "add", "Max": "maximum"}


@handles(*_BINARY)
def _binary(r: Reader, node: Any, a: dict[str, Any]) -> None:
    kind = _BINARY[node.op_type]
    ins = [i for i in node.input if i]
    if (node.op_type == "Add" and _matmul_bias(r, node)) or fold_affine(r, node):
        return
    if len(ins) == 1:
        r.out(r.tensor(ins[0]))
        return
    if len(ins) == 2:
        for k, c in ((1, 0), (0, 1)):
            const = r.consts.get(ins[k])
            if const is not None and not is_sym(const) and const.size == 1 and ins[c] in r.values:
                if const.ndim > len(r.shape(r.values[ins[c]])):
                    break
                attrs: dict[str, Any] = {"scalar": const.reshape(-1)[0].item()}
                if k == 0:
                    attrs["scalar_first"] = True
                r.out(r.add(kind, attrs, [r.values[ins[c]]]))
                return
    r.out(r.add(kind, {}, [r.tensor(i) for i in ins]))


@handles("Concat")
def _concat(r: Reader, node: Any, a: dict[str, Any]) -> None:
    ins = [r.tensor(i) for i in node.input if i]
    rank = len(r.shape(ins[0]))
    axis = int(a["axis"])
    if not -rank <= axis < rank:
        raise r.error(f"axis {axis} is outside the {rank}-d inputs")
    r.out(r.add("concat", {"dim": axis % rank}, ins))


# --- pooling -------------------------------------------------------------------------------------
def _pool_attrs(r: Reader, a: dict[str, Any], x: str, pad_value: float | None) -> tuple[str, dict[str, Any]]:
    shape = r.shape(x)
    k = tuple(int(i) for i in a.get("kernel_shape", ()))
    if len(k) != 2 or len(shape) != 4 or min(k) < 1:
        raise r.error(f"only 2-D pooling is supported (kernel {list(k)}, input {list(shape)})")
    s, d = _ints(r, a, "strides", (1, 1)), _ints(r, a, "dilations", (1, 1))
    if a.get("storage_order", 0):
        raise r.error("storage_order=1 is not supported")
    ceil = bool(a.get("ceil_mode", 0))
    p = r.pads(a, shape, k, s, d)
    if pad_value is not None and not ceil and any(2 * max(p[i], p[i + 2]) > k[i] for i in range(2)):
        # torch pools pad at most half the kernel: pad explicitly (the value ONNX pools it as), then pool
        x = r.add("pad", {"pad": [p[1], p[3], p[0], p[2]], "mode": "constant", "value": pad_value}, [x],
                  hint=r.hint_suffix("pad"))
        pad = (0, 0)
    else:
        x, pad = r.split_pads(p, x, pad_value)
    return x, {"kernel_size": k, "stride": s, "padding": pad, "ceil_mode": ceil, "dilation": d}


@handles("MaxPool")
def _max_pool(r: Reader, node: Any, a: dict[str, Any]) -> None:
    r.unused(node, 1, "Indices")
    x, attrs = _pool_attrs(r, a, r.x(node), float("-inf"))
    r.out(r.add("max_pool2d", attrs, [x]))


@handles("AveragePool")
def _avg_pool(r: Reader, node: Any, a: dict[str, Any]) -> None:
    include = bool(a.get("count_include_pad", 0))
    x, attrs = _pool_attrs(r, a, r.x(node), 0.0 if include else None)
    if attrs.pop("dilation") != (1, 1):
        raise r.error("dilated average pooling is not supported")
    attrs["count_include_pad"] = include
    r.out(r.add("avg_pool2d", attrs, [x]))


@handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    if len(r.shape(x)) != 4:
        raise r.error(f"only 2-D global pooling is supported (input {list(r.shape(x))})")
    kind = "adaptive_avg_pool2d" if node.op_type == "GlobalAveragePool" else "adaptive_max_pool2d"
    r.out(r.add(kind, {"output_size": (1, 1)}, [x]))


@handles("ReduceMean")
def _reduce_mean(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    rank = len(r.shape(x))
    axes = a.get("axes") if r.opset < 18 else r.opt_const(node, 1, "axes")
    if axes is None or len(axes) == 0:
        if a.get("noop_with_empty_axes", 0):
            r.out(x)
            return
        raise r.error("ReduceMean over every axis (the batch included) is not supported")
    axes = [int(i) for i in np.asarray(axes).reshape(-1)]
    if any(not -rank <= i < rank for i in axes):
        raise r.error(f"axes {axes} are outside the {rank}-d input")
    dims = sorted({i % rank for i in axes})
    if 0 in dims:
        raise r.error("reducing over the batch dimension is not supported")
    r.out(r.add("mean", {"dim": dims, "keepdim": bool(a.get("keepdims", 1))}, [x]))
