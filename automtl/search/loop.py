"""The one training loop every method runs on (DESIGN §5): named stages of steps.

:class:`Loop` owns what no method should write again: the device and the data-parallel
processes, named data splits and their resumable streams, mixed precision, the backward step
(loss weighting, gradient averaging, clipping, grad scaler), progress bars, the history and its
sinks, periodic checkpoints and exact resume. A method (a *strategy*: the AutoMTL search,
fine-tuning in :class:`~automtl.search.trainer.Trainer`, ...) subclasses it, registers its
optimisers and state with :meth:`Loop.register`, and lists its :class:`Stage` s; checkpoints save
whatever was registered, so they never read a method's fields.

A step hook (``loop.step_hooks``) sees every step's per-task losses before the weighting
combines them, and may ask for the per-task gradients of the shared parameters (TAG affinities).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from ..train.data import make_collate, split_dataset
from ..train.tasks import Task, check_finite
from ..train.weighting import Weighting, get_weighting, task_gradients
from . import distributed as dist_utils
from .streams import Stream, is_item, length


@dataclass
class TrainConfig:
    """What every loop needs: data, the weight optimiser, the loss weighting, precision, the run."""

    batch_size: int = 16
    eval_batch_size: int = 64
    eval_batches: int | None = None  # validation batches per evaluation (None: the whole split)
    eval_every: int = 0  # also validate every this many steps of a stage (0: at its end only)
    weight_optimizer: str = "adam"  # "adam" or "sgd"
    weight_lr: float = 1e-3
    weight_momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    grad_clip: float | None = None  # max gradient norm of the weights, None: no clipping
    weighting: str = "equal"
    weighting_kwargs: dict[str, Any] = field(default_factory=dict)
    allow_missing: bool = True  # a batch without a task's label skips that task (else ValueError)
    num_workers: int = 0
    seed: int = 0
    device: str = "cpu"
    amp: str | None = None  # mixed precision: None, "bf16" (CPU or CUDA) or "fp16" (CUDA, with a grad scaler)
    quiet: bool = False

    def __post_init__(self) -> None:
        for name in ("eval_every", "num_workers", "seed"):
            self._check(name, _is_int(getattr(self, name), 0), "an int >= 0")
        for name in ("batch_size", "eval_batch_size"):
            self._check(name, _is_int(getattr(self, name), 1), "an int >= 1")
        self._check("eval_batches", self.eval_batches is None or _is_int(self.eval_batches, 1), "None or an int >= 1")
        self._check("weight_lr", _is_number(self.weight_lr, 0, strict=True), "a finite number > 0")
        self._check("grad_clip", self.grad_clip is None or _is_number(self.grad_clip, 0, strict=True),
                    "None or a finite number > 0")
        for name in ("weight_momentum", "weight_decay"):
            self._check(name, _is_number(getattr(self, name), 0), "a finite number >= 0")
        self._check("weight_optimizer", self.weight_optimizer in ("adam", "sgd"), "one of ('adam', 'sgd')")
        self._check("device", isinstance(self.device, str | torch.device), "a device string such as 'cpu' or 'cuda'")
        self._check("amp", self.amp in (None, "bf16", "fp16"), "None, 'bf16' or 'fp16'")

    def _check(self, name: str, ok: bool, want: str) -> None:
        if not ok:
            raise ValueError(f"{type(self).__name__}.{name} must be {want}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_int(v: Any, low: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and v >= low


def _is_number(v: Any, low: float, strict: bool = False) -> bool:
    ok = not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
    return ok and (v > low if strict else v >= low)


@dataclass
class Stage:
    """A named stage of ``total`` steps; ``run(start, stop)`` runs steps ``start .. stop - 1``.

    ``end`` runs once after the last step (it may validate or change the model).
    """

    name: str
    total: int
    run: Callable[[int, int], None]
    end: Callable[[], None] | None = None


@dataclass
class StepInfo:
    """What a step hook sees: the stage, the step, each task's loss, and the shared parameters."""

    stage: str
    step: int
    losses: Mapping[str, torch.Tensor | None]
    shared: Sequence[nn.Parameter]

    def task_gradients(self) -> dict[str, torch.Tensor]:
        """Each task's gradient of the shared parameters, flat (the graph is kept for the step)."""
        return task_gradients(self.losses, self.shared)


