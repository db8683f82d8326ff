"""Caffe prototxt frontend: a deploy / train_val ``NetParameter`` text file -> IR :class:`Graph`.

The text is parsed against ``proto/caffe.proto`` (BVLC Caffe's schema plus AutoMTL's dialect
fields) into a ``caffe_pb2.NetParameter``; each layer then becomes one or more IR operators whose
shapes are inferred as they are created (a convolution needs its input's channel count). Blob
names are rebound as layers write them, so in-place layers (``top == bottom``) chain naturally.

Decisions worth knowing:

* ``BatchNorm`` + ``Scale`` fold into one affine ``batch_norm``; a ``Scale`` without a bias term
  folds too, its bias (fixed at 0 in Caffe) becomes a learnable bias initialised to 0.
  ``momentum = 1 - moving_average_fraction``. ``use_global_stats`` only matters in training mode
  (eval mode always uses the running statistics) and is not represented.
* Train-only layers (those excluded by the net's state, TEST by default; losses, ``Accuracy``,
  ``Silence``) are skipped: a train_val file compiles to its test-phase network up to the loss.
  Data layers become graph inputs (their label tops may only feed skipped layers).
* V1 files (``layers { type: CONVOLUTION }``) are converted layer by layer to the current format.
* Fields that would change a shape or a value and that the frontend does not implement are
  rejected with the file, line and layer; learning-only fields (``param``, fillers, ``engine``,
  ``loss_weight``, ``propagate_down``) are ignored.
* The AutoMTL dialect (``input: "blob1"`` while the first layer reads ``data``, ``inplace``,
  torch-style ``batch_norm_param``) binds the lone input to the first layer's unknown bottom,
  makes a lone ``BatchNorm`` affine (torch's BatchNorm2d) and rounds pooling down by default.

Parsing uses a small tokenizer over the same schema (``protobuf``'s pure-Python ``text_format``
takes ~35 ms for a ResNet-50 deploy file); anything it does not handle exactly (unusual syntax,
any error) goes to ``text_format.Parse``, which gives the authoritative result or error.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor

from ...proto import caffe_pb2
from ..errors import CompileError, Source
from ..ir import Graph, Node, Shape
from ..ops import get
from ..passes import run_all

DIALECTS = ("auto", "caffe", "automtl")

# ---------------------------------------------------------------------------------------------
# Parsing: a fast path for the plain text-format subset every real prototxt uses, with
# protobuf's own text_format parser as the reference (and the source of every syntax error).
# ---------------------------------------------------------------------------------------------
# Tokens: words (names, numbers, enum values), punctuation, newlines (to count lines), strings,
# comments; the most frequent first, since that order is what makes findall fast.
_TOKEN = re.compile(r"""[^\s{}<>:\[\],;#"']+|[{}<>:\[\],;]|\n|"(?:[^"\\\n]|\\.)*"|#[^\n]*|'(?:[^'\\\n]|\\.)*'|\S""")
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?[fF]?\Z")
_SPECIAL_FLOATS = {
    "inf": math.inf,
    "infinity": math.inf,
    "-inf": -math.inf,
    "-infinity": -math.inf,
    "nan": math.nan,
    "-nan": math.nan,
}
_BOOLS = {"true": True, "True": True, "t": True, "1": True, "false": False, "False": False, "f": False, "0": False}
_INT_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
}
_FLOAT_TYPES = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}


class _Fallback(Exception):
    """Internal: the fast parser met something it does not handle; use text_format instead."""


_FIELD_TABLES: dict[str, dict[str, tuple[Any, ...]]] = {}


def _is_repeated(fd: Any) -> bool:
    """``FieldDescriptor.is_repeated`` (protobuf >= 6.31) or ``label`` (removed in protobuf 7)."""
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def _fields(desc: Any) -> dict[str, tuple[Any, ...]]:
    """name -> (kind, repeated, conversion data) for a message descriptor, computed once."""
    table = _FIELD_TABLES.get(desc.full_name)
    if table is None:
        table = {}
        for f in desc.fields:
            repeated = _is_repeated(f)
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                table[f.name] = ("msg", repeated, f.message_type)
            elif f.type == FieldDescriptor.TYPE_ENUM:
                values = {v.name: v.number for v in f.enum_type.values}
                table[f.name] = ("enum", repeated, (values, set(values.values())))
            elif f.type in _INT_TYPES:
                unsigned = f.type in (
                    FieldDescriptor.TYPE_UINT32,
                    FieldDescriptor.TYPE_UINT64,
                    FieldDescriptor.TYPE_FIXED32,
                    FieldDescriptor.TYPE_FIXED64,
                )
                table[f.name] = ("int", repeated, unsigned)
            elif f.type in _FLOAT_TYPES:
                table[f.name] = ("float", repeated, None)
            elif f.type == FieldDescriptor.TYPE_BOOL:
                table[f.name] = ("bool", repeated, None)
            elif f.type == FieldDescriptor.TYPE_STRING:
                table[f.name] = ("str", repeated, None)
            else:
                table[f.name] = ("other", repeated, None)
        _FIELD_TABLES[desc.full_name] = table
    return table


def _scalar(kind: str, data: Any, tok: str) -> Any:
    if kind == "int":
        if not _INT.match(tok) or (data and tok[0] == "-"):
            raise _Fallback
        return int(tok)
    if kind == "float":
        if _FLOAT.match(tok):
            return float(tok.rstrip("fF"))
        special = _SPECIAL_FLOATS.get(tok.lower())
        if special is None:
            raise _Fallback
        return special
    if kind == "str":
        if len(tok) < 2 or tok[0] not in "\"'" or tok[-1] != tok[0] or "\\" in tok:
            raise _Fallback
        return tok[1:-1]
    if kind == "bool":
        value = _BOOLS.get(tok)
        if value is None:
            raise _Fallback
        return value
    if kind == "enum":
        names, numbers = data
        if tok in names:
            return names[tok]
        if _INT.match(tok) and int(tok) in numbers:
            return int(tok)
        raise _Fallback
    raise _Fallback


