"""TAG: task affinities from one joint training (Fifty et al., "Efficiently Identifying Task Groupings for
Multi-Task Learning", NeurIPS 2021), and the groups they choose.

During one training of all tasks on a shared trunk, every ``every`` steps and for each task i, a lookahead SGD
step on the shared parameters only, θ′ = θ − lr·∇θ L_i, is taken on the step's batch, and for every task j

    Z(i→j) = 1 − L_j(θ′) / L_j(θ)

is recorded (positive: i's step helps j). The affinity matrix is the mean over the recorded steps. The step is
taken through the loop's step hook (:class:`automtl.search.loop.StepInfo`: each task's loss and flat gradient of
the shared parameters), before the optimiser's step; the lookahead losses are the same batch's losses
recomputed at θ′ in the same (training) mode, and the parameters and every buffer (batch-norm statistics) are
restored afterwards, so recording affinities does not change the training.

Groups (:func:`choose_groups`): a group's score for a task a in it is the mean of Z(b→a) over the other members
b (0 for a task alone: no help, no harm); at most k groups covering all tasks are chosen to maximise the mean over
tasks of each task's best score among the chosen groups that hold it. The search is exhaustive (all sets of up
to k non-empty subsets); ties go to fewer groups, then to the earlier sets in enumeration order.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..search.loop import StepInfo, TrainConfig
from ..search.trainer import Trainer
from ..train.tasks import Task
from .table import GroupingError, check_tasks

MAX_COMBINATIONS = 20_000_000


@dataclass
class Affinity:
    """The mean affinity matrix ``matrix[i, j]`` = Z(tasks[i] → tasks[j]), from ``count`` recorded steps."""

    tasks: tuple[str, ...]
    matrix: np.ndarray
    count: int
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "matrix": self.matrix.tolist(), "count": self.count,
                "seconds": self.seconds}


def trunk_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters every task shares: all but the heads (``model.heads``, or a derived model's
    ``head.<task>`` operators)."""
    heads = getattr(model, "heads", None)
    skip: set[int] = set()
    if isinstance(heads, nn.Module):
        skip = {id(p) for p in heads.parameters()}
    elif hasattr(model, "net") and "modules" in getattr(model.net, "meta", {}):
        from ..compiler.codegen import node_modules

        for name, mod in node_modules(model.net).items():
            if name.startswith("head."):
                skip.update(id(p) for p in mod.parameters())
    return [p for p in model.parameters() if id(p) not in skip and p.requires_grad]


