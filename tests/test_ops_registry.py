"""The operator registry as a package: every name it exported as one file, emitted functions that
resolve by module path (what pickling a compiled model needs), and a compiled model that pickles."""

from __future__ import annotations

import importlib
import io
import pickle

import torch

from automtl.compiler import ops, passes
from automtl.compiler.codegen import codegen
from automtl.compiler.ir import Graph, Node
from automtl.compiler.ops import base, elementwise, norm, opaque

# Names that other modules and tests import from ``automtl.compiler.ops``.
IMPORTED = ("REGISTRY", "OpKind", "ShapeError", "register", "get", "numel", "_pair", "Ref", "fill_refs")


def test_names_imported_elsewhere_are_the_family_modules_objects() -> None:
    for name in IMPORTED:
        assert hasattr(ops, name), name
    assert ops.REGISTRY is base.REGISTRY
    assert ops._pair is base._pair
    assert ops.Ref is opaque.Ref and ops.fill_refs is opaque.fill_refs
    assert ops.ChannelAffine is norm.ChannelAffine
    assert ops.add_n is elementwise.add_n
    assert set(ops.__all__) <= set(dir(ops))


def test_emitted_functions_and_modules_resolve_by_their_module_path() -> None:
    """A pickled fx module imports each function as ``fn.__module__`` + ``fn.__qualname__``."""
    own = [k.function for k in ops.REGISTRY.values() if k.function is not None
           and k.function.__module__.startswith("automtl.compiler.ops")]
    assert len(own) >= 10
    for obj in (*own, ops.ChannelAffine, ops.Constant):
        assert getattr(importlib.import_module(obj.__module__), obj.__qualname__) is obj, obj


def test_registry_starts_with_the_input_kind_and_holds_every_family() -> None:
    kinds = list(ops.REGISTRY)
    assert kinds[:3] == ["input", "identity", "conv2d"]
    for name in ("batch_norm", "relu", "max_pool2d", "add", "reshape", "opaque", "layer_norm", "channel_shuffle",
                 "instance_norm", "gelu_tanh"):
        assert name in ops.REGISTRY, name


def _graph() -> Graph:
    g = Graph("family_ops")
    g.add(Node("x", "input", attrs={"shape": (2, 4, 3, 3)}))
    g.add(Node("s", "scale", ["x"], {"num_features": 4, "bias": True}))
    g.add(Node("a", "add", ["x", "s", "x"]))
    g.add(Node("r", "reshape", ["a"], {"shape": (4, 9)}))
    g.add(Node("back", "reshape", ["r"], {"shape": (4, 3, 3)}))
    g.add(Node("out", "scaled_sum", ["back", "x"], {"coeffs": (0.5, 2.0)}))
    g.outputs = ["out"]
    return g


def test_compiled_model_with_family_functions_pickles_and_saves() -> None:
    gm = codegen(passes.run_all(_graph()))
    with torch.no_grad():
        gm.s.weight.copy_(torch.arange(4.0))
    x = torch.randn(2, 4, 3, 3)
    want = gm(x)
    want = want[0] if isinstance(want, (list, tuple)) else want
    a = x + (x * torch.arange(4.0).view(1, -1, 1, 1)) + x
    torch.testing.assert_close(want, 0.5 * a + 2.0 * x)
    for again in (pickle.loads(pickle.dumps(gm)), _torch_roundtrip(gm)):
        got = again(x)
        torch.testing.assert_close(got[0] if isinstance(got, (list, tuple)) else got, want)


def _torch_roundtrip(module: torch.nn.Module) -> torch.nn.Module:
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_compiled_shuffle_and_gather_survive_pickling() -> None:
    """Unpickling re-traces the emitted code with torch.fx: the registry's functions must allow it."""
    g = Graph("shuffle_gather")
    g.add(Node("x", "input", attrs={"shape": (2, 6, 3, 3)}))
    g.add(Node("sh", "channel_shuffle", ["x"], {"groups": 2}))
    g.add(Node("pick", "index_select", ["sh"], {"dim": 1, "index": (5, 0, 2, 2), "index_shape": (2, 2)}))
    g.add(Node("one", "index_select", ["sh"], {"dim": 2, "index": (1,), "index_shape": ()}))
    g.outputs = ["pick", "one"]
    gm = codegen(passes.run_all(g))
    x = torch.randn(2, 6, 3, 3)
    shuffled = x.view(2, 2, 3, 3, 3).transpose(1, 2).reshape(2, 6, 3, 3)
    want = (shuffled[:, [5, 0, 2, 2]].view(2, 2, 2, 3, 3), shuffled[:, :, 1])
    for model in (gm, pickle.loads(pickle.dumps(gm)), _torch_roundtrip(gm)):
        got = model(x)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