def _fast_parse(text: str, net: Any) -> dict[str, list[int]]:
    """Fill ``net`` from ``text``; return the line of every top-level field, by field name.

    Raises :class:`_Fallback` for anything outside the plain subset (``<>`` delimiters, escapes,
    string concatenation, extensions, lists of messages, non-decimal integers) and for any error.
    """
    toks = _TOKEN.findall(text)
    lines: dict[str, list[int]] = {}
    stack = [(net, _fields(net.DESCRIPTOR))]
    msg, table = stack[-1]
    line = 1
    i, n = 0, len(toks)
    try:
        while i < n:
            tok = toks[i]
            i += 1
            c = tok[0]
            if c == "\n":
                line += 1
                continue
            if c == "#" or c == "," or c == ";":
                continue
            if c == "}":
                if len(stack) == 1:
                    raise _Fallback
                stack.pop()
                msg, table = stack[-1]
                continue
            spec = table.get(tok)
            if spec is None:
                raise _Fallback
            if len(stack) == 1:
                lines.setdefault(tok, []).append(line)
            kind, repeated, data = spec
            while toks[i] == "\n":
                line += 1
                i += 1
            sep = toks[i]
            if kind == "msg":
                if sep == ":":
                    i += 1
                    while toks[i] == "\n":
                        line += 1
                        i += 1
                    sep = toks[i]
                if sep != "{":
                    raise _Fallback
                i += 1
                if repeated:
                    sub = getattr(msg, tok).add()
                else:
                    if msg.HasField(tok):
                        raise _Fallback
                    sub = getattr(msg, tok)
                    sub.SetInParent()
                stack.append((sub, _fields(data)))
                msg, table = stack[-1]
                continue
            if sep != ":":
                raise _Fallback
            i += 1
            while toks[i] == "\n":
                line += 1
                i += 1
            value = toks[i]
            i += 1
            if value == "[":
                if not repeated:
                    raise _Fallback
                target = getattr(msg, tok)
                expect_value = True
                while True:
                    v = toks[i]
                    i += 1
                    if v == "\n":
                        line += 1
                    elif v == "]" and (not expect_value or len(target) == 0):
                        break
                    elif expect_value:
                        target.append(_scalar(kind, data, v))
                        expect_value = False
                    elif v == ",":
                        expect_value = True
                    else:
                        raise _Fallback
                continue
            if repeated:
                getattr(msg, tok).append(_scalar(kind, data, value))
            else:
                if msg.HasField(tok):
                    raise _Fallback
                setattr(msg, tok, _scalar(kind, data, value))
    except (IndexError, ValueError, TypeError, AttributeError) as exc:
        raise _Fallback from exc
    if len(stack) != 1:
        raise _Fallback
    return lines


def _scan_top_level(text: str) -> list[tuple[str, int, int]]:
    """(field name, line, offset) of every top-level field, skipping comments and strings."""
    out: list[tuple[str, int, int]] = []
    depth, line, expect_name = 0, 1, True
    for m in _TOKEN.finditer(text):
        tok = m.group()
        c = tok[0]
        if c == "\n":
            line += 1
        elif c in "{<":
            depth += 1
            expect_name = True
        elif c in "}>":
            depth -= 1
            expect_name = True
        elif c in "#,;[]":
            continue
        elif c == ":":
            expect_name = False
        elif depth == 0 and expect_name and (c.isalpha() or c == "_"):
            out.append((tok, line, m.start()))
        else:
            expect_name = True
    return out


def parse(text: str, file: str = "<string>") -> tuple[Any, dict[str, list[int]]]:
    """Parse prototxt ``text`` into a ``caffe_pb2.NetParameter``.

    Returns the message and the line of each top-level field occurrence (``lines["layer"][i]``
    is where ``layer[i]`` starts). Syntax and schema errors raise a :class:`CompileError` with
    the file, line and column, and the enclosing layer when there is one.
    """
    net = caffe_pb2.NetParameter()
    try:
        return net, _fast_parse(text, net)
    except _Fallback:
        pass
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        reason = re.sub(r"^\d+:\d+ : ", "", str(exc))
        layer = _enclosing_layer(text, line)
        raise CompileError(
            f"cannot parse the prototxt (column {col}): {reason}",
            Source(file=file, line=line, layer=layer[0] if layer else None, layer_type=layer[1] if layer else None),
        ) from None
    lines: dict[str, list[int]] = {}
    for name, line, _ in _scan_top_level(text):
        lines.setdefault(name, []).append(line)
    return net, lines


