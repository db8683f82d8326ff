"""Training a fixed model with the one loop: fine-tuning a derived model, baselines, subset networks.

>>> trainer = Trainer(model, tasks, (train_data, val_data), TrainConfig(weight_lr=1e-3))
>>> trainer.train(500)            # returns the model, in eval mode; trainer.history["train"] the records
>>> evaluate(model, tasks, val_loader)

The model is a :class:`~automtl.model.derive.MultiTaskModel` (or any module returning one output
per task) or a :class:`~automtl.model.supermodel.SuperModel` at a fixed architecture.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..model.architecture import Architecture
from ..model.supermodel import SuperModel
from ..train.tasks import Task
from . import distributed as dist_utils
from .loop import Loop, Stage, TrainConfig, close_bar, epoch_end, tick
from .streams import Stream, outputs, split_batch


class Trainer(Loop):
    """Trains every parameter of ``model`` on the ``train`` split; validates on ``val``.

    ``stage`` names the stage in the history and the records (``"finetune"`` when a search uses it).
    ``train_offset`` seeds the train loader's shuffling (``seed * 1000 + offset``).
    """

    splits = ("train", "val")
    fractions = (0.8, 0.2)

    def __init__(self, model: nn.Module, tasks: Mapping[str, Task] | Sequence[Task], data: Any,
                 config: TrainConfig | None = None, *, lr: float | None = None, stage: str = "train",
                 train_offset: int = 4, val_loader: Iterable[Any] | None = None, seed_rng: bool = True) -> None:
        config = config if config is not None else TrainConfig()
        if not hasattr(model, "task_names"):
            raise ValueError("model must name its tasks (task_names), like a MultiTaskModel; got "
                             f"{type(model).__name__}")
        super().__init__(model, tasks, data, config, seed_rng=seed_rng)
        self.stage = stage
        self.loaders["train"] = self.loader(self.data["train"], "train", config.batch_size, True, train_offset)
        self.loaders["val"] = val_loader if val_loader is not None else self.loader(
            self.data["val"], "val", config.eval_batch_size, False, 3)
        self.streams["train"] = self.register("train_stream", Stream(self.loaders["train"], "train"))
        model.to(self.device)
        self.register("model", model)
        self.weighting = self.register("weighting", self.make_weighting())
        self.params = list(model.parameters()) + list(self.weighting.parameters())
        self.opt = self.register("opt", self.weight_optimizer(self.params, lr or config.weight_lr))
        self.scaler = self.make_scaler("train")
        self.steps = 0
        self._log: list[dict[str, Any]] = []

    def stages(self) -> list[Stage]:
        return [Stage(self.stage, self.steps, self._run)]

    def train(self, steps: int) -> nn.Module:
        """Train for ``steps`` steps, then return the model in eval mode."""
        self.steps = steps
        self._log = []
        self.history[self.stage] = self._log
        self.progress = {"stage": self.stage, "step": 0}
        self.model.train()
        self.weighting.train()
        self.run_stages()
        self.model.eval()
        return self.model

    def _run(self, start: int, stop: int) -> None:
        c = self.config
        bar = self.bar(self.steps, self.stage.replace("finetune", "fine-tune"), start)
        stream = self.streams["train"]
        for step in range(start, stop):
            x, targets = split_batch(stream.next(), self.names, c.allow_missing, self.device)
            if stream.new_epoch:
                epoch_end(self.weighting)
            with self.autocast():
                out = outputs(self.model, x, self.names)
                losses = self.task_losses(out, targets, step)
            rec = None
            if any(v is not None for v in losses.values()):
                total = self.backward_step(
                    losses, self.opt, self.params, scaler=self.scaler, model=self.model, stage=self.stage, step=step,
                    weighting=self.weighting, shared=self.shared_parameters(),
                    recompute=lambda x=x, targets=targets, step=step: self._losses_now(x, targets, step))
                rec = {"step": step, "loss": dist_utils.mean_losses(losses), "total": dist_utils.mean_scalar(total)}
                self.log(self.stage, rec, self._log)
            if c.eval_every and (step + 1) % c.eval_every == 0 and step + 1 < self.steps:
                self.record_val(self.stage, step, self.validate())
            tick(bar, rec)
        close_bar(bar)

    def _losses_now(self, x: Any, targets: Mapping[str, Any], step: int) -> dict[str, torch.Tensor | None]:
        with self.autocast():
            return self.task_losses(outputs(self.model, x, self.names), targets, step)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's output depends on (gradient-level weightings combine these)."""
        heads = getattr(self.model, "heads", None)
        skip = {id(p) for p in heads.parameters()} if isinstance(heads, nn.Module) else set()
        return [p for p in self.model.parameters() if id(p) not in skip]

    def validate(self) -> dict[str, Any]:
        return evaluate(self.model, self.tasks, self.loaders["val"], max_batches=self.config.eval_batches,
                        device=self.device)


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
            x, targets = split_batch(batch, names, True, dev)
            out = outputs(model, x, names, **kwargs)
            for t in names:
                loss = tasks[t].loss(out[t], targets[t])
                if loss is None:
                    continue
                sums[t] += float(loss)
                counts[t] += 1
                tasks[t].update(acc[t], out[t], targets[t])
    finally:
        model.train(was)
    unlabelled = [t for t in names if not counts[t]]
    if unlabelled:  # its metrics would be NaN: say so instead
        raise ValueError(f"task '{unlabelled[0]}': the evaluated split has no labelled sample for this task "
                         f"(every target missing or masked); give the split labels for {unlabelled}")
    losses = {t: sums[t] / counts[t] for t in names}
    return {
        "loss": losses,
        "metrics": {t: tasks[t].compute(acc[t]) for t in names},
        "total": sum(v for v in losses.values() if not math.isnan(v)),
    }


