"""Loss-level weightings: a weighted sum of the task losses, backpropagated as one total.

Equal, static, uncertainty (Kendall et al., 2018) and DWA (Liu et al., 2019).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from .base import Weighting, register_weighting

__all__ = ["DWA", "Equal", "Static", "Uncertainty"]


@register_weighting
class Equal(Weighting):
    """Every task weighs 1: the total is the plain sum of the losses present."""

    name = "equal"

    def combine(
        self, losses: Mapping[str, Tensor | None], step: int | None = None, epoch: int | None = None
    ) -> Tensor:
        return torch.stack([loss for _, _, loss in self._present(losses)]).sum()

    def weights(self) -> dict[str, float]:
        return dict.fromkeys(self.task_names, 1.0)


@register_weighting
class Static(Weighting):
    """Fixed user weights: total = sum_t w_t * L_t. Every task needs a finite weight >= 0."""

    name = "static"

    def __init__(self, task_names: Iterable[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names)
        if weights is None:
            raise ValueError("static weighting: pass weights={task: weight} for every task")
        missing = [n for n in self.task_names if n not in weights]
        if missing:
            raise ValueError(f"static weighting: no weight for task(s) {missing}")
        extra = [n for n in weights if n not in self._index]
        if extra:
            raise ValueError(f"static weighting: weight for unknown task(s) {extra}")
        for n in self.task_names:
            w = weights[n]
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
                raise ValueError(
                    f"static weighting: task '{n}': weight must be a finite number >= 0, got {w!r}"
                )
        self._weights = {n: float(weights[n]) for n in self.task_names}

    def combine(
        self, losses: Mapping[str, Tensor | None], step: int | None = None, epoch: int | None = None
    ) -> Tensor:
        return torch.stack([self._weights[n] * loss for _, n, loss in self._present(losses)]).sum()

    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def extra_repr(self) -> str:
        return f"weights={self._weights}"


@register_weighting
class Uncertainty(Weighting):
    """Homoscedastic uncertainty weighting (Kendall et al., 2018).

    total = sum_t exp(-s_t) * L_t + s_t with a learnable log-variance s_t per task (the form used
    by LibMTL, without the 1/2 factor for regression tasks). ``log_vars`` holds s in
    ``task_names`` order; the reported weight of a task is exp(-s_t).
    """

    name = "uncertainty"

    def __init__(self, task_names: Iterable[str], init_log_var: float = 0.0) -> None:
        super().__init__(task_names)
        if not math.isfinite(init_log_var):
            raise ValueError(f"uncertainty weighting: init_log_var must be finite, got {init_log_var!r}")
        self.log_vars = nn.Parameter(torch.full((len(self.task_names),), float(init_log_var)))

    def combine(
        self, losses: Mapping[str, Tensor | None], step: int | None = None, epoch: int | None = None
    ) -> Tensor:
        terms = []
        for i, _, loss in self._present(losses):
            s = self.log_vars[i]
            terms.append(torch.exp(-s) * loss + s)
        return torch.stack(terms).sum()

    def weights(self) -> dict[str, float]:
        w = torch.exp(-self.log_vars.detach()).tolist()
        return dict(zip(self.task_names, w, strict=True))


@register_weighting
class DWA(Weighting):
    """Dynamic Weight Average (Liu et al., 2019).

    With r_t = L_t(e-1) / L_t(e-2), the ratio of a task's average training loss over the last two
    epochs, the weights of epoch e are lambda_t = K * softmax(r / T)_t (K tasks, temperature T,
    default 2). Weights are 1 until two epochs have been recorded with :meth:`epoch_end`.

    ``epoch_end(avg_losses)`` takes each task's average loss of the finished epoch; called without
    an argument it uses the mean of the losses that :meth:`combine` saw during the epoch in
    training mode (calls in ``eval()`` mode are not counted); under data parallel those are each
    process's own, so pass the process-averaged means to keep the weights equal everywhere. The
    history lives in buffers, so it is saved and restored with ``state_dict``.
    """

    name = "dwa"

    def __init__(self, task_names: Iterable[str], temperature: float = 2.0) -> None:
        super().__init__(task_names)
        if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"dwa weighting: temperature must be a number > 0, got {temperature!r}")
        self.temperature = float(temperature)
        k = len(self.task_names)
        self.register_buffer("history", torch.zeros(2, k, dtype=torch.float64))  # [L(e-2), L(e-1)]
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.int64))
        self.register_buffer("loss_sum", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("lambdas", torch.ones(k, dtype=torch.float64))

    def combine(
        self, losses: Mapping[str, Tensor | None], step: int | None = None, epoch: int | None = None
    ) -> Tensor:
        terms = []
        for i, _, loss in self._present(losses):
            if self.training:
                self.loss_sum[i] += loss.detach().to(self.loss_sum)
                self.loss_count[i] += 1
            terms.append(self.lambdas[i].to(loss.dtype) * loss)
        return torch.stack(terms).sum()

    def epoch_end(self, avg_losses: Mapping[str, float] | None = None) -> None:
        """Record the finished epoch's average losses and update the weights for the next epoch."""
        if avg_losses is None:
            empty = [n for n, c in zip(self.task_names, self.loss_count.tolist(), strict=True) if c == 0]
            if empty:
                raise ValueError(f"dwa weighting: no loss was recorded this epoch for task(s) {empty}")
            current = (self.loss_sum / self.loss_count).tolist()
        else:
            missing = [n for n in self.task_names if n not in avg_losses]
            if missing:
                raise ValueError(f"dwa weighting: no average loss for task(s) {missing}")
            current = []
            for n in self.task_names:
                value = avg_losses[n]
                value = float(value.detach()) if isinstance(value, Tensor) else float(value)
                if not math.isfinite(value):
                    raise ValueError(f"dwa weighting: task '{n}': average loss {value} is not finite")
                current.append(value)
        self.history[0] = self.history[1]
        self.history[1] = torch.tensor(current, dtype=torch.float64, device=self.history.device)
        self.epochs_seen += 1
        self.loss_sum.zero_()
        self.loss_count.zero_()
        if int(self.epochs_seen) >= 2:
            ratio = self.history[1] / self.history[0].clamp_min(1e-12)
            k = len(self.task_names)
            self.lambdas.copy_(k * torch.softmax(ratio / self.temperature, dim=0))

    def weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.lambdas.tolist(), strict=True))

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}, temperature={self.temperature}"