def _enclosing_layer(text: str, line: int | None) -> tuple[str, str] | None:
    """Name and type of the top-level layer whose text contains ``line`` (for syntax errors)."""
    if line is None:
        return None
    start = None
    for name, l0, off in _scan_top_level(text):
        if l0 > line:
            break
        start = off if name in ("layer", "layers") else None
    if start is None:
        return None
    chunk = text[start : start + 2000]
    nm = re.search(r"""\bname\s*:\s*["']([^"'\n]*)["']""", chunk)
    ty = re.search(r"""\btype\s*:\s*["']?([A-Za-z0-9_]+)""", chunk)
    return (nm.group(1) if nm else "?", ty.group(1) if ty else "layer")


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------
_V1_TYPES = {
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "POOLING": "Pooling",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "TANH": "TanH",
    "INNER_PRODUCT": "InnerProduct",
    "DROPOUT": "Dropout",
    "LRN": "LRN",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "ACCURACY": "Accuracy",
    "CONCAT": "Concat",
    "ELTWISE": "Eltwise",
    "FLATTEN": "Flatten",
    "SLICE": "Slice",
    "SPLIT": "Split",
    "DATA": "Data",
    "IMAGE_DATA": "ImageData",
    "MEMORY_DATA": "MemoryData",
    "DUMMY_DATA": "DummyData",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "WINDOW_DATA": "WindowData",
    "POWER": "Power",
    "EXP": "Exp",
    "ABSVAL": "AbsVal",
    "BNLL": "BNLL",
    "ARGMAX": "ArgMax",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "HINGE_LOSS": "HingeLoss",
    "INFOGAIN_LOSS": "InfogainLoss",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "SILENCE": "Silence",
    "THRESHOLD": "Threshold",
    "MVN": "MVN",
    "IM2COL": "Im2col",
    "NONE": "",
}
_V1_REPEATED = ("bottom", "top", "include", "exclude", "loss_weight", "blobs")

# Layers that only matter for training or evaluation: skipped (their bottoms may become outputs).
SKIPPED_TYPES = frozenset(
    {
        "Accuracy",
        "SoftmaxWithLoss",
        "EuclideanLoss",
        "SigmoidCrossEntropyLoss",
        "HingeLoss",
        "InfogainLoss",
        "MultinomialLogisticLoss",
        "ContrastiveLoss",
        "Silence",
        "HDF5Output",
    }
)
DATA_TYPES = frozenset({"Data", "ImageData", "MemoryData", "DummyData", "HDF5Data", "WindowData"})

_AUTOMTL_FIELDS = {
    "batch_norm_param": ("track_running_stats", "momentum", "affine"),
    "relu_param": ("inplace",),
    "dropout_param": ("inplace",),
    "elu_param": ("inplace",),
}


def _as_shape(value: Any, what: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in value)
    except (TypeError, ValueError):
        raise CompileError(f"{what} must be a sequence of ints like (C, H, W), got {value!r}") from None
    if len(shape) == 3 or len(shape) == 1:
        shape = (1, *shape)
    return shape


@dataclass
class _Layer:
    """One layer to convert, with where it came from."""

    msg: Any
    type: str
    name: str
    src: Source


@dataclass
class _Builder:
    file: str
    dialect: str
    graph: Graph
    blobs: dict[str, str] = field(default_factory=dict)
    labels: set[str] = field(default_factory=set)
    silenced: set[str] = field(default_factory=set)
    later: dict[str, _Layer] = field(default_factory=dict)
    folded_bn: dict[str, bool] = field(default_factory=dict)

    # -- helpers ---------------------------------------------------------------------------------
    def unique(self, name: str) -> str:
        name = name or "layer"
        if name not in self.graph:
            return name
        i = 1
        while f"{name}_{i}" in self.graph:
            i += 1
        return f"{name}_{i}"

    def add(
        self,
        layer: _Layer,
        kind: str,
        attrs: dict[str, Any],
        inputs: Sequence[str],
        name: str | None = None,
    ) -> Node:
        """Create a node and infer its shape now (later layers need it, e.g. for in_channels)."""
        node = Node(self.unique(name or layer.name), kind, list(inputs), attrs, source=layer.src)
        self.graph.add(node)
        node.shape = get(kind).infer(node, [self.graph[i].shape for i in node.inputs])
        return node

    def bottom(self, layer: _Layer, blob: str) -> str:
        if blob in self.labels:
            raise CompileError(
                f"bottom {blob!r} is a label from a data layer; only loss and accuracy layers may read it",
                layer.src,
            )
        node = self.blobs.get(blob)
        if node is None:
            producer = self.later.get(blob)
            if producer is not None:
                raise CompileError(
                    f"bottom {blob!r} is only produced by a later layer, {producer.type} '{producer.name}' "
                    f"(line {producer.src.line}): the layers are out of order or form a cycle",
                    layer.src,
                )
            known = difflib.get_close_matches(blob, list(self.blobs), n=1)
            hint = f"did you mean {known[0]!r}?" if known else None
            raise CompileError(f"missing bottom {blob!r}: no earlier layer or input produces it", layer.src, hint)
        return node

    def bottoms(self, layer: _Layer, count: int | tuple[int, int | None] = 1) -> list[str]:
        names = list(layer.msg.bottom)
        lo, hi = (count, count) if isinstance(count, int) else count
        if len(names) < lo or (hi is not None and len(names) > hi):
            want = str(lo) if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise CompileError(f"{layer.type} takes {want} bottom(s), got {len(names)}", layer.src)
        return [self.bottom(layer, b) for b in names]

    def tops(self, layer: _Layer, count: int = 1) -> list[str]:
        tops = list(layer.msg.top)
        if len(tops) != count:
            raise CompileError(f"{layer.type} must have {count} top(s), got {len(tops)}", layer.src)
        return tops

    def bind(self, layer: _Layer, node: Node | str) -> None:
        """The layer's single top now names ``node``."""
        (top,) = self.tops(layer)
        self.blobs[top] = node if isinstance(node, str) else node.name

    def shape(self, node: str) -> Shape:
        return self.graph[node].shape

    def params(self, layer: _Layer, name: str, allowed: Sequence[str]) -> Any:
        """The layer's ``name`` message, rejecting any field set in it that is not in ``allowed``."""
        msg = getattr(layer.msg, name)
        for fd, _ in msg.ListFields():
            if fd.name not in allowed:
                hint = None
                if name in _AUTOMTL_FIELDS and fd.name in _AUTOMTL_FIELDS[name]:
                    hint = "this is an AutoMTL dialect field; pass dialect='automtl'"
                raise CompileError(f"{name}.{fd.name} is not supported by the prototxt frontend", layer.src, hint)
        return msg


