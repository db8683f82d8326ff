"""The one registry of operator kinds.

Each :class:`OpKind` says, in one place, how its output shape follows from its inputs, what it
costs (learnable parameters and FLOPs; a multiply-add counts as 2 FLOPs), whether the
multi-task rewrite may search over it, and how codegen emits it (a ``torch.nn`` module or a
function). Frontends map their own spellings onto these kinds; adding a kind is one entry here.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CompileError
from .ir import Node, Shape


class ShapeError(CompileError):
    """An operator's inputs do not fit it, or its output would be empty."""


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def numel(shape: Shape) -> int:
    return math.prod(shape) if shape else 1


@dataclass(frozen=True)
class OpKind:
    """Everything the compiler knows about one kind of operator."""

    name: str
    infer: Callable[[Node, list[Shape]], Shape]
    arity: tuple[int, int | None] = (1, 1)
    params: Callable[[Node, list[Shape]], int] = lambda node, shapes: 0
    flops: Callable[[Node, list[Shape], Shape], int] = lambda node, shapes, out: 0
    module: Callable[[Node, list[Shape]], nn.Module] | None = None
    function: Callable[..., Any] | None = None
    kwargs: Callable[[Node], dict[str, Any]] = lambda node: {}
    list_input: bool = False
    searchable: bool = False
    elementwise: bool = False
    weights: tuple[str, ...] = field(default_factory=tuple)
    call: Callable[[Node, list[Any]], tuple[Callable[..., Any], tuple[Any, ...]]] | None = None
    module_args: Callable[[Node], tuple[Any, ...]] = lambda node: ()
    loads_tensors: bool = False  # the module builder takes Node.tensors itself

    def emit(self, node: Node, inputs: list[Any]) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """The function, positional args and keyword args codegen calls for ``node``."""
        if self.call is not None:
            fn, args = self.call(node, inputs)
        else:
            fn, args = self.function, ((list(inputs),) if self.list_input else tuple(inputs))
        return fn, args, self.kwargs(node)


REGISTRY: dict[str, OpKind] = {}


def register(kind: OpKind) -> OpKind:
    if kind.name in REGISTRY:
        raise ValueError(f"operator kind {kind.name!r} is registered twice")
    REGISTRY[kind.name] = kind
    return kind


def get(name: str) -> OpKind:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown operator kind {name!r}; known: {sorted(REGISTRY)}") from None


def _fail(node: Node, msg: str, hint: str | None = None) -> ShapeError:
    return ShapeError(msg, node.where(), hint)


def _need_rank(node: Node, shape: Shape, rank: int | tuple[int, ...], what: str = "input") -> None:
    ranks = (rank,) if isinstance(rank, int) else rank
    if not isinstance(shape, tuple) or len(shape) not in ranks:
        want = " or ".join(f"{r}-d" for r in ranks)
        raise _fail(node, f"expects a {want} {what}, got shape {shape}")


def _channels(node: Node, shape: Shape, expected: int, attr: str) -> None:
    if shape[1] != expected:
        raise _fail(
            node,
            f"expects {expected} input channels ({attr}) but its input has {shape[1]} (shape {list(shape)})",
        )


