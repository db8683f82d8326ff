"""``Resize`` / ``Upsample`` onto ``F.interpolate``, only where torch computes the same numbers.

ONNX maps an output coordinate ``x`` to an input one by its ``coordinate_transformation_mode``
and, for ``nearest``, rounds it by its ``nearest_mode``; torch has fewer combinations:

- ``nearest``: floor of ``x / scale`` (ONNX ``asymmetric`` + ``floor``); ``nearest-exact``:
  ``half_pixel`` + ``round_prefer_ceil``. For integer upscales ``half_pixel`` never meets a tie,
  so either rounding that prefers a side matches torch's ``nearest``; ``floor`` / ``ceil`` do not.
- ``bilinear`` / ``bicubic``: ``align_corners`` (``(in - 1) / (out - 1)``, with whole output
  sizes: ONNX divides by ``in * scale`` itself) or ``half_pixel``.
- ``pytorch_half_pixel`` samples ``x = 0`` along an output axis of length 1 where torch samples
  the centre: that axis is cut to its first element first (then 1 -> 1 is the identity).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import BATCH
from .table import handles

if TYPE_CHECKING:
    from .reader import Reader

_HALF = ("half_pixel", "pytorch_half_pixel")


@handles("Resize", "Upsample")
def _resize(r: Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    if len(shape) != 4:
        raise r.error(f"only 4-D (N, C, H, W) resizing is supported, got {list(shape)}")
    mode = a.get("mode", "nearest")
    sizes = scales = None
    if node.op_type == "Upsample" or r.opset < 11:
        ctm, nearest = "asymmetric", "floor"
        old = node.op_type == "Upsample" and r.opset < 9
        scales = np.asarray(a["scales"]) if old else r.const(node.input[1], "scales")
    else:
        ctm = a.get("coordinate_transformation_mode", "half_pixel")
        nearest = a.get("nearest_mode", "round_prefer_floor")
        scales = r.opt_const(node, 2, "scales")
        if len(node.input) > 3 and node.input[3]:
            name = node.input[3]
            sizes = r.consts[name] if name in r.consts else r.const(name, "sizes")
        scales = None if scales is not None and scales.size == 0 else scales
        sizes = None if sizes is not None and sizes.size == 0 else sizes
        if ctm == "tf_crop_and_resize":
            raise r.error("coordinate_transformation_mode 'tf_crop_and_resize' is not supported")
        if sizes is not None and a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise r.error("keep_aspect_ratio_policy other than 'stretch' is not supported")
    axes = [int(i) % 4 for i in a.get("axes", range(4))]
    if sizes is not None:
        given = list(sizes.reshape(-1))
        if len(given) != len(axes):
            raise r.error(f"{len(given)} sizes for {len(axes)} axes")
        full = list(shape)
        for ax, s in zip(axes, given, strict=True):
            full[ax] = shape[0] if s is BATCH else int(s)
        if full[:2] != list(shape[:2]):
            raise r.error(f"resizing {list(shape)} to {full} changes the batch or channel dimension")
        out = [full[2], full[3]]
        scale = [out[i] / shape[i + 2] for i in range(2)]
    elif scales is not None:
        given_s = [float(v) for v in np.asarray(scales).reshape(-1)]
        if len(given_s) != len(axes):
            raise r.error(f"{len(given_s)} scales for {len(axes)} axes")
        full_s = [1.0] * 4
        for ax, s in zip(axes, given_s, strict=True):
            full_s[ax] = s
        if full_s[:2] != [1.0, 1.0]:
            raise r.error(f"scales {full_s} resize the batch or channel dimension")
        if min(full_s) <= 0:
            raise r.error(f"scales {full_s} are not positive")
        scale = full_s[2:]
        out = [math.floor(shape[i + 2] * scale[i]) for i in range(2)]
    else:
        raise r.error("Resize needs scales or sizes")
    if min(out) < 1:
        raise r.error(f"resizing {list(shape)} by {scale} gives an empty output")
    whole = sizes is not None or all(shape[i + 2] * scale[i] == out[i] for i in range(2))
    if a.get("antialias", 0) and any(o < i for o, i in zip(out, shape[2:], strict=True)):
        raise r.error("antialiased downsampling is not supported")
    if ctm == "half_pixel_symmetric":
        if not whole:
            raise r.error("half_pixel_symmetric with scales that give fractional output sizes is not supported")
        ctm = "half_pixel"  # the same mapping when in * scale is a whole size
    cut = [i for i in range(2) if ctm == "pytorch_half_pixel" and out[i] == 1 and shape[i + 2] > 1]
    factors = [1.0 if i in cut else out[i] / shape[i + 2] if sizes is not None else scale[i] for i in range(2)]
    attrs: dict[str, Any] = {"mode": _torch_mode(r, a, mode, ctm, nearest, factors, whole, bool(cut))}
    attrs["align_corners"] = ctm == "align_corners" and mode != "nearest"
    for i in cut:  # ONNX samples x = 0 there
        x = r.add("narrow", {"dim": i + 2, "start": 0, "length": 1}, [x], hint=r.hint_suffix(f"first{i}"))
    if sizes is not None:
        attrs.update(size=tuple(out), scale_factor=None)
    else:
        attrs.update(size=None, scale_factor=tuple(factors))
    r.out(r.add("interpolate", attrs, [x]))


def _torch_mode(
    r: Reader, a: dict[str, Any], mode: str, ctm: str, nearest: str, factors: list[float], whole: bool, cut: bool
) -> str:
    """The ``F.interpolate`` mode computing what ONNX does, or an error naming the combination."""
    if mode == "nearest":
        integer_up = all(f >= 1 and float(f).is_integer() for f in factors)
        if ctm == "asymmetric" and nearest == "floor":
            return "nearest"
        if ctm in _HALF and nearest == "round_prefer_ceil":
            return "nearest-exact"
        if ctm in _HALF and nearest == "round_prefer_floor" and integer_up:
            return "nearest"  # no ties at integer upscales: both roundings agree with floor(x / scale)
        raise r.error(
            f"nearest resize with coordinate_transformation_mode={ctm!r}, nearest_mode={nearest!r} "
            f"and factors {factors} has no exact torch equivalent"
        )
    if mode in ("linear", "bilinear", "cubic"):
        if mode == "cubic":
            if abs(float(a.get("cubic_coeff_a", -0.75)) + 0.75) > 1e-6:
                raise r.error("cubic resize with cubic_coeff_a other than -0.75 is not supported")
            if a.get("exclude_outside", 0):
                raise r.error("cubic resize with exclude_outside=1 is not supported")
            if cut:
                raise r.error("cubic pytorch_half_pixel resize to an output length of 1 is not supported")
        if ctm == "align_corners" and not whole:
            raise r.error("align_corners resize by scales that give fractional output sizes has no torch "
                          "equivalent", "give sizes instead of scales")
        if ctm not in ("align_corners", *_HALF):
            raise r.error(
                f"{mode} resize with coordinate_transformation_mode={ctm!r} has no torch equivalent",
                "torch uses half_pixel (align_corners=False) or align_corners",
            )
        return "bicubic" if mode == "cubic" else "bilinear"
    raise r.error(f"resize mode {mode!r} is not supported")
