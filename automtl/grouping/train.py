"""Training the candidate networks of task grouping, and selecting from them per budget.

Standley et al.'s candidates are one **full-size** network (cost 1) per non-empty subset of the tasks and one
**half-size** single-task network (cost ½) per task. Here a full network is the backbone (cut at the trunk
output) shared by its tasks, one head per task; a half network is the same backbone thinned by
:func:`automtl.compiler.width.half_size` (every channel group scaled by one factor until the FLOPs are about
half, heads rebuilt for the thinner features). Every network trains with the one loop's
:class:`~automtl.search.trainer.Trainer` for the same number of steps, then is evaluated on the validation split
(its table row for selection) and on the test split (for scoring).

:class:`CandidateTrainer` trains a network the first time it is asked for and keeps its result as one JSON file
in a folder, so a run that stops keeps every network already trained. The methods ask only for what they need:

* ``exhaustive``: every subset, full size, and every half network; selection exact on validation losses;
* ``hoa``: single-task and pair networks only (plus the halves); selection on HOA's estimates, then the chosen
  networks of 3+ tasks are trained to score the selection;
* ``esa``: every candidate trained for ``esa_fraction`` of the steps; selection on those losses, then the
  chosen networks are trained in full to score it;
* ``tag``: one joint training of all tasks records TAG affinities (:mod:`automtl.grouping.tag`); for budget B,
  at most ⌊B⌋ full networks chosen from the affinities, then trained to score them.

Every selection is scored on test losses of fully trained networks (:func:`automtl.grouping.select.select`'s
``score_with``); the seconds each method spent training the networks it selected from are reported beside.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..search.loop import TrainConfig
from ..search.trainer import Trainer, evaluate
from ..train.data import split_dataset
from ..train.tasks import Task
from .select import Selection, select
from .table import FULL_COST, HALF_COST, GroupingError, Network, Table, check_tasks, write_csv

FULL, HALF = "full", "half"
MODES = ("exhaustive", "hoa", "esa", "tag")
SPLITS = ("train", "val", "test")

NetworkFactory = Callable[[tuple[str, ...], str], nn.Module]
"""``(tasks, size)`` -> a fresh model with ``task_names`` (``size`` is ``"full"`` or ``"half"``)."""


@dataclass(frozen=True)
class Candidate:
    """One network to train: the tasks it serves, its size and its training steps."""

    tasks: tuple[str, ...]
    size: str = FULL
    steps: int = 0

    @property
    def cost(self) -> float:
        return HALF_COST if self.size == HALF else FULL_COST

    @property
    def key(self) -> str:
        """A file-name-safe identity: ``a+b.full.200``."""
        return f"{'+'.join(self.tasks)}.{self.size}.{self.steps}"


@dataclass
class GroupTrainConfig:
    """Options of a grouping run (besides the training options, which come from a :class:`TrainConfig`)."""

    steps: int = 200
    esa_fraction: float = 0.2
    half: bool = True
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    tag_every: int = 5
    tag_lr: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise GroupingError(f"steps must be an int >= 1, got {self.steps!r}")
        if not (isinstance(self.esa_fraction, int | float) and 0 < self.esa_fraction < 1):
            raise GroupingError(f"esa_fraction must be a number in (0, 1), got {self.esa_fraction!r}")
        fr = tuple(self.split_fractions)
        if len(fr) != 3 or any(not 0 < f < 1 for f in fr) or sum(fr) > 1 + 1e-9:
            raise GroupingError(f"split_fractions must be three numbers in (0, 1) summing to at most 1 "
                                f"(train, val, test), got {list(fr)}")
        self.split_fractions = fr  # type: ignore[assignment]
        if isinstance(self.tag_every, bool) or not isinstance(self.tag_every, int) or self.tag_every < 1:
            raise GroupingError(f"tag_every must be an int >= 1, got {self.tag_every!r}")
        if self.tag_lr is not None and not (isinstance(self.tag_lr, int | float) and self.tag_lr > 0):
            raise GroupingError(f"tag_lr must be a positive number or None, got {self.tag_lr!r}")

    @property
    def esa_steps(self) -> int:
        return max(1, round(self.steps * self.esa_fraction))


def subsets(tasks: Sequence[str], max_size: int | None = None) -> list[tuple[str, ...]]:
    """Non-empty subsets of ``tasks`` (in task order), smallest first, at most ``max_size`` tasks."""
    top = len(tasks) if max_size is None else min(max_size, len(tasks))
    return [c for k in range(1, top + 1) for c in itertools.combinations(tasks, k)]


class CandidateTrainer:
    """Trains candidate networks on demand; each result is kept (as JSON in ``folder``) and reused.

    ``data`` is one dataset (split into train/val/test by ``options.split_fractions`` with ``train_config.seed``)
    or a ``(train, val, test)`` triple. A result holds the network's per-task validation and test losses, its
    training seconds, parameters and FLOPs; the weights are kept beside it (``.pt``), or in memory without a
    folder, so :meth:`model` gives the trained network back.
    """

    def __init__(self, tasks: Mapping[str, Task], make_network: NetworkFactory, data: Any,
                 train_config: TrainConfig, options: GroupTrainConfig | None = None,
                 folder: str | os.PathLike[str] | None = None, log: Callable[[str], None] | None = None) -> None:
        self.tasks = dict(tasks)
        self.names = check_tasks(list(self.tasks), "tasks")
        self.make_network = make_network
        self.config = train_config
        self.options = options or GroupTrainConfig()
        if isinstance(data, tuple | list) and len(data) == 3:
            self.splits = tuple(data)
        else:
            self.splits = tuple(split_dataset(data, self.options.split_fractions, seed=train_config.seed,
                                              names=SPLITS))
        self.folder = Path(folder) if folder is not None else None
        if self.folder is not None:
            (self.folder / "networks").mkdir(parents=True, exist_ok=True)
        self.results: dict[str, dict[str, Any]] = {}
        self.models: dict[str, nn.Module] = {}  # trained networks, when there is no folder to keep their weights
        self.log = log or (lambda message: None)

    # --- one network ----------------------------------------------------------------------------
    def _path(self, cand: Candidate) -> Path | None:
        return self.folder / "networks" / f"{cand.key}.json" if self.folder is not None else None

    def trained(self, cand: Candidate) -> bool:
        path = self._path(cand)
        return cand.key in self.results or (path is not None and path.is_file())

    def result(self, cand: Candidate) -> dict[str, Any]:
        """The candidate's result, training it first when no result is kept."""
        if cand.key in self.results:
            return self.results[cand.key]
        path = self._path(cand)
        if path is not None and path.is_file():
            try:
                rec = json.loads(path.read_text(encoding="utf-8"))
                if tuple(rec["tasks"]) != cand.tasks or rec["size"] != cand.size or rec["steps"] != cand.steps:
                    raise ValueError("it describes another network")
            except (ValueError, KeyError, TypeError) as exc:
                raise GroupingError(f"{path}: not a network result this run wrote ({exc}); delete it to retrain "
                                    "that network") from None
            self.results[cand.key] = rec
            return rec
        rec, net = self._train(cand)
        if path is not None:
            from ..app.integrity import atomic_write_text

            weights = path.with_suffix(".pt")
            tmp = weights.with_name(f".{weights.name}.tmp")
            torch.save(net.state_dict(), tmp)
            os.replace(tmp, weights)
            atomic_write_text(path, json.dumps(rec, indent=1))  # last: a result without its weights never exists
        else:
            self.models[cand.key] = net
        self.results[cand.key] = rec
        return rec

    def fresh(self, cand: Candidate) -> nn.Module:
        """The candidate's untrained network, initialised from a seed of the run's seed and the candidate's
        tasks and size (so every run, and a joint TAG run of all tasks, starts from the same weights)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed * 1_000_003 + zlib.crc32(f"{'+'.join(cand.tasks)}.{cand.size}".encode()))
            return self.make_network(cand.tasks, cand.size)

    def model(self, cand: Candidate) -> nn.Module:
        """The trained network of ``cand`` (rebuilt and loaded from its kept weights), in eval mode."""
        self.result(cand)
        if cand.key in self.models:
            return self.models[cand.key].eval()
        path = self._path(cand)
        weights = path.with_suffix(".pt") if path is not None else None
        if weights is None or not weights.is_file():
            raise GroupingError(f"network {cand.key}: its weights were not kept ({weights}); delete its result to "
                                "train it again")
        with torch.random.fork_rng(devices=[]):
            net = self.make_network(cand.tasks, cand.size)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return net.eval()

    def _train(self, cand: Candidate) -> tuple[dict[str, Any], nn.Module]:
        unknown = [t for t in cand.tasks if t not in self.tasks]
        if unknown or not cand.tasks:
            raise GroupingError(f"network {cand.key}: unknown task {unknown[0] if unknown else '(none)'!r}; "
                                f"tasks: {', '.join(self.names)}")
        self.log(f"training {cand.size} network {'+'.join(cand.tasks)} for {cand.steps} steps")
        net = self.fresh(cand)
        sub = {t: self.tasks[t] for t in cand.tasks}
        start = time.perf_counter()
        trainer = Trainer(net, sub, self.splits[:2], self.config)
        trainer.train(cand.steps)
        seconds = time.perf_counter() - start
        val = trainer.validate()
        test_loader = trainer.loader(self.splits[2], "test", self.config.eval_batch_size, False, 5)
        test = evaluate(net, sub, test_loader, max_batches=self.config.eval_batches, device=trainer.device)
        graph = getattr(net, "graph", None)
        return {
            "tasks": list(cand.tasks), "size": cand.size, "steps": cand.steps, "cost": cand.cost,
            "val": val["loss"], "test": test["loss"], "val_metrics": val["metrics"], "test_metrics": test["metrics"],
            "seconds": seconds, "params": sum(p.numel() for p in net.parameters()),
            "flops": int(graph.flops) if graph is not None else None,
        }, net.cpu()

    # --- tables ---------------------------------------------------------------------------------
    def table(self, cands: Iterable[Candidate], split: str = "val", source: str | None = None) -> Table:
        """A table of the candidates' ``split`` losses (trained first where needed)."""
        nets = []
        for c in cands:
            rec = self.result(c)
            nets.append(Network(c.tasks, c.cost, {t: float(rec[split][t]) for t in c.tasks}))
        return Table(self.names, nets, source or f"{split} losses")

    def seconds(self, cands: Iterable[Candidate]) -> float:
        """Training seconds of the candidates (each counted once)."""
        seen = {c.key: c for c in cands}
        return sum(float(self.result(c)["seconds"]) for c in seen.values())

    # --- candidate lists ------------------------------------------------------------------------
    def candidates(self, steps: int, max_size: int | None = None) -> list[Candidate]:
        """Full networks of every subset (up to ``max_size`` tasks) and, with ``options.half``, the halves."""
        out = [Candidate(s, FULL, steps) for s in subsets(self.names, max_size)]
        if self.options.half:
            out += [Candidate((t,), HALF, steps) for t in self.names]
        return out

    def full(self, networks: Iterable[Network]) -> list[Candidate]:
        """The fully trained candidates matching selected networks (by tasks and cost)."""
        steps = self.options.steps
        return [Candidate(n.tasks, HALF if n.cost == HALF_COST else FULL, steps) for n in networks]


