"""The multi-task rewrite: every searchable operator becomes a choice between branches.

For ``T`` tasks, a searchable operator (``conv2d`` by default, ``linear`` on request) becomes an
``mtl_*`` node with up to three branches per task: ``shared``, ``specific`` and ``skip``.
Batch norms become ``mtl_batch_norm`` nodes whose parameters are per task (``bn="specific"``)
or follow the branch of the operator that feeds them (``bn="follow"``). A graph input named
``gates`` carries the per-task branch weights ``(T, V, 3)`` that every choice node reads.

Values are either *shared* (one tensor for all tasks, batch ``N``) or *stacked* (one slice per
task, batch ``T*N``, task-major). With one input for all tasks, everything before the first
task-dependent operator stays shared and is computed once; ``tile_tasks`` nodes stack a shared
activation where it meets a stacked one. Parameters and constants (values that do not depend on
the input) are never stacked: they broadcast over the stacked batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .errors import CompileError
from .ir import Graph, Node, Shape
from .ops import OpKind, _pair, get, register

BRANCHES = ("shared", "specific", "skip")  # the options of the built-in ``branches`` choice kind


@dataclass(frozen=True)
class Option:
    """One option of a choice node: its name, the weight bank it uses, and its channel width.

    ``bank`` is ``"shared"`` (one bank for all tasks), ``"task"`` (each task its own), any other
    string (a bank shared by the tasks that pick it: a group's, a block variant's) or ``None``
    (no weights: a skip or a zero block).
    """

    name: str
    bank: str | None
    width: float | None = None

    def bank_key(self, task: int) -> Any:
        """Whose weights a task taking this option uses: equal keys mean one bank (one value)."""
        if self.bank == "task":
            return ("task", task)
        return self.bank


@dataclass(frozen=True)
class MTLOptions:
    """Options of the rewrite; they are part of an architecture's identity."""

    searchable: tuple[str, ...] = ("conv2d",)
    bn: str = "follow"
    skip: bool = True
    choice: str = "branches"  # the choice kind searchable operators become (automtl.model.choices)

    def __post_init__(self) -> None:
        if self.bn not in ("specific", "follow"):
            raise ValueError(f"bn must be 'specific' or 'follow', not {self.bn!r}")
        bad = [k for k in self.searchable if k not in ("conv2d", "linear")]
        if bad:
            raise ValueError(f"searchable kinds must be among 'conv2d', 'linear'; got {bad}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["searchable"] = list(self.searchable)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MTLOptions:
        """Read :meth:`to_dict`'s output; files written before choice kinds existed mean ``branches``."""
        return cls(tuple(data.get("searchable", ("conv2d",))), data.get("bn", "specific"), data.get("skip", True),
                   data.get("choice", "branches"))


@dataclass
class Choice:
    """One choice node: its kind, the options it offers (in gate order) and where it sits."""

    index: int
    node: str
    kind: str
    options: tuple[Option, ...]
    skip: str | None  # "identity", "projection" or None (the branches kind's skip form)
    depth: int
    choice_kind: str = "branches"
    params: dict[str, int] = field(default_factory=dict)
    flops: dict[str, int] = field(default_factory=dict)

    @property
    def branches(self) -> tuple[str, ...]:
        """The option names, in gate order."""
        return tuple(o.name for o in self.options)

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(f"choice node {self.node!r} has no option {name!r}; it offers {', '.join(self.branches)}")

    def position(self, name: str) -> int:
        """The gate column of option ``name``."""
        return self.branches.index(self.option(name).name)


# the rewrite's callback: (node, its first input's shape) -> (choice kind name, options), or None
Chooser = Callable[[Node, Shape], "tuple[str, tuple[Option, ...]] | None"]


def skip_form(node: Node, in_shape: Shape, out_shape: Shape) -> str | None:
    """How the skip branch is written, or None when no exact skip exists for this operator.

    A skip is folded into the operator's own kernel (a centre tap), which is exact when the
    operator pads "same" (padding = dilation * (k - 1) / 2) so the centre tap reads the pixel a
    1x1 operator with the same stride would read.
    """
    a = node.attrs
    if node.kind == "linear":
        return "identity" if a["in_features"] == a["out_features"] else "projection"
    k, p, d = _pair(a["kernel_size"]), _pair(a["padding"]), _pair(a["dilation"])
    for i in range(2):
        if k[i] % 2 == 0 or p[i] * 2 != d[i] * (k[i] - 1):
            return None
    same = in_shape[1:] == out_shape[1:]
    return "identity" if same else "projection"


def _mtl_infer(node: Node, shapes: list[Shape]) -> Shape:
    return get(node.attrs["base_kind"]).infer(node, shapes[:1])


def _mtl_params(node: Node, shapes: list[Shape]) -> int:
    """A choice node's params as its choice kind counted them (``held_params``: once, per task);
    a batch norm's: its own times the copies its banks hold."""
    held = node.attrs.get("held_params")
    if held is not None:
        once, per_task = held
        return once + node.attrs["tasks"] * per_task
    return get(node.attrs["base_kind"]).params(node, shapes[:1]) * node.attrs["param_copies"]


def _mtl_flops(node: Node, shapes: list[Shape], out: Shape) -> int:
    return get(node.attrs["base_kind"]).flops(node, shapes[:1], out)


def tile_tasks(x: torch.Tensor, tasks: int) -> torch.Tensor:
    """Stack a shared value once per task along the batch (task-major)."""
    return x.repeat(tasks, *([1] * (x.dim() - 1)))


def _mtl_module(node: Node, shapes: list[Shape]) -> Any:
    # The compiler knows the choice nodes' shapes and costs, not their modules: the runtime that
    # executes them passes its module factory to codegen (``automtl.model.supermodel``).
    raise CompileError(f"choice node {node.name!r} ({node.kind}) needs the runtime's module factory in codegen")


for _kind in ("mtl_conv2d", "mtl_linear", "mtl_batch_norm"):
    register(
        OpKind(
            _kind, _mtl_infer, arity=(2, 2), params=_mtl_params, flops=_mtl_flops, module=_mtl_module,
            module_args=lambda n: (n.attrs["shared_input"],), loads_tensors=True,
            # the runtime's batch norm always returns a new tensor its backward never reads (an
            # activation after it may run in place); a choice kind's module may return its input
            fresh_output=_kind == "mtl_batch_norm",
        )
    )
register(
    OpKind(
        "tile_tasks", lambda n, s: s[0], function=tile_tasks, kwargs=lambda n: {"tasks": n.attrs["tasks"]},
    )
)


def rewrite(
    graph: Graph, tasks: list[str], options: MTLOptions, choose: Chooser, multi_domain: bool = False
) -> tuple[Graph, list[Choice]]:
    """Return the supermodel graph for ``tasks`` and its choice nodes (in graph order).

    ``choose`` (from the runtime's registry of choice kinds) says which operators become choice
    nodes and with which options. The input graph is left untouched; nodes are copied, weights are not.
    """
    if len(graph.inputs) != 1:
        raise CompileError(f"a multi-task backbone needs exactly one input, {graph.name!r} has {graph.inputs}")
    T = len(tasks)
    out = Graph(graph.name, file=graph.file)
    choices: list[Choice] = []
    stacked: dict[str, bool] = {}
    depth: dict[str, int] = {}
    gate_of: dict[str, int | None] = {}  # the choice whose branch a value follows (for bn="follow")
    live: dict[str, bool] = {}  # the value depends on the input (an activation), not a parameter or constant
    for node in graph:
        live[node.name] = node.kind == "input" or any(live[i] for i in node.inputs)
        new = copy.copy(node)
        new.attrs = dict(node.attrs)
        new.inputs = list(node.inputs)
        d = max((depth[i] for i in node.inputs), default=0)
        in_stacked = [stacked[i] for i in node.inputs]
        if node.kind == "input":
            out.add(new)
            out.add(Node("gates", "input", attrs={"shape": (T, 0, 0)}))
            stacked[new.name], depth[new.name], gate_of[new.name] = multi_domain, 0, None
            continue
        follow: int | None = None
        offered = choose(new, graph[node.inputs[0]].shape) if node.inputs else None
        if offered is not None:
            kind_name, opts = offered
            d += 1
            choice = Choice(len(choices), node.name, node.kind, opts, new.attrs.get("skip"), d, kind_name)
            choices.append(choice)
            new.kind = "mtl_" + node.kind
            new.attrs.update(
                base_kind=node.kind, index=choice.index, tasks=T, skip=choice.skip, branches=choice.branches,
                options=opts, choice_kind=kind_name, shared_input=not in_stacked[0],
            )
            if "held_params" not in new.attrs:
                raise CompileError(f"choice node {node.name!r}: the chooser must set attrs['held_params'] "
                                   "(params held once, per task)")
            new.inputs = [node.inputs[0], "gates"]
            is_stacked, follow = True, choice.index
        elif node.kind == "batch_norm":
            src = gate_of[node.inputs[0]]
            if options.bn == "follow":
                branches = ("shared",) if src is None else choices[src].branches
                banks = ("shared",) if src is None else tuple(o.bank for o in choices[src].options)
            else:
                branches, banks = ("specific",), ("task",)
            new.kind = "mtl_batch_norm"
            new.attrs.update(
                base_kind="batch_norm", gate=src if options.bn == "follow" else None, tasks=T,
                branches=branches, shared_input=not in_stacked[0],
                param_copies=sum(1 if b == "shared" else T for b in banks),
            )
            new.inputs = [node.inputs[0], "gates"]
            is_stacked = in_stacked[0] or branches != ("shared",)
            follow = src
        else:
            is_stacked = any(in_stacked)
            if is_stacked and not all(in_stacked):
                for pos, name in enumerate(node.inputs):
                    # only activations are stacked per task; a parameter or constant (no batch axis)
                    # broadcasts over the stacked batch as it is
                    if not stacked[name] and live[name]:
                        tile = f"{name}/tiled"
                        if tile not in out:
                            out.add(Node(tile, "tile_tasks", [name], {"tasks": T}))
                        new.inputs[pos] = tile
            # a parameter-free op passes on the branch of its (single) producer
            follow = gate_of[node.inputs[0]] if len(node.inputs) == 1 else None
        stacked[node.name], depth[node.name], gate_of[node.name] = is_stacked, d, follow
        out.add(new)
    out.outputs = list(graph.outputs)
    from .passes import infer

    gates = out["gates"]
    gates.attrs["shape"] = (T, max(len(choices), 1), max((len(c.options) for c in choices), default=1))
    infer(out)
    out.stacked = {n: stacked.get(n, False) for n in stacked}  # type: ignore[attr-defined]
    return out, choices