# ---------------------------------------------------------------------------------------------
# Layer converters: each reads one layer, adds nodes and binds its tops.
# ---------------------------------------------------------------------------------------------
def _hw(layer: _Layer, p: Any, name: str, prefix: str, default: int) -> tuple[int, int]:
    """kernel / stride / pad as (h, w) from ``name`` (one or two values) or ``prefix_h``/``prefix_w``."""
    fd = p.DESCRIPTOR.fields_by_name[name]
    if _is_repeated(fd):
        values = [int(v) for v in getattr(p, name)]
    else:
        values = [int(getattr(p, name))] if p.HasField(name) else []
    h, w = f"{prefix}_h", f"{prefix}_w"
    has_h, has_w = p.HasField(h), p.HasField(w)
    if has_h or has_w:
        if values:
            raise CompileError(f"give either {name} or {h}/{w}, not both", layer.src)
        if prefix != "pad" and not (has_h and has_w):
            raise CompileError(f"{h} and {w} must be given together", layer.src)
        return int(getattr(p, h)), int(getattr(p, w))
    if not values:
        return default, default
    if len(values) <= 2:
        return values[0], values[-1]
    raise CompileError(f"{name} has {len(values)} values; only 2-d layers are supported", layer.src)


def _f32(x: float) -> float:
    """A float32 field value as the short decimal it was written as (``1e-05``, not ``9.99e-06``)."""
    return float(str(np.float32(x)))


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


def _conv(b: _Builder, layer: _Layer) -> None:
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
    kernel = _hw(layer, p, "kernel_size", "kernel", 0)
    attrs = {
        "in_channels": shape[1],
        "out_channels": int(p.num_output),
        "kernel_size": kernel,
        "stride": _hw(layer, p, "stride", "stride", 1),
        "padding": _hw(layer, p, "pad", "pad", 0),
        "dilation": _dilation(layer, p),
        "groups": int(p.group),
        "bias": bool(p.bias_term),
    }
    if min(kernel) <= 0 or min(attrs["stride"]) <= 0 or min(attrs["dilation"]) <= 0 or attrs["groups"] <= 0:
        raise CompileError("kernel, stride, dilation and group must be positive", layer.src)
    kind = "conv2d"
    if layer.type == "Deconvolution":
        kind, attrs["output_padding"] = "conv_transpose2d", (0, 0)
    b.bind(layer, b.add(layer, kind, attrs, [x]))


def _dilation(layer: _Layer, p: Any) -> tuple[int, int]:
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
)


def _pool(b: _Builder, layer: _Layer) -> None:
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
        if _hw(layer, p, "pad", "pad", 0) != (0, 0) or _hw(layer, p, "stride", "stride", 1) != (1, 1):
            raise CompileError("global_pooling needs pad 0 and stride 1", layer.src)
        b.bind(layer, b.add(layer, f"adaptive_{method}_pool2d", {"output_size": (1, 1)}, [x]))
        return
    if not p.HasField("kernel_size") and not (p.HasField("kernel_h") or p.HasField("kernel_w")):
        raise CompileError("pooling_param needs kernel_size (or kernel_h and kernel_w, or global_pooling)", layer.src)
    kernel = _hw(layer, p, "kernel_size", "kernel", 0)
    stride = _hw(layer, p, "stride", "stride", 1)
    pad = _hw(layer, p, "pad", "pad", 0)
    if min(kernel) <= 0 or min(stride) <= 0:
        raise CompileError("kernel and stride must be positive", layer.src)
    default_round = P.FLOOR if b.dialect == "automtl" else P.CEIL
    ceil = (p.round_mode if p.HasField("round_mode") else default_round) == P.CEIL
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


def _batch_norm(b: _Builder, layer: _Layer) -> None:
    allowed = ["use_global_stats", "moving_average_fraction", "eps"]
    if b.dialect == "automtl":
        allowed += ["track_running_stats", "momentum", "affine"]
    p = b.params(layer, "batch_norm_param", allowed)
    (x,) = b.bottoms(layer)
    shape = b.shape(x)
    if len(shape) not in (2, 3, 4):
        raise CompileError(f"BatchNorm expects a 2-, 3- or 4-d input, got shape {list(shape)}", layer.src)
    if b.dialect == "automtl":
        if not p.track_running_stats:
            raise CompileError("track_running_stats: false is not supported", layer.src)
        momentum = _f32(p.momentum) if not p.HasField("moving_average_fraction") else None
        affine = bool(p.affine)
    else:
        momentum, affine = None, False
    if momentum is None:  # Caffe keeps this fraction of the running average; torch's momentum is the rest
        momentum = float(f"{1.0 - _f32(p.moving_average_fraction):.12g}")
    attrs = {"num_features": shape[1], "eps": _f32(p.eps), "momentum": momentum, "affine": affine}
    node = b.add(layer, "batch_norm", attrs, [x])
    b.folded_bn[node.name] = affine
    b.bind(layer, node)


def _scale(b: _Builder, layer: _Layer) -> None:
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


