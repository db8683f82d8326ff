"""The search runtime (DESIGN §5): warm-up, policy search, derivation and fine-tuning.

>>> result = search(model, tasks, dataset, SearchConfig(warmup_steps=200, search_iterations=500))
>>> result.architecture, result.model, result.metrics

Each stage is a method of :class:`Searcher` and can run alone; :func:`search` chains them.
``Searcher.run(stop_after=k, checkpoint=path)`` stops after ``k`` steps and saves a checkpoint;
``Searcher.resume(path, model, tasks, data).run()`` goes on bit for bit (:mod:`automtl.search.checkpoint`).

* warm-up: weights only, every branch mixed uniformly (``mode="warmup"``); ends with
  ``model.fill_specific()`` so every task's specific branch starts from the trained shared one;
* policy search: alternately ``N`` weight steps on the *weights* split (Gumbel-softmax gates,
  gradients to the weights only) and ``M`` policy steps on the *policy* split (logits only,
  task losses + ``λ_policy ·`` sharing regularizer + budget penalty); τ decays by a factor every
  ``tau_interval`` policy steps;
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

import contextlib
import copy
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, ConcatDataset, DataLoader, Dataset, RandomSampler

from ..model.architecture import Architecture
from ..model.derive import MultiTaskModel, derive
from ..model.supermodel import SuperModel
from ..train.data import make_collate, split_dataset
from ..train.tasks import Task, check_finite
from ..train.weighting import Weighting, get_weighting
from . import distributed as dist_utils
from .regularizers import (
    BUDGET_MODES,
    COST_KINDS,
    CostModel,
    budget_penalty,
    fit_to_budget,
    shared_columns,
    sharing_regularizer,
)

__all__ = ["SearchConfig", "SearchResult", "Searcher", "evaluate", "search", "temperature"]

_SPLITS = ("weights", "policy", "val")


@dataclass
class SearchConfig:
    """Every hyper-parameter of the search, with AutoMTL's defaults where the paper gives one."""

    # stage lengths, in optimiser steps
    warmup_steps: int = 200
    search_iterations: int = 500  # rounds of (weight_steps_per_iter, policy_steps_per_iter)
    weight_steps_per_iter: int = 1  # N
    policy_steps_per_iter: int = 1  # M
    finetune_steps: int = 500
    batch_size: int = 16
    eval_batch_size: int = 64
    eval_batches: int | None = None  # validation batches per evaluation (None: the whole split)
    eval_every: int = 0  # also validate every this many steps of a stage (0: at its end only)
    # weight optimiser (warm-up, weight steps, fine-tune)
    weight_optimizer: str = "adam"  # "adam" or "sgd"
    weight_lr: float = 1e-3
    weight_momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    finetune_lr: float | None = None  # None: weight_lr
    grad_clip: float | None = None  # max gradient norm of the weights, None: no clipping
    # policy optimiser (Adam on the logits)
    policy_lr: float = 1e-2
    policy_weight_decay: float = 0.0
    # Gumbel-softmax temperature: tau_start * tau_decay ** (policy_step // tau_interval), >= tau_min
    tau_start: float = 5.0
    tau_decay: float = 0.965
    tau_interval: int = 100
    tau_min: float = 0.0
    search_mode: str = "soft"  # gates of the weight steps: "soft" or "hard" (straight-through)
    policy_mode: str = "soft"  # gates of the policy steps
    # regularizers
    lambda_policy: float = 5e-4
    sharpness: float = 6.0
    budget_target: float | None = None  # fraction of T separate backbones, in (0, 1]
    budget_kind: str = "params"  # "params" or "flops"
    budget_weight: float = 1.0
    budget_mode: str = "max"  # "max": penalise above the target; "target": penalise any distance to it
    # derivation and fine-tuning
    derive: str = "argmax"  # "argmax" or "sample"
    sample_k: int = 8
    finetune_from: str = "supermodel"  # "supermodel" or "scratch"
    # losses and data
    weighting: str = "equal"
    weighting_kwargs: dict[str, Any] = field(default_factory=dict)
    split_fractions: tuple[float, float, float] = (0.4, 0.4, 0.2)
    allow_missing: bool = True  # a batch without a task's label skips that task (else ValueError)
    num_workers: int = 0
    # run
    seed: int = 0
    device: str = "cpu"
    amp: str | None = None  # mixed precision: None, "bf16" (CPU or CUDA) or "fp16" (CUDA, with a grad scaler)
    quiet: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"SearchConfig.{name} must be {want}, got {getattr(self, name)!r}")

        for name in ("warmup_steps", "search_iterations", "weight_steps_per_iter", "policy_steps_per_iter",
                     "finetune_steps", "eval_every", "num_workers", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(name, "an int >= 0")
        for name in ("batch_size", "eval_batch_size", "tau_interval", "sample_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, "an int >= 1")
        if self.eval_batches is not None and (not isinstance(self.eval_batches, int) or self.eval_batches < 1):
            raise bad("eval_batches", "None or an int >= 1")
        for name in ("weight_lr", "policy_lr", "tau_start"):
            if not _positive(getattr(self, name)):
                raise bad(name, "a finite number > 0")
        if self.finetune_lr is not None and not _positive(self.finetune_lr):
            raise bad("finetune_lr", "None or a finite number > 0")
        if self.grad_clip is not None and not _positive(self.grad_clip):
            raise bad("grad_clip", "None or a finite number > 0")
        for name in ("weight_momentum", "weight_decay", "policy_weight_decay", "lambda_policy", "sharpness",
                     "budget_weight", "tau_min"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise bad(name, "a finite number >= 0")
        if not (isinstance(self.tau_decay, int | float) and 0 < self.tau_decay <= 1):
            raise bad("tau_decay", "a number in (0, 1]")
        if self.budget_target is not None:
            t = self.budget_target
            if isinstance(t, bool) or not isinstance(t, int | float) or not (0 < t <= 1):
                raise bad("budget_target", "None or a fraction in (0, 1] of T separate backbones")
        choices = {
            "weight_optimizer": ("adam", "sgd"), "search_mode": ("soft", "hard"), "policy_mode": ("soft", "hard"),
            "budget_kind": COST_KINDS, "budget_mode": BUDGET_MODES, "derive": ("argmax", "sample"),
            "finetune_from": ("supermodel", "scratch"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise bad(name, f"one of {allowed}")
        fr = self.split_fractions
        if len(fr) != 3:
            raise bad("split_fractions", "three fractions (weights, policy, val)")
        if not isinstance(self.device, str | torch.device):
            raise bad("device", "a device string such as 'cpu' or 'cuda'")
        if self.amp not in (None, "bf16", "fp16"):
            raise bad("amp", "None, 'bf16' or 'fp16'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v) and v > 0


def temperature(policy_step: int, config: SearchConfig) -> float:
    """τ after ``policy_step`` policy steps: ``max(tau_min, tau_start · tau_decay^(step // tau_interval))``."""
    return max(config.tau_min, config.tau_start * config.tau_decay ** (policy_step // config.tau_interval))


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


# --- data ---------------------------------------------------------------------------------------


class _Stream:
    """An endless iterator over a loader; ``new_epoch`` is set when a batch starts a new pass.

    It counts the batches consumed in the current pass (``pos``) and keeps the loader's generator
    state from the start of the pass, so :meth:`state` / :meth:`restore` resume the exact order.
    """

    def __init__(self, source: Iterable[Any], name: str) -> None:
        self.source, self.name, self.epoch = source, name, 0
        self.new_epoch = False
        self.pos = 0
        self._start: torch.Tensor | None = None  # generator state when the current pass began
        self._it: Iterator[Any] | None = None

    def _generator(self) -> torch.Generator | None:
        g = getattr(self.source, "generator", None)
        return g if isinstance(g, torch.Generator) else None

    def next(self) -> Any:
        self.new_epoch = False
        for _ in range(2):
            if self._it is None:
                g = self._generator()
                self._start = g.get_state() if g is not None else None
                self._it = iter(self.source)
                self.pos = 0
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1
                self.new_epoch = True
            else:
                self.pos += 1
                return batch
        raise ValueError(f"data: the '{self.name}' split yielded no batch")

    def state(self) -> dict[str, Any]:
        """Epoch, position in the pass and generator states (at the pass start and now)."""
        g = self._generator()
        return {"epoch": self.epoch, "pos": self.pos, "active": self._it is not None, "start": self._start,
                "now": g.get_state() if g is not None else None}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Re-open the saved pass and skip the ``pos`` batches it had already consumed."""
        g = self._generator()
        self.epoch, self.new_epoch, self._it, self.pos = int(state["epoch"]), False, None, 0
        if state["active"]:
            if g is not None and state["start"] is not None:
                g.set_state(state["start"])
            self._start = state["start"]
            self._it = iter(self.source)
            for _ in range(int(state["pos"])):
                try:
                    next(self._it)
                except StopIteration:
                    raise ValueError(f"checkpoint: the '{self.name}' split has fewer batches than the saved "
                                     f"position {state['pos']} (was the data changed?)") from None
                self.pos += 1
        if g is not None and state["now"] is not None:
            g.set_state(state["now"])


def _is_item(obj: Any) -> bool:
    """Whether ``obj`` looks like one sample (so its container is a dataset, not three splits)."""
    return isinstance(obj, Mapping) or (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], Mapping))


def _length(source: Any) -> int | None:
    try:
        return len(source)
    except TypeError:
        return None


# --- evaluation ---------------------------------------------------------------------------------


def _outputs(model: nn.Module, x: Any, names: Sequence[str], **kwargs: Any) -> dict[str, torch.Tensor]:
    """``{task: output}`` of a SuperModel or a MultiTaskModel, for one input or one per task."""
    if isinstance(model, SuperModel):
        return model(x, **kwargs)
    if isinstance(x, Mapping):
        outs = model(*[x[t] for t in names])
    else:
        outs = model(x)
    if isinstance(outs, Mapping):
        return dict(outs)
    return dict(zip(names, outs, strict=True))


def _split_batch(batch: Any, names: Sequence[str], allow_missing: bool, device: torch.device
                 ) -> tuple[Any, dict[str, torch.Tensor | None]]:
    """``(inputs, {task: target or None})`` of either batch form, on ``device``."""
    if isinstance(batch, Mapping):
        missing = [t for t in names if t not in batch]
        if missing:
            raise ValueError(f"task '{missing[0]}': input: the multi-domain batch has no entry for this task "
                             f"(it has {list(batch)})")
        xs, ys = {}, {}
        for t in names:
            item = batch[t]
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise ValueError(f"task '{t}': batch: expected (x_t, y_t), got {type(item).__name__}")
            xs[t], ys[t] = item[0].to(device), item[1]
        x: Any = xs
    elif isinstance(batch, tuple | list) and len(batch) == 2 and isinstance(batch[1], Mapping):
        x, ys = batch[0].to(device), dict(batch[1])
    else:
        raise ValueError("a batch must be (x, {task: y}) or {task: (x_t, y_t)}, got " + type(batch).__name__)
    targets: dict[str, torch.Tensor | None] = {}
    for t in names:
        y = ys.get(t)
        if y is None and not allow_missing:
            raise ValueError(f"task '{t}': target: the batch has no label for this task and allow_missing=False")
        targets[t] = y.to(device) if isinstance(y, torch.Tensor) else y
    return x, targets


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tasks: Mapping[str, Task],
    data: Iterable[Any],
    *,
    architecture: Architecture | None = None,
    mode: str = "fixed",
    max_batches: int | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Mean loss and exact metrics per task of a SuperModel (``mode``, default ``fixed`` at
    ``architecture``) or a MultiTaskModel over ``data``, in eval mode.

    Returns ``{"loss": {task: mean of batch losses}, "metrics": {task: {...}}, "total": Σ losses}``.
    """
    names = list(tasks)
    if isinstance(model, SuperModel):
        if mode == "fixed" and architecture is None:
            architecture = model.architecture()
        kwargs: dict[str, Any] = {"mode": mode, "architecture": architecture if mode == "fixed" else None}
    else:
        kwargs = {}
    was = model.training
    model.eval()
    acc = {t: tasks[t].metric_state() for t in names}
    sums = dict.fromkeys(names, 0.0)
    counts = dict.fromkeys(names, 0)
    dev = torch.device(device)
    try:
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            x, targets = _split_batch(batch, names, True, dev)
            out = _outputs(model, x, names, **kwargs)
            for t in names:
                loss = tasks[t].loss(out[t], targets[t])
                if loss is None:
                    continue
                sums[t] += float(loss)
                counts[t] += 1
                tasks[t].update(acc[t], out[t], targets[t])
    finally:
        model.train(was)
    losses = {t: sums[t] / counts[t] if counts[t] else float("nan") for t in names}
    return {
        "loss": losses,
        "metrics": {t: tasks[t].compute(acc[t]) for t in names},
        "total": sum(v for v in losses.values() if not math.isnan(v)),
    }


# --- the searcher -------------------------------------------------------------------------------


class Searcher:
    """Runs the stages of the search on one SuperModel; each stage is a method that can run alone.

    ``data`` is one dataset, split by :func:`automtl.train.data.split_dataset` into (weights, policy,
    val) with ``config.split_fractions``, or a sequence of those three, each a ``Dataset`` or an
    iterable of ready batches (a ``DataLoader``). ``tasks`` maps every task of the model to its
    :class:`~automtl.train.tasks.Task` (or is a sequence of tasks, named by ``task.name``).
    """

    def __init__(
        self,
        model: SuperModel,
        tasks: Mapping[str, Task] | Sequence[Task],
        data: Any,
        config: SearchConfig | None = None,
    ) -> None:
        self.config = config = config if config is not None else SearchConfig()
        if not isinstance(model, SuperModel):
            raise ValueError(f"model must be a SuperModel (automtl.build), not {type(model).__name__}")
        self.model = model
        self.names = list(model.task_names)
        self.tasks = self._check_tasks(tasks)
        self.rank, self.world = dist_utils.rank_and_world()
        self.device = dist_utils.local_device(config.device, self.world)
        if self.world > 1 and config.batch_size % self.world:
            raise ValueError(f"SearchConfig.batch_size {config.batch_size} must be divisible by the {self.world} "
                             "processes: each takes an equal share of every batch")
        torch.manual_seed(config.seed)
        self.weights_data, self.policy_data, self.val_data = self._splits(data)
        self.loaders = {
            "weights": self._loader(self.weights_data, "weights", config.batch_size, True, 1),
            "policy": self._loader(self.policy_data, "policy", config.batch_size, True, 2),
            "val": self._loader(self.val_data, "val", config.eval_batch_size, False, 3),
        }
        self.multi_domain = isinstance(self._first_batch(), Mapping)
        model.materialize()
        model.to(self.device)
        self.weighting = self._make_weighting()
        self.weight_opt = self._weight_optimizer(list(model.weight_parameters()) + list(self.weighting.parameters()),
                                                 config.weight_lr)
        self.policy_opt = torch.optim.Adam(model.policy_parameters(), lr=config.policy_lr,
                                           weight_decay=config.policy_weight_decay)
        self.cost = CostModel(model, config.budget_kind, self.multi_domain)
        self.depths = [c.depth for c in model.choices]
        self.shared_cols = shared_columns(model.choices)
        self.scalers = {k: _scaler(config.amp, self.device) for k in ("weights", "policy")}
        self.sinks: list[Any] = []  # callables (stage, record) -> None, given every record as it is logged
        self._bars: dict[str, Any] = {}  # the open progress bar of each stage
        self.policy_step = 0
        self.weight_step = 0
        self.streams = {k: _Stream(v, k) for k, v in self.loaders.items() if k != "val"}
        self.history: dict[str, list[dict[str, Any]]] = {s: [] for s in ("warmup", "search", "derive", "finetune",
                                                                           "val")}
        self.architecture: Architecture | None = None
        self.derived: MultiTaskModel | None = None
        self.progress: dict[str, Any] = {"stage": "warmup", "step": 0}  # where run() goes on

    # --- checks and set-up ----------------------------------------------------------------------
    def _check_tasks(self, tasks: Any) -> dict[str, Task]:
        if isinstance(tasks, Mapping):
            given = dict(tasks)
        elif isinstance(tasks, Sequence) and not isinstance(tasks, str):
            given = {getattr(t, "name", None): t for t in tasks}
        else:
            raise ValueError(f"tasks must map task names to Task objects, not {type(tasks).__name__}")
        for name in self.names:
            if name not in given:
                raise ValueError(f"task '{name}': loss: the model has a head for this task but no Task (with its "
                                 f"loss) was given; given: {list(given)}")
            for attr in ("loss", "metric_state", "update", "compute"):
                if not callable(getattr(given[name], attr, None)):
                    raise ValueError(f"task '{name}': {attr}: the task object {type(given[name]).__name__} has no "
                                     f"{attr}() (use an automtl.train.tasks.Task)")
        extra = [t for t in given if t not in self.names]
        if extra:
            raise ValueError(f"task '{extra[0]}': no head: the model's tasks are {self.names}")
        return {t: given[t] for t in self.names}

    def _splits(self, data: Any) -> tuple[Any, Any, Any]:
        if isinstance(data, tuple | list) and len(data) == 3 and not any(_is_item(p) for p in data):
            for name, part in zip(_SPLITS, data, strict=True):
                if part is None or _length(part) == 0:
                    raise ValueError(f"data: the '{name}' split is empty")
            return tuple(data)  # type: ignore[return-value]
        n = _length(data)
        if n is None:
            raise ValueError("data must be a dataset (split into weights/policy/val) or a (weights, policy, val) "
                             f"sequence, not {type(data).__name__}")
        if n == 0:
            raise ValueError("data: the dataset is empty")
        return split_dataset(data, self.config.split_fractions, seed=self.config.seed)

    def _loader(self, part: Any, name: str, batch: int, shuffle: bool, offset: int) -> Iterable[Any]:
        if not isinstance(part, Dataset):
            return part if not shuffle or self.world == 1 else dist_utils.ShardedBatches(part, self.rank, self.world)
        n = _length(part)
        if n == 0:
            raise ValueError(f"data: the '{name}' split is empty")
        ignore = {}
        for t, task in self.tasks.items():
            with contextlib.suppress(NotImplementedError, AttributeError):
                ignore[t] = task.missing_value
        gen = torch.Generator().manual_seed(self.config.seed * 1000 + offset)
        drop_last = shuffle and n is not None and n > batch
        collate, workers = make_collate(ignore), self.config.num_workers
        if self.world == 1 or not shuffle:  # validation: every process sees the whole split
            return DataLoader(part, batch_size=batch, shuffle=shuffle, generator=gen, collate_fn=collate,
                              drop_last=drop_last, num_workers=workers)
        # the batches of the 1-process run, in the same order; each process loads its share of each
        batches = BatchSampler(RandomSampler(part, generator=gen), batch, drop_last)
        batches = dist_utils.ShardedSampler(batches, self.rank, self.world)
        return DataLoader(part, batch_sampler=batches, generator=gen, collate_fn=collate, num_workers=workers)

    def _first_batch(self) -> Any:
        for batch in self.loaders["weights"]:
            return batch
        raise ValueError("data: the 'weights' split yielded no batch")

    def _make_weighting(self) -> Weighting:
        return get_weighting(self.config.weighting, self.names, **self.config.weighting_kwargs).to(self.device)

    def _weight_optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        c = self.config
        if c.weight_optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=c.weight_momentum, weight_decay=c.weight_decay)
        return torch.optim.Adam(params, lr=lr, weight_decay=c.weight_decay)

    def _stage_bar(self, stage: str, total: int, desc: str, initial: int) -> Any:
        """The stage's progress bar, kept open across the checkpoints of one :meth:`run`."""
        if stage not in self._bars:
            self._bars[stage] = self._bar(total, desc, initial)
        return self._bars[stage]

    def _end_bar(self, stage: str | None = None) -> None:
        """Close the stage's bar (every open bar when ``stage`` is None)."""
        for key in [stage] if stage is not None else list(self._bars):
            _close(self._bars.pop(key, None))

    def _bar(self, total: int, desc: str, initial: int = 0) -> Any:
        if self.config.quiet or total == 0 or self.rank != 0:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=total, desc=desc, leave=False, initial=initial)

    # --- steps ----------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for the forward and the losses when ``config.amp`` is set."""
        amp = self.config.amp
        if amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def _backward_step(self, total: torch.Tensor, opt: torch.optim.Optimizer, params: Sequence[nn.Parameter],
                       scaler: Any, clip: bool, model: nn.Module) -> None:
        """Backward, average the gradients over the processes, clip, step (through the grad scaler);
        then ``model``'s buffers are process 0's in every process."""
        opt.zero_grad(set_to_none=True)
        (scaler.scale(total) if scaler is not None else total).backward()
        if self.world > 1:
            dist_utils.average_gradients(params)
        if scaler is not None:
            scaler.unscale_(opt)
        if clip and self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if self.world > 1:
            dist_utils.broadcast_buffers(model)

    def _log(self, stage: str, record: dict[str, Any], log: list[dict[str, Any]] | None = None) -> None:
        """Append ``record`` to the stage's history (or ``log``) and hand it to every sink."""
        (self.history[stage] if log is None else log).append(record)
        for sink in self.sinks:
            sink(stage, record)

    def tau(self) -> float:
        """The current Gumbel-softmax temperature."""
        return temperature(self.policy_step, self.config)

    def _task_losses(self, out: Mapping[str, torch.Tensor], targets: Mapping[str, Any],
                     step: int) -> dict[str, torch.Tensor | None]:
        losses: dict[str, torch.Tensor | None] = {}
        for t in self.names:
            loss = self.tasks[t].loss(out[t], targets[t])
            if loss is not None:
                check_finite(t, loss, step)
            losses[t] = loss
        return losses

    @contextlib.contextmanager
    def _only(self, trainable: Sequence[nn.Parameter]) -> Iterator[None]:
        """Gradients for ``trainable`` only: the other parameters are frozen for the step."""
        keep = {id(p) for p in trainable}
        frozen = [p for p in list(self.model.parameters()) + list(self.weighting.parameters())
                  if id(p) not in keep and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def _weight_step(self, stream: _Stream, mode: str) -> dict[str, Any] | None:
        """One optimiser step of the weights (and learnable loss weights) on one batch."""
        step = self.weight_step
        x, targets = _split_batch(stream.next(), self.names, self.config.allow_missing, self.device)
        if stream.new_epoch:  # the previous pass over the weights split is complete (DWA)
            _epoch_end(self.weighting)
        self.model.train()
        self.weighting.train()
        params = self.model.weight_parameters() + list(self.weighting.parameters())
        with self._only(params):
            with self._autocast():
                out = self.model(x, mode=mode, tau=self.tau())
                losses = self._task_losses(out, targets, step)
            self.weight_step += 1
            if all(v is None for v in losses.values()):
                return None
            total = self.weighting.combine(losses, step=step)
            self._backward_step(total, self.weight_opt, params, self.scalers["weights"], clip=True, model=self.model)
        return {"step": step, "loss": dist_utils.mean_losses(losses), "total": dist_utils.mean_scalar(total)}

    def _policy_step(self, stream: _Stream) -> dict[str, Any]:
        """One Adam step of the logits on one batch of the policy split, regularizers included."""
        c = self.config
        step = self.policy_step
        x, targets = _split_batch(stream.next(), self.names, c.allow_missing, self.device)
        self.model.train()
        self.weighting.eval()  # policy losses do not feed epoch statistics (DWA)
        tau = self.tau()
        params = self.model.policy_parameters()
        with self._only(params):
            with self._autocast():
                out = self.model(x, mode=c.policy_mode, tau=tau)
                losses = self._task_losses(out, targets, step)
            probs = self.model.policy.probabilities()
            reg = (sharing_regularizer(probs, self.depths, c.sharpness, self.shared_cols) if self.model.choices
                   else probs.sum() * 0)
            if c.budget_target is not None:
                ratio = self.cost.ratio(probs)
                budget = budget_penalty(ratio, c.budget_target, c.budget_weight, c.budget_mode)
            else:
                with torch.no_grad():
                    ratio = self.cost.ratio(probs) if c.budget_kind == "params" else probs.new_zeros(())
                budget = probs.new_zeros(())
            present = [v for v in losses.values() if v is not None]
            task_total = self.weighting.combine(losses, step=step) if present else probs.sum() * 0
            total = task_total + c.lambda_policy * reg + budget
            self._backward_step(total, self.policy_opt, params, self.scalers["policy"], clip=False, model=self.model)
        self.policy_step += 1
        return {"step": step, "tau": tau, "loss": dist_utils.mean_losses(losses),
                "total": dist_utils.mean_scalar(total), "sharing": float(reg.detach()),
                "budget": float(budget.detach()), "cost_ratio": float(ratio.detach())}

    # --- stages ---------------------------------------------------------------------------------
    def warmup(self, steps: int | None = None) -> list[dict[str, Any]]:
        """Train the weights with every branch mixed uniformly, then copy shared into specific."""
        steps = self.config.warmup_steps if steps is None else steps
        self._warmup(0, steps, steps)
        return self.history["warmup"]

    def _warmup(self, start: int, stop: int, steps: int) -> None:
        """Warm-up steps ``start .. stop - 1`` of ``steps``; the last one also fills the specific branches."""
        bar = self._stage_bar("warmup", steps, "warm-up", start)
        for i in range(start, stop):
            rec = self._weight_step(self.streams["weights"], "warmup")
            if rec is not None:
                self._log("warmup", rec)
            self._maybe_validate("warmup", i, steps, mode="warmup")
            _tick(bar, rec)
        if stop == steps:
            self._end_bar("warmup")
            self.model.fill_specific()

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
        bar = self._stage_bar("search", iterations, "search", start // per)
        rec = None
        for u in range(start, stop):
            i, j = divmod(u, per)
            if j == 0:
                rec = None
            if j < c.weight_steps_per_iter:
                rec = self._weight_step(self.streams["weights"], c.search_mode)
                if rec is not None:
                    self._log("search", {"iteration": i, "phase": "weights", "tau": self.tau(), **rec})
            else:
                rec = self._policy_step(self.streams["policy"])
                self._log("search", {"iteration": i, "phase": "policy", **rec})
            if j == per - 1:
                self._maybe_validate("search", i, iterations, mode="fixed")
                _tick(bar, rec, self.tau())
        if stop == iterations * per:
            self._end_bar("search")

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
                self._log("derive", {"candidate": len(scored) - 1, "val_loss": ev["total"], "cost_ratio": ratio,
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
        self._log("derive", {**record, "chosen": best.to_dict(), "cost_ratio": ratio,
                             "shared_fraction": best.shared_fraction()})
        self.architecture = best
        return best

    @property
    def _options(self) -> int:
        return self.model.policy.logits.shape[-1]

    def _one_hot(self, arch: Architecture) -> torch.Tensor:
        return torch.nn.functional.one_hot(self.model.architecture_tensor(arch), self._options).double()

    def _pick_ratio(self, pick: torch.Tensor) -> float:
        """Cost ratio of the architecture with branch indices ``pick`` ``(T, V)`` (exact for params)."""
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
        """Train the derived model of ``architecture`` on the weights and policy splits together.

        The history of this call replaces ``history["finetune"]``; the model is also kept as
        ``self.derived`` when ``architecture`` is the searched one.
        """
        c = self.config
        steps = c.finetune_steps if steps is None else steps
        searched = architecture is None
        model = self.build_derived(architecture, from_)
        stream = _Stream(self._train_source(), "weights+policy")
        weighting = self._make_weighting()
        opt = self._weight_optimizer(list(model.parameters()) + list(weighting.parameters()),
                                     c.finetune_lr or c.weight_lr)
        log: list[dict[str, Any]] = []
        self.history["finetune"] = log
        bar = self._bar(steps, "fine-tune")
        model.train()
        weighting.train()
        params = list(model.parameters()) + list(weighting.parameters())
        scaler = _scaler(c.amp, self.device)
        for step in range(steps):
            x, targets = _split_batch(stream.next(), self.names, c.allow_missing, self.device)
            if stream.new_epoch:
                _epoch_end(weighting)
            with self._autocast():
                out = _outputs(model, x, self.names)
                losses = self._task_losses(out, targets, step)
            rec = None
            if any(v is not None for v in losses.values()):
                total = weighting.combine(losses, step=step)
                self._backward_step(total, opt, params, scaler, clip=True, model=model)
                rec = {"step": step, "loss": dist_utils.mean_losses(losses), "total": dist_utils.mean_scalar(total)}
                self._log("finetune", rec, log)
            if c.eval_every and (step + 1) % c.eval_every == 0 and step + 1 < steps:
                self._record_val("finetune", step, evaluate(model, self.tasks, self.loaders["val"],
                                                            max_batches=c.eval_batches, device=self.device))
            _tick(bar, rec)
        _close(bar)
        model.eval()
        if searched:
            self.derived = model
        return model

    def _train_source(self) -> Iterable[Any]:
        w, p = self.weights_data, self.policy_data
        if isinstance(w, Dataset) and isinstance(p, Dataset):
            return self._loader(ConcatDataset([w, p]), "weights+policy", self.config.batch_size, True, 4)
        return _Chain([self.loaders["weights"], self.loaders["policy"]])

    def validate(self, model: nn.Module | None = None, architecture: Architecture | None = None,
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
        try:
            return self._run(stop_after, checkpoint, checkpoint_every if checkpoint is not None else 0)
        finally:
            self._end_bar()

    def _run(self, stop_after: int | None, checkpoint: str | os.PathLike[str] | None,
             every: int) -> SearchResult | None:
        c = self.config
        totals = {"warmup": c.warmup_steps, "search": c.search_iterations * self._steps_per_iter()}
        while self.progress["stage"] in totals:
            stage, start = self.progress["stage"], int(self.progress["step"])
            total = totals[stage]
            offset = 0 if stage == "warmup" else totals["warmup"]
            stop = total if stop_after is None else min(total, max(stop_after - offset, start))
            if every > 0:
                stop = min(stop, ((offset + start) // every + 1) * every - offset)
            if stage == "warmup":
                self._warmup(start, stop, total)
            else:
                self._search(start, stop, c.search_iterations)
            self.progress = {"stage": stage, "step": stop}
            if stop == total:
                if stage == "warmup":
                    self._record_val("warmup", self.weight_step, self.validate(self.model, mode="warmup"))
                self.progress = {"stage": "search" if stage == "warmup" else "derive", "step": 0}
            if stop_after is not None and self.steps_done() >= stop_after:
                if checkpoint is not None:
                    self.save_checkpoint(checkpoint)
                return None
            if every > 0 and (offset + stop) % every == 0 and stop > start:
                self.save_checkpoint(checkpoint)  # type: ignore[arg-type]
        arch = self.derive()
        self._record_val("search", self.policy_step, self.validate(self.model, arch))
        model = self.finetune()
        final = self.validate(model)
        self._record_val("finetune", self.config.finetune_steps, final)
        self.progress = {"stage": "done", "step": 0}
        return SearchResult(arch, model, self.model, self.history, final["metrics"], final["loss"], self.config)

    def steps_done(self) -> int:
        """Warm-up and search steps that :meth:`run` has completed (weight and policy steps alike)."""
        c = self.config
        warm, srch = c.warmup_steps, c.search_iterations * self._steps_per_iter()
        stage, step = self.progress["stage"], int(self.progress["step"])
        return {"warmup": step, "search": warm + step}.get(stage, warm + srch)

    # --- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs (see :mod:`automtl.search.checkpoint`); tensors are not copied."""
        from .checkpoint import searcher_state

        return searcher_state(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; ``ValueError`` when it comes from another format or config."""
        from .checkpoint import load_searcher_state

        load_searcher_state(self, state)

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to ``path`` (atomically: a temporary file, then a rename)."""
        from .checkpoint import save

        if self.rank == 0:  # every process holds the same state; one file is enough
            save(self.state_dict(), path)

    @classmethod
    def resume(cls, path: str | os.PathLike[str], model: SuperModel, tasks: Mapping[str, Task] | Sequence[Task],
               data: Any, config: SearchConfig | None = None) -> Searcher:
        """A searcher on ``model``/``tasks``/``data`` restored from the checkpoint at ``path``.

        ``config`` defaults to the checkpoint's; a given one must match it (but for ``quiet``,
        ``device`` and ``num_workers``). Call :meth:`run` to continue.
        """
        from .checkpoint import load, saved_config

        state = load(path)
        searcher = cls(model, tasks, data, config if config is not None else saved_config(state))
        searcher.load_state_dict(state)
        return searcher

    # --- logging --------------------------------------------------------------------------------
    def _maybe_validate(self, stage: str, i: int, total: int, mode: str) -> None:
        every = self.config.eval_every
        if every and (i + 1) % every == 0 and i + 1 < total:
            arch = self.model.architecture() if mode == "fixed" else None
            ev = evaluate(self.model, self.tasks, self.loaders["val"], architecture=arch, mode=mode,
                          max_batches=self.config.eval_batches, device=self.device)
            self._record_val(stage, i, ev)

    def _record_val(self, stage: str, step: int, ev: dict[str, Any]) -> None:
        self._log("val", {"stage": stage, "step": step, **copy.deepcopy(ev)})


class _Chain:
    """Iterates several loaders one after the other (one pass of each)."""

    def __init__(self, parts: list[Iterable[Any]]) -> None:
        self.parts = parts

    def __iter__(self) -> Iterator[Any]:
        for part in self.parts:
            yield from part

    def __len__(self) -> int:
        return sum(_length(p) or 0 for p in self.parts)


def _epoch_end(weighting: Weighting) -> None:
    with contextlib.suppress(ValueError):  # a strategy that saw no loss this epoch keeps its weights
        weighting.epoch_end()


def _tick(bar: Any, rec: dict[str, Any] | None, tau: float | None = None) -> None:
    if bar is None:
        return
    if rec is not None:
        post = {"loss": f"{rec['total']:.4g}"}
        if tau is not None:
            post["tau"] = f"{tau:.3g}"
        bar.set_postfix(post, refresh=False)
    bar.update(1)


def _scaler(amp: str | None, device: torch.device) -> Any:
    """A gradient scaler for float16 mixed precision (None otherwise: bfloat16 needs none)."""
    if amp != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def _close(bar: Any) -> None:
    if bar is not None:
        bar.close()


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
