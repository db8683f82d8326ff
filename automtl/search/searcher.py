"""The AutoMTL strategy on the one loop (DESIGN §5): warm-up, policy search, derivation, fine-tuning.

>>> result = search(model, tasks, dataset, SearchConfig(warmup_steps=200, search_iterations=500))
>>> result.architecture, result.model, result.metrics

Each stage is a method of :class:`Searcher` and can run alone; :func:`search` chains them. The
machinery (data, AMP, data parallelism, bars, checkpoints) is :class:`~automtl.search.loop.Loop`'s.
``Searcher.run(stop_after=k, checkpoint=path)`` stops after ``k`` steps and saves a checkpoint;
``Searcher.resume(path, model, tasks, data).run()`` goes on bit for bit (:mod:`automtl.search.checkpoint`).
The hyper-parameters, :class:`SearchConfig`, and the τ schedule live in :mod:`automtl.search.search_config`.

* warm-up: weights only; by default each step every task takes a uniformly random option at
  every node (``warmup_paths="sample"``), so each branch is trained alone and the specific
  branches (copies of the shared ones at the start) specialise to their task before the policy
  search compares them; ``"mix"`` is AutoMTL's uniform mixture, ending with ``fill_specific()``;
* policy search: alternately ``N`` weight steps on the *weights* split (Gumbel-softmax gates,
  gradients to the weights only) and ``M`` policy steps on the *policy* split (logits only,
  task losses + ``λ_policy ·`` sharing regularizer on the same Gumbel-softmax sample + budget
  penalty); τ decays by a factor every ``tau_interval`` policy steps; the policy's logit gaps and
  entropies are logged after every policy step (``history["policy"]``);
* derive: the argmax architecture, or the best on validation of the argmax and ``k`` samples;
  with a budget, then fitted to it (a spread policy's argmax can miss a budget its expected
  cost meets);
* fine-tune: the derived :class:`~automtl.model.derive.MultiTaskModel`, from the supermodel's weights
  or from scratch, on the weights and policy splits together.

Batches are ``(x, {task: y})`` (one input, many labels; a ``None`` label is masked) or
``{task: (x_t, y_t)}`` (one input per task). The loop is plain and deterministic on the CPU for
a given seed: the global torch RNG is seeded once by the :class:`Searcher`, every loader
shuffles with its own seeded generator.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from ..model.architecture import Architecture
from ..model.derive import MultiTaskModel, derive
from ..model.supermodel import SuperModel
from ..train.tasks import Task
from . import distributed as dist_utils
from .loop import Loop, Stage, epoch_end, tick
from .regularizers import (
    CostModel,
    budget_penalty,
    fit_to_budget,
    shared_columns,
    sharing_regularizer,
)
from .search_config import SearchConfig, temperature
from .streams import Chain, Stream, split_batch
from .trainer import Trainer, evaluate

__all__ = ["SearchConfig", "SearchResult", "Searcher", "evaluate", "search", "temperature"]


@dataclass
class SearchResult:
    """What :func:`search` returns: the architecture, the fine-tuned derived model and the logs.

    ``history`` has one list of records per stage (``warmup``, ``search``, ``derive``,
    ``finetune``) and ``val`` (validation losses and metrics at the end of every stage);
    ``metrics`` and ``losses`` are the final validation metrics and mean losses per task.
    """

    architecture: Architecture
    model: MultiTaskModel
    supermodel: SuperModel
    history: dict[str, list[dict[str, Any]]]
    metrics: dict[str, dict[str, float]]
    losses: dict[str, float]
    config: SearchConfig


class Searcher(Loop):
    """Runs the stages of the AutoMTL search on one SuperModel; each stage is a method that can run alone.

    ``data`` is one dataset, split by :func:`automtl.train.data.split_dataset` into (weights, policy,
    val) with ``config.split_fractions``, or a sequence of those three, each a ``Dataset`` or an
    iterable of ready batches (a ``DataLoader``). ``tasks`` maps every task of the model to its
    :class:`~automtl.train.tasks.Task` (or is a sequence of tasks, named by ``task.name``).
    """

    splits = ("weights", "policy", "val")

    def __init__(
        self,
        model: SuperModel,
        tasks: Mapping[str, Task] | Sequence[Task],
        data: Any,
        config: SearchConfig | None = None,
    ) -> None:
        config = config if config is not None else SearchConfig()
        if not isinstance(model, SuperModel):
            raise ValueError(f"model must be a SuperModel (automtl.build), not {type(model).__name__}")
        self.fractions = config.split_fractions
        super().__init__(model, tasks, data, config)
        self.config: SearchConfig = config
        self.model: SuperModel = model
        self.weights_data, self.policy_data, self.val_data = (self.data[s] for s in self.splits)
        self.loaders = {
            "weights": self.loader(self.weights_data, "weights", config.batch_size, True, 1),
            "policy": self.loader(self.policy_data, "policy", config.batch_size, True, 2),
            "val": self.loader(self.val_data, "val", config.eval_batch_size, False, 3),
        }
        self.multi_domain = isinstance(self.first_batch("weights"), Mapping)
        model.materialize()
        model.to(self.device)
        self.register("model", model)
        self.weighting = self.register("weighting", self.make_weighting())
        self.weight_opt = self.register("weight_opt", self.weight_optimizer(
            list(model.weight_parameters()) + list(self.weighting.parameters()), config.weight_lr))
        self.policy_opt = self.register("policy_opt", torch.optim.Adam(
            model.policy_parameters(), lr=config.policy_lr, weight_decay=config.policy_weight_decay))
        for name in ("weights", "policy"):
            self.make_scaler(name)
        self.cost = CostModel(model, config.budget_kind, self.multi_domain)
        self.depths = [c.depth for c in model.choices]
        self.shared_cols = shared_columns(model.choices)
        self.policy_step = 0
        self.weight_step = 0
        self.register_attributes("steps", ["weight_step", "policy_step"])
        self.streams = {k: self.register(f"stream_{k}", Stream(self.loaders[k], k)) for k in ("weights", "policy")}
        self.history = {s: [] for s in ("warmup", "search", "policy", "derive", "finetune", "val")}
        self.architecture: Architecture | None = None
        self.register("architecture", _ArchitectureState(self))
        self.derived: MultiTaskModel | None = None
        self.progress = {"stage": "warmup", "step": 0}

    def identity(self) -> dict[str, Any]:
        return {"backbone_digest": self.model.backbone_digest, "task_names": list(self.names)}

    def tau(self) -> float:
        """The current Gumbel-softmax temperature."""
        return temperature(self.policy_step, self.config)

    # --- steps ----------------------------------------------------------------------------------
    def _weight_step(self, stream: Stream, mode: str, stage: str) -> dict[str, Any] | None:
        """One optimiser step of the weights (and learnable loss weights) on one batch."""
        step = self.weight_step
        x, targets = split_batch(stream.next(), self.names, self.config.allow_missing, self.device)
        if stream.new_epoch:  # the previous pass over the weights split is complete (DWA)
            epoch_end(self.weighting)
        self.model.train()
        self.weighting.train()
        params = self.model.weight_parameters() + list(self.weighting.parameters())
        with self.only(params, self.weighting):
            with self.autocast():
                if mode == "warmup" and self.config.warmup_paths == "sample":
                    out = self.model(x, gates=self._uniform_path())
                else:
                    out = self.model(x, mode=mode, tau=self.tau())
                losses = self.task_losses(out, targets, step)
            self.weight_step += 1
            if all(v is None for v in losses.values()):
                return None
            total = self.backward_step(losses, self.weight_opt, params, scaler=self.scalers["weights"],
                                       model=self.model, stage=stage, step=step, weighting=self.weighting,
                                       shared=self._shared())
        return {"step": step, "loss": dist_utils.mean_losses(losses), "total": dist_utils.mean_scalar(total)}

    def _uniform_path(self) -> torch.Tensor:
        """One-hot gates of a uniformly random option per task and node (warm-up by sampled paths)."""
        policy = self.model.policy
        probs = (policy.mask / policy.mask.sum(-1, keepdim=True)).expand_as(policy.logits)
        pick = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).view(probs.shape[:-1])
        return policy.one_hot(pick.to(policy.logits.device))

    def _shared(self) -> list[torch.nn.Parameter]:
        heads = {id(p) for p in self.model.heads.parameters()}
        return [p for p in self.model.weight_parameters() if id(p) not in heads]

    def _policy_step(self, stream: Stream) -> dict[str, Any]:
        """One Adam step of the logits on one batch of the policy split, regularizers included."""
        c = self.config
        step = self.policy_step
        x, targets = split_batch(stream.next(), self.names, c.allow_missing, self.device)
        self.model.train()
        self.weighting.eval()  # policy losses do not feed epoch statistics (DWA)
        tau = self.tau()
        params = self.model.policy_parameters()
        with self.only(params, self.weighting):
            gates = self.model.policy.gates(c.policy_mode, tau)
            with self.autocast():
                out = self.model(x, gates=gates)
                losses = self.task_losses(out, targets, step)
            probs = self.model.policy.probabilities()
            # the sharing prior sees the same relaxed sample as the task losses (AutoMTL), so both
            # reach the logits through the Gumbel-softmax at temperature tau
            reg = (sharing_regularizer(gates, self.depths, c.sharpness, self.shared_cols, c.sharing_floor)
                   if self.model.choices
                   else probs.sum() * 0)
            if c.budget_target is not None:
                ratio = self.cost.ratio(probs)
                budget = budget_penalty(ratio, c.budget_target, c.budget_weight, c.budget_mode)
            else:
                with torch.no_grad():
                    ratio = self.cost.ratio(probs) if c.budget_kind == "params" else probs.new_zeros(())
                budget = probs.new_zeros(())
            present = [v for v in losses.values() if v is not None]
            # the logits see the weighted sum of the task losses (no gradient surgery on the policy)
            task_total = self.weighting.combine(losses, step=step) if present else probs.sum() * 0
            total = self.backward_step({}, self.policy_opt, params, scaler=self.scalers["policy"], model=self.model,
                                       stage="search", step=step, extra=task_total + c.lambda_policy * reg + budget,
                                       clip=False)
        self.policy_step += 1
        self._log_policy()
        return {"step": step, "tau": tau, "loss": dist_utils.mean_losses(losses),
                "total": dist_utils.mean_scalar(total), "sharing": float(reg.detach()),
                "budget": float(budget.detach()), "cost_ratio": float(ratio.detach())}

    @torch.no_grad()
    def _log_policy(self) -> None:
        """Per node and task: the gap between the two largest logits and the policy's entropy (nats).

        A gap near 0 with an entropy near log(K) is a node still undecided; ``automtl show`` draws both.
        """
        policy = self.model.policy
        logits = policy.logits.masked_fill(~policy.mask, float("-inf"))
        top = logits.topk(min(2, logits.shape[-1]), dim=-1).values
        gap = (top[..., 0] - top[..., 1]) if top.shape[-1] > 1 else torch.zeros_like(top[..., 0])
        nodes, tasks = [c.node for c in self.model.choices], self.names

        def table(t: torch.Tensor) -> dict[str, dict[str, float]]:
            t = t.detach().cpu()
            return {n: {task: round(float(t[i, c]), 5) for i, task in enumerate(tasks)} for c, n in enumerate(nodes)}

        self.log("policy", {"step": self.policy_step, "gap": table(gap), "entropy": table(policy.entropy())})

    # --- stages ---------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        c = self.config
        return [
            Stage("warmup", c.warmup_steps, lambda a, b: self._warmup(a, b, c.warmup_steps),
                  end=lambda: self.record_val("warmup", self.weight_step, self._validate_warmup())),
            Stage("search", c.search_iterations * self._steps_per_iter(),
                  lambda a, b: self._search(a, b, c.search_iterations)),
        ]

    def _validate_warmup(self) -> dict[str, Any]:
        """After warm-up: the uniform mixture it trained ("mix"), or the all-shared path ("sample")."""
        if self.config.warmup_paths == "mix":
            return self.validate(self.model, mode="warmup")
        return self.validate(self.model, self.model.uniform_architecture("shared"))

    def warmup(self, steps: int | None = None) -> list[dict[str, Any]]:
        """Train the weights with every branch mixed uniformly, then copy shared into specific."""
        steps = self.config.warmup_steps if steps is None else steps
        self._warmup(0, steps, steps)
        return self.history["warmup"]

    def _warmup(self, start: int, stop: int, steps: int) -> None:
        """Warm-up steps ``start .. stop - 1`` of ``steps``; the last one also fills the specific branches."""
        bar = self.stage_bar("warmup", steps, "warm-up", start)
        if start == 0 and stop > 0:
            self.model.fill_specific()  # specific branches are trained from the start, as copies of shared
        for i in range(start, stop):
            rec = self._weight_step(self.streams["weights"], "warmup", "warmup")
            if rec is not None:
                self.log("warmup", rec)
            self._maybe_validate("warmup", i, steps, mode="warmup")
            tick(bar, rec)
        if stop == steps:
            self.end_bar("warmup")

    def search(self, iterations: int | None = None) -> list[dict[str, Any]]:
        """Alternate N weight steps (weights split) and M policy steps (policy split), annealing τ."""
        iterations = self.config.search_iterations if iterations is None else iterations
        self._search(0, iterations * self._steps_per_iter(), iterations)
        return self.history["search"]

    def _steps_per_iter(self) -> int:
        return self.config.weight_steps_per_iter + self.config.policy_steps_per_iter

    def _search(self, start: int, stop: int, iterations: int) -> None:
        """Search steps ``start .. stop - 1`` (weight and policy steps counted alike) of ``iterations`` rounds."""
        c = self.config
        mixed = self.model.mixed_modules()
        if mixed and not bool(mixed[0].filled):
            self.model.fill_specific()  # searching without warm-up: specific branches start as copies
        per = self._steps_per_iter()
        if per == 0:  # nothing to train; validate as the rounds would
            for i in range(iterations):
                self._maybe_validate("search", i, iterations, mode="fixed")
            return
        bar = self.stage_bar("search", iterations, "search", start // per)
        rec = None
        for u in range(start, stop):
            i, j = divmod(u, per)
            if j == 0:
                rec = None
            if j < c.weight_steps_per_iter:
                rec = self._weight_step(self.streams["weights"], c.search_mode, "search")
                if rec is not None:
                    self.log("search", {"iteration": i, "phase": "weights", "tau": self.tau(), **rec})
            else:
                rec = self._policy_step(self.streams["policy"])
                self.log("search", {"iteration": i, "phase": "policy", **rec})
            if j == per - 1:
                self._maybe_validate("search", i, iterations, mode="fixed")
                tick(bar, rec, self.tau())
        if stop == iterations * per:
            self.end_bar("search")

    def derive(self, method: str | None = None, k: int | None = None) -> Architecture:
        """The searched architecture: ``argmax`` of the policy, or the best on validation of the argmax
        and ``k`` sampled candidates (``sample``; candidates over the budget are dropped first).

        With a budget, the choice is then fitted to it (:func:`~automtl.search.regularizers.fit_to_budget`):
        brought under the target (``budget_mode="max"``), or as close below it as single switches
        allow (``"target"``), giving up the least policy probability per unit of cost.
        """
        c = self.config
        method = c.derive if method is None else method
        k = c.sample_k if k is None else k
        if method not in ("argmax", "sample"):
            raise ValueError(f"derive method must be 'argmax' or 'sample', not {method!r}")
        best = self.model.architecture()
        with torch.no_grad():
            probs = self.model.policy.probabilities().detach().cpu()
        if method == "sample":
            gen = torch.Generator().manual_seed(c.seed * 1000 + 7)
            cands = [best]
            flat = probs.reshape(-1, probs.shape[-1])
            for _ in range(k):
                pick = torch.multinomial(flat, 1, generator=gen).view(probs.shape[:-1])
                arch = self.model.architecture_from_indices(pick)
                if all(arch.choices != other.choices for other in cands):
                    cands.append(arch)
            scored = []
            for arch in cands:
                ratio = float(self.cost.ratio(self._one_hot(arch)))
                within = c.budget_target is None or ratio <= c.budget_target
                ev = evaluate(self.model, self.tasks, self.loaders["val"], architecture=arch,
                              max_batches=c.eval_batches, device=self.device)
                scored.append((not within, ev["total"], len(scored), arch, ratio))
                self.log("derive", {"candidate": len(scored) - 1, "val_loss": ev["total"], "cost_ratio": ratio,
                                     "within_budget": within, "shared_fraction": arch.shared_fraction()})
            best = min(scored, key=lambda s: s[:3])[3]
        ratio = float(self.cost.ratio(self._one_hot(best)))
        record: dict[str, Any] = {"method": method, "unfitted_cost_ratio": ratio,
                                  "expected_cost_ratio": float(self.cost.ratio(probs.double()))}
        if c.budget_target is not None and self.model.choices:
            pick = fit_to_budget(probs, self.model.architecture_tensor(best), self._pick_ratio, c.budget_target,
                                 fill=c.budget_mode == "target")
            best = self.model.architecture_from_indices(pick)
            ratio = self._pick_ratio(pick)
        self.log("derive", {**record, "chosen": best.to_dict(), "cost_ratio": ratio,
                             "shared_fraction": best.shared_fraction()})
        self.architecture = best
        return best

    @property
    def _options(self) -> int:
        return self.model.policy.logits.shape[-1]

    def _one_hot(self, arch: Architecture) -> torch.Tensor:
        return torch.nn.functional.one_hot(self.model.architecture_tensor(arch), self._options).double()

    def _pick_ratio(self, pick: torch.Tensor) -> float:
        """Cost ratio of the architecture with option indices ``pick`` ``(T, V)`` (exact for params)."""
        with torch.no_grad():
            return float(self.cost.ratio(torch.nn.functional.one_hot(pick, self._options).double()))

    def build_derived(self, architecture: Architecture | None = None, from_: str | None = None) -> MultiTaskModel:
        """The derived model of ``architecture`` (default: the searched one), with the supermodel's
        weights or freshly initialised ones (``from_="scratch"``)."""
        arch = architecture if architecture is not None else (self.architecture or self.derive())
        from_ = self.config.finetune_from if from_ is None else from_
        if from_ not in ("supermodel", "scratch"):
            raise ValueError(f"finetune_from must be 'supermodel' or 'scratch', not {from_!r}")
        model = derive(self.model, arch, multi_domain=self.multi_domain).to(self.device)
        if from_ == "scratch":
            torch.manual_seed(self.config.seed + 1)
            for m in model.modules():
                if m is not model and callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()
        return model

    def finetune(self, architecture: Architecture | None = None, steps: int | None = None,
                 from_: str | None = None) -> MultiTaskModel:
        """Train the derived model of ``architecture`` on the weights and policy splits together
        (a :class:`~automtl.search.trainer.Trainer` sharing this search's records and sinks).

        The history of this call replaces ``history["finetune"]``; the model is also kept as
        ``self.derived`` when ``architecture`` is the searched one.
        """
        c = self.config
        steps = c.finetune_steps if steps is None else steps
        searched = architecture is None
        model = self.build_derived(architecture, from_)
        trainer = Trainer(model, self.tasks, (self._train_source(), self.val_data), c, lr=c.finetune_lr or c.weight_lr,
                          stage="finetune", val_loader=self.loaders["val"], seed_rng=False)
        trainer.history, trainer.sinks = self.history, self.sinks
        trainer.train(steps)
        if searched:
            self.derived = model
        return model

    def _train_source(self) -> Any:
        w, p = self.weights_data, self.policy_data
        if isinstance(w, Dataset) and isinstance(p, Dataset):
            return ConcatDataset([w, p])
        return Chain([self.loaders["weights"], self.loaders["policy"]])

    def validate(self, model: torch.nn.Module | None = None, architecture: Architecture | None = None,
                 mode: str = "fixed") -> dict[str, Any]:
        """Validation losses and metrics of ``model`` (default: the fine-tuned model, else the
        supermodel in ``mode``, at ``architecture`` or its argmax when fixed)."""
        target = model if model is not None else (self.derived if self.derived is not None else self.model)
        return evaluate(target, self.tasks, self.loaders["val"], architecture=architecture, mode=mode,
                        max_batches=self.config.eval_batches, device=self.device)

    def run(self, stop_after: int | None = None, checkpoint: str | os.PathLike[str] | None = None,
            checkpoint_every: int = 0) -> SearchResult | None:
        """Warm-up, search, derive and fine-tune, then validate the fine-tuned model.

        The run continues from ``self.progress`` (a fresh searcher: the start; a resumed one: where
        its checkpoint stopped). With ``stop_after=k`` it stops once ``k`` steps of warm-up and
        search are done in all (weight and policy steps alike, counted from the very start), saves
        a checkpoint to ``checkpoint`` when given and returns ``None``; :meth:`resume` continues it.
        With ``checkpoint_every=n`` (and ``checkpoint``) it also saves every ``n`` such steps.
        """
        if not self.run_stages(stop_after, checkpoint, checkpoint_every if checkpoint is not None else 0):
            return None
        arch = self.derive()
        self.record_val("search", self.policy_step, self.validate(self.model, arch))
        model = self.finetune()
        final = self.validate(model)
        self.record_val("finetune", self.config.finetune_steps, final)
        self.progress = {"stage": "done", "step": 0}
        return SearchResult(arch, model, self.model, self.history, final["metrics"], final["loss"], self.config)

    @classmethod
    def resume(cls, path: str | os.PathLike[str], model: SuperModel, tasks: Mapping[str, Task] | Sequence[Task],
               data: Any, config: SearchConfig | None = None) -> Searcher:
        """A searcher on ``model``/``tasks``/``data`` restored from the checkpoint at ``path``.

        ``config`` defaults to the checkpoint's; a given one must match it (but for ``quiet``,
        ``device`` and ``num_workers``). Call :meth:`run` to continue.
        """
        from .checkpoint import load, saved_config

        state = load(path)
        searcher = cls(model, tasks, data, config if config is not None else saved_config(state, SearchConfig))
        searcher.load_state_dict(state)
        return searcher

    # --- logging --------------------------------------------------------------------------------
    def _maybe_validate(self, stage: str, i: int, total: int, mode: str) -> None:
        every = self.config.eval_every
        if every and (i + 1) % every == 0 and i + 1 < total:
            arch = self.model.architecture() if mode == "fixed" else None
            ev = evaluate(self.model, self.tasks, self.loaders["val"], architecture=arch, mode=mode,
                          max_batches=self.config.eval_batches, device=self.device)
            self.record_val(stage, i, ev)


class _ArchitectureState:
    """The searched architecture (or None) as checkpointed state; a resumed run has no derived model yet."""

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher

    def state_dict(self) -> dict[str, Any]:
        arch = self.searcher.architecture
        return {"architecture": arch.to_dict() if arch is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        arch = state["architecture"]
        self.searcher.architecture = Architecture.from_dict(arch) if arch is not None else None
        self.searcher.derived = None


def search(
    model: SuperModel,
    tasks: Mapping[str, Task] | Sequence[Task],
    data: Any,
    config: SearchConfig | None = None,
    **overrides: Any,
) -> SearchResult:
    """Run the whole search (warm-up, policy search, derive, fine-tune) and return a :class:`SearchResult`.

    ``overrides`` replace fields of ``config`` (``search(m, tasks, ds, warmup_steps=10)``).
    """
    config = config if config is not None else SearchConfig()
    if overrides:
        unknown = [k for k in overrides if k not in SearchConfig.__dataclass_fields__]
        if unknown:
            raise ValueError(f"unknown SearchConfig field(s) {unknown}")
        config = SearchConfig(**{**config.to_dict(), **overrides})
    return Searcher(model, tasks, data, config).run()
