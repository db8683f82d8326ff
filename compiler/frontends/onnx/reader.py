"""One pass over an ONNX graph, in its (topological) node order, emitting IR nodes.

The reader keeps, for every ONNX value, either the IR node computing it or its folded constant
value, and the element type of every IR node (computed tensors are floating point; weights and
constants the IR holds are float32). Op-specific work is in the handler modules, found through
:mod:`.table`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CompileError, Source
from ...ir import Graph, Node
from ...ops import get as get_kind
from ...passes import prune, run_all
from .common import FLOAT_TYPES, TORCH_DTYPES, attrs, clean_name, fmt, is_sym, settle, to_torch
from .load import ModelLike, check, load
from .table import HANDLERS, SUPPORTED_OPS, SYMBOLIC, VERSIONS

MIN_OPSET = 7
_STATE_DICT_NAME = re.compile(r"[A-Za-z_]\w*(\.\w+)*")


def max_opset() -> int:
    """The newest opset the frontend reads: the newest the installed ``onnx`` package knows."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def from_onnx(
    model_or_path: ModelLike, input_shape: Any = None, weights_as_inputs: Mapping[str, Any] | None = None
) -> Graph:
    """Read an ONNX model into the IR, with weights, shapes and costs.

    ``input_shape`` is needed only when an input has symbolic dimensions other than the batch:
    ``(C, H, W)`` or ``(N, C, H, W)`` (a list with one per input for several inputs). A symbolic
    batch dimension becomes 1 unless ``input_shape`` gives it. ``weights_as_inputs`` maps graph
    inputs that carry weights or other constants (models exported with their parameters as
    inputs) to their values. The model must pass ``onnx.checker`` (full check).
    """
    proto, file = load(model_or_path)
    check(proto, file)
    return Reader(proto, file, input_shape, weights_as_inputs).read()