def _eltwise(b: _Builder, layer: _Layer) -> None:
    E = caffe_pb2.EltwiseParameter
    p = b.params(layer, "eltwise_param", ("operation", "coeff", "stable_prod_grad"))
    xs = b.bottoms(layer, (2, None))
    coeffs = [_f32(c) for c in p.coeff]
    if coeffs and p.operation != E.SUM:
        raise CompileError("eltwise_param.coeff is only allowed with operation SUM", layer.src)
    if coeffs and len(coeffs) != len(xs):
        raise CompileError(f"eltwise_param has {len(coeffs)} coeff for {len(xs)} bottoms", layer.src)
    if p.operation == E.SUM and coeffs and any(c != 1.0 for c in coeffs):
        node = b.add(layer, "scaled_sum", {"coeffs": coeffs}, xs)
    else:
        node = b.add(layer, {E.SUM: "add", E.PROD: "mul", E.MAX: "maximum"}[p.operation], {}, xs)
    b.bind(layer, node)


def _axis(layer: _Layer, axis: int, rank: int, what: str) -> int:
    if not -rank <= axis < rank:
        raise CompileError(f"{what} {axis} is out of range for a {rank}-d input", layer.src)
    return axis % rank


def _concat(b: _Builder, layer: _Layer) -> None:
    p = b.params(layer, "concat_param", ("axis", "concat_dim"))
    xs = b.bottoms(layer, (1, None))
    if p.HasField("axis") and p.HasField("concat_dim"):
        raise CompileError("give either axis or concat_dim, not both", layer.src)
    axis = int(p.concat_dim) if p.HasField("concat_dim") else int(p.axis)
    dim = _axis(layer, axis, len(b.shape(xs[0])), "concat axis")
    b.bind(layer, b.add(layer, "concat", {"dim": dim}, xs))


def _slice(b: _Builder, layer: _Layer) -> None:
    p = b.params(layer, "slice_param", ("axis", "slice_point", "slice_dim"))
    (x,) = b.bottoms(layer)
    shape = b.shape(x)
    if p.HasField("axis") and p.HasField("slice_dim"):
        raise CompileError("give either axis or slice_dim, not both", layer.src)
    dim = _axis(layer, int(p.slice_dim) if p.HasField("slice_dim") else int(p.axis), len(shape), "slice axis")
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


def _split(b: _Builder, layer: _Layer) -> None:
    (x,) = b.bottoms(layer)
    for top in layer.msg.top:
        b.blobs[top] = x


def _crop(b: _Builder, layer: _Layer) -> None:
    p = b.params(layer, "crop_param", ("axis", "offset"))
    x, ref = b.bottoms(layer, 2)
    rank = len(b.shape(x))
    axis = _axis(layer, int(p.axis), rank, "crop axis")
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


def _inner_product(b: _Builder, layer: _Layer) -> None:
    p = b.params(
        layer, "inner_product_param", ("num_output", "bias_term", "weight_filler", "bias_filler", "axis", "transpose")
    )
    if not p.HasField("num_output"):
        raise CompileError("inner_product_param.num_output is required", layer.src)
    (x,) = b.bottoms(layer)
    shape = b.shape(x)
    axis = _axis(layer, int(p.axis), len(shape), "inner_product axis")
    if axis == 0:
        raise CompileError("InnerProduct over the batch axis (axis 0) is not supported", layer.src)
    if axis < len(shape) - 1:
        x = b.add(layer, "flatten", {"start_dim": axis, "end_dim": -1}, [x], name=f"{layer.name}/flatten").name
    attrs = {"in_features": b.shape(x)[-1], "out_features": int(p.num_output), "bias": bool(p.bias_term)}
    b.bind(layer, b.add(layer, "linear", attrs, [x]))


def _relu(b: _Builder, layer: _Layer) -> None:
    allowed = ["negative_slope", "engine"] + (["inplace"] if b.dialect == "automtl" else [])
    p = b.params(layer, "relu_param", allowed)
    (x,) = b.bottoms(layer)
    if p.negative_slope != 0:
        node = b.add(layer, "leaky_relu", {"negative_slope": _f32(p.negative_slope)}, [x])
    else:
        node = b.add(layer, "relu", {}, [x])
    b.bind(layer, node)


def _prelu(b: _Builder, layer: _Layer) -> None:
    p = b.params(layer, "prelu_param", ("filler", "channel_shared"))
    (x,) = b.bottoms(layer)
    shape = b.shape(x)
    n = 1 if p.channel_shared else (shape[1] if len(shape) > 1 else 1)
    b.bind(layer, b.add(layer, "prelu", {"num_parameters": n}, [x]))


def _unary(kind: str, param: str | None = None) -> Callable[[_Builder, _Layer], None]:
    def convert(b: _Builder, layer: _Layer) -> None:
        if param:
            b.params(layer, param, ("engine",))
        (x,) = b.bottoms(layer)
        b.bind(layer, b.add(layer, kind, {}, [x]))

    return convert


def _dropout(b: _Builder, layer: _Layer) -> None:
    p = b.params(layer, "dropout_param", ["dropout_ratio"] + (["inplace"] if b.dialect == "automtl" else []))
    (x,) = b.bottoms(layer)
    b.bind(layer, b.add(layer, "dropout", {"p": _f32(p.dropout_ratio)}, [x]))


def _elu(b: _Builder, layer: _Layer) -> None:
    p = b.params(layer, "elu_param", ["alpha"] + (["inplace"] if b.dialect == "automtl" else []))
    (x,) = b.bottoms(layer)
    b.bind(layer, b.add(layer, "elu", {"alpha": _f32(p.alpha)}, [x]))


def _swish(b: _Builder, layer: _Layer) -> None:
    p = b.params(layer, "swish_param", ("beta",))
    if p.beta != 1:
        raise CompileError(f"Swish with beta {p.beta} is not supported (only beta 1, SiLU)", layer.src)
    (x,) = b.bottoms(layer)
    b.bind(layer, b.add(layer, "silu", {}, [x]))