class TagTrainer(Trainer):
    """A :class:`Trainer` whose shared parameters are the trunk's, recording TAG affinities every ``every`` steps.

    ``lr`` is the lookahead step size (default: the config's ``weight_lr``).
    """

    def __init__(self, model: nn.Module, tasks: Mapping[str, Task] | Sequence[Task], data: Any,
                 config: TrainConfig | None = None, *, every: int = 5, lr: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(model, tasks, data, config, **kwargs)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise GroupingError(f"TAG: every must be an int >= 1 (steps between affinity records), got {every!r}")
        self.every = every
        self.lookahead_lr = float(lr if lr is not None else self.config.weight_lr)
        n = len(self.names)
        self.sum = np.zeros((n, n))
        self.count = 0
        self._recompute: Callable[[], Mapping[str, torch.Tensor | None]] | None = None
        self.step_hooks.append(self._record)

    def shared_parameters(self) -> list[nn.Parameter]:
        return trunk_parameters(self.model)

    def backward_step(self, losses: Any, opt: Any, params: Any, **kwargs: Any) -> torch.Tensor:
        self._recompute = kwargs.get("recompute")
        try:
            return super().backward_step(losses, opt, params, **kwargs)
        finally:
            self._recompute = None

    def _record(self, info: StepInfo) -> None:
        if info.step % self.every or self._recompute is None:
            return
        if any(info.losses.get(t) is None for t in self.names):
            return  # a batch without every task's label gives no full row
        grads = info.task_gradients()
        self.sum += affinity_step(self.model, list(info.shared), grads, info.losses, self._recompute,
                                  self.lookahead_lr, self.names)
        self.count += 1

    def affinity(self) -> Affinity:
        """The mean of the recorded affinities (GroupingError when none was recorded)."""
        if self.count == 0:
            raise GroupingError("TAG recorded no affinity: train for at least one step with every task's label")
        return Affinity(tuple(self.names), self.sum / self.count, self.count)


@torch.no_grad()
def affinity_step(model: nn.Module, shared: Sequence[nn.Parameter], grads: Mapping[str, torch.Tensor],
                  losses: Mapping[str, torch.Tensor | None], recompute: Callable[[], Mapping[str, Any]], lr: float,
                  names: Sequence[str]) -> np.ndarray:
    """One step's affinities ``Z[i, j]``: for each task i, losses recomputed after θ − lr·g_i on ``shared``."""
    before = {t: float(losses[t].detach()) for t in names}  # type: ignore[union-attr]
    # through ``.data``: the step's graph (kept for the real backward) must not see these writes
    saved = [p.data.clone() for p in shared]
    buffers = [(b, b.data.clone()) for b in model.buffers()]
    z = np.zeros((len(names), len(names)))
    devices = sorted({p.device.index or 0 for p in shared if p.device.type == "cuda"})
    # the lookahead forwards draw no random numbers the training would have drawn (dropout)
    with torch.random.fork_rng(devices=devices):
        _lookaheads(shared, saved, buffers, grads, before, recompute, lr, names, z)
    return z


def _lookaheads(shared: Sequence[nn.Parameter], saved: list[torch.Tensor], buffers: list[tuple[torch.Tensor, Any]],
                grads: Mapping[str, torch.Tensor], before: Mapping[str, float],
                recompute: Callable[[], Mapping[str, Any]], lr: float, names: Sequence[str], z: np.ndarray) -> None:
    try:
        for i, ti in enumerate(names):
            offset = 0
            for p in shared:
                n = p.numel()
                p.data.sub_(lr * grads[ti][offset : offset + n].view_as(p).to(p.dtype))
                offset += n
            after = recompute()
            for j, tj in enumerate(names):
                z[i, j] = 1.0 - float(after[tj]) / before[tj] if before[tj] != 0 else 0.0
            for p, s in zip(shared, saved, strict=True):
                p.data.copy_(s)
    finally:
        for p, s in zip(shared, saved, strict=True):
            p.data.copy_(s)
        for b, s in buffers:
            b.data.copy_(s)


def tag_affinity(model: nn.Module, tasks: Mapping[str, Task], data: Any, config: TrainConfig, steps: int,
                 every: int = 5, lr: float | None = None) -> Affinity:
    """Train ``model`` (all tasks, shared trunk) for ``steps`` steps and return the mean affinity matrix."""
    start = time.perf_counter()
    trainer = TagTrainer(model, tasks, data, config, every=every, lr=lr)
    trainer.train(steps)
    aff = trainer.affinity()
    aff.seconds = time.perf_counter() - start
    return aff


def group_scores(matrix: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """``scores[g, a]``: group g's score for task a (mean of Z(b→a) over its other members b; 0 alone;
    -inf when a is not in g)."""
    n = matrix.shape[0]
    out = np.full((len(groups), n), -np.inf)
    for gi, g in enumerate(groups):
        for a in g:
            others = [b for b in g if b != a]
            out[gi, a] = float(np.mean([matrix[b, a] for b in others])) if others else 0.0
    return out


def choose_groups(matrix: Any, tasks: Sequence[str], k: int) -> list[tuple[str, ...]]:
    """At most ``k`` groups covering every task that maximise the mean over tasks of each task's best score.

    Exhaustive over every set of up to ``k`` non-empty subsets of the tasks (GroupingError when that exceeds
    :data:`MAX_COMBINATIONS`); ties go to fewer groups, then to the first set found.
    """
    names = check_tasks(list(tasks), "TAG tasks")
    z = np.asarray(matrix, dtype=float)
    n = len(names)
    if z.shape != (n, n) or not np.isfinite(z).all():
        raise GroupingError(f"TAG: the affinity matrix must be a finite {n}x{n} array, got shape {z.shape}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise GroupingError(f"TAG: the number of groups must be an int >= 1, got {k!r}")
    k = min(k, n)
    groups = [g for size in range(1, n + 1) for g in itertools.combinations(range(n), size)]
    total = sum(math.comb(len(groups), m) for m in range(1, k + 1))
    if total > MAX_COMBINATIONS:
        raise GroupingError(f"TAG: {total:,} sets of up to {k} groups of {n} tasks are too many to search "
                            f"exhaustively (limit {MAX_COMBINATIONS:,}); use fewer tasks or groups")
    scores = group_scores(z, groups)
    best_value = -np.inf
    best: tuple[int, ...] | None = None
    for m in range(1, k + 1):
        for chunk in _chunks(itertools.combinations(range(len(groups)), m), 200_000):
            idx = np.asarray(chunk)
            per_task = scores[idx].max(axis=1)  # (C, n): each task's best score in the set
            covered = np.isfinite(per_task).all(axis=1)
            if not covered.any():
                continue
            values = np.where(covered, np.where(np.isfinite(per_task), per_task, 0).mean(axis=1), -np.inf)
            i = int(np.argmax(values))
            if values[i] > best_value + 1e-12:
                best_value, best = float(values[i]), tuple(int(v) for v in idx[i])
    assert best is not None  # the one group of all tasks covers them
    return [tuple(names[t] for t in groups[g]) for g in best]


def _chunks(it: Any, size: int) -> Any:
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk
