"""A chosen grouping as ONE multi-task model: every chosen network a branch of one graph.

:func:`combine` takes the trained networks of a selection (derived models: ``.graph``, ``.net``,
``.task_names``) and which network serves each task, and emits one graph: one input, each network's
operators under its own prefix (``net0.``, ``net1.``, ...), each task's output read from the network that
serves it best (outputs of a network no task is read from are pruned, with whatever only they need). The
weights are the trained ones; the one codegen emits it, so it reports and exports like any derived model
(:meth:`GroupedModel.report`, :func:`automtl.app.export.export_onnx`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import torch
import torch.fx as fx
from torch import nn

from ..compiler.codegen import build_module, codegen, node_modules
from ..compiler.ir import Graph, Node
from ..compiler.passes import infer, prune
from ..model.derive import emit_net
from .table import GroupingError

FORMAT = "automtl.grouped/1"


class GroupedModel(nn.Module):
    """``model(x)`` returns one output per task, in ``task_names`` order; ``networks[k]`` lists the tasks
    network k was trained for, ``served_by[task]`` the network the task is read from."""

    def __init__(self, graph: Graph, net: fx.GraphModule, task_names: Sequence[str],
                 networks: Sequence[tuple[str, ...]], served_by: Mapping[str, int]) -> None:
        super().__init__()
        self.graph = graph
        self.net = net
        self.task_names = list(task_names)
        self.networks = [tuple(n) for n in networks]
        self.served_by = dict(served_by)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(*xs)
        return out if isinstance(out, tuple) else (out,)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Graph, weights and which network serves each task in one file; :meth:`load` rebuilds it."""
        torch.save({"format": FORMAT, "graph": self.graph.copy(tensors=False), "tasks": self.task_names,
                    "networks": self.networks, "served_by": self.served_by, "state_dict": self.net.state_dict()},
                   path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GroupedModel:
        """A model written by :meth:`save` (the file holds pickled graph attributes: load trusted files only)."""
        data = torch.load(Path(path), map_location="cpu", weights_only=False)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise GroupingError(f"{path}: not an automtl grouped model (expected format {FORMAT!r})")
        net = emit_net(data["graph"], class_name="GroupedNet")
        net.load_state_dict(data["state_dict"])
        return cls(data["graph"], net, data["tasks"], data["networks"], data["served_by"])

    def as_dict(self, *xs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{task: output}`` for the same call."""
        return dict(zip(self.task_names, self(*xs), strict=True))

    def report(self, latency_shape: Sequence[int] | None = None) -> dict[str, Any]:
        """Params and FLOPs in all, per task (what computing that task alone needs) and per network;
        with ``latency_shape`` (N, C, H, W) also the median milliseconds of one batch."""
        modules = node_modules(self.net)

        def cost(nodes: Sequence[str]) -> dict[str, int]:
            seen: set[int] = set()
            params = 0
            for n in nodes:
                if n in modules:
                    for p in modules[n].parameters():
                        if id(p) not in seen:
                            seen.add(id(p))
                            params += p.numel()
            return {"params": params, "flops": int(sum(self.graph[n].flops for n in nodes))}

        per_task = {t: cost([o, *nx.ancestors(self.graph.nx, o)])
                    for t, o in zip(self.task_names, self.graph.outputs, strict=True)}
        per_network = []
        for k, tasks in enumerate(self.networks):
            nodes = [n.name for n in self.graph if n.name.startswith(f"net{k}.")]
            read = [t for t in self.task_names if self.served_by[t] == k]
            per_network.append({"tasks": list(tasks), "serves": read, **cost(nodes)})
        out: dict[str, Any] = {
            "tasks": self.task_names,
            "total": {"params": sum(p.numel() for p in self.net.parameters()), "flops": int(self.graph.flops)},
            "per_task": per_task,
            "networks": per_network,
            "served_by": {t: "+".join(self.networks[k]) for t, k in self.served_by.items()},
        }
        if latency_shape is not None:
            from ..model.latency import measure_latency

            out["latency_ms"] = measure_latency([self], latency_shape)
        return out


def combine(networks: Sequence[nn.Module], served_by: Mapping[str, int],
            task_names: Sequence[str] | None = None) -> GroupedModel:
    """One model holding ``networks`` as branches; task t is read from ``networks[served_by[t]]``.

    Each network is a derived model (``graph``, ``net``, ``task_names``) with one input of the same shape.
    ``task_names`` orders the outputs (default: ``served_by``'s order). The networks are not changed.
    """
    if not networks:
        raise GroupingError("combine: no networks given")
    tasks = list(task_names) if task_names is not None else list(served_by)
    for t in tasks:
        k = served_by.get(t)
        if k is None or not 0 <= k < len(networks):
            raise GroupingError(f"combine: task {t!r} is served by no given network (served_by: {dict(served_by)})")
        if t not in networks[k].task_names:
            raise GroupingError(f"combine: network {k} ({'+'.join(networks[k].task_names)}) has no output for {t!r}")
    shapes = []
    for k, net in enumerate(networks):
        g = getattr(net, "graph", None)
        if not isinstance(g, Graph) or len(g.inputs) != 1 or not hasattr(net, "net"):
            raise GroupingError(f"combine: network {k} is not a derived model with one input (a MultiTaskModel)")
        shapes.append(tuple(g[g.inputs[0]].shape[1:]))
    if len(set(shapes)) != 1:
        raise GroupingError(f"combine: the networks take different input shapes {sorted(set(shapes))}")
    out = Graph("grouped")
    first = networks[0].graph
    x = out.add(Node("x", "input", [], {"shape": first[first.inputs[0]].shape}))
    modules: dict[str, nn.Module] = {}
    for k, net in enumerate(networks):
        mods = node_modules(net.net)
        rename = {net.graph.inputs[0]: x.name}
        for node in net.graph:
            if node.kind == "input":
                continue
            new = copy.copy(node)
            new.name = f"net{k}.{node.name}"
            new.inputs = [rename[i] for i in node.inputs]
            new.attrs = dict(node.attrs)
            if "weights" in new.attrs.get("derived", {}):  # weight keys are per network: keep them apart
                new.attrs["derived"] = {**new.attrs["derived"], "weights": f"net{k}.{new.attrs['derived']['weights']}"}
            new.tensors = {}
            if node.name in mods:
                modules[new.name] = mods[node.name]
                if node.kind == "opaque":
                    new.attrs["target"] = copy.deepcopy(mods[node.name])
            out.add(new)
            rename[node.name] = new.name
    out.outputs = []
    for t in tasks:
        k = served_by[t]
        net = networks[k]
        out.outputs.append(f"net{k}.{net.graph.outputs[net.task_names.index(t)]}")
    prune(out)
    infer(out)
    cache: dict[int, nn.Module] = {}

    def factory(node: Node, shapes: list[Any]) -> nn.Module:
        src = modules.get(node.name)
        if src is None:
            return build_module(node, shapes)
        if id(src) not in cache:  # tied operators of one network keep sharing one (copied) module
            cache[id(src)] = copy.deepcopy(src)
        return cache[id(src)]

    gm = codegen(out, factory, class_name="GroupedNet")
    return GroupedModel(out, gm, tasks, [tuple(n.task_names) for n in networks], {t: served_by[t] for t in tasks})


def selection_model(selection: Any, networks: Mapping[tuple[tuple[str, ...], float], nn.Module]) -> GroupedModel:
    """:func:`combine` for a :class:`~automtl.grouping.select.Selection`: ``networks`` maps each chosen
    network's ``(tasks, cost)`` to its trained model; every task is read from the network serving it best."""
    chosen = list(selection.networks)
    models = []
    for n in chosen:
        key = (tuple(n.tasks), float(n.cost))
        if key not in networks:
            raise GroupingError(f"selection_model: no trained model for network {n.label()}")
        models.append(networks[key])
    served = {t: chosen.index(selection.served_by[t]) for t in selection.tasks}
    return combine(models, served, list(selection.tasks))
