"""SlimDA on the one loop: a slimmable bank adapted once to an unlabelled domain, then a network per budget.

Meng et al., "Slimmable Domain Adaptation" (CVPR 2022). One weight bank
(:class:`~automtl.model.width.SlimClassifier`) is trained on labelled *source* and unlabelled
*target* images; every step runs a *model batch* of ``model_batch`` width configurations (the
sandwich rule: the largest, the smallest, and random ones, :func:`~automtl.model.width.sandwich`).
``method`` selects what each network of the batch learns:

* ``slimda``: SymNet's adaptation on ``cs`` / ``ct`` (:func:`~automtl.search.slimda_losses.symnet_losses`),
  and OSTC: the third classifier ``ca`` gets the source labels and SEED's distillation
  (:func:`~automtl.search.slimda_losses.seed_loss`; teacher: the batch's mean ``ct`` prediction on the
  target, sharpened), so distillation and domain confusion never train the same head. ``ca`` is deployed.
* ``symnet``: the slimmable SymNet baseline (no SEED, no ``ca``); ``ct`` is deployed.
* ``source_only``: the slimmable network trained on source labels only (``cs``, deployed).

After training, :meth:`SlimDASearcher.search_budget` picks the network for a FLOPs budget without
target labels: random width configurations under the budget (costs exact from the compiler), each
scored by UPEM against the largest network on target images; the lowest score wins.

Data: ``(source, target, test)`` datasets of ``(x, {task: y})`` items. The target's labels are never
read in training or in the budget search; ``test`` (held-out target images with labels) serves the
final evaluation only (:meth:`SlimDASearcher.accuracy`).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..model.width import SlimClassifier, Widths, sandwich
from ..train.tasks import Task
from . import distributed as dist_utils
from .loop import Loop, Stage, TrainConfig, close_bar, tick
from .slimda_losses import confusion_weight, seed_loss, symnet_losses, upem
from .streams import Stream, split_batch

METHODS = ("slimda", "symnet", "source_only")
DEPLOY = {"slimda": "ca", "symnet": "ct", "source_only": "cs"}
BANK_FORMAT = "automtl-slimda/1"


@dataclass
class SlimDAConfig(TrainConfig):
    """SlimDA's options on top of :class:`~automtl.search.loop.TrainConfig`."""

    method: str = "slimda"  # slimda | symnet (slimmable SymNet) | source_only
    widths: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])  # per channel group
    model_batch: int = 4  # networks per step: largest, smallest, model_batch - 2 random
    steps: int = 600
    temperature: float = 0.5  # SEED's sharpening temperature
    seed_weight: float = 1.0  # weight of SEED's distillation
    ca_source_weight: float = 1.0  # weight of the source labels' cross-entropy on ca (slimda)
    calibration_batches: int = 4  # target batches that recompute a width's batch-norm statistics
    budget_candidates: int = 64  # width configurations scored by UPEM per budget

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check("method", self.method in METHODS, f"one of {METHODS}")
        ok = isinstance(self.widths, list | tuple) and len(self.widths) > 0 and all(
            isinstance(w, int | float) and not isinstance(w, bool) and 0 < w <= 1 for w in self.widths)
        self._check("widths", ok, "a non-empty list of fractions in (0, 1], such as [0.25, 0.5, 0.75, 1.0]")
        self.widths = sorted({float(w) for w in self.widths})
        for name in ("steps", "calibration_batches", "budget_candidates"):
            self._check(name, isinstance(getattr(self, name), int) and getattr(self, name) >= 1, "an int >= 1")
        self._check("model_batch", isinstance(self.model_batch, int) and self.model_batch >= 2, "an int >= 2")
        self._check("temperature", isinstance(self.temperature, int | float) and self.temperature > 0, "a number > 0")
        for name in ("seed_weight", "ca_source_weight"):
            value = getattr(self, name)
            self._check(name, isinstance(value, int | float) and not isinstance(value, bool) and value >= 0,
                        "a number >= 0")


