"""One torch.fx call -> one typed IR operator: the fx frontend's tables of modules, functions and methods.

A converter returns ``(kind, attrs, inputs, tensors)`` or raises :class:`Unsupported` (the call then
stays an opaque operator). Layout calls (``view``, ``permute``, slicing, ``split``) read the static
shapes the tracer replayed (:mod:`.fx_trace`), and are typed only when they keep axis 0 as the batch.
Functional norms, convolutions and linear maps are typed when their weights are parameters or buffers
that only they read (they then carry those tensors, like the module forms).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .fx_trace import is_batched, static_shape

Typed = tuple[str, dict[str, Any], list[fx.Node], dict[str, torch.Tensor]]


class Unsupported(Exception):
    """Internal: this call cannot become a typed operator (it becomes an opaque one)."""


def _state(mod: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in mod.state_dict().items() if v is not None}


def _conv_padding(padding: Any, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> tuple:
    """Integer padding for torch's ``"valid"`` / ``"same"`` strings (symmetric "same" only)."""
    if not isinstance(padding, str):
        return tuple(padding) if isinstance(padding, (list, tuple)) else (padding, padding)
    if padding == "valid":
        return (0, 0)
    total = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
    if padding != "same" or any(s != 1 for s in stride) or any(t % 2 for t in total):
        raise Unsupported
    return tuple(t // 2 for t in total)


def _conv(mod: nn.Module) -> tuple[str, dict[str, Any]]:
    if mod.padding_mode != "zeros":
        raise Unsupported
    attrs = {
        "in_channels": mod.in_channels, "out_channels": mod.out_channels, "kernel_size": tuple(mod.kernel_size),
        "stride": tuple(mod.stride), "padding": _conv_padding(mod.padding, mod.kernel_size, mod.stride, mod.dilation),
        "dilation": tuple(mod.dilation), "groups": mod.groups, "bias": mod.bias is not None,
    }
    if isinstance(mod, nn.ConvTranspose2d):
        attrs["output_padding"] = tuple(mod.output_padding)
        return "conv_transpose2d", attrs
    return "conv2d", attrs


def _bn(mod: nn.Module) -> tuple[str, dict[str, Any]]:
    if not mod.track_running_stats or mod.momentum is None:
        raise Unsupported
    return "batch_norm", {"num_features": mod.num_features, "eps": mod.eps, "momentum": mod.momentum,
                          "affine": mod.affine}


def _pool(mod: nn.Module) -> tuple[str, dict[str, Any]]:
    attrs = {"kernel_size": mod.kernel_size, "stride": mod.stride or mod.kernel_size, "padding": mod.padding,
             "ceil_mode": mod.ceil_mode}
    if isinstance(mod, nn.MaxPool2d):
        if mod.return_indices:
            raise Unsupported
        return "max_pool2d", {**attrs, "dilation": mod.dilation}
    if mod.divisor_override is not None:
        raise Unsupported
    return "avg_pool2d", {**attrs, "count_include_pad": mod.count_include_pad}


def _upsample(mod: nn.Module) -> tuple[str, dict[str, Any]]:
    if mod.recompute_scale_factor:
        raise Unsupported
    return "interpolate", {"size": mod.size, "scale_factor": mod.scale_factor, "mode": mod.mode,
                           "align_corners": bool(mod.align_corners)}


def _only(kind: str, attrs: dict[str, Any], ok: bool) -> tuple[str, dict[str, Any]]:
    if not ok:
        raise Unsupported
    return kind, attrs


MODULES: dict[type[nn.Module], Callable[[nn.Module], tuple[str, dict[str, Any]]]] = {
    nn.Conv2d: _conv,
    nn.ConvTranspose2d: _conv,
    nn.Linear: lambda m: ("linear", {"in_features": m.in_features, "out_features": m.out_features,
                                     "bias": m.bias is not None}),
    nn.BatchNorm2d: _bn,
    nn.BatchNorm1d: _bn,
    nn.LayerNorm: lambda m: ("layer_norm", {"normalized_shape": tuple(m.normalized_shape), "eps": m.eps,
                                            "affine": m.elementwise_affine, "bias": m.bias is not None}),
    nn.GroupNorm: lambda m: ("group_norm", {"num_groups": m.num_groups, "num_channels": m.num_channels,
                                            "eps": m.eps, "affine": m.affine}),
    nn.InstanceNorm2d: lambda m: _only("instance_norm", {"num_features": m.num_features, "eps": m.eps,
                                                         "affine": m.affine}, not m.track_running_stats),
    nn.ChannelShuffle: lambda m: ("channel_shuffle", {"groups": m.groups}),
    nn.ReLU: lambda m: ("relu", {}),
    nn.ReLU6: lambda m: ("relu6", {}),
    nn.LeakyReLU: lambda m: ("leaky_relu", {"negative_slope": m.negative_slope}),
    nn.PReLU: lambda m: ("prelu", {"num_parameters": m.num_parameters}),
    nn.Sigmoid: lambda m: ("sigmoid", {}),
    nn.Tanh: lambda m: ("tanh", {}),
    nn.Hardswish: lambda m: ("hardswish", {}),
    nn.Hardsigmoid: lambda m: ("hardsigmoid", {}),
    nn.SiLU: lambda m: ("silu", {}),
    nn.GELU: lambda m: ("gelu", {}) if m.approximate == "none" else ("gelu_tanh", {}),
    nn.Softplus: lambda m: _only("softplus", {}, m.beta == 1 and m.threshold == 20),
    nn.Mish: lambda m: ("mish", {}),
    nn.ELU: lambda m: ("elu", {"alpha": m.alpha}),
    nn.Hardtanh: lambda m: ("clip", {"min": m.min_val, "max": m.max_val}),
    nn.Softmax: lambda m: ("softmax", {"dim": m.dim}),
    nn.LogSoftmax: lambda m: ("log_softmax", {"dim": m.dim}),
    nn.MaxPool2d: _pool,
    nn.AvgPool2d: _pool,
    nn.AdaptiveAvgPool2d: lambda m: ("adaptive_avg_pool2d", {"output_size": m.output_size}),
    nn.AdaptiveMaxPool2d: lambda m: _only("adaptive_max_pool2d", {"output_size": m.output_size},
                                          not m.return_indices),
    nn.Flatten: lambda m: ("flatten", {"start_dim": m.start_dim, "end_dim": m.end_dim}),
    nn.Dropout: lambda m: ("dropout", {"p": m.p}),
    nn.Identity: lambda m: ("identity", {}),
    nn.LocalResponseNorm: lambda m: ("lrn", {"size": m.size, "alpha": m.alpha, "beta": m.beta, "k": m.k}),
    nn.Upsample: _upsample,
}


def convert_module(mod: nn.Module, node: fx.Node) -> Typed:
    """A leaf module call with one tensor input -> its typed operator with the module's weights."""
    conv = MODULES.get(type(mod))
    if conv is None or len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
        raise Unsupported
    kind, attrs = conv(mod)
    return kind, attrs, [node.args[0]], _state(mod)


# --- helpers ------------------------------------------------------------------------------------------
UNARY_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    torch.tanh: "tanh", F.tanh: "tanh", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", F.silu: "silu",
    F.gelu: "gelu", F.softplus: "softplus", F.mish: "mish",
}
UNARY_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "relu_": "relu", "sigmoid_": "sigmoid"}
BINARY = {
    operator.add: "add", torch.add: "add", operator.iadd: "add",
    operator.mul: "mul", torch.mul: "mul", operator.imul: "mul",
    operator.sub: "sub", torch.sub: "sub", operator.truediv: "div", torch.div: "div",
}
BINARY_METHODS = {"add": "add", "add_": "add", "mul": "mul", "mul_": "mul", "sub": "sub", "sub_": "sub", "div": "div",
                  "div_": "div"}
