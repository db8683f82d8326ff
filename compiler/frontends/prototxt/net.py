"""Net-level logic: which layers run (net state, train-only layers), where the inputs come from,
the dialect, V1 files; then each layer through its converter, in file order."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ....proto import caffe_pb2
from ...errors import CompileError, Source
from ...ir import Graph, Node
from ...ops import get
from ...passes import run_all
from . import common, vision
from .builder import AUTOMTL_FIELDS, Builder, Layer
from .parsing import parse, quoted, shown

DIALECTS = ("auto", "caffe", "automtl")
MAX_NAME = 4096  # characters in a layer, type or blob name (real files use tens)

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

CONVERTERS: dict[str, Callable[[Builder, Layer], None]] = {
    "Convolution": vision.conv,
    "Deconvolution": vision.conv,
    "Pooling": vision.pool,
    "LRN": vision.lrn,
    "Crop": vision.crop,
    "Interp": vision.interp,
    "ShuffleChannel": vision.shuffle_channel,
    "BatchNorm": common.batch_norm,
    "Scale": common.scale,
    "Eltwise": common.eltwise,
    "Concat": common.concat,
    "Slice": common.slice_,
    "Split": common.split,
    "InnerProduct": common.inner_product,
    "ReLU": common.relu,
    "ReLU6": common.unary("relu6"),
    "PReLU": common.prelu,
    "Sigmoid": common.unary("sigmoid", "sigmoid_param"),
    "TanH": common.unary("tanh", "tanh_param"),
    "Dropout": common.dropout,
    "ELU": common.elu,
    "Swish": common.swish,
    "Softmax": common.softmax,
    "Flatten": common.flatten,
    "Clip": common.clip,
    "Power": common.power,
    "Reshape": common.reshape,
}
SUPPORTED_TYPES = tuple(sorted({*CONVERTERS, "Input", *DATA_TYPES, *SKIPPED_TYPES}))


def _as_shape(value: Any, what: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in value)
    except (TypeError, ValueError):
        raise CompileError(f"{what} must be a sequence of ints like (C, H, W), got {value!r}") from None
    if len(shape) == 3 or len(shape) == 1:
        shape = (1, *shape)
    return shape


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


def _check_names(msg: Any, src: Source) -> None:
    """Refuse a name no real file has (megabytes long): it would be copied into every message."""
    for what, value in (("layer name", msg.name), ("layer type", msg.type)):
        if len(value) > MAX_NAME:
            raise CompileError(f"the {what} is {len(value):,} characters long (at most {MAX_NAME:,})", src)
    for what in ("bottom", "top"):
        values = getattr(msg, what)
        if values and max(map(len, values)) > MAX_NAME:
            value = max(values, key=len)
            raise CompileError(
                f"{what} {quoted(value)} is {len(value):,} characters long (at most {MAX_NAME:,})", src
            )


def _layers(net: Any, lines: Mapping[str, list[int]], file: str) -> list[Layer]:
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
        src = Source(file=file, line=line, layer=shown(name), layer_type=shown(msg.type))
        _check_names(msg, src)
        layers.append(Layer(msg, msg.type, name, src))
    return layers


def _uses_automtl_fields(layers: Sequence[Layer]) -> bool:
    for layer in layers:
        if layer.type not in ("BatchNorm", "ReLU", "Dropout", "ELU"):
            continue
        for param, names in AUTOMTL_FIELDS.items():
            if layer.msg.HasField(param):
                sub = getattr(layer.msg, param)
                if any(sub.HasField(n) for n in names):
                    return True
    return False


def _declared_shapes(net: Any, file: str, lines: Mapping[str, list[int]]) -> list[tuple[int, ...] | None]:
    """One shape (or None) per ``input:`` from ``input_shape`` or ``input_dim``."""
    names = list(net.input)
    where = Source(
        file=file,
        line=(lines.get("input") or [None])[0],
        layer=shown(names[0]) if names else None,
        layer_type="input",
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


def _data_shape(layer: Layer) -> tuple[int, ...] | None:
    msg = layer.msg
    if layer.type == "MemoryData" and msg.HasField("memory_data_param"):
        p = msg.memory_data_param
        return (int(p.batch_size), int(p.channels), int(p.height), int(p.width))
    if layer.type == "DummyData" and msg.HasField("dummy_data_param"):
        p = msg.dummy_data_param
        if p.shape:
            return tuple(int(d) for d in p.shape[0].dim)
        if p.num:
            if not (p.channels and p.height and p.width):
                raise CompileError("dummy_data_param gives num but not channels, height and width", layer.src)
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
    if text.startswith("\ufeff"):  # a byte-order mark some editors write first
        text = text[1:]
    net, lines = parse(text, file)
    layers = _layers(net, lines, file)
    state = net.state if net.HasField("state") else caffe_pb2.NetState()
    layers = [la for la in layers if _included(la.msg, state)]

    declared = list(net.input)
    input_lines = lines.get("input", [])
    for i, name in enumerate(declared):
        if len(name) > MAX_NAME:
            src = Source(file=file, line=input_lines[i] if i < len(input_lines) else None, layer_type="input")
            raise CompileError(f"input {quoted(name)} is {len(name):,} characters long (at most {MAX_NAME:,})", src)
    first = next((la for la in layers if la.type != "Input"), None)
    first_unknown = [] if first is None else [x for x in first.msg.bottom if x not in declared]
    if dialect == "auto":
        # AutoMTL's own loader feeds its one input to the layer whose bottom is exactly "data".
        unread = len(declared) == 1 and not any(declared[0] in la.msg.bottom for la in layers)
        lone_input = unread and first is not None and list(first.msg.bottom) == ["data"]
        dialect = "automtl" if lone_input or _uses_automtl_fields(layers) else "caffe"

    stem = Path(file).stem if file and not file.startswith("<") else "net"
    graph = Graph(shown(net.name) if net.name else stem, file=file)
    b = Builder(file=file, dialect=dialect, graph=graph)
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
    for i, name in enumerate(declared):
        src = Source(
            file=file, line=input_lines[i] if i < len(input_lines) else None, layer=shown(name), layer_type="input"
        )
        _add_input(b, name, overrides.get(name, shapes[i]), src)
    if dialect == "automtl" and first_unknown:
        if len(declared) != 1 or len(set(first_unknown)) != 1:
            declares, reads = ", ".join(map(quoted, declared)), ", ".join(map(quoted, first_unknown))
            raise CompileError(
                f"the AutoMTL dialect binds one declared input to the first layer's bottom, but the net declares "
                f"[{declares}] and the first layer reads [{reads}]",
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


def _add_input(b: Builder, name: str, shape: tuple[int, ...] | None, src: Source) -> None:
    if shape is None:
        raise CompileError(
            f"input {quoted(name)} has no shape in the file", src, "pass input_shape=(C, H, W) or (N, C, H, W)"
        )
    node = Node(b.unique(name), "input", [], {"shape": tuple(shape)}, source=src)
    b.graph.add(node)
    node.shape = get("input").infer(node, [])
    b.blobs[name] = node.name


def _convert(b: Builder, layer: Layer, overrides: Mapping[str, tuple[int, ...]]) -> None:
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
        raise CompileError(f"unsupported layer type {quoted(layer.type)}", layer.src, hint)
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