class _PyRandom:
    """A ``random.Random`` as checkpointed loop state (the model batches of an exact resume)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.rng.getstate()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        s = state["state"]
        self.rng.setstate((s[0], tuple(s[1]), s[2]))


class SlimDASearcher(Loop):
    """Trains a :class:`SlimClassifier` bank with ``config.method`` (see the module docstring)."""

    splits = ("source", "target", "test")
    fractions = (0.5, 0.25, 0.25)

    def __init__(self, model: SlimClassifier, tasks: Mapping[str, Task] | Sequence[Task], data: Any,
                 config: SlimDAConfig | None = None) -> None:
        config = config if config is not None else SlimDAConfig()
        if not isinstance(model, SlimClassifier):
            raise ValueError(f"the slimda strategy trains a SlimClassifier (automtl.model.width.build_slim_classifier),"
                             f" not {type(model).__name__}")
        if not (isinstance(data, tuple | list) and len(data) == 3):
            raise ValueError("data: the slimda strategy takes (source, target, test) datasets: labelled source "
                             "images, unlabelled target images, held-out target images for the final evaluation")
        super().__init__(model, tasks, data, config)
        model.deploy = DEPLOY[config.method]
        self.task = self.names[0]
        c = config
        self.loaders["source"] = self.loader(self.data["source"], "source", c.batch_size, True, 1)
        self.loaders["target"] = self.loader(self.data["target"], "target", c.batch_size, True, 2)
        self.loaders["target_eval"] = self.loader(self.data["target"], "target", c.eval_batch_size, False, 3)
        self.loaders["test"] = self.loader(self.data["test"], "test", c.eval_batch_size, False, 4)
        self.streams["source"] = self.register("source_stream", Stream(self.loaders["source"], "source"))
        self.streams["target"] = self.register("target_stream", Stream(self.loaders["target"], "target"))
        model.to(self.device)
        self.register("model", model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = self.register("opt", self.weight_optimizer(self.params, c.weight_lr))
        self.scaler = self.make_scaler("train")
        self.rng = self.register("model_batches", _PyRandom(c.seed)).rng
        self.step_seconds: list[float] = []

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "groups": list(self.model.trunk.groups), "method": self.config.method}

    def stages(self) -> list[Stage]:
        return [Stage("train", self.config.steps, self._run)]

    def run(self, stop_after: int | None = None, checkpoint: str | os.PathLike[str] | None = None,
            every: int = 0) -> bool:
        """Train the bank (from :attr:`progress`); True when done, False when stopped at ``stop_after``."""
        self.model.train()
        done = self.run_stages(stop_after=stop_after, checkpoint=checkpoint, every=every)
        self.model.eval()
        return done

    # --- one step ----------------------------------------------------------------------------------
    def _run(self, start: int, stop: int) -> None:
        c = self.config
        bar = self.bar(c.steps, f"slimda ({c.method})", start)
        for step in range(start, stop):
            began = time.perf_counter()
            xs, ys = split_batch(self.streams["source"].next(), self.names, False, self.device)
            xt, _ = split_batch(self.streams["target"].next(), self.names, True, self.device)  # labels unused
            ys = ys[self.task]
            configs = sandwich(self.model.trunk, c.widths, c.model_batch, self.rng)
            with self.autocast():
                total, parts = self.step_loss(xs, ys, xt, configs, step)
            self.backward_step({}, self.opt, self.params, scaler=self.scaler, model=self.model, stage="train",
                               step=step, extra=total)
            self.step_seconds.append(time.perf_counter() - began)
            rec = {"step": step, "total": dist_utils.mean_scalar(total.detach()), **parts}
            self.log("train", rec)
            tick(bar, rec)
        close_bar(bar)

    def step_loss(self, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, configs: Sequence[Widths],
                  step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The model batch's loss (summed over its networks) and its parts (means over the networks)."""
        c, model = self.config, self.model
        lam = confusion_weight(step / max(1, c.steps - 1))
        ns = len(xs)
        x = torch.cat([xs, xt])
        total = torch.zeros((), device=self.device)
        parts: dict[str, float] = {}
        students, teachers = [], []
        for widths in configs:
            feats = model.features(x, widths)
            fs, ft = feats[:ns], feats[ns:]
            if c.method == "source_only":
                loss = F.cross_entropy(model.logits(fs, "cs"), ys)
                terms = {"task_s": loss}
            else:
                # the classifiers' terms on detached features; the extractor's through detached classifier weights
                fd = feats.detach()
                cls = symnet_losses(model.logits(fd[:ns], "cs"), model.logits(fd[:ns], "ct"), ys,
                                    model.logits(fd[ns:], "cs"), model.logits(fd[ns:], "ct"))
                gen = symnet_losses(model.logits(fs, "cs", True), model.logits(fs, "ct", True), ys,
                                    model.logits(ft, "cs", True), model.logits(ft, "ct", True))
                loss = (cls["task_s"] + cls["task_t"] + cls["domain"] + gen["category"]
                        + lam * (gen["domain_confusion"] + gen["entropy"]))
                terms = {k: cls[k] for k in ("task_s", "task_t", "domain")}
                terms.update({k: gen[k] for k in ("category", "domain_confusion", "entropy")})
                if c.method == "slimda":
                    ca_src = F.cross_entropy(model.logits(fs, "ca"), ys)
                    loss = loss + c.ca_source_weight * ca_src
                    terms["task_a"] = ca_src
                    students.append(model.logits(ft, "ca"))
                    teachers.append(model.logits(ft.detach(), "ct").detach())
            total = total + loss
            for k, v in terms.items():
                parts[k] = parts.get(k, 0.0) + float(v.detach()) / len(configs)
        if students:
            seed = seed_loss(students, teachers, c.temperature)
            total = total + c.seed_weight * lam * seed  # ramped like SymNet's confusion terms
            parts["seed"] = float(seed.detach())
        parts["lambda"] = lam
        return total, parts

    # --- evaluation without and with target labels -------------------------------------------------
    def _images(self, loader: str, batches: int | None) -> list[torch.Tensor]:
        out = []
        for i, batch in enumerate(self.loaders[loader]):
            if batches is not None and i >= batches:
                break
            x, _ = split_batch(batch, self.names, True, self.device)
            out.append(x)
        return out

    def calibration_images(self) -> list[torch.Tensor]:
        """The target images (never their labels) that calibrate batch norm and score UPEM."""
        if not hasattr(self, "_calib"):
            self._calib = self._images("target_eval", self.config.calibration_batches)
        return self._calib

    @torch.no_grad()
    def target_logits(self, widths: Widths, images: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """The deployed head's logits at ``widths`` on the calibration images, after calibrating its BN."""
        calib = self.calibration_images()
        self.model.eval()
        self.model.trunk.calibrate(widths, calib)
        return torch.cat([self.model(x)[self.task] for x in (images if images is not None else calib)])

    @torch.no_grad()
    def accuracy(self, widths: Widths) -> float:
        """Target accuracy of ``widths`` on the held-out test split (the only place target labels are read)."""
        self.model.eval()
        self.model.trunk.calibrate(widths, self.calibration_images())
        right = total = 0
        for batch in self.loaders["test"]:
            x, y = split_batch(batch, self.names, True, self.device)
            pred = self.model(x)[self.task].argmax(1)
            right += int((pred == y[self.task]).sum())
            total += len(pred)
        return right / max(1, total)

    def upem(self, widths: Widths, anchor: torch.Tensor | None = None) -> float:
        """UPEM of ``widths``: discrepancy of its target predictions from the largest network's."""
        if anchor is None:
            anchor = self.target_logits(self.model.trunk.uniform(max(self.config.widths)))
        return upem(self.target_logits(widths), anchor)

    def search_budget(self, budget: float, candidates: int | None = None, seed: int = 0) -> dict[str, Any]:
        """Pick the width configuration for ``budget`` (a fraction of the largest network's FLOPs) by UPEM."""
        from .slimda_budget import search_budget

        return search_budget(self.model, self.config.widths, self.calibration_images(), budget,
                             candidates or self.config.budget_candidates, seed)

    def save_bank(self, path: str | os.PathLike[str]) -> Path:
        """Write what ``automtl derive RUN --budget B`` needs: the bank, its config, the calibration images."""
        from .slimda_budget import save_bank

        return save_bank(self.model, self.config, self.calibration_images(), path)