@dataclass
class MethodResult:
    """One method's selection at one budget, scored on test losses, and the training time it needed."""

    method: str
    budget: float
    selection: Selection | None
    selection_seconds: float
    scoring_seconds: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "budget": self.budget, "note": self.note,
                "selection": self.selection.to_dict() if self.selection is not None else None,
                "selection_seconds": self.selection_seconds, "scoring_seconds": self.scoring_seconds}


def run_method(ct: CandidateTrainer, method: str, budgets: Sequence[float],
               affinity: Any = None) -> list[MethodResult]:
    """Train what ``method`` needs, select at every budget, and score on fully trained networks' test losses.

    ``affinity`` is the TAG result (:class:`automtl.grouping.tag.Affinity`) for ``method="tag"``.
    """
    if method not in MODES:
        raise GroupingError(f"method {method!r} is not one of {', '.join(MODES)}")
    steps = ct.options.steps
    if method == "tag":
        return _tag_results(ct, budgets, affinity)
    if method == "exhaustive":
        cands, approx = ct.candidates(steps), None
    elif method == "hoa":
        cands, approx = ct.candidates(steps, max_size=2), "hoa"
    else:
        cands, approx = ct.candidates(ct.options.esa_steps), None
    table = ct.table(cands, "val", f"{method} validation losses")
    spent = ct.seconds(cands)
    out = []
    for b in budgets:
        try:
            chosen = select(table, b, approx=approx)
        except GroupingError as exc:
            out.append(MethodResult(method, float(b), None, spent, 0.0, str(exc)))
            continue
        scoring = ct.full(chosen.networks)
        extra = [c for c in scoring if c.key not in {x.key for x in cands}]
        test = ct.table(scoring, "test", f"{method} test losses")
        sel = select(table, b, approx=approx, score_with=test)
        out.append(MethodResult(method, float(b), sel, spent, ct.seconds(extra)))
    return out


