"""Helpers of the prototxt frontend tests: small nets written inline, compiled, run and refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from automtl.compiler.codegen import codegen
from automtl.compiler.errors import CompileError
from automtl.compiler.frontends.prototxt import from_text
from automtl.compiler.ir import Graph
from automtl.proto import caffe_pb2

DATA = Path(__file__).parent / "data" / "prototxt"
PROTO = Path(caffe_pb2.__file__).with_name("caffe.proto")
FILE = "net.prototxt"


def net(layers: str, shape: tuple[int, ...] = (1, 3, 8, 8), name: str = "t") -> str:
    """A prototxt with one declared input ``data`` of ``shape`` followed by ``layers``."""
    dims = "\n".join(f"input_dim: {d}" for d in shape)
    return f'name: "{name}"\ninput: "data"\n{dims}\n{layers}'


def layer(name: str, type_: str, bottoms: str | list[str], tops: str | list[str], params: str = "") -> str:
    bottoms = [bottoms] if isinstance(bottoms, str) else bottoms
    tops = [tops] if isinstance(tops, str) else tops
    lines = [f'layer {{\n  name: "{name}"\n  type: "{type_}"']
    lines += [f'  bottom: "{b}"' for b in bottoms] + [f'  top: "{t}"' for t in tops]
    if params:
        lines.append(f"  {params}")
    return "\n".join(lines) + "\n}\n"


def compile_(text: str, **kwargs) -> Graph:
    return from_text(text, FILE, **kwargs)


def run(graph: Graph, *xs: torch.Tensor, setup=None):
    gm = codegen(graph).eval()
    if setup is not None:
        setup(gm)
    with torch.no_grad():
        return gm(*xs)


def fill_random(gm: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values in every parameter and buffer (BN running stats included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(gm.named_parameters()) + list(gm.named_buffers()):
            if t.dtype.is_floating_point:
                v = (
                    torch.rand(t.shape, generator=g) + 0.5
                    if name.endswith("running_var")
                    else (torch.randn(t.shape, generator=g) * 0.5)
                )
                t.copy_(v)


def error(text: str, **kwargs) -> str:
    """The one-line message of the CompileError that compiling ``text`` raises."""
    with pytest.raises(CompileError) as info:
        compile_(text, **kwargs)
    return str(info.value)
