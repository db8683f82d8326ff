"""Converters for Caffe's vision layers (Convolution, Deconvolution, Pooling, LRN, Crop) and the
spatial layers of common forks (DeepLab's ``Interp``, ShuffleNet's ``ShuffleChannel``).

Each converter reads one layer, checks what Caffe checks (sizes positive, groups dividing the
channels), adds nodes and binds the layer's tops.
"""

from __future__ import annotations

from typing import Any

from ....proto import caffe_pb2
from ...errors import CompileError
from .builder import Builder, Layer, axis_of, f32, hw, positive

_CONV_FIELDS = (
    "num_output",
    "bias_term",
    "pad",
    "kernel_size",
    "stride",
    "dilation",
    "pad_h",
    "pad_w",
    "kernel_h",
    "kernel_w",
    "stride_h",
    "stride_w",
    "group",
    "weight_filler",
    "bias_filler",
    "engine",
    "axis",
    "force_nd_im2col",
)


def conv(b: Builder, layer: Layer) -> None:
    """Convolution / Deconvolution -> ``conv2d`` / ``conv_transpose2d``."""
    p = b.params(layer, "convolution_param", _CONV_FIELDS)
    (x,) = b.bottoms(layer)
    shape = b.shape(x)
    if p.axis != 1:
        raise CompileError(f"convolution_param.axis {p.axis} is not supported (only 1, channels)", layer.src)
    if len(shape) != 4:
        raise CompileError(f"{layer.type} expects a 4-d N,C,H,W input, got shape {list(shape)}", layer.src)
    if not p.HasField("num_output"):
        raise CompileError("convolution_param.num_output is required", layer.src)
    if not p.kernel_size and not (p.HasField("kernel_h") or p.HasField("kernel_w")):
        raise CompileError("convolution_param needs kernel_size (or kernel_h and kernel_w)", layer.src)
    kernel = hw(layer, p, "kernel_size", "kernel", 0)
    stride = hw(layer, p, "stride", "stride", 1)
    dilation = _dilation(layer, p)
    out, groups = int(p.num_output), int(p.group)
    positive(layer, "convolution_param", num_output=out, kernel_size=kernel, stride=stride, dilation=dilation)
    positive(layer, "convolution_param", group=groups)
    if shape[1] % groups or out % groups:
        raise CompileError(
            f"convolution_param.group {groups} must divide both the input channels ({shape[1]}) and "
            f"num_output ({out})",
            layer.src,
        )
    attrs = {
        "in_channels": shape[1],
        "out_channels": out,
        "kernel_size": kernel,
        "stride": stride,
        "padding": hw(layer, p, "pad", "pad", 0),
        "dilation": dilation,
        "groups": groups,
        "bias": bool(p.bias_term),
    }
    kind = "conv2d"
    if layer.type == "Deconvolution":
        kind, attrs["output_padding"] = "conv_transpose2d", (0, 0)
    b.bind(layer, b.add(layer, kind, attrs, [x]))


def _dilation(layer: Layer, p: Any) -> tuple[int, int]:
    d = list(p.dilation)
    if len(d) > 2:
        raise CompileError(f"dilation has {len(d)} values; only 2-d layers are supported", layer.src)
    return (1, 1) if not d else (int(d[0]), int(d[-1]))


_POOL_FIELDS = (
    "pool",
    "pad",
    "pad_h",
    "pad_w",
    "kernel_size",
    "kernel_h",
    "kernel_w",
    "stride",
    "stride_h",
    "stride_w",
    "engine",
    "global_pooling",
    "round_mode",
    "ceil_mode",
)


def _ceil(b: Builder, layer: Layer, p: Any) -> bool:
    """Caffe's ``round_mode`` (BVLC), or ``ceil_mode`` (forks), or the dialect's default rounding."""
    P = caffe_pb2.PoolingParameter
    if p.HasField("ceil_mode"):
        if p.HasField("round_mode"):
            raise CompileError("give either round_mode or ceil_mode, not both", layer.src)
        return bool(p.ceil_mode)
    default_round = P.FLOOR if b.dialect == "automtl" else P.CEIL
    return (p.round_mode if p.HasField("round_mode") else default_round) == P.CEIL


