"""The public entry points: :func:`compile` (backbone -> IR graph) and, later, ``build``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .compiler.errors import CompileError
from .compiler.ir import Graph

Backbone = nn.Module | str | os.PathLike


def compile(  # noqa: A001 - the product's verb
    backbone: Backbone,
    input_shape: Any = None,
    *,
    leaf_modules: Iterable[type[nn.Module] | str] = (),
    wrap_functions: Iterable[Callable[..., Any]] = (),
    dialect: str = "auto",
    weights_as_inputs: Mapping[str, Any] | None = None,
) -> Graph:
    """Compile a backbone into the IR, with shapes, parameters and FLOPs for every operator.

    ``backbone`` is an ``nn.Module`` (traced with torch.fx), a ``.prototxt`` path, an ``.onnx``
    path or a zoo name (``automtl.backbones.names()``). ``input_shape`` is ``(C, H, W)`` or
    ``(N, C, H, W)``; files that declare their input shape may omit it, zoo names default to
    the zoo's shape. ``weights_as_inputs`` gives the values of ONNX graph inputs that carry
    weights (models exported with their parameters as inputs), by input name.
    """
    if weights_as_inputs is not None and not str(backbone).lower().endswith(".onnx"):
        raise CompileError("weights_as_inputs is read for .onnx files only", hint="drop it for this backbone")
    if isinstance(backbone, nn.Module):
        from .compiler.frontends.fx import from_module

        if input_shape is None:
            raise CompileError(f"compiling a {type(backbone).__name__} needs input_shape=(C, H, W)")
        return from_module(backbone, input_shape, leaf_modules, wrap_functions)
    if not isinstance(backbone, (str, os.PathLike)):
        raise TypeError(f"backbone must be an nn.Module, a file path or a zoo name, not {type(backbone).__name__}")
    path = Path(backbone)
    suffix = path.suffix.lower()
    if suffix in (".prototxt", ".pbtxt", ".txt"):
        from .compiler.frontends.prototxt import from_prototxt

        _exists(path)
        return from_prototxt(path, input_shape=input_shape, dialect=dialect)
    if suffix == ".onnx":
        from .compiler.frontends.onnx import from_onnx

        _exists(path)
        return from_onnx(path, input_shape=input_shape, weights_as_inputs=weights_as_inputs)
    from . import backbones

    if str(backbone) not in backbones.names():
        raise CompileError(
            f"{str(backbone)!r} is neither a .prototxt / .onnx file nor a zoo backbone",
            hint=f"zoo names: {', '.join(backbones.names())}",
        )
    from .compiler.frontends.fx import from_module

    module = backbones.get(str(backbone))
    return from_module(module, input_shape or backbones.input_shape(str(backbone)))


def _exists(path: Path) -> None:
    if not path.is_file():
        raise CompileError(f"{path}: no such file")
