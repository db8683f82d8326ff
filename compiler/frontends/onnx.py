"""ONNX frontend: an ``onnx.ModelProto`` (a path, bytes or a proto) -> IR :class:`Graph`.

Every ONNX node maps onto registry kinds; initializers become the node's ``tensors`` under the
torch module's state-dict keys (``weight``, ``bias``, ``running_mean`` ...). Values that do not
depend on the input are folded while reading: initializers, ``Constant`` nodes and anything
computed from them only, plus the shape arithmetic exporters emit (``Shape -> Gather ->
Unsqueeze -> Concat -> Reshape`` for ``x.view(x.size(0), -1)``), where the batch size is kept
symbolic and the rest must be static. Whatever has no exact torch equivalent is rejected with a
:class:`CompileError` naming the node, its op type and the model's opset.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CompileError, Source
from ..ir import Graph, Node
from ..ops import get as get_kind
from ..passes import prune, run_all

MIN_OPSET = 7
MAX_OPSET = 25  # ops read here do not change meaning for float tensors up to opset 25

ModelLike = str | os.PathLike | bytes | Any  # Any: onnx.ModelProto (onnx is imported lazily)


class _Batch:
    """The batch size inside folded shape arithmetic: unknown, but kept where it is."""

    def __repr__(self) -> str:
        return "N"


BATCH = _Batch()


class OnnxConstant(nn.Module):
    """A constant tensor of the ONNX model that a computed value is combined with."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value)

    def forward(self) -> torch.Tensor:
        return self.value