def pool(b: Builder, layer: Layer) -> None:
    """Pooling -> ``max_pool2d`` / ``avg_pool2d`` with Caffe's rounding, or global pooling."""
    P = caffe_pb2.PoolingParameter
    p = b.params(layer, "pooling_param", _POOL_FIELDS)
    (x,) = b.bottoms(layer)
    shape = b.shape(x)
    if len(shape) != 4:
        raise CompileError(f"Pooling expects a 4-d N,C,H,W input, got shape {list(shape)}", layer.src)
    if p.pool == P.STOCHASTIC:
        raise CompileError("STOCHASTIC pooling is not supported (only MAX and AVE)", layer.src)
    method = "max" if p.pool == P.MAX else "avg"
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise CompileError("global_pooling takes no kernel size", layer.src)
        if hw(layer, p, "pad", "pad", 0) != (0, 0) or hw(layer, p, "stride", "stride", 1) != (1, 1):
            raise CompileError("global_pooling needs pad 0 and stride 1", layer.src)
        b.bind(layer, b.add(layer, f"adaptive_{method}_pool2d", {"output_size": (1, 1)}, [x]))
        return
    if not p.HasField("kernel_size") and not (p.HasField("kernel_h") or p.HasField("kernel_w")):
        raise CompileError("pooling_param needs kernel_size (or kernel_h and kernel_w, or global_pooling)", layer.src)
    kernel = hw(layer, p, "kernel_size", "kernel", 0)
    stride = hw(layer, p, "stride", "stride", 1)
    pad = hw(layer, p, "pad", "pad", 0)
    positive(layer, "pooling_param", kernel_size=kernel, stride=stride)
    ceil = _ceil(b, layer, p)
    if ceil:
        for i in range(2):
            size, k, s, q = shape[2 + i], kernel[i], stride[i], pad[i]
            span = size + 2 * q - k
            if span >= 0 and q == 0 and (-(-span // s)) * s >= size:
                raise CompileError(
                    f"with kernel {k} < stride {s} and no padding, Caffe's ceil rounding makes an empty last "
                    f"window over an input of {size}; its output is undefined",
                    layer.src,
                    "set round_mode: FLOOR",
                )
    attrs: dict[str, Any] = {"kernel_size": kernel, "stride": stride, "padding": pad, "ceil_mode": ceil}
    if method == "avg":
        attrs["count_include_pad"] = True
    b.bind(layer, b.add(layer, f"{method}_pool2d", attrs, [x]))


def lrn(b: Builder, layer: Layer) -> None:
    """LRN -> ``lrn`` (across channels, torch's LocalResponseNorm) or ``lrn_within_channel``.

    WITHIN_CHANNEL is Caffe's ``x * (1 + alpha * mean(x^2))^-beta``, the mean over a zero-padded
    local_size x local_size window of the same channel; Caffe ignores ``k`` there (its shift is 1).
    """
    LRN = caffe_pb2.LRNParameter
    p = b.params(layer, "lrn_param", ("local_size", "alpha", "beta", "norm_region", "k", "engine"))
    if p.local_size % 2 == 0:
        raise CompileError(f"LRN local_size must be odd, got {p.local_size}", layer.src)
    (x,) = b.bottoms(layer)
    shape = b.shape(x)
    if len(shape) != 4:
        raise CompileError(f"LRN expects a 4-d N,C,H,W input, got shape {list(shape)}", layer.src)
    attrs = {"size": int(p.local_size), "alpha": f32(p.alpha), "beta": f32(p.beta)}
    if p.norm_region == LRN.WITHIN_CHANNEL:
        b.bind(layer, b.add(layer, "lrn_within_channel", attrs, [x]))
    else:
        b.bind(layer, b.add(layer, "lrn", {**attrs, "k": f32(p.k)}, [x]))


def shuffle_channel(b: Builder, layer: Layer) -> None:
    """ShuffleChannel (ShuffleNet forks) -> ``channel_shuffle``: interleave ``group`` channel groups."""
    p = b.params(layer, "shuffle_channel_param", ("group",))
    (x,) = b.bottoms(layer)
    shape = b.shape(x)
    if len(shape) < 2:
        raise CompileError(f"ShuffleChannel expects an input with channels, got shape {list(shape)}", layer.src)
    group = int(p.group)
    positive(layer, "shuffle_channel_param", group=group)
    if shape[1] % group:
        raise CompileError(
            f"shuffle_channel_param.group {group} does not divide the {shape[1]} input channels", layer.src
        )
    b.bind(layer, b.add(layer, "channel_shuffle", {"groups": group}, [x]))


def crop(b: Builder, layer: Layer) -> None:
    """Crop -> ``crop``: cut the first bottom to the second's size from ``axis`` on."""
    p = b.params(layer, "crop_param", ("axis", "offset"))
    x, ref = b.bottoms(layer, 2)
    rank = len(b.shape(x))
    axis = axis_of(layer, int(p.axis), rank, "crop axis")
    n = rank - axis
    offsets = [int(o) for o in p.offset]
    if not offsets:
        offsets = [0] * n
    elif len(offsets) == 1:
        offsets = offsets * n
    elif len(offsets) != n:
        raise CompileError(f"crop_param has {len(offsets)} offsets for {n} cropped axes", layer.src)
    if len(b.shape(ref)) != rank:
        raise CompileError(f"Crop bottoms have ranks {rank} and {len(b.shape(ref))}", layer.src)
    b.bind(layer, b.add(layer, "crop", {"axis": axis, "offsets": offsets}, [x, ref]))


def interp(b: Builder, layer: Layer) -> None:
    """Interp (DeepLab / PSPNet forks) -> bilinear ``interpolate`` with aligned corners."""
    p = b.params(layer, "interp_param", ("height", "width", "zoom_factor", "shrink_factor", "pad_beg", "pad_end"))
    xs = b.bottoms(layer, (1, 2))
    shape = b.shape(xs[0])
    if len(shape) != 4:
        raise CompileError(f"Interp expects a 4-d input, got shape {list(shape)}", layer.src)
    if p.pad_beg != 0 or p.pad_end != 0:
        raise CompileError("Interp pad_beg / pad_end are not supported", layer.src)
    if p.zoom_factor < 1 or p.shrink_factor < 1:
        raise CompileError(
            f"Interp zoom_factor {p.zoom_factor} / shrink_factor {p.shrink_factor} must be at least 1", layer.src
        )
    if len(xs) == 2:
        size = tuple(b.shape(xs[1])[2:])
    elif p.HasField("height") or p.HasField("width"):
        size = (int(p.height), int(p.width))
    else:
        size = tuple(shape[2:])
        if p.shrink_factor != 1:
            size = tuple((s - 1) // int(p.shrink_factor) + 1 for s in size)
        if p.zoom_factor != 1:
            size = tuple(s + (s - 1) * (int(p.zoom_factor) - 1) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise CompileError(f"Interp output size {list(size)} is empty", layer.src)
    attrs = {"size": size, "scale_factor": None, "mode": "bilinear", "align_corners": True}
    b.bind(layer, b.add(layer, "interpolate", attrs, [xs[0]]))