def _lrn(b: _Builder, layer: _Layer) -> None:
    p = b.params(layer, "lrn_param", ("local_size", "alpha", "beta", "norm_region", "k", "engine"))
    if p.norm_region != caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        raise CompileError("LRN norm_region WITHIN_CHANNEL is not supported (only ACROSS_CHANNELS)", layer.src)
    if p.local_size % 2 == 0:
        raise CompileError(f"LRN local_size must be odd, got {p.local_size}", layer.src)
    (x,) = b.bottoms(layer)
    attrs = {"size": int(p.local_size), "alpha": _f32(p.alpha), "beta": _f32(p.beta), "k": _f32(p.k)}
    b.bind(layer, b.add(layer, "lrn", attrs, [x]))


def _softmax(b: _Builder, layer: _Layer) -> None:
    p = b.params(layer, "softmax_param", ("engine", "axis"))
    (x,) = b.bottoms(layer)
    dim = _axis(layer, int(p.axis), len(b.shape(x)), "softmax axis")
    b.bind(layer, b.add(layer, "softmax", {"dim": dim}, [x]))


def _flatten(b: _Builder, layer: _Layer) -> None:
    p = b.params(layer, "flatten_param", ("axis", "end_axis"))
    (x,) = b.bottoms(layer)
    rank = len(b.shape(x))
    start = _axis(layer, int(p.axis), rank, "flatten axis")
    end = _axis(layer, int(p.end_axis), rank, "flatten end_axis")
    if end < start:
        raise CompileError(f"flatten end_axis {p.end_axis} comes before axis {p.axis}", layer.src)
    b.bind(layer, b.add(layer, "flatten", {"start_dim": start, "end_dim": end}, [x]))


def _clip(b: _Builder, layer: _Layer) -> None:
    p = b.params(layer, "clip_param", ("min", "max"))
    if not (p.HasField("min") and p.HasField("max")):
        raise CompileError("clip_param needs both min and max", layer.src)
    (x,) = b.bottoms(layer)
    lo, hi = _f32(p.min), _f32(p.max)
    if lo > hi:
        raise CompileError(f"clip_param min {lo} is above max {hi}", layer.src)
    node = (
        b.add(layer, "relu6", {}, [x]) if (lo, hi) == (0.0, 6.0) else b.add(layer, "clip", {"min": lo, "max": hi}, [x])
    )
    b.bind(layer, node)


def _power(b: _Builder, layer: _Layer) -> None:
    p = b.params(layer, "power_param", ("power", "scale", "shift"))
    if p.power != 1:
        raise CompileError(f"Power with power {p.power} is not supported (only power 1: scale * x + shift)", layer.src)
    (x,) = b.bottoms(layer)
    node = x
    if p.scale != 1:
        node = b.add(
            layer, "mul", {"scalar": _f32(p.scale)}, [node], name=f"{layer.name}/scale" if p.shift != 0 else None
        ).name
    if p.shift != 0:
        node = b.add(layer, "add", {"scalar": _f32(p.shift)}, [node]).name
    if node == x:
        node = b.add(layer, "identity", {}, [x]).name
    b.bind(layer, node)


def _reshape(b: _Builder, layer: _Layer) -> None:
    p = b.params(layer, "reshape_param", ("shape", "axis", "num_axes"))
    (x,) = b.bottoms(layer)
    shape = list(b.shape(x))
    rank = len(shape)
    start = int(p.axis) if p.axis >= 0 else rank + 1 + int(p.axis)
    end = rank if p.num_axes == -1 else start + int(p.num_axes)
    if not (0 <= start <= end <= rank):
        raise CompileError(f"reshape axis {p.axis} / num_axes {p.num_axes} do not fit a {rank}-d input", layer.src)
    dims = [int(d) for d in p.shape.dim]
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
    if out[0] != shape[0]:
        raise CompileError(f"reshape changes the batch dimension ({shape[0]} -> {out[0]})", layer.src)
    b.bind(layer, b.add(layer, "reshape", {"shape": out[1:]}, [x]))


def _interp(b: _Builder, layer: _Layer) -> None:
    p = b.params(layer, "interp_param", ("height", "width", "zoom_factor", "shrink_factor", "pad_beg", "pad_end"))
    xs = b.bottoms(layer, (1, 2))
    shape = b.shape(xs[0])
    if len(shape) != 4:
        raise CompileError(f"Interp expects a 4-d input, got shape {list(shape)}", layer.src)
    if p.pad_beg != 0 or p.pad_end != 0:
        raise CompileError("Interp pad_beg / pad_end are not supported", layer.src)
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
    if min(size) <= 0 or p.zoom_factor < 1 or p.shrink_factor < 1:
        raise CompileError(f"Interp output size {list(size)} is empty or its factors are below 1", layer.src)
    attrs = {"size": size, "scale_factor": None, "mode": "bilinear", "align_corners": True}
    b.bind(layer, b.add(layer, "interpolate", attrs, [xs[0]]))


CONVERTERS: dict[str, Callable[[_Builder, _Layer], None]] = {
    "Convolution": _conv,
    "Deconvolution": _conv,
    "Pooling": _pool,
    "BatchNorm": _batch_norm,
    "Scale": _scale,
    "Eltwise": _eltwise,
    "Concat": _concat,
    "Slice": _slice,
    "Split": _split,
    "Crop": _crop,
    "InnerProduct": _inner_product,
    "ReLU": _relu,
    "ReLU6": _unary("relu6"),
    "PReLU": _prelu,
    "Sigmoid": _unary("sigmoid", "sigmoid_param"),
    "TanH": _unary("tanh", "tanh_param"),
    "Dropout": _dropout,
    "ELU": _elu,
    "Swish": _swish,
    "LRN": _lrn,
    "Softmax": _softmax,
    "Flatten": _flatten,
    "Clip": _clip,
    "Power": _power,
    "Reshape": _reshape,
    "Interp": _interp,
}
SUPPORTED_TYPES = tuple(sorted({*CONVERTERS, "Input", *DATA_TYPES, *SKIPPED_TYPES}))