SPLITS = {"split", "chunk", "tensor_split"}

# positional parameter names of the builtins bound by hand (torch's schema matching is ambiguous for them)
SIGNATURES: dict[Any, tuple[str, ...]] = {
    F.conv2d: ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    F.linear: ("input", "weight", "bias"),
    F.batch_norm: ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
    F.layer_norm: ("input", "normalized_shape", "weight", "bias", "eps"),
    F.group_norm: ("input", "num_groups", "weight", "bias", "eps"),
    F.pad: ("input", "pad", "mode", "value"),
    torch.clamp: ("input", "min", "max"),
    torch.clip: ("input", "min", "max"),
}


def bind(names: Sequence[str], args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Positional and keyword arguments by parameter name."""
    if len(args) > len(names) or any(k not in names for k in kwargs):
        raise Unsupported
    return {**dict(zip(names, args, strict=False)), **kwargs}


def const(value: Any) -> Any:
    """A constant argument (an fx node here would be a value computed at run time)."""
    if isinstance(value, fx.Node) or (isinstance(value, (list, tuple)) and any(isinstance(v, fx.Node) for v in value)):
        raise Unsupported
    return value


def norm_kwargs(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """All arguments by name, by torch's schema of ``fn`` (Unsupported when it does not match one)."""
    from torch.fx.operator_schemas import normalize_function

    out = normalize_function(fn, args, kwargs, normalize_to_only_use_kwargs=True)
    if out is None:
        raise Unsupported
    return dict(out.kwargs)


def fetch(gm: fx.GraphModule, target: str) -> Any:
    """The attribute a ``get_attr`` target names (``layer1.0.gamma``)."""
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def weight_of(gm: fx.GraphModule, value: Any, owner: fx.Node, learnable: bool = True) -> torch.Tensor | None:
    """The tensor of a parameter (``learnable``) or a buffer read by ``owner`` alone (None for None).

    Unsupported otherwise: a weight that is a buffer (a fixed blur filter) or is read elsewhere too
    stays with its own ``parameter`` operator, so it is neither made learnable nor counted twice.
    """
    if value is None:
        return None
    if not (isinstance(value, fx.Node) and value.op == "get_attr" and set(value.users) == {owner}):
        raise Unsupported
    tensor = fetch(gm, str(value.target))
    if not isinstance(tensor, torch.Tensor) or isinstance(tensor, nn.Parameter) != learnable:
        raise Unsupported
    return tensor.detach()


def batch_shape(x: Any) -> tuple[int, ...]:
    """The static shape of a tensor whose axis 0 is the batch; Unsupported for anything else."""
    shape = static_shape(x)
    if shape is None or not is_batched(x) or not shape:
        raise Unsupported
    return shape


def out_shape(node: fx.Node) -> tuple[int, ...]:
    """The node's static output shape; Unsupported when the tracer could not replay it."""
    shape = static_shape(node)
    if shape is None:
        raise Unsupported
    return shape


def is_batch_size(value: Any, x: fx.Node | None = None) -> bool:
    """True for ``t.size(0)`` / ``t.shape[0]`` of a batched tensor (every batched value has the same axis 0)."""
    if not isinstance(value, fx.Node):
        return False
    src = None
    if value.op == "call_method" and value.target == "size" and len(value.args) > 1 and value.args[1] == 0:
        src = value.args[0]
    elif value.op == "call_function" and value.target is operator.getitem and value.args[1] == 0:
        shape = value.args[0]
        if isinstance(shape, fx.Node) and shape.op == "call_function" and shape.target is getattr \
                and shape.args[1] == "shape":
            src = shape.args[0]
    return isinstance(src, fx.Node) and (src is x or is_batched(src))


def is_size(value: Any) -> bool:
    """True for values fx traced from sizes (``x.size(0)``, ``x.shape[0] * 4``): Python ints, not tensors."""
    if not isinstance(value, fx.Node):
        return False
    if value.op == "call_method" and value.target in ("size", "dim", "numel"):
        return True
    if value.op == "call_function" and value.target is getattr:
        return value.args[1] == "shape"
    if value.op == "call_function" and (value.target is operator.getitem or value.target in BINARY):
        return any(is_size(a) for a in value.args)
    return False


def binary(kind: str, a: Any, b: Any) -> tuple[str, dict[str, Any], list[fx.Node]]:
    """An element-wise op on two values, or on a value and a Python scalar (either side)."""
    if is_size(a) or is_size(b):
        raise Unsupported  # arithmetic on sizes: kept as an opaque call that computes the int
    if isinstance(a, fx.Node) and isinstance(b, fx.Node):
        return kind, {}, [a, b]
    if isinstance(a, fx.Node) and isinstance(b, (int, float)):
        return kind, {"scalar": b}, [a]
    if isinstance(b, fx.Node) and isinstance(a, (int, float)):
        return kind, {"scalar": a, "scalar_first": True}, [b]
    raise Unsupported


def dims_of(value: Any) -> list[int]:
    """One axis or several, as a list of constants."""
    return list(const(value)) if isinstance(value, (list, tuple)) else [const(value)]


# --- weighted functional calls: their parameters/buffers become the operator's tensors ----------------
def _f_batch_norm(gm: fx.GraphModule, node: fx.Node, kw: dict[str, Any]) -> Typed:
    mean = weight_of(gm, kw.get("running_mean"), node, learnable=False)
    var = weight_of(gm, kw.get("running_var"), node, learnable=False)
    w, b = weight_of(gm, kw.get("weight"), node), weight_of(gm, kw.get("bias"), node)
    momentum, eps = const(kw.get("momentum", 0.1)), const(kw.get("eps", 1e-5))
    const(kw.get("training", False))  # the typed batch norm follows the model's mode, as the module form does
    if mean is None or var is None or (w is None) != (b is None) or not isinstance(momentum, (int, float)):
        raise Unsupported  # batch statistics only, or a cumulative average: stays opaque
    tensors = {"running_mean": mean, "running_var": var, **({"weight": w, "bias": b} if w is not None else {})}
    attrs = {"num_features": mean.numel(), "eps": float(eps), "momentum": float(momentum), "affine": w is not None}
    return "batch_norm", attrs, [kw["input"]], tensors


def _affine(gm: fx.GraphModule, node: fx.Node, kw: dict[str, Any], bias_alone: bool) -> tuple[dict, dict]:
    w, b = weight_of(gm, kw.get("weight"), node), weight_of(gm, kw.get("bias"), node)
    if (w is None and b is not None) or (not bias_alone and (w is None) != (b is None)):
        raise Unsupported
    tensors = {k: v for k, v in (("weight", w), ("bias", b)) if v is not None}
    return {"affine": w is not None, "bias": b is not None}, tensors


def _f_layer_norm(gm: fx.GraphModule, node: fx.Node, kw: dict[str, Any]) -> Typed:
    shape = const(kw["normalized_shape"])
    attrs, tensors = _affine(gm, node, kw, bias_alone=True)
    ns = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
    return "layer_norm", {"normalized_shape": ns, "eps": float(const(kw.get("eps", 1e-5))), **attrs}, \
        [kw["input"]], tensors


def _f_group_norm(gm: fx.GraphModule, node: fx.Node, kw: dict[str, Any]) -> Typed:
    attrs, tensors = _affine(gm, node, kw, bias_alone=False)
    del attrs["bias"]
    channels = batch_shape(kw["input"])[1]
    return "group_norm", {"num_groups": int(const(kw["num_groups"])), "num_channels": channels,
                          "eps": float(const(kw.get("eps", 1e-5))), **attrs}, [kw["input"]], tensors


def _pair(v: Any) -> tuple[int, int]:
    v = const(v)
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _f_conv2d(gm: fx.GraphModule, node: fx.Node, kw: dict[str, Any]) -> Typed:
    w, b = weight_of(gm, kw["weight"], node), weight_of(gm, kw.get("bias"), node)
    if w is None or w.dim() != 4 or len(batch_shape(kw["input"])) != 4:
        raise Unsupported
    groups, stride, dilation = int(const(kw.get("groups", 1))), _pair(kw.get("stride", 1)), _pair(kw.get("dilation", 1))
    kernel = tuple(w.shape[2:])
    attrs = {
        "in_channels": w.shape[1] * groups, "out_channels": w.shape[0], "kernel_size": kernel, "stride": stride,
        "padding": _conv_padding(const(kw.get("padding", 0)), kernel, stride, dilation), "dilation": dilation,
        "groups": groups, "bias": b is not None,
    }
    return "conv2d", attrs, [kw["input"]], {"weight": w, **({"bias": b} if b is not None else {})}


def _f_linear(gm: fx.GraphModule, node: fx.Node, kw: dict[str, Any]) -> Typed:
    w, b = weight_of(gm, kw["weight"], node), weight_of(gm, kw.get("bias"), node)
    if w is None or w.dim() != 2:
        raise Unsupported
    attrs = {"in_features": w.shape[1], "out_features": w.shape[0], "bias": b is not None}
    return "linear", attrs, [kw["input"]], {"weight": w, **({"bias": b} if b is not None else {})}


WEIGHTED: dict[Any, Callable[[fx.GraphModule, fx.Node, dict[str, Any]], Typed]] = {
    F.batch_norm: _f_batch_norm, F.layer_norm: _f_layer_norm, F.group_norm: _f_group_norm,
    F.conv2d: _f_conv2d, F.linear: _f_linear,
}
