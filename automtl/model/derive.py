"""Derivation: a fixed architecture -> a compact multi-task model (DESIGN §6).

Every (operator, task) gets a value number: equal when the operator, its branch and its inputs'
value numbers are equal (an identity skip passes its input's number through). Each distinct
value becomes one operator of a plain IR graph, so shared computation runs once and tasks
branch where their numbers diverge. The one codegen emits that graph, heads included, as a
``torch.fx.GraphModule`` holding only the weights some task uses.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import nn

from ..compiler.blocks import DomainBlocks
from ..compiler.codegen import build_module, codegen, node_modules
from ..compiler.ir import Graph, Node
from ..compiler.mtl import Choice
from ..compiler.passes import infer
from .architecture import Architecture
from .choices import MTL_ATTRS, get_choice_kind

if TYPE_CHECKING:
    from .supermodel import SuperModel

FORMAT = "automtl.multitask/1"


class MultiTaskModel(nn.Module):
    """A derived multi-task model: ``model(x)`` returns one output per task, in ``task_names`` order."""

    def __init__(self, graph: Graph, net: fx.GraphModule, task_names: list[str], architecture: Architecture,
                 baseline: dict[str, Any]) -> None:
        super().__init__()
        self.graph = graph
        self.net = net
        self.task_names = list(task_names)
        self.architecture = architecture
        self.baseline = baseline

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(*xs)
        return out if isinstance(out, tuple) else (out,)

    def as_dict(self, *xs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{task: output}`` for the same call."""
        return dict(zip(self.task_names, self(*xs), strict=True))

    @property
    def code(self) -> str:
        """The generated forward, readable."""
        return self.net.code

    # --- reports --------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Params and FLOPs of all tasks together and per task, against T separate backbones,
        and which tasks share each operator."""
        per_task: dict[str, dict[str, int]] = {}
        modules = node_modules(self.net)
        for i, task in enumerate(self.task_names):
            nodes = self._ancestors(self.graph.outputs[i])
            per_task[task] = {
                "params": _unique_params([self._runs(modules[n], n) for n in nodes if n in modules]),
                "flops": sum(self.graph[n].flops for n in nodes),
            }
        users: dict[str, list[str]] = {}
        for node in self.graph:
            if "tasks" in node.attrs.get("derived", {}):
                d = node.attrs["derived"]
                users.setdefault(d["source"], []).append("+".join(d["tasks"]))
        total = {"params": sum(p.numel() for p in self.net.parameters()), "flops": self.graph.flops}
        base = self.baseline
        return {
            "tasks": self.task_names,
            "total": total,
            "per_task": per_task,
            "separate": base,
            "params_ratio": total["params"] / max(base["params"], 1),
            "flops_ratio": total["flops"] / max(base["flops"], 1),
            "sharing": users,
            "shared_fraction": self.architecture.shared_fraction(),
        }

    def _runs(self, module: nn.Module, name: str) -> nn.Module:
        """What node ``name`` runs of ``module``: a domain block's copy for its domain (the batch norms of
        the block's other domains are theirs), else the module."""
        if isinstance(module, DomainBlocks):
            return module.copies[module.domains.index(self.graph[name].attrs["domain"])]
        return module

    def _ancestors(self, name: str) -> list[str]:
        import networkx as nx

        return [name, *nx.ancestors(self.graph.nx, name)]

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Architecture, graph and weights in one file; :meth:`load` rebuilds without the supermodel."""
        bare = self.graph.copy(tensors=False)
        torch.save(
            {"format": FORMAT, "architecture": self.architecture.to_dict(), "graph": bare,
             "tasks": self.task_names, "baseline": self.baseline, "state_dict": self.net.state_dict()},
            path,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> MultiTaskModel:
        """Load a model saved by :meth:`save` (the file holds pickled heads: load trusted files only)."""
        data = torch.load(Path(path), map_location="cpu", weights_only=False)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not an automtl multi-task model (expected format {FORMAT!r})")
        graph = data["graph"]
        net = emit_net(graph)
        net.load_state_dict(data["state_dict"])
        return cls(graph, net, data["tasks"], Architecture.from_dict(data["architecture"]), data["baseline"])


def _unique_params(modules: list[nn.Module]) -> int:
    seen: set[int] = set()
    total = 0
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def emit_net(graph: Graph, class_name: str = "MultiTaskNet") -> fx.GraphModule:
    """Codegen of a derived graph, with one module per weight key (``attrs["derived"]["weights"]``,
    else the node's name) so operators that are one weight bank share their parameters."""
    cache: dict[Any, nn.Module] = {}

    def factory(node: Node, shapes: list[Any]) -> nn.Module:
        key = node.attrs.get("derived", {}).get("weights", node.name)
        if key not in cache:
            cache[key] = build_module(node, shapes)
        return cache[key]

    return codegen(graph, factory, class_name=class_name)


def derive(model: SuperModel, architecture: Architecture, multi_domain: bool = False) -> MultiTaskModel:
    """Value-number ``model`` under ``architecture`` and emit the compact model (weights copied)."""
    architecture.check(model)
    model.materialize()
    tasks = model.task_names
    mods = node_modules(model.trunk)
    g = model.mtl_graph
    out = Graph(f"{g.name}_multitask", file=g.file)
    vn: dict[tuple[str, int], int] = {}  # (node, task) -> value number
    numbers: dict[Any, int] = {}  # flat value key (inputs as value numbers) -> value number
    described: dict[int, Any] = {}  # value number -> its flat key
    emitted: dict[Any, str] = {}  # value number -> derived node name
    users: dict[Any, list[str]] = defaultdict(list)
    plan: list[tuple[Any, Node, str, int]] = []  # (value number, source node, branch, first task)

    choice_of = {c.node: c for c in model.choices}
    for node in g:
        if node.name == "gates":
            continue
        for t, task in enumerate(tasks):
            ins = [vn[(i, t)] for i in node.inputs if i != "gates"]
            if node.kind == "input":
                key: Any = ("input", t if multi_domain else None)
            elif node.kind == "tile_tasks":
                key = ins[0]
            elif node.name in choice_of:
                c = choice_of[node.name]
                opt = c.option(architecture.branch(node.name, task))
                if get_choice_kind(c.choice_kind).is_identity(c, opt):
                    key = ins[0]
                else:
                    key = (node.name, opt.name, opt.bank_key(t), ins[0])
            elif node.kind == "mtl_batch_norm":
                bn = mods[node.name]
                b = bn.branches[0] if bn.gate is None else architecture.branch(model.choices[bn.gate].node, task)
                key = (node.name, b, bn.bank_key(b, t), ins[0])
            else:
                key = (node.name, tuple(ins))
            if not isinstance(key, int):  # number it: keys never nest, so hashing one stays O(1)
                flat = key
                key = numbers.setdefault(flat, len(numbers))
                described.setdefault(key, flat)
            vn[(node.name, t)] = key
            if key not in users or task not in users[key]:
                users[key].append(task)
            if key not in emitted:  # pass-throughs (identity skip, tiling) reuse their input's key
                emitted[key] = ""
                plan.append((key, node, _branch_of(described[key], node), t))

    bank_users: dict[tuple[str, Any], list[int]] = defaultdict(list)  # (choice node, bank key) -> tasks reading it
    for c in model.choices:
        for u, task in enumerate(tasks):
            o = c.option(architecture.branch(c.node, task))
            if o.bank is not None:
                bank_users[(c.node, o.bank_key(u))].append(u)
    counts: dict[str, int] = defaultdict(int)
    opaque_modules: dict[str, nn.Module] = {}
    for _key, source, _branch, _task in plan:
        counts[source.name] += 1
    for key, node, branch, t in plan:
        task_list = users[key]
        name = node.name if counts[node.name] == 1 else f"{node.name}[{'+'.join(task_list)}]"
        if node.kind == "input":
            name = node.name if not multi_domain else f"{node.name}_{tasks[t]}"
        ins = [emitted[k] for k in _input_keys(described[key], node)]
        new = _derived_node(node, branch, t, name, ins, mods, task_list, choice_of.get(node.name), bank_users)
        if new.kind == "opaque" and node.name in mods:  # copies on diverged values share the one module
            new.attrs["target"] = opaque_modules.setdefault(node.name, new.attrs["target"])
        out.add(new)
        emitted[key] = name
    # heads: inlined when torch.fx can trace them, else one opaque call each
    outputs = []
    trunk_out = model.graph.outputs[0]
    infer(out)  # the heads are traced at the trunk output's shape
    for t, task in enumerate(tasks):
        feat = emitted[vn[(trunk_out, t)]]
        outputs.append(_add_head(out, model.heads[task], task, feat))
    out.outputs = outputs
    infer(out)
    net = emit_net(out)
    baseline = _baseline(model, out)
    return MultiTaskModel(out, net, tasks, architecture, baseline)


def _branch_of(key: Any, node: Node) -> str:
    return key[1] if node.kind.startswith("mtl_") else ""


def _input_keys(key: Any, node: Node) -> list[Any]:
    if node.kind == "input":
        return []
    if node.kind.startswith("mtl_"):
        return [key[3]]
    return list(key[1])


def _derived_node(node: Node, branch: str, t: int, name: str, inputs: list[str], mods: dict[str, nn.Module],
                  task_list: list[str], choice: Choice | None,
                  bank_users: Mapping[tuple[str, Any], list[int]]) -> Node:
    """The plain operator computing one value, with the weights of its branch copied in (a choice kind's
    ``derive`` sees, in ``node.attrs["bank_users"]``, the tasks whose picks read the same bank)."""
    attrs = {k: v for k, v in node.attrs.items()}
    info = {"source": node.name, "tasks": list(task_list), "branch": branch}
    if node.kind == "input":
        return Node(name, "input", [], {"shape": node.attrs["shape"]}, node.source)
    if choice is not None:
        opt = choice.option(branch)
        seen = Node(node.name, node.kind, list(node.inputs), {**attrs, "bank_users": bank_users[(node.name,
                    opt.bank_key(t))]}, node.source, shape=node.shape)
        d = get_choice_kind(choice.choice_kind).derive(mods[node.name], seen, opt, t)
        assert d is not None, "identity options are passed through, never emitted"
        info["weights"] = (node.name, opt.name, opt.bank_key(t))
        return Node(name, d.kind, inputs, {**d.attrs, "derived": info}, node.source, d.tensors)
    if node.kind == "mtl_batch_norm":
        bn = mods[node.name]
        base = {k: v for k, v in attrs.items() if k not in MTL_ATTRS}
        tensors = {}
        for what in ("weight", "bias", "running_mean", "running_var"):
            if what in ("weight", "bias") and not bn.affine:
                continue
            v = bn._bank(branch, what)
            tensors[what] = (v if v.dim() == 1 else v[t]).detach().clone()
        info["weights"] = (node.name, branch, bn.bank_key(branch, t))
        return Node(name, "batch_norm", inputs, {**base, "derived": info}, node.source, tensors)
    new = Node(name, node.kind, inputs, {**attrs, "derived": info}, node.source)
    if node.name in mods:  # a non-searchable operator with weights: one module shared by all copies
        new.tensors = {k: v.detach().clone() for k, v in mods[node.name].state_dict().items()}
        info["weights"] = (node.name,)
        if node.kind == "opaque":
            new.attrs["target"] = copy.deepcopy(mods[node.name])
    return new


def _add_head(out: Graph, head: nn.Module, task: str, feat: str) -> str:
    """Inline ``head`` (traced) after ``feat``; fall back to one opaque call."""
    from ..compiler.frontends.fx import OpaqueOperatorWarning, from_module

    head = copy.deepcopy(head).eval()
    # a bare leaf (nn.Linear) traces as opaque functional calls; as a child it becomes a typed operator
    traced = nn.Sequential(head) if next(head.children(), None) is None else head
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OpaqueOperatorWarning)
            hg = from_module(traced, out[feat].shape)
        if len(hg.outputs) != 1:
            raise ValueError("a head with several outputs stays one call")
    except Exception:  # noqa: BLE001 - any head that fx cannot take stays one call
        name = f"head.{task}"
        out.add(Node(name, "opaque", [feat], {"target": head, "args": (_ref0(),), "kwargs": {},
                                              "derived": {"source": name, "tasks": [task], "weights": name}}))
        return name
    rename = {hg.inputs[0]: feat}
    for node in hg:
        if node.kind == "input":
            continue
        name = f"head.{task}.{node.name}"
        rename[node.name] = name
        new = copy.copy(node)
        new.name = name
        new.inputs = [rename[i] for i in node.inputs]
        new.attrs = {**node.attrs, "derived": {"source": name, "tasks": [task], "weights": name}}
        out.add(new)
    return rename[hg.outputs[0]]


def head_flops(head: nn.Module, feature_shape: Any) -> int:
    """FLOPs of one head on the trunk's output, as derive inlines it (0 for a head fx cannot trace)."""
    g = Graph("head")
    g.add(Node("feat", "input", [], {"shape": tuple(feature_shape)}))
    g.outputs = ["feat"]
    infer(g)  # the head is traced at the feature's shape
    out = _add_head(g, head, "t", "feat")
    g.outputs = [out]
    infer(g)
    return int(sum(n.flops for n in g if n.name.startswith("head.")))


def _ref0() -> Any:
    from ..compiler.ops import Ref

    return Ref(0)


def _baseline(model: SuperModel, derived: Graph) -> dict[str, int]:
    """Params and FLOPs of T separate single-task models (the backbone once per task, plus heads)."""
    g = model.graph
    heads = sum(p.numel() for p in model.heads.parameters())
    head_flops = sum(n.flops for n in derived if n.name.startswith("head."))
    T = len(model.task_names)
    return {"params": T * g.params + heads, "flops": T * g.flops + head_flops}
