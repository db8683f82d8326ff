"""Export to ONNX: one model file whose outputs are named (one per task), with a dynamic batch.

A multi-domain model (MPNAS: one input per domain) exports with one named input per domain
(:func:`input_shapes` gives their shapes and names).

:func:`export_onnx` writes and validates the file (``onnx.checker``); :func:`check_onnx` runs it
with onnxruntime and compares it with PyTorch, naming the output that differs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

Shape = Sequence[int]


class ExportCheckError(AssertionError):
    """The exported ONNX model does not compute what the PyTorch model computes."""


def _example(input_shape: Shape | Sequence[Shape]) -> tuple[torch.Tensor, ...]:
    shapes = [input_shape] if isinstance(input_shape[0], int) else list(input_shape)  # type: ignore[index]
    out = []
    for s in shapes:
        s = tuple(int(d) for d in s)  # type: ignore[union-attr]
        out.append(torch.randn(s if len(s) in (2, 4) else (1, *s)))
    return tuple(out)


def input_shapes(model: nn.Module, given: Shape | Sequence[Shape] | None = None
                 ) -> tuple[list[tuple[int, ...]], list[str] | None]:
    """The ``(C, H, W)`` of each input of a derived model, and its ONNX input names.

    A multi-domain model (one input per domain) has one shape per input: ``given`` is one shape
    for all of them or one per input (default: the shapes it was compiled at), and its inputs are
    named as in its graph (``x_<domain>``); a one-input model keeps the name ``input`` (``None``).
    """
    graph = getattr(model, "graph", None)
    inputs = list(graph.inputs) if graph is not None else ["input"]
    if given is None:
        if graph is None:
            raise ValueError("the model has no compiled graph: give the input shape (C,H,W)")
        shapes = [tuple(int(d) for d in graph[i].shape[1:]) for i in inputs]
    elif isinstance(given[0], int):
        shapes = [tuple(int(d) for d in given)] * len(inputs)  # type: ignore[union-attr]
    else:
        shapes = [tuple(int(d) for d in s) for s in given]  # type: ignore[union-attr]
        if len(shapes) != len(inputs):
            raise ValueError(f"the model has {len(inputs)} inputs ({', '.join(inputs)}) but {len(shapes)} input "
                             "shapes are given: give one shape for all, or one per input separated by ';'")
    return shapes, (inputs if len(inputs) > 1 else None)


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, dict):
        return tuple(out.values())
    return tuple(out)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape: Shape | Sequence[Shape],
    dynamic_batch: bool = True,
    output_names: Sequence[str] | None = None,
    opset: int | None = None,
    *,
    input_names: Sequence[str] | None = None,
    dynamo: bool = False,
) -> Any:
    """Export ``model`` (eval mode) to ``path`` and return the checked ``onnx.ModelProto``.

    ``input_shape`` is ``(C, H, W)`` or ``(N, C, H, W)`` (a list of them for several inputs).
    Outputs are named ``output_names``, else ``model.task_names``, else ``output_0..``. The
    default exporter is TorchScript-based (``dynamo=False``): fast, and it folds BN into the
    convolutions; ``dynamo=True`` uses ``torch.export`` (slower, same ONNX ops here).
    """
    import onnx

    example = _example(input_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            n_out = len(_as_tuple(model(*example)))
        default = [f"output_{i}" for i in range(n_out)]
        names = list(output_names or getattr(model, "task_names", None) or default)
        if len(names) != n_out:
            raise ValueError(f"the model returns {n_out} outputs but {len(names)} names are given: {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"output names must be unique: {names}")
        numbered = [f"input_{i}" for i in range(len(example))]
        ins = list(input_names or (numbered if len(example) > 1 else ["input"]))
        kwargs: dict[str, Any] = {"input_names": ins, "output_names": names, "dynamo": dynamo}
        if opset is not None:
            kwargs["opset_version"] = opset
        if dynamo:
            batch = torch.export.Dim("batch")
            kwargs["dynamic_shapes"] = tuple({0: batch} for _ in example) if dynamic_batch else None
            kwargs["verbose"] = False
        elif dynamic_batch:
            kwargs["dynamic_axes"] = {n: {0: "batch"} for n in [*ins, *names]}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(model, example, str(path), **kwargs)
    finally:
        model.train(was_training)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def check_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    input: torch.Tensor | Sequence[torch.Tensor],  # noqa: A002 - the natural name
    atol: float = 1e-4,
) -> dict[str, float]:
    """Run ``path`` with onnxruntime on ``input`` and compare every output with ``model``'s.

    Returns the max absolute difference per output name; raises :class:`ExportCheckError`
    naming the first output that differs by more than ``atol`` (or has another shape).
    """
    import onnxruntime as ort

    xs = (input,) if isinstance(input, torch.Tensor) else tuple(input)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), xs, strict=True)}
    got = session.run(None, feeds)
    names = [o.name for o in session.get_outputs()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = [t.detach().cpu().numpy() for t in _as_tuple(model(*xs))]
    finally:
        model.train(was_training)
    if len(want) != len(got):
        raise ExportCheckError(f"{path}: the ONNX model has {len(got)} outputs {names}, PyTorch {len(want)}")
    diffs: dict[str, float] = {}
    for name, g, w in zip(names, got, want, strict=True):
        if g.shape != w.shape:
            raise ExportCheckError(
                f"{path}: output {name!r} has shape {list(g.shape)} in ONNX, {list(w.shape)} in PyTorch"
            )
        diff = float(np.max(np.abs(g.astype(np.float64) - w))) if g.size else 0.0
        if not diff <= atol:
            raise ExportCheckError(
                f"{path}: output {name!r} differs from PyTorch by up to {diff:.3g} (atol {atol:g}); "
                f"max |value| {float(np.max(np.abs(w))):.3g}"
            )
        diffs[name] = diff
    return diffs
