"""The MPNAS strategy (Wang et al., WACV 2021) on the one loop: multi-path search, then training from scratch.

>>> model = build_blocks(SmallResNet(), heads, input_shape=(3, 32, 32))
>>> result = MPNASSearcher(model, tasks, MultiDomain({...}), MPNASConfig(search_steps=300)).run()
>>> result.paths, result.sharing, result.jaccard, result.metrics

Every domain (task) has its own path through one supermodel whose blocks are block / zero
choices (:mod:`automtl.model.blocks`). The search follows TuNAS (Bender et al., CVPR 2020), the
search MPNAS extends:

* one controller per domain: a :class:`~automtl.model.policies.CategoricalPolicy` row per domain,
  logits starting at 0 (``controller="shared"``: one row whose path every domain takes, the
  *multi-head search* baseline);
* each step samples a path per domain; the shared weights take one step on every domain's
  training batch along its own path (the loss weighting ``weighting``, equal by default); the
  controllers take one REINFORCE step, ``−(r − b)·log p(path)``, on the paths' rewards on a
  held-out batch, ``b`` a moving average of ``r`` (momentum ``baseline_momentum``, 0.95; the first
  reward sets it, so the first advantage is 0);
* the reward is TuNAS's absolute ``r = Q + β·|C/C₀ − 1|`` or MnasNet's ``r = Q·(C/C₀)^β``: ``Q``
  the domain's primary metric on the batch (accuracy), ``C`` its path's exact params or FLOPs
  (:class:`~automtl.search.paths.PathCost`), ``C₀ = cost_target ×`` its full path's;
* TuNAS warm-up: for the first ``warmup_fraction`` of the steps each block is enabled (run
  instead of the sampled option) with a probability falling linearly from 1 to 0, and the
  controllers' learning rate is 0 (their Adam steps move nothing; the baseline still learns);
* at the end each domain takes its most likely path: blocks used by several domains are shared
  (one bank), by one domain-specific, by none dropped (:func:`~automtl.search.paths.sharing`),
  and the Jaccard matrix of the domains' sets of searched blocks is kept (a block that is no
  choice is on every path);
* the derived architecture is trained from scratch on all domains with ``final_weighting`` (ABDP
  by default) by a :class:`~automtl.search.trainer.Trainer`: the supermodel, re-initialised, at
  the fixed paths (a shared block runs once on its domains' stacked batches, so its batch norms
  see the same mixture in training and evaluation); its batch norms' running statistics are then
  recomputed at the trained weights over ``recalibrate_batches`` training batches
  (:func:`~automtl.search.paths.recalibrate_batch_norms`: at a constant learning rate they trail
  the weights), and it is derived.

Checkpoints hold the weights, both optimisers, the controllers, the baseline, the streams and the
step counter, so ``MPNASSearcher.resume(path, ...).run()`` continues bit for bit.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from ..model import blocks as _blocks  # noqa: F401 - registers the block choice kind and operator
from ..model.architecture import Architecture
from ..model.derive import MultiTaskModel, derive
from ..model.policies import CategoricalPolicy, MovingAverage, reinforce_loss
from ..model.supermodel import SuperModel
from ..train.tasks import Task
from . import distributed as dist_utils
from .loop import Loop, Stage, TrainConfig, epoch_end, tick
from .paths import (
    REWARDS,
    FixedPath,
    PathCost,
    block_paths,
    jaccard,
    recalibrate_batch_norms,
    reinitialise,
    reward,
    sharing,
)
from .streams import Chain, Stream, split_batch
from .trainer import Trainer, evaluate

__all__ = ["MPNASConfig", "MPNASResult", "MPNASSearcher", "batch_quality", "mpnas"]


@dataclass
class MPNASConfig(TrainConfig):
    """MPNAS's options (TuNAS's defaults where it gives one) on top of :class:`TrainConfig`."""

    # steps of (one weight step, one controller step); the warm-up must teach the supernet every domain
    # before the controllers learn (else a domain's reward is its cost only): the suite needs ~200 steps
    search_steps: int = 900
    warmup_fraction: float = 0.25  # TuNAS op warm-up: the first 25% of the search
    policy_lr: float = 0.05  # Adam on the controllers' logits
    baseline_momentum: float = 0.95
    reward: str = "absolute"  # "absolute" (TuNAS) or "mnas"
    beta: float = -0.1
    cost_kind: str = "flops"  # "flops" or "params" of the domain's path
    cost_target: float | dict[str, float] = 0.7  # C0 as a fraction of each domain's full path (or per domain)
    controller: str = "per_domain"  # "per_domain" (MPNAS) or "shared" (one path for all: multi-head search)
    train_steps: int = 300  # from-scratch training of the derived model
    train_lr: float | None = None  # None: weight_lr
    final_weighting: str = "abdp"
    final_weighting_kwargs: dict[str, Any] = field(default_factory=dict)
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  # weights, controller, val
    domain_bn: bool = True  # a config's model: each domain its own batch norms in shared blocks ('domain_block')
    kernels: list[int] | None = None  # a config's model: each block's kernel variants, e.g. [5, 7] (None: none)
    recalibrate_batches: int = 20  # batch-norm statistics recomputed at the trained weights (0: as trained)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("search_steps", "train_steps", "recalibrate_batches"):
            v = getattr(self, name)
            self._check(name, not isinstance(v, bool) and isinstance(v, int) and v >= 0, "an int >= 0")
        self._check("warmup_fraction", _num(self.warmup_fraction) and 0 <= self.warmup_fraction <= 1,
                    "a number in [0, 1]")
        self._check("policy_lr", _num(self.policy_lr) and self.policy_lr > 0, "a finite number > 0")
        self._check("baseline_momentum", _num(self.baseline_momentum) and 0 <= self.baseline_momentum < 1,
                    "a number in [0, 1)")
        self._check("beta", _num(self.beta), "a finite number (negative: costlier paths earn less)")
        self._check("train_lr", self.train_lr is None or (_num(self.train_lr) and self.train_lr > 0),
                    "None or a finite number > 0")
        t = self.cost_target
        ok = (_num(t) and t > 0) if not isinstance(t, dict) else all(_num(v) and v > 0 for v in t.values())
        self._check("cost_target", ok, "a number > 0 or a mapping domain -> number > 0 (a fraction of the full path)")
        allowed = {"reward": REWARDS, "cost_kind": ("flops", "params"), "controller": ("per_domain", "shared")}
        for name, values in allowed.items():
            self._check(name, getattr(self, name) in values, f"one of {values}")
        self._check("split_fractions", len(self.split_fractions) == 3, "three fractions (weights, controller, val)")
        self._check("kernels", self.kernels is None or isinstance(self.kernels, list | tuple) and all(
            not isinstance(k, bool) and isinstance(k, int) and k > 0 and k % 2 == 1 for k in self.kernels),
            "None or a list of odd kernel sizes (e.g. [5, 7]: each block's variants)")


def _num(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)


@dataclass
class MPNASResult:
    """What :meth:`MPNASSearcher.run` returns: paths, sharing, the trained derived model and the logs."""

    architecture: Architecture
    paths: dict[str, list[str]]
    sharing: list[dict[str, Any]]
    jaccard: dict[str, dict[str, float]]
    model: MultiTaskModel
    supermodel: SuperModel
    report: dict[str, Any]
    history: dict[str, list[dict[str, Any]]]
    metrics: dict[str, dict[str, float]]
    losses: dict[str, float]
    config: MPNASConfig

    def summary(self) -> dict[str, Any]:
        """The JSON-able results: paths, sharing, Jaccard, params and FLOPs against one backbone per domain."""
        rep = self.report
        return {"paths": self.paths, "sharing": self.sharing, "jaccard": self.jaccard,
                "params": rep["total"]["params"], "flops": rep["total"]["flops"],
                "params_ratio": rep["params_ratio"], "flops_ratio": rep["flops_ratio"]}


def batch_quality(task: Task, out: torch.Tensor, target: Any) -> float:
    """The task's primary metric on one batch (accuracy for classification), higher is better."""
    state = task.metric_state()
    task.update(state, out, target)
    metrics = task.compute(state)
    name = getattr(task, "primary_metric", None) or next(iter(metrics))
    value = float(metrics[name])
    higher = getattr(task, "higher_is_better", {}).get(name, True)
    return value if higher else -value


