"""Per-domain paths of a block supermodel: their exact cost, the search reward, and how paths share.

Used by the MPNAS strategy (:mod:`automtl.search.mpnas`):

* :class:`PathCost`: the exact params or FLOPs of each domain's path alone (the backbone's
  fixed operators, the blocks its path runs, its head), from the compiler's counts and the
  choice kind's :meth:`~automtl.model.choices.ChoiceKind.cost`; equal to the per-task figures of
  the derived model's report;
* :func:`reward`: TuNAS's absolute reward ``r = Q + β·|C/C₀ − 1|`` or MnasNet's ``r = Q·(C/C₀)^β``;
* :func:`block_paths`, :func:`sharing`, :func:`jaccard`: which blocks each domain's path
  uses, which are shared (several domains), specific (one) or dropped (none), and the Jaccard
  similarity ``|Pa ∩ Pb| / |Pa ∪ Pb|`` of the domains' block sets;
* :class:`FixedPath`, :func:`reinitialise`, :func:`recalibrate_batch_norms`: training a picked
  architecture from scratch, and its batch norms' statistics recomputed at the trained weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from ..compiler.ir import Graph, Node
from ..compiler.passes import infer
from ..model.architecture import Architecture
from ..model.choices import get_choice_kind
from ..model.derive import _add_head
from ..model.supermodel import SuperModel

__all__ = ["REWARDS", "FixedPath", "PathCost", "block_paths", "jaccard", "recalibrate_batch_norms", "reinitialise",
           "reward", "sharing"]

REWARDS = ("absolute", "mnas")


def reward(quality: torch.Tensor, cost: torch.Tensor, target: torch.Tensor, beta: float,
           form: str = "absolute") -> torch.Tensor:
    """The search reward per domain: ``absolute`` (TuNAS) ``Q + β·|C/C₀ − 1|``, ``mnas`` ``Q·(C/C₀)^β``."""
    ratio = torch.as_tensor(cost, dtype=torch.float64) / torch.as_tensor(target, dtype=torch.float64)
    q = torch.as_tensor(quality, dtype=torch.float64)
    if form == "absolute":
        return q + beta * (ratio - 1).abs()
    if form == "mnas":
        return q * ratio.pow(beta)
    raise ValueError(f"reward must be one of {REWARDS}, not {form!r}")


class PathCost:
    """Exact params or FLOPs of each task's path alone, for a pick of option indices ``(T, V)``.

    A path runs the backbone's operators that are no choice, the option it picks at each choice
    node (the choice kind's exact cost; a zero block costs nothing) and its own head.
    """

    def __init__(self, model: SuperModel, kind: str = "flops") -> None:
        if kind not in ("params", "flops"):
            raise ValueError(f"cost kind must be 'params' or 'flops', not {kind!r}")
        self.kind = kind
        g = model.graph
        choice_of = {c.node: c for c in model.choices}
        mtl = {n.name: n for n in model.mtl_graph}
        V = max(len(model.choices), 1)
        K = max((len(c.options) for c in model.choices), default=1)
        self.table = torch.zeros(V, K, dtype=torch.float64)
        fixed = 0
        for node in g:
            c = choice_of.get(node.name)
            if c is None:
                fixed += node.params if kind == "params" else node.flops
                continue
            ck = get_choice_kind(c.choice_kind)
            for k, o in enumerate(c.options):
                p, f = ck.cost(mtl[node.name], g[node.inputs[0]].shape, o)
                self.table[c.index, k] = p if kind == "params" else f
        feat = g[g.outputs[0]].shape
        heads = []
        for t in model.task_names:
            head = model.heads[t]
            heads.append(sum(p.numel() for p in head.parameters()) if kind == "params" else _head_flops(head, feat))
        self.constant = torch.tensor([fixed + h for h in heads], dtype=torch.float64)
        self.choices = len(model.choices)

    def __call__(self, pick: torch.Tensor) -> torch.Tensor:
        """Cost per task ``(T,)`` of the paths ``pick`` (option index per task and choice node)."""
        if self.choices == 0:
            return self.constant.clone()
        cols = pick.long().cpu()
        rows = torch.arange(self.table.shape[0]).expand_as(cols)
        return self.constant + self.table[rows, cols].sum(-1)

    def full(self) -> torch.Tensor:
        """Cost per task of the path through every block (option 0 everywhere)."""
        return self(torch.zeros(len(self.constant), self.table.shape[0], dtype=torch.long))


def _head_flops(head: torch.nn.Module, feature_shape: Any) -> int:
    """FLOPs of one head on the trunk output, as derivation inlines it (the feature shape inferred first)."""
    g = Graph("head")
    g.add(Node("feat", "input", [], {"shape": tuple(feature_shape)}))
    infer(g)
    g.outputs = [_add_head(g, head, "t", "feat")]
    infer(g)
    return int(sum(n.flops for n in g if n.name.startswith("head.")))


def block_paths(model: SuperModel, architecture: Architecture) -> dict[str, list[str]]:
    """Each task's blocks (graph order): the ``block`` operators its path runs, chosen or fixed."""
    choice_of = {c.node: c for c in model.choices}
    paths: dict[str, list[str]] = {t: [] for t in model.task_names}
    for node in model.graph:
        if node.kind != "block":
            continue
        for t in model.task_names:
            c = choice_of.get(node.name)
            if c is None or c.option(architecture.branch(node.name, t)).bank is not None:
                paths[t].append(node.name)
    return paths


def sharing(model: SuperModel, architecture: Architecture) -> list[dict[str, Any]]:
    """One row per block: its users, the option each runs (``block`` or a kernel variant), and ``shared``
    (one bank run by several tasks), ``specific`` (each user its own) or ``dropped``."""
    paths = block_paths(model, architecture)
    choices = {c.node for c in model.choices}
    rows = []
    for node in model.graph:
        if node.kind != "block":
            continue
        users = [t for t in model.task_names if node.name in paths[t]]
        picked = {t: architecture.branch(node.name, t) if node.name in choices else "block" for t in users}
        banks = {o: [t for t in users if picked[t] == o] for o in dict.fromkeys(picked.values())}
        # shared: some weights (the block or one kernel variant) run for several tasks
        status = "shared" if any(len(u) > 1 for u in banks.values()) else "specific" if users else "dropped"
        rows.append({"block": node.name, "users": users, "status": status, "searched": node.name in choices,
                     "options": picked, "params": node.params, "flops": node.flops})
    return rows


def jaccard(paths: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """``J[a][b] = |Pa ∩ Pb| / |Pa ∪ Pb|`` of the tasks' block sets (1 for two empty paths)."""
    sets = {t: set(p) for t, p in paths.items()}
    out: dict[str, dict[str, float]] = {}
    for a, pa in sets.items():
        out[a] = {}
        for b, pb in sets.items():
            union = pa | pb
            out[a][b] = len(pa & pb) / len(union) if union else 1.0
    return out


class FixedPath(torch.nn.Module):
    """A supermodel run at one architecture (every domain its own path), as a plain multi-task model.

    Training a derived architecture this way keeps a block shared by several domains one module
    called once on their stacked batches, so its batch norms see the same statistics in training
    as in evaluation (a mixture of the domains that use it); :func:`~automtl.model.derive.derive`
    of the trained supermodel is then exactly the trained model, one operator per picked block.
    """

    def __init__(self, model: SuperModel, architecture: Architecture, multi_domain: bool = False) -> None:
        super().__init__()
        self.model = model
        self.task_names = list(model.task_names)
        self.multi_domain = multi_domain  # one input per domain, even for one domain
        self.register_buffer("gates", model.policy.one_hot(model.architecture_tensor(architecture)), persistent=False)

    def forward(self, *xs: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(xs) == 1 and not self.multi_domain:
            return self.model(xs[0], gates=self.gates)
        return self.model(dict(zip(self.task_names, xs, strict=True)), gates=self.gates)


def reinitialise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fresh weights for training from scratch: ``reset_parameters`` where a module has it, and the
    multi-task batch norms back to weights 1, biases 0, running statistics 0 / 1."""
    from ..model.mixing import TaskBatchNorm

    torch.manual_seed(seed)
    for m in module.modules():
        if m is not module and callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
        elif isinstance(m, TaskBatchNorm):
            with torch.no_grad():
                for name, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
                    t.fill_(1.0 if name.endswith(("weight", "running_var")) else 0.0)
    return module


@torch.no_grad()
def recalibrate_batch_norms(model: torch.nn.Module, batches: Iterable[Any], forward: Callable[[Any], Any],
                            limit: int) -> int:
    """Recompute every batch norm's running statistics at ``model``'s current weights; returns the batches used.

    Training from scratch at a constant learning rate leaves running statistics that trail the
    weights (an exponential average, momentum 0.1, of statistics of weights that kept moving): in
    eval mode the model then normalises with statistics of earlier weights. This runs ``forward``
    on up to ``limit`` of ``batches`` in train mode without gradients, each batch norm's momentum
    set to ``1 / (i + 1)`` for the ``i``-th batch, so its running mean and variance become the plain
    average over those batches (as one-shot NAS does for a picked sub-network: SPOS, OFA). The
    weights do not change; the momenta and every module's training mode are put back.
    """
    from ..model.mixing import TaskBatchNorm

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm | TaskBatchNorm)]
    saved = [m.momentum for m in norms]
    modes = [(m, m.training) for m in model.modules()]
    model.train()
    used = 0
    try:
        for batch in batches:
            if used >= limit:
                break
            for m in norms:
                m.momentum = 1.0 / (used + 1)
            forward(batch)
            used += 1
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        for m, mode in modes:
            m.training = mode
    return used
