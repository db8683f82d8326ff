"""Task slices between the supermodel's per-task layers: fewer copies of every activation.

A stacked value is one tensor of ``T*N`` samples. A choice convolution on it runs one convolution
per task slice and joins the ``T`` results; the batch norm after it splits them again, normalises
each and joins them; the activation after that runs on the joined tensor. Joining costs a copy of
the activation (and its backward another). This pass, run once on the trunk's fx graph, lets values
travel as the tuple of their task slices wherever every reader takes that form:

- an element-wise activation whose only input is a task batch norm, and which is that norm's only
  reader, becomes part of the norm (applied per slice);
- a choice convolution or task batch norm whose readers are all choice convolutions or task batch
  norms hands them the slices.

Values are joined where anything else reads them (adds, concatenations, pooling, heads). The
derived model and the IR are untouched: only how the supermodel's modules hand values on changes.
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from ..compiler.ir import Graph
from ..compiler.ops import get
from .mixing import MixedOp, TaskBatchNorm


def pass_slices(trunk: fx.GraphModule, graph: Graph) -> None:
    """Fuse activations into task batch norms and set which modules hand on task slices (in place).

    ``graph`` is the IR ``trunk`` was emitted from. The decisions depend on the graph's structure
    only, so running this on every trunk emitted from the same rewrite (the multi-domain one too)
    sets the shared modules alike.
    """
    fx_to_ir = {fx_name: ir_name for ir_name, fx_name in trunk.meta["nodes"].items()}
    modules = dict(trunk.named_modules())

    def module(n: fx.Node) -> nn.Module | None:
        return modules.get(str(n.target)) if n.op == "call_module" else None

    for n in list(trunk.graph.nodes):
        norm = module(n)
        if not isinstance(norm, TaskBatchNorm) or len(n.users) != 1:
            continue
        (act,) = n.users
        ir = graph[fx_to_ir[act.name]] if act.name in fx_to_ir else None
        if (act.op != "call_function" or act.args != (n,) or ir is None or not get(ir.kind).elementwise
                or len(ir.inputs) != 1):
            continue
        fused = (act.target, dict(act.kwargs))
        if norm.activation is not None and norm.activation != fused:
            raise RuntimeError(f"{n.name}: a trunk of another graph fused a different activation into this norm")
        norm.activation = fused
        act.replace_all_uses_with(n)
        trunk.graph.erase_node(act)
    outputs = {a for node in trunk.graph.nodes if node.op == "output" for a in node.all_input_nodes}
    for n in trunk.graph.nodes:
        m = module(n)
        if isinstance(m, (MixedOp, TaskBatchNorm)) and n not in outputs and n.users:
            m.slices = all(isinstance(module(u), (MixedOp, TaskBatchNorm)) for u in n.users)
    trunk.recompile()