class Reader:
    """The state of one ONNX -> IR conversion; handlers call its helpers."""

    def __init__(self, proto: Any, file: str, input_shape: Any, weights: Mapping[str, Any] | None = None) -> None:
        self.proto = proto
        self.file = file
        self.input_shape = input_shape
        self.opset = self._opset()
        name = proto.graph.name or Path(file).stem
        self.graph = Graph(name, file=file)
        self.values: dict[str, str] = {}  # ONNX value -> IR node computing it
        self.consts: dict[str, np.ndarray] = {}  # ONNX value -> folded value (object arrays hold BATCH)
        self.dtypes: dict[str, str] = {}  # IR node -> element type of its value
        self.uses: dict[str, int] = {}
        self.static_batch: set[int] = set()  # batch sizes fixed in the file (Reshape may spell them out)
        self.fused: dict[str, str] = {}  # grouped view of a fused group norm -> the group norm (fusion.py)
        self.affine: dict[str, str] = {}  # fused group norm -> the affine step it may still absorb
        self.initializers = {t.name for t in proto.graph.initializer}
        self.graph_inputs = {i.name for i in proto.graph.input} - self.initializers
        self.weights = self._weights(weights or {})
        self.node: Any = None
        self.src: Source | None = None

    # --- set-up --------------------------------------------------------------------------------
    def _opset(self) -> int:
        versions = [o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")]
        if not versions:
            raise CompileError(f"{self.file}: the model imports no default-domain (ai.onnx) opset")
        v, newest = int(versions[0]), max_opset()
        if v > newest:
            raise CompileError(
                f"{self.file}: opset {v} is newer than the newest the installed onnx package knows ({newest})",
                hint="upgrade onnx, or convert the model: onnx.version_converter.convert_version(model, "
                f"{newest})",
            )
        if v < MIN_OPSET:
            raise CompileError(
                f"{self.file}: opset {v} is older than the oldest supported ({MIN_OPSET})",
                hint=f"convert it: onnx.version_converter.convert_version(model, {MIN_OPSET + 6})",
            )
        return v

    def _weights(self, given: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``weights_as_inputs`` checked against the graph inputs they stand for."""
        from onnx import helper

        declared = {i.name: i for i in self.proto.graph.input}
        out: dict[str, np.ndarray] = {}
        for name, value in given.items():
            if name not in declared:
                raise CompileError(
                    f"{self.file}: weights_as_inputs gives {name!r}, which is not a graph input of the model",
                    hint=f"graph inputs: {', '.join(sorted(declared)) or 'none'}",
                )
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            tt = declared[name].type.tensor_type
            try:
                array = np.asarray(value, dtype=helper.tensor_dtype_to_np_dtype(tt.elem_type))
            except (TypeError, ValueError, KeyError) as exc:
                raise CompileError(f"{self.file}: weights_as_inputs[{name!r}] is not a tensor: {exc}") from None
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            fits = len(dims) == array.ndim and all(d in (None, s) for d, s in zip(dims, array.shape, strict=False))
            if tt.HasField("shape") and not fits:
                raise CompileError(
                    f"{self.file}: weights_as_inputs[{name!r}] has shape {list(array.shape)} "
                    f"but the model declares {fmt(dims)}"
                )
            out[name] = array
        return out

    def _inputs(self) -> None:
        from onnx import TensorProto

        g = self.proto.graph
        real = [i for i in g.input if i.name in self.graph_inputs and i.name not in self.weights]
        if not real:
            raise CompileError(f"{self.file}: the model has no input (every graph input is a constant)")
        given = self._given_shapes(len(real))
        for k, vi in enumerate(real):
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type"):
                raise CompileError(f"{self.file}: input {vi.name!r} is not a tensor; only tensor inputs are read")
            if tt.elem_type not in FLOAT_TYPES:
                raise CompileError(
                    f"{self.file}: input {vi.name!r} has element type "
                    f"{TensorProto.DataType.Name(tt.elem_type)}; only floating-point inputs are computed",
                    hint=f"if it is a constant, pass its value: weights_as_inputs={{{vi.name!r}: array}}",
                )
            dims: list[int | str | None] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
            ]
            shape = self._resolve_shape(vi.name, dims, given[k])
            if isinstance(dims[0], int) and dims[0] > 0:
                self.static_batch.add(dims[0])
            src = Source(file=self.file, layer=vi.name, layer_type="input")
            node = self.graph.add(Node(self._unique(vi.name), "input", attrs={"shape": shape}, source=src))
            node.shape = get_kind("input").infer(node, [])
            self.values[vi.name] = node.name
            self.dtypes[node.name] = FLOAT_TYPES[tt.elem_type]

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
            raise CompileError(
                f"{self.file}: input {name!r} has no shape (or is a scalar) in the model",
                hint="automtl reads inputs with a batch dimension first",
            )
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
                        f"{self.file}: input {name!r} is {fmt(dims)} in the model "
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
            try:
                self.consts[t.name] = numpy_helper.to_array(t)
            except Exception as exc:  # noqa: BLE001 - a corrupt tensor raises anything from numpy or onnx
                raise CompileError(f"{self.file}: initializer {t.name!r} cannot be read: {exc}") from None
        self.consts.update(self.weights)
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
        try:
            self._dispatch(node, op)
        except CompileError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError, OverflowError) as exc:
            raise self.error(f"invalid {op} node: {type(exc).__name__}: {_one_line(exc)}") from None

    def _dispatch(self, node: Any, op: str) -> None:
        if op == "Constant":
            self._check_version(op)
            self.consts[node.output[0]] = self._constant(node)
            return
        present = [i for i in node.input if i]
        if present and all(i in self.consts for i in present):
            if any(is_sym(self.consts[i]) for i in present):
                fn = SYMBOLIC.get(op)
                if fn is None:
                    raise self.error(
                        f"{op} on a value depending on the batch size is not supported (opset {self.opset})",
                        "only static shape arithmetic is folded; export with a fixed shape or use flatten",
                    )
                self._check_version(op)
                ins = [self.consts.get(i) if i else None for i in node.input]
                self.consts[node.output[0]] = settle(np.asarray(fn(self, node, ins), dtype=object))
            else:
                self._fold(node)  # any op the reference implementation knows, at any version
            return
        handler = HANDLERS.get(op)
        if handler is None:
            raise self.error(
                f"unsupported ONNX operator {op} (opset {self.opset})",
                f"supported: {', '.join(sorted(SUPPORTED_OPS))}",
            )
        self._check_version(op)
        handler(self, node, attrs(node))

    def _check_version(self, op: str) -> None:
        from onnx import defs

        try:
            since = self.version(op)
        except defs.SchemaError:
            raise self.error(f"{op} does not exist in opset {self.opset}") from None
        if since > VERSIONS[op]:
            raise self.error(
                f"{op}-{since} (opset {self.opset}) is newer than the versions automtl reads (up to {op}-"
                f"{VERSIONS[op]})",
                f"convert the model to opset {since - 1} or older",
            )

    def version(self, op: str) -> int:
        """The version of ``op`` the model's opset selects (its schema's ``since_version``)."""
        from onnx import defs

        return int(defs.get_schema(op, self.opset, "").since_version)

    def error(self, msg: str, hint: str | None = None) -> CompileError:
        return CompileError(msg, self.src, hint)

    # --- constants -----------------------------------------------------------------------------
    def _constant(self, node: Any) -> np.ndarray:
        from onnx import numpy_helper

        a = {x.name: x for x in node.attribute}
        if "value" in a:
            return numpy_helper.to_array(a["value"].t)
        values = attrs(node)
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                           ("value_ints", np.int64)):
            if key in values:
                return np.asarray(values[key], dtype=dtype)
        raise self.error(f"Constant with {sorted(values)} is not supported (opset {self.opset})")

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
            raise self.error(f"cannot evaluate {node.op_type} on constant inputs: {_one_line(exc)}") from None
        for name, value in zip([o for o in node.output if o], outs, strict=False):
            self.consts[name] = np.asarray(value)

    def const(self, name: str, what: str) -> np.ndarray:
        """The constant value of input ``name``; an error naming ``what`` when it is computed."""
        if name in self.consts:
            v = self.consts[name]
            if is_sym(v):
                raise self.error(f"{what} {name!r} depends on the batch size; it must be static")
            return v
        if name in self.graph_inputs:
            raise self.error(
                f"{what} {name!r} is a graph input, not an initializer",
                f"pass its value: weights_as_inputs={{{name!r}: array}}",
            )
        raise self.error(
            f"{what} {name!r} is computed at run time; it must be an initializer or a Constant",
            "automtl reads weights and shape arguments only from initializers / Constant nodes",
        )

    def opt_const(self, node: Any, index: int, what: str) -> np.ndarray | None:
        if len(node.input) > index and node.input[index]:
            return self.const(node.input[index], what)
        return None

    def tensor(self, name: str) -> str:
        """The IR node computing input ``name``: a constant becomes a ``parameter`` node.

        It is learnable (a counted parameter) when it is an initializer under a state-dict name
        (``gamma``, ``blocks.0.gamma``: what torch exports an ``nn.Parameter`` as), a buffer
        otherwise (``onnx::Mul_68``, ``/Constant_output_0``, a ``Constant`` node).
        """
        if name in self.values:
            return self.values[name]
        value = self.const(name, "input")
        dtype = FLOAT_TYPES.get(_onnx_type(value), "float32")
        learnable = name in self.initializers and _STATE_DICT_NAME.fullmatch(name) is not None
        attrs_ = {"shape": tuple(value.shape), "view": tuple(value.shape), "learnable": learnable,
                  "dtype": TORCH_DTYPES[dtype]}
        ir = self.add("parameter", attrs_, [], {"value": value}, hint=name, dtype=dtype)
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
        dtype: str | None = None,
    ) -> str:
        """Append one IR node for the current ONNX node and infer its shape at once.

        Its element type is ``dtype``, else its inputs' (which must agree); nodes holding
        weights compute in float32 only.
        """
        types = sorted({self.dtypes[i] for i in inputs})
        if len(types) > 1:
            raise self.error(f"mixes inputs of element types {', '.join(types)}")
        if tensors and types and types != ["float32"]:
            raise self.error(
                f"{self.node.op_type} on a {types[0]} tensor is not supported: automtl keeps weights in float32",
                "convert the model to float32",
            )
        if hint is None:
            hint = self._base_name()
        t = {k: to_torch(v) for k, v in (tensors or {}).items()}
        ir = Node(self._unique(hint), kind, inputs=inputs, attrs=attrs, source=self.src, tensors=t)
        self.graph.add(ir)
        ir.shape = get_kind(kind).infer(ir, [self.graph[i].shape for i in inputs])
        if kind != "parameter" and 0 in ir.shape:
            raise self.error(f"gives an empty tensor of shape {list(ir.shape)}", "a zero-sized weight or axis?")
        self.dtypes[ir.name] = dtype or (types[0] if types else "float32")
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

    def unused(self, node: Any, first: int, what: str) -> None:
        """Refuse the node when any of its outputs from index ``first`` on is read."""
        if any(o and self.uses.get(o, 0) for o in node.output[first:]):
            raise self.error(f"the {what} output of {node.op_type} is not supported")

    def pads(
        self, a: dict[str, Any], x: tuple[int, ...], k: Sequence[int], s: Sequence[int], d: Sequence[int]
    ) -> list[int]:
        """ONNX ``pads`` ``[top, left, bottom, right]`` from ``pads`` or ``auto_pad``."""
        auto = a.get("auto_pad", "NOTSET")
        if auto in ("NOTSET", ""):
            p = list(a.get("pads", [0, 0, 0, 0]))
            if len(p) != 4:
                raise self.error(f"pads {p} are not 2-D (only 2-D convolution and pooling are supported)")
            if min(p) < 0:
                raise self.error(f"negative pads {p} are not supported")
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
                         hint=self.hint_suffix("pad"))
        return x, sym

    def _base_name(self) -> str:
        """The IR name for the current node: its weight's module path, else its cleaned ONNX name."""
        node = self.node
        weight = next((i for i in node.input[1:2] if i.endswith(".weight")), None)
        if weight:
            return weight[: -len(".weight")]
        return clean_name(node.name, node.op_type) or node.op_type

    def hint_suffix(self, suffix: str) -> str:
        return f"{self._base_name()}.{suffix}"


def _onnx_type(value: np.ndarray) -> int:
    return {np.dtype(np.float16): 10, np.dtype(np.float64): 11}.get(np.asarray(value).dtype, 1)


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


