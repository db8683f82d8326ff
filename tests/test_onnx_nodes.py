"""The ONNX conformance node tests (``onnx.backend.test.case.node``) for every operator the frontend claims.

Each case is a one-node model with its inputs and expected outputs. Inputs the frontend reads as
constants (weights, shapes, indices, scales ...) become initializers; the rest stay graph inputs.
A case either compiles, runs and matches the expected outputs (values, shape and dtype), or is
refused with a :class:`CompileError` (dynamic shapes, the batch axis, integer tensors ...);
never a crash, never a wrong number.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from automtl.compiler.codegen import codegen
from automtl.compiler.errors import CompileError
from automtl.compiler.frontends.onnx import SUPPORTED_OPS, from_onnx

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest)

# ops whose every tensor input is data (stays a graph input); the others keep only input 0
ALL_DATA = {"Add", "Sub", "Mul", "Div", "Sum", "Max", "Concat"}
# ops the frontend claims whose cases cannot compile by nature (no computed input, a constant output)
NEVER_COMPILED = {"Constant", "Shape"}


def _collect() -> dict[str, list[Any]]:
    """The cases of the claimed op types, by op type (importing only their modules: seconds, not all ops')."""
    import importlib
    import pkgutil

    from onnx.backend.test.case import node as cases_pkg

    wanted = {op.lower() for op in SUPPORTED_OPS}
    modules = [m.name for m in pkgutil.iter_modules(cases_pkg.__path__) if m.name.replace("_", "") in wanted]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if hasattr(cases_pkg, "_NodeTestCases"):  # importing a module registers its cases
            for name in modules:
                importlib.import_module(f"{cases_pkg.__name__}.{name}")
            cases = list(cases_pkg._NodeTestCases)
        else:
            cases = cases_pkg.collect_testcases(None)
    by_op: dict[str, list[Any]] = {}
    for case in cases:
        ops = {n.op_type for n in case.model.graph.node}
        if len(ops) == 1 and ops <= SUPPORTED_OPS and all(n.domain in ("", "ai.onnx") for n in case.model.graph.node):
            by_op.setdefault(ops.pop(), []).append(case)
    return by_op


@pytest.fixture(scope="module")
def cases() -> dict[str, list[Any]]:
    return _collect()


def with_constants(case: Any, inputs: list[np.ndarray]) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """The case's model with its non-data inputs turned into initializers, and the data inputs' values."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    node = model.graph.node[0]
    keep_all = node.op_type in ALL_DATA
    data_names = {n for i, n in enumerate(node.input) if n and (keep_all or i == 0)}
    values = dict(zip([vi.name for vi in case.model.graph.input], inputs, strict=True))
    kept = [vi for vi in model.graph.input if vi.name in data_names]
    for vi in model.graph.input:
        if vi.name not in data_names:
            model.graph.initializer.append(_tensor(values[vi.name], vi.name))
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model, [values[vi.name] for vi in kept]


def _tensor(value: Any, name: str) -> onnx.TensorProto:
    """A test value as an initializer (types numpy lacks come as TensorProto already)."""
    if isinstance(value, onnx.TensorProto):
        t = onnx.TensorProto()
        t.CopyFrom(value)
        t.name = name
        return t
    return numpy_helper.from_array(np.asarray(value), name)


def _array(value: Any) -> np.ndarray:
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def _to_torch(value: Any) -> torch.Tensor:
    x = np.array(_array(value))  # a writable copy
    if x.dtype.name == "bfloat16":  # numpy has no bfloat16: ml_dtypes' arrays go through float32
        return torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(x)


def _from_torch(t: torch.Tensor) -> tuple[np.ndarray, str]:
    """The values (bfloat16 widened to float32) and the dtype's name."""
    if t.dtype == torch.bfloat16:
        return t.float().numpy(), "bfloat16"
    return t.numpy(), t.numpy().dtype.name


def run_case(case: Any) -> tuple[str, str]:
    """``("pass" | "refused" | "wrong", detail)`` for one conformance case; anything else raises."""
    for inputs, expected in case.data_sets:
        model, feeds = with_constants(case, list(inputs))
        try:
            graph = from_onnx(model)
        except CompileError as exc:
            if "\n" in str(exc):
                return "wrong", f"a multi-line error: {exc!r}"
            return "refused", str(exc)
        gm = codegen(graph).eval()
        with torch.no_grad():
            out = gm(*(_to_torch(x) for x in feeds))
        got = [_from_torch(t) for t in (out if isinstance(out, tuple) else (out,))]
        if len(got) != len(expected):
            return "wrong", f"{len(got)} outputs, expected {len(expected)}"
        for (g, dtype), e in zip(got, expected, strict=True):
            e = _array(e)
            if dtype != e.dtype.name or g.shape != e.shape:
                return "wrong", f"{dtype}{list(g.shape)} instead of {e.dtype.name}{list(e.shape)}"
            g, e = g.astype(np.float64), e.astype(np.float64)
            if not np.allclose(g, e, rtol=case.rtol, atol=case.atol, equal_nan=True):
                return "wrong", f"max abs difference {np.nanmax(np.abs(g - e)):.3g}"
    return "pass", ""


@pytest.mark.parametrize("op", sorted(SUPPORTED_OPS))
def test_conformance(op: str, cases: dict[str, list[Any]]) -> None:
    """Every case of the op passes or is refused cleanly; ops that can compile pass at least one case."""
    assert cases.get(op), f"no conformance case for {op}"
    outcome: Counter[str] = Counter()
    wrong = []
    for case in cases[op]:
        status, detail = run_case(case)
        outcome[status] += 1
        if status == "wrong":
            wrong.append(f"{case.name}: {detail}")
    assert not wrong, "\n".join(wrong)
    if op not in NEVER_COMPILED:
        assert outcome["pass"] > 0, f"{op}: every case refused"