def _tag_results(ct: CandidateTrainer, budgets: Sequence[float], affinity: Any) -> list[MethodResult]:
    from .tag import choose_groups

    if affinity is None:
        raise GroupingError("method 'tag' needs the affinity matrix of a joint run (automtl.grouping.tag)")
    out = []
    for b in budgets:
        k = math.floor(float(b) + 1e-9)
        if k < 1:
            out.append(MethodResult("tag", float(b), None, affinity.seconds, 0.0,
                                    f"budget {b:g} holds no full network (TAG chooses full networks)"))
            continue
        groups = choose_groups(affinity.matrix, affinity.tasks, k)
        cands = [Candidate(g, FULL, ct.options.steps) for g in groups]
        test = ct.table(cands, "test", "tag test losses")
        val = ct.table(cands, "val", "tag validation losses")
        sel = select(val, len(groups), score_with=test)  # the chosen groups only: each task read from its best
        out.append(MethodResult("tag", float(b), sel, affinity.seconds, ct.seconds(cands)))
    return out


def write_results(folder: str | os.PathLike[str], ct: CandidateTrainer, results: Sequence[MethodResult]) -> Path:
    """``val.csv`` / ``test.csv`` (every fully trained network) and ``selections.json`` (this run's methods
    replace their earlier results, other methods' stay); returns the JSON path."""
    from ..app.integrity import atomic_write_text

    out = Path(folder)
    done = [Candidate(tuple(r["tasks"]), r["size"], int(r["steps"])) for r in ct.results.values()]
    full = [c for c in done if c.steps == ct.options.steps]
    if full:
        write_csv(ct.table(full, "val", "val"), out / "val.csv")
        write_csv(ct.table(full, "test", "test"), out / "test.csv")
    early = [c for c in done if c.steps == ct.options.esa_steps and c.steps != ct.options.steps]
    if early:
        write_csv(ct.table(early, "val", "esa"), out / "esa_val.csv")
    path = out / "selections.json"
    methods = {r.method for r in results}
    kept = []
    if path.is_file():  # results of the other methods run in this folder stay
        try:
            kept = [r for r in json.loads(path.read_text(encoding="utf-8"))["results"] if r["method"] not in methods]
        except (ValueError, KeyError, TypeError):
            kept = []
    atomic_write_text(path, json.dumps({"options": asdict(ct.options),
                                        "results": kept + [r.to_dict() for r in results]}, indent=1))
    return path


def train_config_of(options: Any, **overrides: Any) -> TrainConfig:
    """A plain :class:`TrainConfig` from any options dataclass holding its fields (a strategy's config)."""
    names = {f.name for f in fields(TrainConfig)}
    values = {n: getattr(options, n) for n in names if hasattr(options, n)}
    values.update(overrides)
    return TrainConfig(**values)