def _spatial(node: Node, size: int, k: int, s: int, p: int, d: int, ceil: bool = False) -> int:
    eff = d * (k - 1) + 1
    span = size + 2 * p - eff
    out = (-(-span // s) if ceil else span // s) + 1  # ceil mode may start a last, partial window
    if ceil and (out - 1) * s >= size + p:
        out -= 1  # the last window must start inside the input (torch; Caffe checks this only when p > 0)
    if out <= 0:
        raise _fail(
            node,
            f"output would be empty: input size {size} with kernel {k}, dilation {d}, padding {p}",
            "use a larger input shape",
        )
    return out


# --- inputs and structural kinds ---------------------------------------------------------------
def _infer_input(node: Node, shapes: list[Shape]) -> Shape:
    shape = tuple(int(d) for d in node.attrs["shape"])
    if any(d <= 0 for d in shape):
        raise _fail(node, f"input shape {list(shape)} has a non-positive dimension")
    return shape


register(OpKind("input", _infer_input, arity=(0, 0)))
def identity(x: torch.Tensor) -> torch.Tensor:
    return x


register(OpKind("identity", lambda n, s: s[0], function=identity))


# --- convolution and linear --------------------------------------------------------------------
def _conv_dims(node: Node) -> tuple[tuple[int, int], ...]:
    a = node.attrs
    return _pair(a["kernel_size"]), _pair(a["stride"]), _pair(a["padding"]), _pair(a["dilation"])


def _infer_conv(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    _need_rank(node, x, 4)
    a = node.attrs
    _channels(node, x, a["in_channels"], "in_channels")
    if a["in_channels"] % a["groups"] or a["out_channels"] % a["groups"]:
        raise _fail(node, f"channels {a['in_channels']}->{a['out_channels']} not divisible by groups {a['groups']}")
    k, s, p, d = _conv_dims(node)
    return (x[0], a["out_channels"], *(_spatial(node, x[i + 2], k[i], s[i], p[i], d[i]) for i in range(2)))


def _conv_params(node: Node, shapes: list[Shape]) -> int:
    a = node.attrs
    k = _pair(a["kernel_size"])
    return a["out_channels"] * (a["in_channels"] // a["groups"]) * k[0] * k[1] + (a["out_channels"] if a["bias"] else 0)


def _conv_flops(node: Node, shapes: list[Shape], out: Shape) -> int:
    a = node.attrs
    k = _pair(a["kernel_size"])
    return 2 * numel(out) * (a["in_channels"] // a["groups"]) * k[0] * k[1]


def _build_conv(node: Node, shapes: list[Shape]) -> nn.Module:
    a = node.attrs
    k, s, p, d = _conv_dims(node)
    return nn.Conv2d(a["in_channels"], a["out_channels"], k, s, p, d, a["groups"], a["bias"])


register(
    OpKind(
        "conv2d", _infer_conv, params=_conv_params, flops=_conv_flops, module=_build_conv,
        searchable=True, weights=("weight", "bias"),
    )
)


def _infer_deconv(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    _need_rank(node, x, 4)
    a = node.attrs
    _channels(node, x, a["in_channels"], "in_channels")
    k, s, p, d = _conv_dims(node)
    op = _pair(a.get("output_padding", 0))
    out = tuple((x[i + 2] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1 for i in range(2))
    if min(out) <= 0:
        raise _fail(node, f"output would be empty: spatial size {out}")
    return (x[0], a["out_channels"], *out)


def _deconv_params(node: Node, shapes: list[Shape]) -> int:
    a = node.attrs
    k = _pair(a["kernel_size"])
    return a["in_channels"] * (a["out_channels"] // a["groups"]) * k[0] * k[1] + (a["out_channels"] if a["bias"] else 0)


def _deconv_flops(node: Node, shapes: list[Shape], out: Shape) -> int:
    a = node.attrs
    k = _pair(a["kernel_size"])
    return 2 * numel(shapes[0]) * (a["out_channels"] // a["groups"]) * k[0] * k[1]


def _build_deconv(node: Node, shapes: list[Shape]) -> nn.Module:
    a = node.attrs
    k, s, p, d = _conv_dims(node)
    return nn.ConvTranspose2d(
        a["in_channels"], a["out_channels"], k, s, p, _pair(a.get("output_padding", 0)), a["groups"], a["bias"], d
    )


register(
    OpKind(
        "conv_transpose2d", _infer_deconv, params=_deconv_params, flops=_deconv_flops, module=_build_deconv,
        weights=("weight", "bias"),
    )
)


def _infer_linear(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    a = node.attrs
    if len(x) < 2 or x[-1] != a["in_features"]:
        raise _fail(node, f"expects {a['in_features']} input features but its input has shape {list(x)}")
    return (*x[:-1], a["out_features"])


register(
    OpKind(
        "linear", _infer_linear,
        params=lambda n, s: (n.attrs["in_features"] + bool(n.attrs["bias"])) * n.attrs["out_features"],
        flops=lambda n, s, o: 2 * numel(o) * n.attrs["in_features"],
        module=lambda n, s: nn.Linear(n.attrs["in_features"], n.attrs["out_features"], n.attrs["bias"]),
        weights=("weight", "bias"),
    )
)


# --- normalisation -----------------------------------------------------------------------------
def _infer_channelwise(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    _need_rank(node, x, (2, 3, 4))
    _channels(node, x, node.attrs["num_features"], "num_features")
    return x


def _build_bn(node: Node, shapes: list[Shape]) -> nn.Module:
    a = node.attrs
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shapes[0])]
    return cls(a["num_features"], eps=a.get("eps", 1e-5), momentum=a.get("momentum", 0.1), affine=a.get("affine", True))


register(
    OpKind(
        "batch_norm", _infer_channelwise,
        params=lambda n, s: 2 * n.attrs["num_features"] if n.attrs.get("affine", True) else 0,
        flops=lambda n, s, o: 2 * numel(o),
        module=_build_bn,
        weights=("weight", "bias", "running_mean", "running_var"),
    )
)


class ChannelAffine(nn.Module):
    """``y = x * weight[c] + bias[c]`` per channel (a Caffe ``Scale`` not folded into a batch norm)."""

    def __init__(self, num_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        y = x * self.weight.view(view)
        return y + self.bias.view(view) if self.bias is not None else y


register(
    OpKind(
        "scale", _infer_channelwise,
        params=lambda n, s: n.attrs["num_features"] * (2 if n.attrs.get("bias", True) else 1),
        flops=lambda n, s, o: 2 * numel(o),
        module=lambda n, s: ChannelAffine(n.attrs["num_features"], n.attrs.get("bias", True)),
        weights=("weight", "bias"),
    )
)

register(
    OpKind(
        "lrn", lambda n, s: s[0],
        flops=lambda n, s, o: numel(o) * (n.attrs["size"] + 3),
        module=lambda n, s: nn.LocalResponseNorm(n.attrs["size"], n.attrs["alpha"], n.attrs["beta"], n.attrs["k"]),
    )
)


# --- activations -------------------------------------------------------------------------------
def _same(node: Node, shapes: list[Shape]) -> Shape:
    return shapes[0]


def _unary(name: str, fn: Callable[..., Any], kwargs: Callable[[Node], dict[str, Any]] | None = None) -> None:
    register(
        OpKind(
            name, _same, flops=lambda n, s, o: numel(o), function=fn, kwargs=kwargs or (lambda n: {}),
            elementwise=True,
        )
    )


_unary("relu", F.relu)
_unary("relu6", F.relu6)
_unary("leaky_relu", F.leaky_relu, lambda n: {"negative_slope": n.attrs["negative_slope"]})
_unary("clip", torch.clamp, lambda n: {"min": n.attrs.get("min"), "max": n.attrs.get("max")})
_unary("sigmoid", torch.sigmoid)
_unary("tanh", torch.tanh)
_unary("hardswish", F.hardswish)
_unary("hardsigmoid", F.hardsigmoid)
_unary("silu", F.silu)
_unary("gelu", F.gelu)
_unary("elu", F.elu, lambda n: {"alpha": n.attrs.get("alpha", 1.0)})
_unary("softmax", F.softmax, lambda n: {"dim": n.attrs["dim"]})
_unary("log_softmax", F.log_softmax, lambda n: {"dim": n.attrs["dim"]})

register(
    OpKind(
        "prelu", _same,
        params=lambda n, s: n.attrs["num_parameters"],
        flops=lambda n, s, o: 2 * numel(o),
        module=lambda n, s: nn.PReLU(n.attrs["num_parameters"]),
        weights=("weight",),
    )
)
register(OpKind("dropout", _same, module=lambda n, s: nn.Dropout(n.attrs.get("p", 0.5))))


# --- pooling -----------------------------------------------------------------------------------
def _infer_pool(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    _need_rank(node, x, 4)
    a = node.attrs
    k, s, p = _pair(a["kernel_size"]), _pair(a["stride"]), _pair(a["padding"])
    d = _pair(a.get("dilation", 1))
    for i in range(2):
        if p[i] * 2 > k[i]:
            raise _fail(node, f"padding {p[i]} is more than half the kernel {k[i]}", "lower pad")
    ceil = a.get("ceil_mode", False)
    return (x[0], x[1], *(_spatial(node, x[i + 2], k[i], s[i], p[i], d[i], ceil) for i in range(2)))


def _pool_flops(node: Node, shapes: list[Shape], out: Shape) -> int:
    k = _pair(node.attrs["kernel_size"])
    return numel(out) * k[0] * k[1]


def _pool_kwargs(node: Node) -> dict[str, Any]:
    a = node.attrs
    kw = {
        "kernel_size": _pair(a["kernel_size"]), "stride": _pair(a["stride"]), "padding": _pair(a["padding"]),
        "ceil_mode": a.get("ceil_mode", False),
    }
    if node.kind == "max_pool2d":
        kw["dilation"] = _pair(a.get("dilation", 1))
    else:
        kw["count_include_pad"] = a.get("count_include_pad", True)
    return kw


register(OpKind("max_pool2d", _infer_pool, flops=_pool_flops, function=F.max_pool2d, kwargs=_pool_kwargs))
register(OpKind("avg_pool2d", _infer_pool, flops=_pool_flops, function=F.avg_pool2d, kwargs=_pool_kwargs))


def _infer_adaptive(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    _need_rank(node, x, 4)
    return (x[0], x[1], *_pair(node.attrs["output_size"]))


for _name, _fn in (("adaptive_avg_pool2d", F.adaptive_avg_pool2d), ("adaptive_max_pool2d", F.adaptive_max_pool2d)):
    register(
        OpKind(
            _name, _infer_adaptive, flops=lambda n, s, o: numel(s[0]), function=_fn,
            kwargs=lambda n: {"output_size": _pair(n.attrs["output_size"])},
        )
    )


def _infer_mean(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    dims = sorted(d % len(x) for d in node.attrs["dim"])
    if 0 in dims:
        raise _fail(node, "reducing over the batch dimension is not supported")
    if node.attrs.get("keepdim", False):
        return tuple(1 if i in dims else s for i, s in enumerate(x))
    return tuple(s for i, s in enumerate(x) if i not in dims)


register(
    OpKind(
        "mean", _infer_mean, flops=lambda n, s, o: numel(s[0]), function=torch.mean,
        kwargs=lambda n: {"dim": tuple(n.attrs["dim"]), "keepdim": n.attrs.get("keepdim", False)},
    )
)


# --- element-wise over several inputs ----------------------------------------------------------
def _infer_broadcast(node: Node, shapes: list[Shape]) -> Shape:
    """Numpy broadcasting of the input shapes, in plain Python (it runs once per element-wise op)."""
    rank = max(len(s) for s in shapes)
    out = [1] * rank
    for s in shapes:
        for i, d in enumerate(s, start=rank - len(s)):
            if d != out[i] and d != 1 and out[i] != 1:
                raise _fail(
                    node, f"input shapes {[list(x) for x in shapes]} do not match",
                    "every input must have the same shape",
                )
            out[i] = d if out[i] == 1 else out[i]
    return tuple(out)


def scaled_sum(*xs: torch.Tensor, coeffs: Sequence[float]) -> torch.Tensor:
    """``sum(c * x)``: Caffe's Eltwise SUM with coefficients."""
    out = xs[0] * coeffs[0]
    for c, x in zip(coeffs[1:], xs[1:], strict=True):
        out = out + x * c
    return out


def _nary(fn2: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def apply(*xs: Any) -> Any:
        out = xs[0]
        for x in xs[1:]:
            out = fn2(out, x)
        return out

    apply.__name__ = f"{fn2.__name__}_n"
    apply.__qualname__ = apply.__name__
    return apply


add_n = _nary(operator.add)
mul_n = _nary(operator.mul)
maximum_n = _nary(torch.maximum)


def _elementwise(name: str, fn: Callable[..., Any], n_ary: Callable[..., Any] | None) -> None:
    def call(node: Node, ins: list[Any]) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        if "scalar" in node.attrs:
            c = node.attrs["scalar"]
            return fn, ((c, ins[0]) if node.attrs.get("scalar_first") else (ins[0], c))
        return (fn if len(ins) <= 2 else n_ary), tuple(ins)

    register(
        OpKind(
            name, _infer_broadcast, arity=(1, None) if n_ary else (1, 2),
            flops=lambda n, s, o: numel(o) * max(1, len(s) - 1 + ("scalar" in n.attrs)),
            function=fn, elementwise=True, call=call,
        )
    )


# Binary and scalar forms are emitted as plain ``operator`` calls so generated code reads `a + b`.
_elementwise("add", operator.add, add_n)
_elementwise("mul", operator.mul, mul_n)
_elementwise("maximum", torch.maximum, maximum_n)
_elementwise("sub", operator.sub, None)
_elementwise("div", operator.truediv, None)

register(
    OpKind(
        "scaled_sum", _infer_broadcast, arity=(1, None), flops=lambda n, s, o: 2 * numel(o) * len(s),
        function=scaled_sum, kwargs=lambda n: {"coeffs": tuple(n.attrs["coeffs"])}, elementwise=True,
    )
)


def _infer_concat(node: Node, shapes: list[Shape]) -> Shape:
    rank = len(shapes[0])
    dim = node.attrs["dim"] % rank
    if dim == 0:
        raise _fail(node, "concatenation along the batch dimension is not supported")
    for s in shapes[1:]:
        if len(s) != rank or any(s[i] != shapes[0][i] for i in range(rank) if i != dim):
            raise _fail(
                node,
                f"inputs {[list(x) for x in shapes]} differ outside the concatenation axis {dim}",
                "every input must match except along the axis",
            )
    return (*shapes[0][:dim], sum(s[dim] for s in shapes), *shapes[0][dim + 1 :])


register(
    OpKind(
        "concat", _infer_concat, arity=(1, None), function=torch.cat, list_input=True,
        kwargs=lambda n: {"dim": n.attrs["dim"]},
    )
)


# --- reshaping ---------------------------------------------------------------------------------
def _infer_flatten(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    start = node.attrs.get("start_dim", 1) % len(x)
    end = node.attrs.get("end_dim", -1) % len(x)
    if start == 0:
        raise _fail(node, "flattening the batch dimension is not supported")
    return (*x[:start], numel(x[start : end + 1]), *x[end + 1 :])


register(
    OpKind(
        "flatten", _infer_flatten, function=torch.flatten,
        kwargs=lambda n: {"start_dim": n.attrs.get("start_dim", 1), "end_dim": n.attrs.get("end_dim", -1)},
    )
)


def reshape_keep_batch(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Reshape every sample to ``shape``, keeping the batch dimension as it is."""
    return x.reshape(x.shape[0], *shape)


def _infer_reshape(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    shape = list(node.attrs["shape"])
    total = numel(x[1:])
    known = numel([d for d in shape if d != -1])
    if shape.count(-1) > 1 or (shape.count(-1) == 1 and total % known) or (-1 not in shape and known != total):
        raise _fail(node, f"cannot reshape a sample of shape {list(x[1:])} to {shape}")
    return (x[0], *(total // known if d == -1 else d for d in shape))


register(
    OpKind("reshape", _infer_reshape, function=reshape_keep_batch, kwargs=lambda n: {"shape": tuple(n.attrs["shape"])})
)


def _infer_narrow(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    a = node.attrs
    dim = a["dim"] % len(x)
    if dim == 0 or a["start"] < 0 or a["length"] <= 0 or a["start"] + a["length"] > x[dim]:
        raise _fail(node, f"slice [{a['start']}, {a['start'] + a['length']}) of axis {dim} is outside shape {list(x)}")
    return (*x[:dim], a["length"], *x[dim + 1 :])


register(
    OpKind(
        "narrow", _infer_narrow, function=torch.narrow,
        kwargs=lambda n: {"dim": n.attrs["dim"], "start": n.attrs["start"], "length": n.attrs["length"]},
    )
)


def crop_like(x: torch.Tensor, ref: torch.Tensor, axis: int, offsets: Sequence[int]) -> torch.Tensor:
    """Caffe ``Crop``: cut ``x`` to ``ref``'s size on every axis from ``axis`` on, at ``offsets``."""
    for i, dim in enumerate(range(axis, x.dim())):
        x = x.narrow(dim, offsets[i], ref.shape[dim])
    return x


def _infer_crop(node: Node, shapes: list[Shape]) -> Shape:
    x, ref = shapes
    axis, offsets = node.attrs["axis"] % len(x), node.attrs["offsets"]
    if axis == 0:
        raise _fail(node, "cropping the batch dimension is not supported")
    out = list(x)
    for i, dim in enumerate(range(axis, len(x))):
        if offsets[i] + ref[dim] > x[dim]:
            raise _fail(node, f"crop of {ref[dim]} at offset {offsets[i]} exceeds axis {dim} of size {x[dim]}")
        out[dim] = ref[dim]
    return tuple(out)


register(
    OpKind(
        "crop", _infer_crop, arity=(2, 2), function=crop_like,
        kwargs=lambda n: {"axis": n.attrs["axis"], "offsets": tuple(n.attrs["offsets"])},
    )
)


def _infer_interpolate(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    _need_rank(node, x, 4)
    a = node.attrs
    if a.get("size") is not None:
        return (x[0], x[1], *_pair(a["size"]))
    sf = a["scale_factor"]
    sf = (sf, sf) if isinstance(sf, (int, float)) else tuple(sf)
    return (x[0], x[1], *(int(math.floor(x[i + 2] * sf[i])) for i in range(2)))


def _interp_kwargs(node: Node) -> dict[str, Any]:
    a = node.attrs
    kw: dict[str, Any] = {"mode": a.get("mode", "nearest")}
    if a.get("size") is not None:
        kw["size"] = _pair(a["size"])
    else:
        kw["scale_factor"] = a["scale_factor"]
    if kw["mode"] in ("linear", "bilinear", "bicubic", "trilinear"):
        kw["align_corners"] = a.get("align_corners", False)
    return kw


register(
    OpKind(
        "interpolate", _infer_interpolate, flops=lambda n, s, o: 4 * numel(o), function=F.interpolate,
        kwargs=_interp_kwargs,
    )
)


def _infer_pad(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    pads = list(node.attrs["pad"])
    out = list(x)
    for i in range(len(pads) // 2):
        dim = len(x) - 1 - i
        out[dim] += pads[2 * i] + pads[2 * i + 1]
    if min(out) <= 0:
        raise _fail(node, f"padding {pads} leaves an empty output from {list(x)}")
    return tuple(out)


register(
    OpKind(
        "pad", _infer_pad, function=F.pad,
        kwargs=lambda n: {"pad": tuple(n.attrs["pad"]), "mode": n.attrs.get("mode", "constant"),
                          "value": n.attrs.get("value", 0.0)} if n.attrs.get("mode", "constant") == "constant"
        else {"pad": tuple(n.attrs["pad"]), "mode": n.attrs["mode"]},
    )
)


# --- opaque calls ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    """Placeholder for the i-th input inside an opaque call's argument template."""

    index: int


def fill_refs(template: Any, values: Sequence[Any]) -> Any:
    """Replace every :class:`Ref` in a nested args template by the matching value."""
    if isinstance(template, Ref):
        return values[template.index]
    if isinstance(template, (list, tuple)):
        return type(template)(fill_refs(t, values) for t in template)
    if isinstance(template, dict):
        return {k: fill_refs(v, values) for k, v in template.items()}
    return template


@dataclass(frozen=True)
class Value:
    """The "shape" of a non-tensor value an opaque call returns (``x.size()``): the value itself."""

    value: Any


def _shape_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(_shape_of(v) for v in value)
    return Value(value)


def _infer_opaque(node: Node, shapes: list[Shape]) -> Shape:
    """Run the call once on zeros of the input shapes: the only way to know an unknown op's shape."""
    a = node.attrs

    def zeros(s: Any) -> Any:
        if isinstance(s, Value):
            return s.value
        if s and isinstance(s[0], tuple):
            return tuple(zeros(x) for x in s)
        return torch.zeros(s)

    args = fill_refs(a["args"], [zeros(s) for s in shapes])
    kwargs = fill_refs(a.get("kwargs", {}), [zeros(s) for s in shapes])
    try:
        with torch.no_grad():
            if a.get("method"):
                out = getattr(args[0], a["method"])(*args[1:], **kwargs)
            else:
                out = a["target"](*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        raise _fail(node, f"calling it on inputs of shape {shapes} failed: {exc}") from exc
    return _shape_of(out)


register(OpKind("opaque", _infer_opaque, arity=(0, None)))


def _infer_getitem(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    idx = node.attrs["index"]
    if not isinstance(x, tuple) or not x or not isinstance(x[0], tuple):
        raise _fail(node, f"indexes a value that is not a tuple of tensors (shape {x})")
    return x[idx]


register(
    OpKind(
        "getitem", _infer_getitem,
        call=lambda n, ins: (operator.getitem, (ins[0], n.attrs["index"])),
    )
)


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


# --- prototxt forks and Caffe variants: ShuffleChannel, LRN within a channel ---------------------
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: channel ``g * (C // groups) + i`` moves to ``i * groups + g``."""
    n, c = x.shape[0], x.shape[1]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


def _infer_channel_shuffle(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    if not isinstance(x, tuple) or len(x) < 2:
        raise _fail(node, f"expects an input with channels, got shape {x}")
    groups = node.attrs["groups"]
    if groups <= 0 or x[1] % groups:
        raise _fail(node, f"groups {groups} does not divide the {x[1]} channels of shape {list(x)}")
    return x


register(
    OpKind(
        "channel_shuffle", _infer_channel_shuffle, function=channel_shuffle,
        kwargs=lambda n: {"groups": n.attrs["groups"]},
    )
)


def lrn_within_channel(x: torch.Tensor, size: int, alpha: float, beta: float) -> torch.Tensor:
    """Caffe's LRN WITHIN_CHANNEL: ``x * (1 + alpha * mean(x^2))^-beta``, the mean over the
    zero-padded ``size x size`` window of the same channel (always divided by ``size^2``)."""
    mean = F.avg_pool2d(x * x, size, stride=1, padding=(size - 1) // 2, count_include_pad=True)
    return x * (1 + alpha * mean).pow(-beta)


def _infer_lrn_within_channel(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    _need_rank(node, x, 4)
    size = node.attrs["size"]
    if size <= 0 or size % 2 == 0:
        raise _fail(node, f"size {size} must be odd and positive")
    return x


register(
    OpKind(
        "lrn_within_channel", _infer_lrn_within_channel,
        flops=lambda n, s, o: numel(o) * (n.attrs["size"] ** 2 + 5), function=lrn_within_channel,
        kwargs=lambda n: {"size": n.attrs["size"], "alpha": n.attrs["alpha"], "beta": n.attrs["beta"]},
    )
)


# --- kinds the ONNX frontend maps onto: instance norm, gather at constant indices, float casts ---------
def _infer_instance_norm(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    _need_rank(node, x, (3, 4, 5))
    _channels(node, x, node.attrs["num_features"], "num_features")
    return x


def _build_instance_norm(node: Node, shapes: list[Shape]) -> nn.Module:
    """``InstanceNorm{1,2,3}d`` by rank, with the frontend's scale and bias when it has them."""
    a = node.attrs
    cls = {3: nn.InstanceNorm1d, 4: nn.InstanceNorm2d, 5: nn.InstanceNorm3d}[len(shapes[0])]
    mod = cls(a["num_features"], eps=a.get("eps", 1e-5), affine=a.get("affine", True))
    with torch.no_grad():
        for key, value in node.tensors.items():
            getattr(mod, key).copy_(value.reshape(-1))
    return mod


register(
    OpKind(
        "instance_norm", _infer_instance_norm,
        params=lambda n, s: 2 * n.attrs["num_features"] if n.attrs.get("affine", True) else 0,
        flops=lambda n, s, o: 5 * numel(o), module=_build_instance_norm, weights=("weight", "bias"),
        loads_tensors=True,
    )
)


def take_along(x: torch.Tensor, dim: int, index: Sequence[int], index_shape: Sequence[int]) -> torch.Tensor:
    """``x`` read at constant ``index`` along ``dim`` (ONNX ``Gather``): ``index_shape`` replaces that axis."""
    picked = x.index_select(dim, torch.tensor(index, dtype=torch.long, device=x.device))
    return picked.reshape(*x.shape[:dim], *index_shape, *x.shape[dim + 1 :])


def _infer_index_select(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    a = node.attrs
    dim = a["dim"]
    if not 0 < dim < len(x) or not a["index"] or any(not 0 <= i < x[dim] for i in a["index"]):
        raise _fail(node, f"indices {list(a['index'])} of axis {dim} are outside shape {list(x)}")
    if numel(tuple(a["index_shape"])) != len(a["index"]):
        raise _fail(node, f"{len(a['index'])} indices do not fill the index shape {list(a['index_shape'])}")
    return (*x[:dim], *a["index_shape"], *x[dim + 1 :])


register(
    OpKind(
        "index_select", _infer_index_select, function=take_along,
        kwargs=lambda n: {k: n.attrs[k] if k == "dim" else tuple(n.attrs[k]) for k in ("dim", "index", "index_shape")},
    )
)


def to_dtype(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """``x`` as floating-point ``dtype`` (``"float32"``, ``"float16"``, ``"float64"``)."""
    return x.to(getattr(torch, dtype))


register(OpKind("cast", _same, flops=lambda n, s, o: numel(o), function=to_dtype,
                kwargs=lambda n: {"dtype": n.attrs["dtype"]}))
_unary("rsqrt", torch.rsqrt)  # 1 / sqrt(x): the inverse standard deviation a LayerNormalization may output
_unary("erf", torch.erf)  # exporters before opset 20 write GELU as x * (1 + erf(x / sqrt 2)) / 2
_unary("softplus", F.softplus)  # log(1 + exp(x)); Mish is x * tanh(softplus(x))
_unary("gelu_tanh", F.gelu, lambda n: {"approximate": "tanh"})