# ---------------------------------------------------------------------------------------------
# Net-level logic
# ---------------------------------------------------------------------------------------------
def _state_meets(rule: Any, state: Any) -> bool:
    """Caffe's NetStateRule test."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    return all(s in stages for s in rule.stage) and not any(s in stages for s in rule.not_stage)


def _included(layer: Any, state: Any) -> bool:
    if layer.include:
        return any(_state_meets(r, state) for r in layer.include)
    return not any(_state_meets(r, state) for r in layer.exclude)


def _layers(net: Any, lines: Mapping[str, list[int]], file: str) -> list[_Layer]:
    """The net's layers as LayerParameters with their sources (V1 layers converted)."""
    if net.layer and net.layers:
        raise CompileError("the file mixes 'layer' and V1 'layers' entries", Source(file=file))
    out = []
    if net.layers:
        v1 = caffe_pb2.V1LayerParameter
        for old in net.layers:
            msg = caffe_pb2.LayerParameter(name=old.name)
            for fd, value in old.ListFields():
                if fd.name in _V1_REPEATED:
                    getattr(msg, fd.name).extend(value)
                elif fd.name.endswith("_param") and fd.name in msg.DESCRIPTOR.fields_by_name:
                    getattr(msg, fd.name).CopyFrom(value)
            msg.type = _V1_TYPES.get(v1.LayerType.Name(old.type), v1.LayerType.Name(old.type))
            out.append((msg, lines.get("layers", [])))
    else:
        out = [(msg, lines.get("layer", [])) for msg in net.layer]
    layers = []
    for i, (msg, where) in enumerate(out):
        line = where[i] if i < len(where) else None
        name = msg.name or f"{msg.type or 'layer'}{i}"
        layers.append(_Layer(msg, msg.type, name, Source(file=file, line=line, layer=name, layer_type=msg.type)))
    return layers


def _uses_automtl_fields(layers: Sequence[_Layer]) -> bool:
    for layer in layers:
        if layer.type not in ("BatchNorm", "ReLU", "Dropout", "ELU"):
            continue
        for param, names in _AUTOMTL_FIELDS.items():
            if layer.msg.HasField(param):
                sub = getattr(layer.msg, param)
                if any(sub.HasField(n) for n in names):
                    return True
    return False


def _declared_shapes(net: Any, file: str, lines: Mapping[str, list[int]]) -> list[tuple[int, ...] | None]:
    """One shape (or None) per ``input:`` from ``input_shape`` or ``input_dim``."""
    names = list(net.input)
    where = Source(
        file=file, line=(lines.get("input") or [None])[0], layer=names[0] if names else None, layer_type="input"
    )
    if net.input_shape and net.input_dim:
        raise CompileError("give either input_shape or input_dim, not both", where)
    if net.input_shape:
        if len(net.input_shape) != len(names):
            raise CompileError(f"{len(net.input_shape)} input_shape(s) for {len(names)} input(s)", where)
        return [tuple(int(d) for d in s.dim) for s in net.input_shape]
    if net.input_dim:
        dims = [int(d) for d in net.input_dim]
        if len(dims) != 4 * len(names):
            raise CompileError(f"{len(dims)} input_dim values for {len(names)} input(s) (need 4 per input)", where)
        return [tuple(dims[4 * i : 4 * i + 4]) for i in range(len(names))]
    return [None] * len(names)


