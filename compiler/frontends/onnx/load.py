"""Reading an ONNX file and refusing invalid ones before anything is imported from them."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ...errors import CompileError, Source

ModelLike = str | os.PathLike | bytes | Any  # Any: onnx.ModelProto (onnx is imported lazily)


def load(model: ModelLike) -> tuple[Any, str]:
    """The model proto and a name for it in messages (its path, or a placeholder)."""
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
        raise CompileError(f"{file}: not an ONNX model ({type(exc).__name__}: {_first_line(exc)})") from None
    if proto.ir_version == 0 or not proto.graph.node:
        raise CompileError(f"{file}: not an ONNX model (no ir_version or no graph nodes)")
    return proto, file


_CONTEXT = re.compile(r"[Nn]ame: (?P<name>\S*) OpType: (?P<op>\S+)")
_WRITTEN_TWICE = re.compile(r"however '(?P<value>[^']*)' has been used as output names multiple times")
_SHAPE_NODE = re.compile(r"\(op_type:(?P<op>[^,]+), node name: (?P<name>[^)]*)\)")


def check(proto: Any, file: str) -> None:
    """``onnx.checker`` with the full check (strict shape inference): its verdict as one line naming the node.

    Graph inputs and outputs declared without a shape (which ``onnx.checker`` requires, but
    runtimes do not) get the shapes ONNX shape inference finds (or an unknown one), and that
    copy of the model is checked.
    """
    import onnx

    try:
        _check(proto, file)
    except onnx.checker.ValidationError as exc:
        if "Field 'shape' of 'type' is required but missing" not in str(exc):
            raise _rejected(exc, file, proto) from None
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
            for value in (*inferred.graph.input, *inferred.graph.output):  # still unknown: any shape
                if value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape"):
                    value.type.tensor_type.shape.SetInParent()
            _check(inferred, file)
        except Exception as again:  # noqa: BLE001 - as below
            raise _rejected(again, file, proto) from None
    except Exception as exc:  # noqa: BLE001 - the checker also raises ValueError, RuntimeError ... on odd files
        raise _rejected(exc, file, proto) from None


def _check(proto: Any, file: str) -> None:
    import onnx

    big = proto.ByteSize() >= 2**31 - 1  # protobuf cannot serialise it: the checker reads the file
    onnx.checker.check_model(file if big and Path(file).is_file() else proto, full_check=True)


def _rejected(exc: Exception, file: str, proto: Any) -> CompileError:
    """The checker's verdict as a CompileError naming the node it is about (when it says or implies one)."""
    text = str(exc)
    found = _CONTEXT.search(text) or _SHAPE_NODE.search(text)
    src = None
    if found:
        unnamed = next((f"#{i}" for i, n in enumerate(proto.graph.node) if n.op_type == found["op"]), "?")
        src = Source(file=file, layer=found["name"] or unnamed, layer_type=found["op"])
    twice = _WRITTEN_TWICE.search(text)
    if src is None and twice:  # name the second node writing the value
        writers = [(i, n) for i, n in enumerate(proto.graph.node) if twice["value"] in n.output]
        if len(writers) > 1:
            i, n = writers[1]
            src = Source(file=file, layer=n.name or f"#{i}", layer_type=n.op_type)
    return CompileError(
        f"{'' if src else file + ': '}the ONNX checker rejects the model: {_first_line(exc)}", src,
        "the file is not valid ONNX; export it again or repair it",
    )


def _first_line(exc: BaseException) -> str:
    """The message on one line: the checker's context block dropped, whitespace collapsed, at most 300 chars."""
    text = " ".join(str(exc).split("==> Context:")[0].split())
    return (text[:297] + "...") if len(text) > 300 else text or type(exc).__name__