class _Attributes:
    """Registers plain attributes of the loop (step counters) as checkpointed state."""

    def __init__(self, owner: Any, names: Sequence[str]) -> None:
        self.owner, self.names = owner, list(names)

    def state_dict(self) -> dict[str, Any]:
        return {n: getattr(self.owner, n) for n in self.names}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for n in self.names:
            setattr(self.owner, n, state[n])


class Loop:
    """The loop's machinery; subclasses add stages and optimisers (see the module docstring)."""

    #: names of the data splits, in the order a tuple of splits is given
    splits: tuple[str, ...] = ("train", "val")
    #: fractions for splitting one dataset into :attr:`splits`
    fractions: tuple[float, ...] = (0.8, 0.2)

    def __init__(self, model: nn.Module, tasks: Mapping[str, Task] | Sequence[Task], data: Any,
                 config: TrainConfig, seed_rng: bool = True) -> None:
        self.config = config
        self.model = model
        self.names = list(model.task_names)
        self.tasks = self._check_tasks(tasks)
        self.rank, self.world = dist_utils.rank_and_world()
        self.device = dist_utils.local_device(config.device, self.world)
        if self.world > 1 and config.batch_size % self.world:
            raise ValueError(f"{type(config).__name__}.batch_size {config.batch_size} must be divisible by the "
                             f"{self.world} processes: each takes an equal share of every batch")
        if seed_rng:  # a loop inside another (fine-tuning after a search) keeps the outer RNG stream
            torch.manual_seed(config.seed)
        self.data = dict(zip(self.splits, self._split(data), strict=True))
        self.loaders: dict[str, Iterable[Any]] = {}
        self.streams: dict[str, Stream] = {}
        self.history: dict[str, list[dict[str, Any]]] = {"val": []}
        self.sinks: list[Callable[[str, dict[str, Any]], None]] = []  # given every record as it is logged
        self.step_hooks: list[Callable[[StepInfo], None]] = []
        self.scalers: dict[str, Any] = {}
        self.progress: dict[str, Any] = {"stage": "", "step": 0}  # where run_stages goes on
        self._state: dict[str, Any] = {}
        self._bars: dict[str, Any] = {}

    # --- set-up ---------------------------------------------------------------------------------
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

    def _split(self, data: Any) -> tuple[Any, ...]:
        k = len(self.splits)
        if isinstance(data, tuple | list) and len(data) == k and not any(is_item(p) for p in data):
            for name, part in zip(self.splits, data, strict=True):
                if part is None or length(part) == 0:
                    raise ValueError(f"data: the '{name}' split is empty")
            return tuple(data)
        n = length(data)
        if n is None:
            raise ValueError(f"data must be a dataset (split into {'/'.join(self.splits)}) or a "
                             f"({', '.join(self.splits)}) sequence, not {type(data).__name__}")
        if n == 0:
            raise ValueError("data: the dataset is empty")
        return tuple(split_dataset(data, self.fractions, seed=self.config.seed, names=self.splits))

    def loader(self, part: Any, name: str, batch: int, shuffle: bool, offset: int) -> Iterable[Any]:
        """Batches of a split: a seeded shuffling loader (sharded over the processes) for a Dataset."""
        if not isinstance(part, Dataset):
            return part if not shuffle or self.world == 1 else dist_utils.ShardedBatches(part, self.rank, self.world)
        n = length(part)
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

    def first_batch(self, split: str) -> Any:
        for batch in self.loaders[split]:
            return batch
        raise ValueError(f"data: the '{split}' split yielded no batch")

    def register(self, name: str, obj: Any) -> Any:
        """Checkpoint ``obj`` (anything with ``state_dict``/``load_state_dict``, or a :class:`Stream`)."""
        if name in self._state or name in _RESERVED:
            raise ValueError(f"loop state {name!r} is registered twice")
        self._state[name] = obj
        return obj

    def register_attributes(self, name: str, attributes: Sequence[str]) -> None:
        """Checkpoint plain attributes of this loop (step counters, a chosen architecture as a dict)."""
        self.register(name, _Attributes(self, attributes))

    def make_weighting(self) -> Weighting:
        c = self.config
        return get_weighting(c.weighting, self.names, **c.weighting_kwargs).to(self.device)

    def weight_optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        c = self.config
        if c.weight_optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=c.weight_momentum, weight_decay=c.weight_decay)
        return torch.optim.Adam(params, lr=lr, weight_decay=c.weight_decay)

    def make_scaler(self, name: str) -> Any:
        """A gradient scaler for float16 mixed precision (None otherwise: bfloat16 needs none)."""
        scaler = torch.amp.GradScaler(self.device.type) if self.config.amp == "fp16" else None
        self.scalers[name] = scaler
        return scaler

    # --- steps ----------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for the forward and the losses when ``config.amp`` is set."""
        amp = self.config.amp
        if amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def task_losses(self, out: Mapping[str, torch.Tensor], targets: Mapping[str, Any],
                    step: int) -> dict[str, torch.Tensor | None]:
        """Each task's loss (None for a task without a label in the batch); non-finite ones raise."""
        losses: dict[str, torch.Tensor | None] = {}
        for t in self.names:
            loss = self.tasks[t].loss(out[t], targets[t])
            if loss is not None:
                check_finite(t, loss, step)
            losses[t] = loss
        return losses

    def backward_step(self, losses: Mapping[str, torch.Tensor | None], opt: torch.optim.Optimizer,
                      params: Sequence[nn.Parameter], *, scaler: Any, model: nn.Module, stage: str, step: int,
                      weighting: Weighting | None = None, shared: Sequence[nn.Parameter] = (),
                      extra: torch.Tensor | None = None, clip: bool = True,
                      recompute: Callable[[], Mapping[str, torch.Tensor | None]] | None = None) -> torch.Tensor:
        """One optimiser step: hooks, backward (``weighting.backward``: it may own the gradients),
        ``extra`` (regularizers) added, gradients averaged over the processes, clipped, stepped
        through the grad scaler; then ``model``'s buffers are process 0's in every process.
        ``recompute`` gives the batch's losses after the step, for weightings that adapt on them (FAMO).
        Returns the logged total (the weighted task losses plus ``extra``), detached."""
        opt.zero_grad(set_to_none=True)
        for hook in self.step_hooks:
            hook(StepInfo(stage, step, losses, shared))
        present = any(v is not None for v in losses.values())
        if weighting is not None and present:
            total = weighting.backward(losses, shared, scaler=scaler, reduce=self._reduce(), step=step)
        else:
            total = torch.zeros((), device=self.device)
        if extra is not None:
            (scaler.scale(extra) if scaler is not None else extra).backward()
            total = total + extra.detach()
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
        if weighting is not None and present:
            before = _plain_losses(dist_utils.mean_losses(losses))
            after = before
            if getattr(weighting, "needs_post_step_losses", False) and recompute is not None:
                with torch.no_grad():
                    after = _plain_losses(dist_utils.mean_losses(recompute()))
            weighting.after_step(after, before=before)
        return total.detach()

    def _reduce(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return dist_utils.average_tensor if self.world > 1 else None

    @contextlib.contextmanager
    def only(self, trainable: Sequence[nn.Parameter], *others: nn.Module) -> Iterator[None]:
        """Gradients for ``trainable`` only: every other parameter of the model (and ``others``) is frozen."""
        keep = {id(p) for p in trainable}
        frozen = [p for m in (self.model, *others) for p in m.parameters() if id(p) not in keep and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)

    # --- records and bars -----------------------------------------------------------------------
    def log(self, stage: str, record: dict[str, Any], log: list[dict[str, Any]] | None = None) -> None:
        """Append ``record`` to the stage's history (or ``log``) and hand it to every sink."""
        (self.history.setdefault(stage, []) if log is None else log).append(record)
        for sink in self.sinks:
            sink(stage, record)

    def record_val(self, stage: str, step: int, ev: dict[str, Any]) -> None:
        self.log("val", {"stage": stage, "step": step, **copy.deepcopy(ev)})

    def bar(self, total: int, desc: str, initial: int = 0) -> Any:
        if self.config.quiet or total == 0 or self.rank != 0:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=total, desc=desc, leave=False, initial=initial)

    def stage_bar(self, stage: str, total: int, desc: str, initial: int) -> Any:
        """The stage's progress bar, kept open across the checkpoints of one run."""
        if stage not in self._bars:
            self._bars[stage] = self.bar(total, desc, initial)
        return self._bars[stage]

    def end_bar(self, stage: str | None = None) -> None:
        """Close the stage's bar (every open bar when ``stage`` is None)."""
        for key in [stage] if stage is not None else list(self._bars):
            close_bar(self._bars.pop(key, None))

    # --- stages and checkpoints -----------------------------------------------------------------
    def stages(self) -> list[Stage]:
        """The method's stages, in order (a subclass lists them)."""
        raise NotImplementedError

    def steps_done(self) -> int:
        """Steps of :meth:`stages` that :meth:`run_stages` has completed."""
        done = 0
        for s in self.stages():
            if s.name == self.progress["stage"]:
                return done + int(self.progress["step"])
            done += s.total
        return done

    def run_stages(self, stop_after: int | None = None, checkpoint: str | os.PathLike[str] | None = None,
                   every: int = 0) -> bool:
        """Run the stages from :attr:`progress`; True once all are done, False when stopped at ``stop_after``.

        With ``stop_after=k`` it stops once ``k`` steps are done in all (counted from the very start)
        and saves a checkpoint to ``checkpoint`` when given; with ``every=n`` it also saves every
        ``n`` steps. Every progress bar is closed when it returns or raises.
        """
        try:
            return self._run_stages(stop_after, checkpoint, every)
        finally:
            self.end_bar()

    def _run_stages(self, stop_after: int | None, checkpoint: str | os.PathLike[str] | None, every: int) -> bool:
        stages = self.stages()
        names = [s.name for s in stages]
        if self.progress["stage"] == "":
            self.progress = {"stage": names[0] if names else "done", "step": 0}
        offset = 0
        for s in stages:
            if s.name == self.progress["stage"]:
                break
            offset += s.total
        while self.progress["stage"] in names:
            k = names.index(self.progress["stage"])
            s, start = stages[k], int(self.progress["step"])
            stop = s.total if stop_after is None else min(s.total, max(stop_after - offset, start))
            if every > 0:
                stop = min(stop, ((offset + start) // every + 1) * every - offset)
            s.run(start, stop)
            done_now = offset + stop
            self.progress = {"stage": s.name, "step": stop}
            if stop == s.total:
                if s.end is not None:
                    s.end()
                self.progress = {"stage": names[k + 1] if k + 1 < len(names) else "done", "step": 0}
                offset += s.total
            if stop_after is not None and self.steps_done() >= stop_after:
                if checkpoint is not None:
                    self.save_checkpoint(checkpoint)
                return False
            if every > 0 and checkpoint is not None and done_now % every == 0 and stop > start:
                self.save_checkpoint(checkpoint)
        return True

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must match besides the config (a subclass adds its model's identity)."""
        return {"task_names": list(self.names)}

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs (see :mod:`automtl.search.checkpoint`); tensors are not copied."""
        from .checkpoint import loop_state

        return loop_state(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; ``ValueError`` when it comes from another format or config."""
        from .checkpoint import load_loop_state

        load_loop_state(self, state)

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to ``path`` (atomically: a temporary file, then a rename)."""
        from .checkpoint import save

        if self.rank == 0:  # every process holds the same state; one file is enough
            save(self.state_dict(), path)


_RESERVED = {"format", "version", "config", "progress", "history", "rng", "scalers", "identity"}


def _plain_losses(losses: Mapping[str, float | None]) -> dict[str, float | None]:
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in losses.items()}


def tick(bar: Any, rec: dict[str, Any] | None, tau: float | None = None) -> None:
    if bar is None:
        return
    if rec is not None:
        post = {"loss": f"{rec['total']:.4g}"}
        if tau is not None:
            post["tau"] = f"{tau:.3g}"
        bar.set_postfix(post, refresh=False)
    bar.update(1)


def close_bar(bar: Any) -> None:
    if bar is not None:
        bar.close()


def epoch_end(weighting: Weighting) -> None:
    with contextlib.suppress(ValueError):  # a weighting that saw no loss this epoch keeps its weights
        weighting.epoch_end()