class MPNASSearcher(Loop):
    """The MPNAS search on a block supermodel (:func:`~automtl.model.blocks.build_blocks`).

    ``data`` is one dataset (``{task: (x_t, y_t)}`` items, :class:`~automtl.train.data.MultiDomain`,
    split into weights / controller / val by ``config.split_fractions``) or those three splits.
    """

    splits = ("weights", "policy", "val")

    def __init__(self, model: SuperModel, tasks: Mapping[str, Task] | Sequence[Task], data: Any,
                 config: MPNASConfig | None = None) -> None:
        config = config if config is not None else MPNASConfig()
        if not isinstance(model, SuperModel):
            raise ValueError(f"model must be a SuperModel (automtl.model.blocks.build_blocks), not "
                             f"{type(model).__name__}")
        self.fractions = config.split_fractions
        super().__init__(model, tasks, data, config)
        self.config: MPNASConfig = config
        self.model: SuperModel = model
        self.loaders = {
            "weights": self.loader(self.data["weights"], "weights", config.batch_size, True, 1),
            "policy": self.loader(self.data["policy"], "policy", config.batch_size, True, 2),
            "val": self.loader(self.data["val"], "val", config.eval_batch_size, False, 3),
        }
        self.multi_domain = isinstance(self.first_batch("weights"), Mapping)
        model.materialize()
        model.to(self.device)
        self.register("model", model)
        T = len(self.names)
        rows = 1 if config.controller == "shared" else T
        self.controller = self.register("controller", CategoricalPolicy(rows, model.choices).to(self.device))
        self.baseline = self.register("baseline", MovingAverage(rows, config.baseline_momentum).to(self.device))
        self.weighting = self.register("weighting", self.make_weighting())
        self.weight_opt = self.register("weight_opt", self.weight_optimizer(
            list(model.weight_parameters()) + list(self.weighting.parameters()), config.weight_lr))
        self.policy_opt = self.register("policy_opt", torch.optim.Adam([self.controller.logits], lr=config.policy_lr))
        self.scaler = self.make_scaler("weights")
        self.cost = PathCost(model, config.cost_kind)
        self.targets = self._targets()
        self.step = 0
        self.register_attributes("steps", ["step"])
        self.streams = {k: self.register(f"stream_{k}", Stream(self.loaders[k], k)) for k in ("weights", "policy")}
        self.history = {s: [] for s in ("search", "train", "val")}
        self.derived: MultiTaskModel | None = None
        self.progress = {"stage": "search", "step": 0}

    def identity(self) -> dict[str, Any]:
        return {"backbone_digest": self.model.backbone_digest, "task_names": list(self.names)}

    def _targets(self) -> torch.Tensor:
        t = self.config.cost_target
        full = self.cost.full()
        if isinstance(t, dict):
            unknown = [k for k in t if k not in self.names]
            missing = [k for k in self.names if k not in t]
            if unknown or missing:
                raise ValueError(f"MPNASConfig.cost_target: give one fraction per domain {self.names}; "
                                 f"unknown {unknown}, missing {missing}")
            return full * torch.tensor([float(t[n]) for n in self.names], dtype=torch.float64)
        return full * float(t)

    # --- one step -------------------------------------------------------------------------------
    @property
    def warmup_steps(self) -> int:
        return int(round(self.config.warmup_fraction * self.config.search_steps))

    def enable_probability(self, step: int) -> float:
        """TuNAS op warm-up: the probability a block is forced on at ``step`` (1 falling to 0)."""
        w = self.warmup_steps
        return 0.0 if step >= w else 1.0 - step / w

    def _force_on(self, path: torch.Tensor, forced: torch.Tensor) -> None:
        """TuNAS warm-up, in place: a forced choice runs its block (option 0). Where a block has kernel
        variants (options 2, 3, ...), a forced zero pick becomes one of the block's options at random
        and a running pick stays, so the warm-up trains every variant."""
        counts = torch.tensor([len(c.options) for c in self.model.choices])
        plain = counts <= 2
        path[forced & plain] = 0
        zero = forced & ~plain & (path == 1)
        if bool(zero.any()):  # only with variants: block / zero draws nothing more
            k = counts.expand_as(path)[zero]
            draw = (torch.rand(k.shape) * (k - 1)).long()  # one of the k - 1 options that run
            path[zero] = torch.where(draw == 0, 0, draw + 1)

    def sample(self) -> torch.Tensor:
        """One path per domain ``(T, V)`` from the controllers (a shared controller's path for all)."""
        pick = self.controller.sample()
        return pick.expand(len(self.names), -1) if pick.shape[0] == 1 else pick

    def _step(self, step: int) -> dict[str, Any]:
        c = self.config
        T = len(self.names)
        pick = self.controller.sample()
        path = pick.clone()
        p = self.enable_probability(step)
        if p > 0:  # forced-on blocks; only while warming up
            self._force_on(path, torch.rand(path.shape) < p)
        path = path.expand(T, -1) if path.shape[0] == 1 else path
        gates = self.controller.one_hot(path)
        # the weights: one step along every domain's path on its training batch
        x, targets = split_batch(self.streams["weights"].next(), self.names, c.allow_missing, self.device)
        if self.streams["weights"].new_epoch:
            epoch_end(self.weighting)
        self.model.train()
        self.weighting.train()
        params = self.model.weight_parameters() + list(self.weighting.parameters())
        with self.autocast():
            out = self.model(x, gates=gates)
            losses = self.task_losses(out, targets, step)
        total = self.backward_step(losses, self.weight_opt, params, scaler=self.scaler, model=self.model,
                                   stage="search", step=step, weighting=self.weighting, shared=self._shared())
        # the controllers: REINFORCE on the paths' rewards on a held-out batch
        x, targets = split_batch(self.streams["policy"].next(), self.names, c.allow_missing, self.device)
        with torch.no_grad(), self.autocast():
            out = self.model(x, gates=gates)
        quality = torch.tensor([batch_quality(self.tasks[t], out[t].float(), targets[t]) for t in self.names],
                               dtype=torch.float64)
        quality = dist_utils.average_tensor(quality.to(self.device)).cpu()
        cost = self.cost(path)
        r = reward(quality, cost, self.targets, c.beta, c.reward)
        if pick.shape[0] == 1:
            r = r.mean().reshape(1)
        r = r.to(self.baseline.value.device, self.baseline.value.dtype)
        b = torch.where(self.baseline.started, self.baseline.value, r)
        self.baseline.update(r)
        for group in self.policy_opt.param_groups:
            group["lr"] = 0.0 if step < self.warmup_steps else c.policy_lr
        loss = reinforce_loss(self.controller, pick, r, b)
        self.backward_step({}, self.policy_opt, [self.controller.logits], scaler=None, model=self.model,
                           stage="search", step=step, extra=loss, clip=False)
        self.step = step + 1
        return {"step": step, "loss": dist_utils.mean_losses(losses), "total": dist_utils.mean_scalar(total),
                "reward": r.tolist(), "baseline": b.tolist(), "quality": quality.tolist(),
                "cost_ratio": (cost / self.cost.full()).tolist(), "enable": p,
                "entropy": float(self.controller.entropy().detach().mean()) if self.model.choices else 0.0}

    def _shared(self) -> list[torch.nn.Parameter]:
        heads = {id(p) for p in self.model.heads.parameters()}
        return [p for p in self.model.weight_parameters() if id(p) not in heads]

    # --- stages ---------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        return [Stage("search", self.config.search_steps, self._search)]

    def _search(self, start: int, stop: int) -> None:
        bar = self.stage_bar("search", self.config.search_steps, "mpnas search", start)
        for step in range(start, stop):
            rec = self._step(step)
            self.log("search", rec)
            tick(bar, rec)
        if stop == self.config.search_steps:
            self.end_bar("search")

    def architecture(self) -> Architecture:
        """Each domain's most likely path."""
        pick = self.controller.argmax()
        if pick.shape[0] == 1:
            pick = pick.expand(len(self.names), -1)
        return self.model.architecture_from_indices(pick.cpu())

    def train_derived(self, architecture: Architecture, steps: int | None = None,
                      weighting: str | None = None) -> MultiTaskModel:
        """Train ``architecture`` from scratch on the weights and controller splits together with
        ``final_weighting`` (or ``weighting``), then derive it.

        The supermodel is copied and re-initialised (:func:`~automtl.search.paths.reinitialise`) and
        trained at the fixed paths (:class:`~automtl.search.paths.FixedPath`) by a
        :class:`~automtl.search.trainer.Trainer` sharing this search's records and sinks; the derived
        model holds exactly its weights (the blocks nobody runs are dropped), in eval mode.
        """
        c = self.config
        steps = c.train_steps if steps is None else steps
        weighting = c.final_weighting if weighting is None else weighting
        kwargs = dict(c.final_weighting_kwargs) if weighting == c.final_weighting else {}
        model = reinitialise(copy.deepcopy(self.model), c.seed + 1).to(self.device)
        path = FixedPath(model, architecture, multi_domain=self.multi_domain)
        cfg = replace(c, weighting=weighting, weighting_kwargs=kwargs)
        trainer = Trainer(path, self.tasks, (self._train_source(), self.data["val"]), cfg,
                          lr=c.train_lr or c.weight_lr, stage="train", val_loader=self.loaders["val"], seed_rng=False)
        trainer.history, trainer.sinks = self.history, self.sinks
        trainer.train(steps)
        if c.recalibrate_batches and steps:
            names = self.names
            source = self.loader(self._train_source(), "recalibrate", c.batch_size, True, 5)

            def forward(batch: Any) -> None:
                x, _ = split_batch(batch, names, True, self.device)
                path(*[x[t] for t in names]) if isinstance(x, Mapping) else path(x)

            recalibrate_batch_norms(path, source, forward, c.recalibrate_batches)
            if self.world > 1:  # every process keeps process 0's statistics, as after a training step
                dist_utils.broadcast_buffers(model)
        return derive(model.eval(), architecture, multi_domain=self.multi_domain).eval()

    def _train_source(self) -> Any:
        w, p = self.data["weights"], self.data["policy"]
        if isinstance(w, Dataset) and isinstance(p, Dataset):
            return ConcatDataset([w, p])
        return Chain([self.loaders["weights"], self.loaders["policy"]])

    def validate(self, model: torch.nn.Module) -> dict[str, Any]:
        return evaluate(model, self.tasks, self.loaders["val"], max_batches=self.config.eval_batches,
                        device=self.device)

    def run(self, stop_after: int | None = None, checkpoint: str | os.PathLike[str] | None = None,
            checkpoint_every: int = 0) -> MPNASResult | None:
        """Search, derive each domain's most likely path, train the derived model from scratch, validate.

        With ``stop_after=k`` it stops after ``k`` search steps, saves a checkpoint to ``checkpoint``
        when given and returns None; :meth:`resume` continues it exactly.
        """
        if not self.run_stages(stop_after, checkpoint, checkpoint_every if checkpoint is not None else 0):
            return None
        arch = self.architecture()
        paths = block_paths(self.model, arch)
        rows = sharing(self.model, arch)
        model = self.train_derived(arch)
        self.derived = model
        final = self.validate(model)
        self.record_val("train", self.config.train_steps, final)
        report = model.report()
        self.progress = {"stage": "done", "step": 0}
        searched = {c.node for c in self.model.choices}  # fixed blocks are on every path: left out of J
        sim = jaccard({t: [b for b in p if b in searched] for t, p in paths.items()})
        return MPNASResult(arch, paths, rows, sim, model, self.model, report, self.history,
                           final["metrics"], final["loss"], self.config)

    @classmethod
    def resume(cls, path: str | os.PathLike[str], model: SuperModel, tasks: Mapping[str, Task] | Sequence[Task],
               data: Any, config: MPNASConfig | None = None) -> MPNASSearcher:
        """A searcher restored from the checkpoint at ``path`` (``config`` defaults to the checkpoint's)."""
        from .checkpoint import load, saved_config

        state = load(path)
        searcher = cls(model, tasks, data, config if config is not None else saved_config(state, MPNASConfig))
        searcher.load_state_dict(state)
        return searcher


def mpnas(model: SuperModel, tasks: Mapping[str, Task] | Sequence[Task], data: Any,
          config: MPNASConfig | None = None, **overrides: Any) -> MPNASResult:
    """Run the whole MPNAS search and training; ``overrides`` replace fields of ``config``."""
    config = config if config is not None else MPNASConfig()
    if overrides:
        unknown = [k for k in overrides if k not in MPNASConfig.__dataclass_fields__]
        if unknown:
            raise ValueError(f"unknown MPNASConfig field(s) {unknown}")
        config = replace(config, **overrides)
    result = MPNASSearcher(model, tasks, data, config).run()
    assert result is not None
    return result