def _override(input_shape: Any, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The ``input_shape`` argument as name -> (N, C, H, W)-style shape."""
    if input_shape is None:
        return {}
    if isinstance(input_shape, Mapping):
        unknown = [k for k in input_shape if k not in names]
        if unknown:
            raise CompileError(f"input_shape names unknown input(s) {unknown}; the inputs are {list(names)}")
        return {k: _as_shape(v, f"input_shape[{k!r}]") for k, v in input_shape.items()}
    seq = list(input_shape)
    if seq and all(isinstance(s, (list, tuple)) for s in seq):
        if len(seq) != len(names):
            raise CompileError(f"{len(seq)} input shapes for {len(names)} input(s) {list(names)}")
        return {n: _as_shape(s, "input_shape") for n, s in zip(names, seq, strict=True)}
    if len(names) != 1:
        raise CompileError(
            f"the net has {len(names)} inputs {list(names)}: pass one shape per input (a list or a dict)"
        )
    return {names[0]: _as_shape(seq, "input_shape")}


def _data_shape(layer: _Layer) -> tuple[int, ...] | None:
    msg = layer.msg
    if layer.type == "MemoryData" and msg.HasField("memory_data_param"):
        p = msg.memory_data_param
        return (int(p.batch_size), int(p.channels), int(p.height), int(p.width))
    if layer.type == "DummyData" and msg.HasField("dummy_data_param"):
        p = msg.dummy_data_param
        if p.shape:
            return tuple(int(d) for d in p.shape[0].dim)
        if p.num:
            return (int(p.num[0]), int(p.channels[0]), int(p.height[0]), int(p.width[0]))
    return None


def from_text(
    text: str,
    file: str = "<string>",
    input_shape: Any = None,
    dialect: str = "auto",
) -> Graph:
    """Compile prototxt ``text`` (``file`` names it in errors) into an IR graph with shapes and costs.

    ``input_shape`` overrides or supplies the input shape: ``(C, H, W)`` (batch 1) or
    ``(N, C, H, W)`` for a one-input net, else a list (one per input) or a dict by input name.
    ``dialect`` is ``"auto"``, ``"caffe"`` (BVLC) or ``"automtl"``.
    """
    if dialect not in DIALECTS:
        raise CompileError(f"unknown dialect {dialect!r}; use one of {', '.join(DIALECTS)}")
    net, lines = parse(text, file)
    layers = _layers(net, lines, file)
    state = net.state if net.HasField("state") else caffe_pb2.NetState()
    layers = [la for la in layers if _included(la.msg, state)]

    declared = list(net.input)
    first = next((la for la in layers if la.type != "Input"), None)
    first_unknown = [] if first is None else [x for x in first.msg.bottom if x not in declared]
    if dialect == "auto":
        # AutoMTL's own loader feeds its one input to the layer whose bottom is exactly "data".
        unread = len(declared) == 1 and not any(declared[0] in la.msg.bottom for la in layers)
        lone_input = unread and first is not None and list(first.msg.bottom) == ["data"]
        dialect = "automtl" if lone_input or _uses_automtl_fields(layers) else "caffe"

    stem = Path(file).stem if file and not file.startswith("<") else "net"
    graph = Graph(net.name or stem, file=file)
    b = _Builder(file=file, dialect=dialect, graph=graph)
    for la in layers:
        for top in la.msg.top:
            b.later.setdefault(top, la)

    # inputs declared at net level ------------------------------------------------------------
    input_names = declared + [
        t
        for la in layers
        if la.type == "Input" or la.type in DATA_TYPES
        for t in la.msg.top[: (None if la.type == "Input" else 1)]
    ]
    overrides = _override(input_shape, input_names)
    shapes = _declared_shapes(net, file, lines)
    input_lines = lines.get("input", [])
    for i, name in enumerate(declared):
        src = Source(file=file, line=input_lines[i] if i < len(input_lines) else None, layer=name, layer_type="input")
        _add_input(b, name, overrides.get(name, shapes[i]), src)
    if dialect == "automtl" and first_unknown:
        if len(declared) != 1 or len(set(first_unknown)) != 1:
            raise CompileError(
                f"the AutoMTL dialect binds one declared input to the first layer's bottom, but the net declares "
                f"{declared} and the first layer reads {first_unknown}",
                first.src if first else None,
            )
        b.blobs[first_unknown[0]] = b.blobs[declared[0]]

    for la in layers:
        for top in la.msg.top:
            if b.later.get(top) is la:
                del b.later[top]
        _convert(b, la, overrides)

    unread = [n.name for n in graph if n.kind != "input" and graph.nx.out_degree(n.name) == 0]
    graph.outputs = [n for n in unread if n not in b.silenced]
    if not graph.outputs:
        raise CompileError(
            "the net computes nothing: it has no layer that produces an output",
            Source(file=file, layer=graph.name, layer_type="net"),
        )
    return run_all(graph)


def _add_input(b: _Builder, name: str, shape: tuple[int, ...] | None, src: Source) -> None:
    if shape is None:
        raise CompileError(
            f"input {name!r} has no shape in the file", src, "pass input_shape=(C, H, W) or (N, C, H, W)"
        )
    node = Node(b.unique(name), "input", [], {"shape": tuple(shape)}, source=src)
    b.graph.add(node)
    node.shape = get("input").infer(node, [])
    b.blobs[name] = node.name


def _convert(b: _Builder, layer: _Layer, overrides: Mapping[str, tuple[int, ...]]) -> None:
    msg = layer.msg
    if msg.blobs:
        raise CompileError("weights stored in the prototxt (blobs) are not supported", layer.src)
    if layer.type == "Input":
        p = b.params(layer, "input_param", ("shape",))
        tops = list(msg.top)
        if p.shape and len(p.shape) not in (1, len(tops)):
            raise CompileError(f"input_param has {len(p.shape)} shapes for {len(tops)} tops", layer.src)
        for i, top in enumerate(tops):
            declared = tuple(int(d) for d in p.shape[0 if len(p.shape) == 1 else i].dim) if p.shape else None
            _add_input(b, top, overrides.get(top, declared), layer.src)
        return
    if layer.type in DATA_TYPES:
        if not msg.top:
            raise CompileError(f"{layer.type} needs a top", layer.src)
        _add_input(b, msg.top[0], overrides.get(msg.top[0], _data_shape(layer)), layer.src)
        b.labels.update(msg.top[1:])
        return
    if layer.type in SKIPPED_TYPES:
        if layer.type == "Silence":
            b.silenced.update(b.bottom(layer, x) for x in msg.bottom)
        return
    converter = CONVERTERS.get(layer.type)
    if converter is None:
        close = difflib.get_close_matches(layer.type, SUPPORTED_TYPES, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"supported: {', '.join(SUPPORTED_TYPES)}"
        raise CompileError(f"unsupported layer type {layer.type!r}", layer.src, hint)
    converter(b, layer)


def from_prototxt(
    path_or_text: str | os.PathLike[str],
    input_shape: Any = None,
    dialect: str = "auto",
) -> Graph:
    """Compile a ``.prototxt`` file (or prototxt text) into an IR graph with shapes and costs.

    A ``str`` holding a newline or ``{`` is taken as the text itself; anything else is a path.
    See :func:`from_text` for ``input_shape`` and ``dialect``.
    """
    if isinstance(path_or_text, str) and ("\n" in path_or_text or "{" in path_or_text):
        return from_text(path_or_text, "<string>", input_shape, dialect)
    path = Path(path_or_text)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CompileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CompileError(f"{path}: cannot read it: {exc}") from None
    return from_text(text, str(path), input_shape, dialect)