def _load(model: ModelLike) -> tuple[Any, str]:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model, f"<onnx:{model.graph.name or 'model'}>"
    if isinstance(model, (bytes, bytearray)):
        file, data = "<onnx bytes>", bytes(model)
    elif isinstance(model, (str, os.PathLike)):
        file = str(model)
        if not Path(file).is_file():
            raise CompileError(f"{file}: no such file")
        data = None
    else:
        raise TypeError(f"expected an ONNX file path, bytes or onnx.ModelProto, not {type(model).__name__}")
    try:
        proto = onnx.load_model_from_string(data) if data is not None else onnx.load(file)
    except OSError as exc:
        raise CompileError(f"{file}: cannot read the ONNX model: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, text_format.ParseError, ...
        raise CompileError(f"{file}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    if proto.ir_version == 0 or not proto.graph.node:
        raise CompileError(f"{file}: not an ONNX model (no ir_version or no graph nodes)")
    return proto, file


def from_onnx(model_or_path: ModelLike, input_shape: Any = None) -> Graph:
    """Read an ONNX model into the IR, with weights, shapes and costs.

    ``input_shape`` is needed only when an input has symbolic dimensions other than the batch:
    ``(C, H, W)`` or ``(N, C, H, W)`` (a list with one per input for several inputs). A symbolic
    batch dimension becomes 1 unless ``input_shape`` gives it.
    """
    proto, file = _load(model_or_path)
    return _Reader(proto, file, input_shape).read()


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        out[a.name] = v
    return out


def _clean_name(name: str, op_type: str) -> str:
    """``/layer1/layer1.0/relu/Relu`` -> ``layer1.0.relu``: torch scopes as a module path."""
    parts: list[str] = []
    for p in (p for p in name.strip("/").split("/") if p):
        if parts and p.startswith(parts[-1] + "."):
            parts[-1] = p
        else:
            parts.append(p)
    if len(parts) > 1 and op_type in _MODULE_LIKE and re.fullmatch(rf"{op_type}(_\d+)?", parts[-1]):
        parts.pop()
    return ".".join(parts)


# op types torch exports from a module (``/relu1/Relu``): the scope alone names them
_MODULE_LIKE = {
    "Conv", "ConvTranspose", "BatchNormalization", "Gemm", "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh",
    "HardSigmoid", "HardSwish", "Elu", "Gelu", "PRelu", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "Flatten", "Dropout", "Softmax", "LogSoftmax", "Resize", "Upsample",
}


def _is_sym(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.dtype == object


def _settle(v: np.ndarray) -> np.ndarray:
    """A folded shape value: kept symbolic only while it still holds the batch size."""
    if any(e is BATCH for e in v.reshape(-1)):
        return v
    integer = all(isinstance(e, (int, np.integer)) for e in v.flat)
    return np.asarray(v.tolist(), dtype=np.int64 if integer else None)


class _Reader:
    """One pass over the ONNX graph in its (topological) node order."""

    def __init__(self, proto: Any, file: str, input_shape: Any) -> None:
        self.proto = proto
        self.file = file
        self.input_shape = input_shape
        self.opset = self._opset()
        name = proto.graph.name or Path(file).stem
        self.graph = Graph(name, file=file)
        self.values: dict[str, str] = {}  # ONNX value -> IR node computing it
        self.consts: dict[str, np.ndarray] = {}  # ONNX value -> folded value (object arrays hold BATCH)
        self.uses: dict[str, int] = {}
        self.static_batch: set[int] = set()  # batch sizes fixed in the file (Reshape may spell them out)
        self.node: Any = None
        self.src: Source | None = None

    # --- set-up --------------------------------------------------------------------------------
    def _opset(self) -> int:
        versions = [o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")]
        if not versions:
            raise CompileError(f"{self.file}: the model imports no default-domain (ai.onnx) opset")
        v = int(versions[0])
        if v > MAX_OPSET:
            raise CompileError(
                f"{self.file}: opset {v} is newer than the newest supported ({MAX_OPSET})",
                hint=f"convert it: onnx.version_converter.convert_version(model, {MAX_OPSET})",
            )
        if v < MIN_OPSET:
            raise CompileError(
                f"{self.file}: opset {v} is older than the oldest supported ({MIN_OPSET})",
                hint=f"convert it: onnx.version_converter.convert_version(model, {MIN_OPSET + 6})",
            )
        return v

    def _inputs(self) -> None:
        from onnx import TensorProto

        g = self.proto.graph
        inits = {t.name for t in g.initializer}
        real = [i for i in g.input if i.name not in inits]
        if not real:
            raise CompileError(f"{self.file}: the model has no input (every graph input is an initializer)")
        given = self._given_shapes(len(real))
        for k, vi in enumerate(real):
            tt = vi.type.tensor_type
            if tt.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
                raise CompileError(
                    f"{self.file}: input {vi.name!r} has element type "
                    f"{TensorProto.DataType.Name(tt.elem_type)}; only float inputs are supported"
                )
            dims: list[int | str | None] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
            ]
            shape = self._resolve_shape(vi.name, dims, given[k])
            if isinstance(dims[0], int) and dims[0] > 0:
                self.static_batch.add(dims[0])
            src = Source(file=self.file, layer=vi.name, layer_type="input")
            node = self.graph.add(Node(self._unique(vi.name), "input", attrs={"shape": shape}, source=src))
            node.shape = shape
            self.values[vi.name] = node.name

    def _given_shapes(self, n: int) -> list[tuple[int, ...] | None]:
        s = self.input_shape
        if s is None:
            return [None] * n
        shapes = [s] if isinstance(s[0], int) else list(s)
        if len(shapes) != n:
            raise CompileError(f"{self.file}: the model has {n} input(s) but {len(shapes)} shapes are given")
        return [tuple(int(d) for d in x) for x in shapes]

    def _resolve_shape(
        self, name: str, dims: list[int | str | None], given: tuple[int, ...] | None
    ) -> tuple[int, ...]:
        if not dims:
            raise CompileError(f"{self.file}: input {name!r} has no shape in the model")
        if given is not None:
            if len(given) == len(dims) - 1:
                given = (dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 1, *given)
            if len(given) != len(dims):
                raise CompileError(
                    f"{self.file}: input {name!r} has rank {len(dims)} but input_shape={list(given)} "
                    f"has {len(given)} dims"
                )
            for i, (d, g) in enumerate(zip(dims, given, strict=True)):
                if i > 0 and isinstance(d, int) and d > 0 and d != g:
                    raise CompileError(
                        f"{self.file}: input {name!r} is {_fmt(dims)} in the model "
                        f"but input_shape gives {list(given)}",
                        hint=f"axis {i} is fixed at {d}",
                    )
            return given
        symbolic = [(i, d) for i, d in enumerate(dims) if i > 0 and not (isinstance(d, int) and d > 0)]
        if symbolic:
            which = ", ".join(f"{d or '?'} (axis {i})" for i, d in symbolic)
            example = ", ".join(str(d) if isinstance(d, int) and d > 0 else str(d or "?") for d in dims[1:])
            raise CompileError(
                f"{self.file}: input {name!r} has symbolic dimension(s) {which}",
                hint=f"pass input_shape=({example}) with sizes for the symbolic dimensions",
            )
        return (dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 1, *(int(d) for d in dims[1:]))  # type: ignore[arg-type]

    # --- main loop -----------------------------------------------------------------------------
    def read(self) -> Graph:
        from onnx import numpy_helper

        g = self.proto.graph
        for t in g.initializer:
            self.consts[t.name] = numpy_helper.to_array(t)
        for n in g.node:
            for i in n.input:
                self.uses[i] = self.uses.get(i, 0) + 1
        for o in g.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1
        self._inputs()
        for i, node in enumerate(g.node):
            self.node = node
            self.src = Source(file=self.file, layer=node.name or f"#{i}", layer_type=node.op_type)
            self._convert(node)
        outs = []
        for o in g.output:
            if o.name in self.values:
                outs.append(self.values[o.name])
            elif o.name in self.consts:
                raise CompileError(f"{self.file}: output {o.name!r} is a constant, not computed from inputs")
            else:
                raise CompileError(f"{self.file}: output {o.name!r} is not produced by any node")
        self.graph.outputs = outs
        prune(self.graph)
        return run_all(self.graph)

    def _convert(self, node: Any) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise self.error(f"operator {node.domain}::{op} (opset {self.opset}) is not supported",
                             "only the default ai.onnx domain is read")
        for name in node.input:
            if name and name not in self.values and name not in self.consts:
                raise self.error(
                    f"input {name!r} is not a graph input, an initializer or the output of an earlier node",
                    "is the model missing an initializer?",
                )
        if op == "Constant":
            self.consts[node.output[0]] = self._constant(node)
            return
        present = [i for i in node.input if i]
        if present and all(i in self.consts for i in present):
            if any(_is_sym(self.consts[i]) for i in present):
                fn = _SYMBOLIC.get(op)
                if fn is None:
                    raise self.error(
                        f"{op} on a value depending on the batch size is not supported (opset {self.opset})",
                        "only static shape arithmetic is folded; export with a fixed shape or use flatten",
                    )
                ins = [self.consts.get(i) if i else None for i in node.input]
                self.consts[node.output[0]] = _settle(np.asarray(fn(self, node, ins), dtype=object))
            else:
                self._fold(node)
            return
        handler = _HANDLERS.get(op)
        if handler is None:
            raise self.error(
                f"unsupported ONNX operator {op} (opset {self.opset})",
                f"supported: {', '.join(sorted(SUPPORTED_OPS))}",
            )
        handler(self, node, _attrs(node))

    def error(self, msg: str, hint: str | None = None) -> CompileError:
        return CompileError(msg, self.src, hint)

    # --- constants -----------------------------------------------------------------------------
    def _constant(self, node: Any) -> np.ndarray:
        from onnx import numpy_helper

        a = {x.name: x for x in node.attribute}
        if "value" in a:
            return numpy_helper.to_array(a["value"].t)
        attrs = _attrs(node)
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                           ("value_ints", np.int64)):
            if key in attrs:
                return np.asarray(attrs[key], dtype=dtype)
        raise self.error(f"Constant with {sorted(attrs)} is not supported (opset {self.opset})")

    def _fold(self, node: Any) -> None:
        """Evaluate a node whose inputs are all constants with onnx's reference implementation."""
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        outs = [helper.make_tensor_value_info(o, 0, None) for o in node.output if o]
        graph = helper.make_graph([node], "fold", [], outs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        feeds = {i: self.consts[i] for i in node.input if i}
        try:
            outs = ReferenceEvaluator(model).run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - the reference implementation may raise anything
            raise self.error(f"cannot evaluate {node.op_type} on constant inputs: {exc}") from exc
        for name, value in zip([o for o in node.output if o], outs, strict=False):
            self.consts[name] = np.asarray(value)

    def const(self, name: str, what: str) -> np.ndarray:
        """The constant value of input ``name``; an error naming ``what`` when it is computed."""
        if name in self.consts:
            v = self.consts[name]
            if _is_sym(v):
                raise self.error(f"{what} {name!r} depends on the batch size; it must be static")
            return v
        raise self.error(
            f"{what} {name!r} is computed at run time; it must be an initializer or a Constant",
            "automtl reads weights and shape arguments only from initializers / Constant nodes",
        )

    def opt_const(self, node: Any, index: int, what: str) -> np.ndarray | None:
        if len(node.input) > index and node.input[index]:
            return self.const(node.input[index], what)
        return None

    def tensor(self, name: str) -> str:
        """The IR node computing input ``name`` (a constant becomes a constant node)."""
        if name in self.values:
            return self.values[name]
        value = self.const(name, "input")
        attrs = {"target": OnnxConstant(_torch(value)), "args": (), "kwargs": {}}
        ir = self.add("opaque", attrs, [], hint=name)
        self.values[name] = ir
        return ir

    # --- emitting ------------------------------------------------------------------------------
    def _unique(self, name: str) -> str:
        name = name or "node"
        base, k = name, 1
        while name in self.graph:
            name = f"{base}_{k}"
            k += 1
        return name

    def add(
        self,
        kind: str,
        attrs: dict[str, Any],
        inputs: list[str],
        tensors: dict[str, np.ndarray] | None = None,
        hint: str | None = None,
    ) -> str:
        """Append one IR node for the current ONNX node and infer its shape at once."""
        if hint is None:
            hint = self._base_name()
        t = {k: _torch(v) for k, v in (tensors or {}).items()}
        ir = Node(self._unique(hint), kind, inputs=inputs, attrs=attrs, source=self.src, tensors=t)
        self.graph.add(ir)
        ir.shape = get_kind(kind).infer(ir, [self.graph[i].shape for i in inputs])
        return ir.name

    def out(self, ir: str, index: int = 0) -> None:
        self.values[self.node.output[index]] = ir

    def shape(self, ir: str) -> tuple[int, ...]:
        return self.graph[ir].shape

    def x(self, node: Any) -> str:
        """The first input, which must be computed from the graph input."""
        return self.tensor(node.input[0])

    def scalar(self, value: np.ndarray, what: str) -> float:
        if value.size != 1:
            raise self.error(f"{what} must be a scalar, got shape {list(value.shape)}")
        return float(value.reshape(-1)[0])

    def pads(
        self, a: dict[str, Any], x: tuple[int, ...], k: Sequence[int], s: Sequence[int], d: Sequence[int]
    ) -> list[int]:
        """ONNX ``pads`` ``[top, left, bottom, right]`` from ``pads`` or ``auto_pad``."""
        auto = a.get("auto_pad", "NOTSET")
        if auto in ("NOTSET", ""):
            p = list(a.get("pads", [0, 0, 0, 0]))
            if len(p) != 4:
                raise self.error(f"pads {p} are not 2-D (only 2-D convolution and pooling are supported)")
            return p
        if auto == "VALID":
            return [0, 0, 0, 0]
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            begin, end = [], []
            for i in range(2):
                out = -(-x[i + 2] // s[i])
                total = max((out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - x[i + 2], 0)
                small = total // 2
                begin.append(small if auto == "SAME_UPPER" else total - small)
                end.append(total - begin[-1])
            return [*begin, *end]
        raise self.error(f"auto_pad={auto!r} is not supported")

    def split_pads(self, p: list[int], x: str, value: float | None) -> tuple[str, tuple[int, int]]:
        """Symmetric padding for the op itself, and a ``pad`` node before it for the remainder."""
        sym = (min(p[0], p[2]), min(p[1], p[3]))
        # F.pad order: left, right, top, bottom
        rest = [p[1] - sym[1], p[3] - sym[1], p[0] - sym[0], p[2] - sym[0]]
        if any(rest):
            if value is None:
                raise self.error(
                    f"asymmetric pads {p} have no exact equivalent (average pool without count_include_pad)"
                )
            x = self.add("pad", {"pad": rest, "mode": "constant", "value": value}, [x],
                         hint=self._hint_suffix("pad"))
        return x, sym

    def _base_name(self) -> str:
        """The IR name for the current node: its weight's module path, else its cleaned ONNX name."""
        node = self.node
        weight = next((i for i in node.input[1:2] if i.endswith(".weight")), None)
        if weight:
            return weight[: -len(".weight")]
        return _clean_name(node.name, node.op_type) or node.op_type

    def _hint_suffix(self, suffix: str) -> str:
        return f"{self._base_name()}.{suffix}"


def _torch(value: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(value).astype(np.float32))


def _fmt(dims: Sequence[Any]) -> str:
    return "x".join(str(d) if d else "?" for d in dims)


# --- handlers: one ONNX node -> IR nodes ---------------------------------------------------------
Handler = Callable[[_Reader, Any, dict[str, Any]], None]
_HANDLERS: dict[str, Handler] = {}


def _handles(*ops: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for op in ops:
            _HANDLERS[op] = fn
        return fn

    return deco


def _weight(r: _Reader, node: Any, index: int, what: str) -> np.ndarray:
    if len(node.input) <= index or not node.input[index]:
        raise r.error(f"has no {what} input")
    return r.const(node.input[index], what)


@_handles("Conv")
def _conv(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    w = _weight(r, node, 1, "weight")
    if w.ndim != 4:
        raise r.error(f"only 2-D convolutions are supported (weight shape {list(w.shape)})")
    b = r.opt_const(node, 2, "bias")
    k = tuple(a.get("kernel_shape", w.shape[2:]))
    s = tuple(a.get("strides", (1, 1)))
    d = tuple(a.get("dilations", (1, 1)))
    g = int(a.get("group", 1))
    x, pad = r.split_pads(r.pads(a, r.shape(x), k, s, d), x, 0.0)
    tensors = {"weight": w} if b is None else {"weight": w, "bias": b}
    attrs = {"in_channels": w.shape[1] * g, "out_channels": w.shape[0], "kernel_size": k, "stride": s,
             "padding": pad, "dilation": d, "groups": g, "bias": b is not None}
    r.out(r.add("conv2d", attrs, [x], tensors))


@_handles("ConvTranspose")
def _conv_transpose(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    w = _weight(r, node, 1, "weight")
    if w.ndim != 4:
        raise r.error(f"only 2-D transposed convolutions are supported (weight shape {list(w.shape)})")
    if "output_shape" in a or a.get("auto_pad", "NOTSET") not in ("NOTSET", "", "VALID"):
        raise r.error("output_shape / auto_pad SAME_* are not supported", "export with explicit pads")
    b = r.opt_const(node, 2, "bias")
    p = list(a.get("pads", [0, 0, 0, 0])) if a.get("auto_pad", "NOTSET") != "VALID" else [0, 0, 0, 0]
    if p[0] != p[2] or p[1] != p[3]:
        raise r.error(f"asymmetric pads {p} are not supported for ConvTranspose")
    g = int(a.get("group", 1))
    attrs = {"in_channels": w.shape[0], "out_channels": w.shape[1] * g, "kernel_size": tuple(w.shape[2:]),
             "stride": tuple(a.get("strides", (1, 1))), "padding": (p[0], p[1]),
             "dilation": tuple(a.get("dilations", (1, 1))), "groups": g, "bias": b is not None,
             "output_padding": tuple(a.get("output_padding", (0, 0)))}
    tensors = {"weight": w} if b is None else {"weight": w, "bias": b}
    r.out(r.add("conv_transpose2d", attrs, [x], tensors))


@_handles("BatchNormalization")
def _batch_norm(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    if a.get("training_mode", 0) or not a.get("spatial", 1):
        raise r.error("only inference-mode, spatial batch normalization is supported")
    if any(node.output[1:]) and any(r.uses.get(o, 0) for o in node.output[1:] if o):
        raise r.error("the running-statistics outputs of a training-mode BatchNormalization are used")
    x = r.x(node)
    names = ("weight", "bias", "running_mean", "running_var")
    tensors = {k: _weight(r, node, i + 1, k.replace("_", " ")) for i, k in enumerate(names)}
    c = tensors["weight"].size
    attrs = {"num_features": c, "eps": float(a.get("epsilon", 1e-5)),
             "momentum": round(1.0 - float(a.get("momentum", 0.9)), 6), "affine": True}
    tensors = {k: v.reshape(c) for k, v in tensors.items()}
    r.out(r.add("batch_norm", attrs, [x], tensors))


@_handles("Gemm")
def _gemm(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    if a.get("transA", 0):
        raise r.error("transA=1 is not supported (the input must be (batch, features))")
    x = r.x(node)
    w = _weight(r, node, 1, "weight")
    w = w if a.get("transB", 0) else w.T
    w = w * np.float32(a.get("alpha", 1.0))
    c = r.opt_const(node, 2, "bias")
    tensors = {"weight": w}
    if c is not None:
        beta = np.float32(a.get("beta", 1.0))
        if c.ndim == 2 and c.shape[0] != 1:
            raise r.error(f"bias of shape {list(c.shape)} differs per sample; it must be per feature")
        tensors["bias"] = np.broadcast_to(c.reshape(-1) if c.ndim else c, (w.shape[0],)) * beta
    attrs = {"in_features": w.shape[1], "out_features": w.shape[0], "bias": c is not None}
    r.out(r.add("linear", attrs, [x], tensors))


@_handles("MatMul")
def _matmul(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    if node.input[1] in r.values:
        raise r.error("MatMul of two computed tensors is not supported; the second must be a constant weight")
    w = r.const(node.input[1], "weight")
    if w.ndim != 2:
        raise r.error(f"MatMul weight of shape {list(w.shape)} is not supported (must be 2-D: in x out)")
    attrs = {"in_features": w.shape[0], "out_features": w.shape[1], "bias": False}
    r.out(r.add("linear", attrs, [x], {"weight": w.T}))


def _matmul_bias(r: _Reader, node: Any) -> bool:
    """``Add(MatMul(x, W), b)`` -> the linear node gets ``b`` as its bias (exporters split Linear so)."""
    ins = list(node.input)
    for i, j in ((0, 1), (1, 0)):
        lin, bias = ins[i], ins[j]
        if lin not in r.values or bias not in r.consts or _is_sym(r.consts[bias]) or r.uses.get(lin, 0) != 1:
            continue
        ir = r.graph[r.values[lin]]
        if ir.kind != "linear" or ir.attrs["bias"] or ir.source is None or ir.source.layer_type != "MatMul":
            continue
        b = r.consts[bias]
        n = ir.attrs["out_features"]
        if b.size != n or b.shape[-1:] != (n,) or b.ndim > len(ir.shape):
            continue
        ir.attrs["bias"] = True
        ir.tensors["bias"] = _torch(b.reshape(n))
        r.out(ir.name)
        return True
    return False


_UNARY = {
    "Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSwish": "hardswish", "Identity": "identity",
}


@_handles(*_UNARY)
def _unary(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    if node.op_type == "Identity":
        r.out(r.x(node))
        return
    r.out(r.add(_UNARY[node.op_type], {}, [r.x(node)]))


@_handles("LeakyRelu")
def _leaky_relu(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    r.out(r.add("leaky_relu", {"negative_slope": float(a.get("alpha", 0.01))}, [r.x(node)]))


@_handles("Elu")
def _elu(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    r.out(r.add("elu", {"alpha": float(a.get("alpha", 1.0))}, [r.x(node)]))


@_handles("Gelu")
def _gelu(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    if a.get("approximate", "none") != "none":
        raise r.error(f"Gelu approximate={a['approximate']!r} is not supported (only 'none')")
    r.out(r.add("gelu", {}, [r.x(node)]))


@_handles("PRelu")
def _prelu(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    slope = _weight(r, node, 1, "slope")
    shape = r.shape(x)
    per_channel = len(shape) >= 2 and slope.size == shape[1] and slope.shape[0] == slope.size
    if slope.size != 1 and not per_channel:
        raise r.error(f"slope of shape {list(slope.shape)} is not per-channel for input {list(shape)}")
    r.out(r.add("prelu", {"num_parameters": int(slope.size)}, [x], {"weight": slope.reshape(-1)}))


@_handles("Clip")
def _clip(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    if r.opset < 11:
        lo, hi = a.get("min"), a.get("max")
        lo = None if lo is None or lo <= -3.4e38 else float(lo)
        hi = None if hi is None or hi >= 3.4e38 else float(hi)
    else:
        lo_v, hi_v = r.opt_const(node, 1, "min"), r.opt_const(node, 2, "max")
        lo = None if lo_v is None else r.scalar(lo_v, "min")
        hi = None if hi_v is None else r.scalar(hi_v, "max")
    if lo == 0.0 and hi == 6.0:
        r.out(r.add("relu6", {}, [x]))
    elif lo == 0.0 and hi is None:
        r.out(r.add("relu", {}, [x]))
    else:
        r.out(r.add("clip", {"min": lo, "max": hi}, [x]))


@_handles("HardSigmoid")
def _hardsigmoid(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    if abs(alpha - 1 / 6) < 1e-6 and abs(beta - 0.5) < 1e-6:
        r.out(r.add("hardsigmoid", {}, [x]))
        return
    # max(0, min(1, alpha * x + beta)), exactly, when the parameters are not torch's
    y = r.add("mul", {"scalar": alpha}, [x], hint=r._hint_suffix("alpha"))
    y = r.add("add", {"scalar": beta}, [y], hint=r._hint_suffix("beta"))
    r.out(r.add("clip", {"min": 0.0, "max": 1.0}, [y]))


_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Sum": "add", "Max": "maximum"}


@_handles(*_BINARY)
def _binary(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    kind = _BINARY[node.op_type]
    ins = [i for i in node.input if i]
    if node.op_type == "Add" and _matmul_bias(r, node):
        return
    if len(ins) == 1:
        r.out(r.tensor(ins[0]))
        return
    if len(ins) == 2:
        for k, c in ((1, 0), (0, 1)):
            name = ins[k]
            const = r.consts.get(name)
            if const is not None and not _is_sym(const) and const.size == 1 and ins[c] in r.values:
                rank = len(r.shape(r.values[ins[c]]))
                if const.ndim > rank:
                    break
                value = const.reshape(-1)[0].item()
                attrs: dict[str, Any] = {"scalar": value}
                if k == 0:
                    attrs["scalar_first"] = True
                r.out(r.add(kind, attrs, [r.values[ins[c]]]))
                return
    r.out(r.add(kind, {}, [r.tensor(i) for i in ins]))


@_handles("Concat")
def _concat(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    r.out(r.add("concat", {"dim": int(a["axis"])}, [r.tensor(i) for i in node.input if i]))


def _pool_attrs(
    r: _Reader, node: Any, a: dict[str, Any], x: str, pad_value: float | None
) -> tuple[str, dict[str, Any]]:
    shape = r.shape(x)
    k = tuple(a["kernel_shape"])
    if len(k) != 2 or len(shape) != 4:
        raise r.error(f"only 2-D pooling is supported (kernel {list(k)}, input {list(shape)})")
    s = tuple(a.get("strides", (1, 1)))
    d = tuple(a.get("dilations", (1, 1)))
    x, pad = r.split_pads(r.pads(a, shape, k, s, d), x, pad_value)
    if a.get("storage_order", 0):
        raise r.error("storage_order=1 is not supported")
    ceil = bool(a.get("ceil_mode", 0))
    return x, {"kernel_size": k, "stride": s, "padding": pad, "ceil_mode": ceil, "dilation": d}


@_handles("MaxPool")
def _max_pool(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    if len(node.output) > 1 and node.output[1] and r.uses.get(node.output[1], 0):
        raise r.error("the Indices output of MaxPool is not supported")
    x, attrs = _pool_attrs(r, node, a, r.x(node), float("-inf"))
    r.out(r.add("max_pool2d", attrs, [x]))


@_handles("AveragePool")
def _avg_pool(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    include = bool(a.get("count_include_pad", 0))
    x, attrs = _pool_attrs(r, node, a, r.x(node), 0.0 if include else None)
    if attrs.pop("dilation") != (1, 1):
        raise r.error("dilated average pooling is not supported")
    attrs["count_include_pad"] = include
    r.out(r.add("avg_pool2d", attrs, [x]))


@_handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    kind = "adaptive_avg_pool2d" if node.op_type == "GlobalAveragePool" else "adaptive_max_pool2d"
    r.out(r.add(kind, {"output_size": (1, 1)}, [r.x(node)]))


@_handles("Flatten")
def _flatten(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    axis = int(a.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if axis == 1:
        r.out(x if len(shape) == 2 else r.add("flatten", {"start_dim": 1, "end_dim": -1}, [x]))
    elif axis > 1 and all(d == 1 for d in shape[1:axis]):
        r.out(r.add("reshape", {"shape": [math.prod(shape[axis:])]}, [x]))
    else:
        raise r.error(f"Flatten axis={a.get('axis', 1)} of shape {list(shape)} merges the batch dimension")


def _reshape_to(r: _Reader, x: str, target: Sequence[Any], allowzero: bool) -> str:
    """Reshape ``x`` to ``target`` (ONNX semantics); the batch dimension must stay first."""
    shape = r.shape(x)
    sample = math.prod(shape[1:])
    t = list(target)
    for i, d in enumerate(t):
        if isinstance(d, (int, np.integer)) and d == 0 and not allowzero and i < len(shape):
            t[i] = BATCH if i == 0 else shape[i]
    if any(d is BATCH for d in t[1:]):
        raise r.error(f"reshape to {t} moves the batch dimension")
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
    if len(rest) == 1:
        return r.add("flatten", {"start_dim": 1, "end_dim": -1}, [x])
    return r.add("reshape", {"shape": rest}, [x])


@_handles("Reshape")
def _reshape(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    if r.opset < 5:
        target = list(a["shape"])
    else:
        name = node.input[1]
        if name in r.values:
            raise r.error("the target shape is computed at run time; it must be constant (but for the batch)")
        target = list(r.consts[name].reshape(-1))
    target = [d if d is BATCH else int(d) for d in target]
    r.out(_reshape_to(r, x, target, bool(a.get("allowzero", 0))))


@_handles("Squeeze", "Unsqueeze")
def _squeeze(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    axes = a.get("axes") if r.opset < 13 else r.opt_const(node, 1, "axes")
    if node.op_type == "Squeeze":
        rank = len(shape)
        if axes is None:
            axes = [i for i, d in enumerate(shape) if d == 1 and i > 0]
        axes = [int(i) % rank for i in axes]
        if 0 in axes or any(shape[i] != 1 for i in axes):
            raise r.error(f"cannot squeeze axes {axes} of shape {list(shape)}")
        new = [d for i, d in enumerate(shape) if i not in axes]
    else:
        if axes is None:
            raise r.error("Unsqueeze without axes")
        rank = len(shape) + len(axes)
        axes = sorted(int(i) % rank for i in axes)
        new = list(shape)
        for i in axes:
            new.insert(i, 1)
        if new[0] != shape[0]:
            raise r.error(f"unsqueezing axis 0 moves the batch dimension of {list(shape)}")
    r.out(_reshape_to(r, x, [BATCH, *new[1:]], False))


@_handles("Slice")
def _slice(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    if r.opset < 10:
        starts, ends = a["starts"], a["ends"]
        axes, steps = a.get("axes"), None
    else:
        starts, ends = r.const(node.input[1], "starts"), r.const(node.input[2], "ends")
        axes, steps = r.opt_const(node, 3, "axes"), r.opt_const(node, 4, "steps")
    axes = list(range(len(starts))) if axes is None else [int(i) % len(shape) for i in axes]
    for k, axis in enumerate(axes):
        if steps is not None and int(steps[k]) != 1:
            raise r.error("Slice with steps other than 1 is not supported")
        size = shape[axis]
        lo, hi = int(starts[k]), int(ends[k])
        lo = max(0, min(size, lo + size if lo < 0 else lo))
        hi = max(0, min(size, hi + size if hi < 0 else hi))
        if lo == 0 and hi == size:
            continue
        if axis == 0:
            raise r.error("slicing the batch dimension is not supported")
        x = r.add("narrow", {"dim": axis, "start": lo, "length": hi - lo}, [x])
    r.out(x)


@_handles("Dropout")
def _dropout(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    if len(node.output) > 1 and node.output[1] and r.uses.get(node.output[1], 0):
        raise r.error("the mask output of Dropout is not supported")
    ratio = r.opt_const(node, 1, "ratio") if r.opset >= 12 else None
    p = float(a.get("ratio", 0.5)) if ratio is None else r.scalar(ratio, "ratio")
    r.out(r.add("dropout", {"p": p}, [r.x(node)]))


@_handles("Softmax", "LogSoftmax")
def _softmax(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    axis = int(a.get("axis", 1 if r.opset < 13 else -1)) % len(shape)
    if r.opset < 13 and math.prod(shape[axis + 1 :]) != 1:
        raise r.error(
            f"{node.op_type} (opset {r.opset}) over the flattened axes {axis}.. of {list(shape)} is not read",
            "only a softmax over one axis is (the last non-unit axis)",
        )
    if axis == 0:
        raise r.error("softmax over the batch dimension is not supported")
    r.out(r.add("softmax" if node.op_type == "Softmax" else "log_softmax", {"dim": axis}, [x]))


@_handles("ReduceMean")
def _reduce_mean(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    rank = len(r.shape(x))
    axes = a.get("axes") if r.opset < 18 else r.opt_const(node, 1, "axes")
    if axes is None or len(axes) == 0:
        if a.get("noop_with_empty_axes", 0):
            r.out(x)
            return
        raise r.error("ReduceMean over every axis (the batch included) is not supported")
    dims = sorted({int(i) % rank for i in axes})
    if 0 in dims:
        raise r.error("reducing over the batch dimension is not supported")
    r.out(r.add("mean", {"dim": dims, "keepdim": bool(a.get("keepdims", 1))}, [x]))


@_handles("Pad")
def _pad(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    rank = len(r.shape(x))
    if r.opset < 11:
        pads, value, axes = list(a.get("pads", a.get("paddings", []))), float(a.get("value", 0.0)), None
    else:
        pads = [int(p) for p in r.const(node.input[1], "pads").reshape(-1)]
        v = r.opt_const(node, 2, "constant_value")
        value = 0.0 if v is None else r.scalar(v, "constant_value")
        ax = r.opt_const(node, 3, "axes")
        axes = None if ax is None else [int(i) % rank for i in ax.reshape(-1)]
    axes = list(range(rank)) if axes is None else axes
    n = len(axes)
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
    if mode != "constant" and len(torch_pads) > 2 * (rank - 2):
        raise r.error(f"{a.get('mode')} padding of the channel dimension is not supported")
    attrs: dict[str, Any] = {"pad": torch_pads, "mode": mode}
    if mode == "constant":
        attrs["value"] = value
    r.out(r.add("pad", attrs, [x]))


@_handles("Resize", "Upsample")
def _resize(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    x = r.x(node)
    shape = r.shape(x)
    if len(shape) != 4:
        raise r.error(f"only 4-D (N, C, H, W) resizing is supported, got {list(shape)}")
    mode = a.get("mode", "nearest")
    sizes = scales = None
    if node.op_type == "Upsample" or r.opset < 11:
        ctm, nearest = "asymmetric", "floor"
        old = node.op_type == "Upsample" and r.opset < 9
        scales = a.get("scales") if old else r.const(node.input[1], "scales")
    else:
        ctm = a.get("coordinate_transformation_mode", "half_pixel")
        nearest = a.get("nearest_mode", "round_prefer_floor")
        scales = r.opt_const(node, 2, "scales")
        if len(node.input) > 3 and node.input[3]:
            name = node.input[3]
            sizes = r.consts[name] if name in r.consts else r.const(name, "sizes")
        if scales is not None and scales.size == 0:
            scales = None
        if a.get("antialias", 0) or a.get("exclude_outside", 0) or ctm == "tf_crop_and_resize":
            raise r.error("antialias / exclude_outside / tf_crop_and_resize are not supported")
        if sizes is not None and a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise r.error("keep_aspect_ratio_policy other than 'stretch' is not supported")
    axes = [int(i) % 4 for i in a.get("axes", range(4))]
    if sizes is not None:
        full = list(shape)
        for ax, s in zip(axes, list(sizes.reshape(-1)), strict=True):
            full[ax] = shape[0] if s is BATCH else int(s)
        if full[:2] != list(shape[:2]):
            raise r.error(f"resizing {list(shape)} to {full} changes the batch or channel dimension")
        out_hw = (full[2], full[3])
        factors = (out_hw[0] / shape[2], out_hw[1] / shape[3])
        attrs: dict[str, Any] = {"size": out_hw, "scale_factor": None}
    elif scales is not None:
        full_s = [1.0] * 4
        for ax, s in zip(axes, [float(v) for v in np.asarray(scales).reshape(-1)], strict=True):
            full_s[ax] = s
        if full_s[:2] != [1.0, 1.0]:
            raise r.error(f"scales {full_s} resize the batch or channel dimension")
        factors = (full_s[2], full_s[3])
        attrs = {"size": None, "scale_factor": factors}
    else:
        raise r.error("Resize needs scales or sizes")
    integer_up = all(f >= 1 and float(f).is_integer() for f in factors)
    if mode == "nearest":
        if ctm == "asymmetric" and nearest == "floor":
            tmode = "nearest"
        elif ctm in ("half_pixel", "pytorch_half_pixel") and nearest == "round_prefer_ceil":
            tmode = "nearest-exact"
        elif integer_up and ctm in ("half_pixel", "pytorch_half_pixel"):
            tmode = "nearest"
        else:
            raise r.error(
                f"nearest resize with coordinate_transformation_mode={ctm!r}, nearest_mode={nearest!r} "
                f"and factors {factors} has no exact torch equivalent"
            )
        attrs.update(mode=tmode, align_corners=False)
    elif mode in ("linear", "bilinear", "cubic"):
        if mode == "cubic" and abs(float(a.get("cubic_coeff_a", -0.75)) + 0.75) > 1e-6:
            raise r.error("cubic resize with cubic_coeff_a other than -0.75 is not supported")
        if ctm == "align_corners":
            align = True
        elif ctm in ("half_pixel", "pytorch_half_pixel"):
            align = False
        else:
            raise r.error(
                f"{mode} resize with coordinate_transformation_mode={ctm!r} has no torch equivalent",
                "torch uses half_pixel (align_corners=False) or align_corners",
            )
        attrs.update(mode="bicubic" if mode == "cubic" else "bilinear", align_corners=align)
    else:
        raise r.error(f"resize mode {mode!r} is not supported")
    r.out(r.add("interpolate", attrs, [x]))


@_handles("Cast", "CastLike")
def _cast(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    from onnx import TensorProto

    to = a.get("to")
    if node.op_type == "CastLike":
        like = r.consts.get(node.input[1])
        ok = like is not None and np.asarray(like).dtype == np.float32
    else:
        ok = to == TensorProto.FLOAT
    if not ok:
        raise r.error("casting a computed tensor to a type other than float32 is not supported")
    r.out(r.x(node))


SUPPORTED_OPS = frozenset(_HANDLERS) | {"Constant", "Shape", "Gather"}

# --- symbolic shape arithmetic (values holding BATCH) --------------------------------------------
Sym = Callable[[_Reader, Any, list[Any]], np.ndarray]


def _sym_axes(r: _Reader, node: Any, ins: list[Any], attr: str = "axes") -> list[int] | None:
    a = _attrs(node)
    if attr in a:
        return [int(i) for i in a[attr]]
    if len(ins) > 1 and ins[1] is not None:
        return [int(i) for i in np.asarray(ins[1]).reshape(-1)]
    return None


def _sym_unsqueeze(r: _Reader, node: Any, ins: list[Any]) -> np.ndarray:
    v = ins[0]
    axes = _sym_axes(r, node, ins) or []
    rank = v.ndim + len(axes)
    for ax in sorted(i % rank for i in axes):
        v = np.expand_dims(v, ax)
    return v


def _sym_squeeze(r: _Reader, node: Any, ins: list[Any]) -> np.ndarray:
    v = ins[0]
    axes = _sym_axes(r, node, ins)
    return np.squeeze(v, axis=None if axes is None else tuple(i % v.ndim for i in axes))


def _sym_gather(r: _Reader, node: Any, ins: list[Any]) -> np.ndarray:
    if _is_sym(ins[1]):
        raise r.error("Gather indices that depend on the batch size are not supported")
    return np.take(ins[0], ins[1].astype(np.int64), axis=int(_attrs(node).get("axis", 0)))


def _sym_concat(r: _Reader, node: Any, ins: list[Any]) -> np.ndarray:
    return np.concatenate([np.asarray(v).astype(object) for v in ins if v is not None],
                          axis=int(_attrs(node)["axis"]))


def _sym_slice(r: _Reader, node: Any, ins: list[Any]) -> np.ndarray:
    v = ins[0]
    a = _attrs(node)
    if r.opset < 10:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = ins[1], ins[2]
        axes = ins[3] if len(ins) > 3 else None
        steps = ins[4] if len(ins) > 4 else None
    index = [slice(None)] * v.ndim
    for k in range(len(starts)):
        ax = int(axes[k]) % v.ndim if axes is not None else k
        index[ax] = slice(int(starts[k]), int(ends[k]), int(steps[k]) if steps is not None else 1)
    return v[tuple(index)]


def _sym_same(r: _Reader, node: Any, ins: list[Any]) -> np.ndarray:
    return ins[0]


def _sym_reshape(r: _Reader, node: Any, ins: list[Any]) -> np.ndarray:
    if _is_sym(ins[1]):
        raise r.error("a reshape whose target depends on the batch size is not supported here")
    return ins[0].reshape([int(d) for d in ins[1]])


_NEUTRAL = {"Add": 0, "Sub": 0, "Mul": 1, "Div": 1}


def _sym_arith(r: _Reader, node: Any, ins: list[Any]) -> np.ndarray:
    """Element-wise integer arithmetic on shapes; the batch size passes only unchanged (n * 1, n - 0)."""
    op = node.op_type

    def one(a: Any, b: Any) -> Any:
        if a is BATCH or b is BATCH:
            other = a if b is BATCH else b
            commutes = op in ("Add", "Mul") or a is BATCH
            if other is BATCH or not commutes or other != _NEUTRAL[op]:
                raise r.error(f"{op} on the batch size is not supported: the batch size must stay symbolic")
            return BATCH
        if op == "Div":
            integer = isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer))
            return int(a / b) if integer else a / b
        return a + b if op == "Add" else a - b if op == "Sub" else a * b

    a, b = (np.asarray(v).astype(object) for v in ins[:2])
    return np.asarray(np.frompyfunc(one, 2, 1)(a, b), dtype=object)


_SYMBOLIC: dict[str, Sym] = {
    "Add": _sym_arith, "Sub": _sym_arith, "Mul": _sym_arith, "Div": _sym_arith,
    "Unsqueeze": _sym_unsqueeze, "Squeeze": _sym_squeeze, "Gather": _sym_gather, "Concat": _sym_concat,
    "Slice": _sym_slice, "Identity": _sym_same, "Cast": _sym_same, "CastLike": _sym_same,
    "Reshape": _sym_reshape,
}


@_handles("Shape")
def _shape(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    shape = r.shape(r.x(node))
    v = np.array([BATCH, *shape[1:]], dtype=object)
    start, end = a.get("start", 0), a.get("end")
    r.consts[node.output[0]] = _settle(v[start:end])


@_handles("Gather")
def _gather(r: _Reader, node: Any, a: dict[str, Any]) -> None:
    raise r.error("Gather of a computed tensor is not supported (only of constants and shapes)")
