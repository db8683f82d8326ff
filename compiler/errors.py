"""Errors raised while compiling a backbone, each naming where in the source it happened."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """Where an operator came from: a file and line, a layer, an fx node or an ONNX node."""

    file: str | None = None
    line: int | None = None
    layer: str | None = None
    layer_type: str | None = None

    def __str__(self) -> str:
        where = self.file or "<module>"
        if self.line is not None:
            where += f":{self.line}"
        if self.layer is not None:
            what = f"{self.layer_type} " if self.layer_type else ""
            where += f": {what}'{self.layer}'"
        return where


class CompileError(ValueError):
    """A backbone could not be compiled; the message names the file, line and layer."""

    def __init__(self, message: str, source: Source | None = None, hint: str | None = None) -> None:
        self.source = source
        self.reason = message
        self.hint = hint
        text = f"{source}: {message}" if source is not None else message
        if hint:
            text += f" ({hint})"
        super().__init__(text)
