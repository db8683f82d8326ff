"""Weightings that adapt every step from the tasks' loss values: FAMO and ABDP."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from .base import Reduce, Weighting, check_number, register_weighting

__all__ = ["ABDP", "FAMO"]

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


@register_weighting
class FAMO(Weighting):
    """Fast Adaptive Multitask Optimization (Liu, Liu, Jin, Stone and Liu, NeurIPS 2023).

    Task logits xi (0 at the start) give the weights z = softmax(xi). With D_t = L_t - m_t + eps
    (m_t the task's ``min_losses`` entry, default 0) the step minimises
    ``combine = sum_t z_t log D_t / c`` with c = sum_t z_t / D_t held constant (detached), whose
    gradient is sum_t (z_t / (c D_t)) grad L_t: per-loss factors that sum to 1; the division by
    D_t makes it the gradient of the weighted log-losses, so a task is not drowned out because its
    loss is on a smaller scale, and z steers which log-loss should fall faster.

    After the optimiser step, :meth:`after_step` takes the losses of the same batch at the new
    parameters and updates the logits from the decrease of each log-loss
    delta_t = log D_t(before) - log D_t(after): the gradient of xi is J^T delta with J the
    Jacobian of the softmax, i.e. g_t = z_t (delta_t - sum_s z_s delta_s), plus the decay
    ``gamma * xi``; a task whose log-loss fell more than the weighted mean loses weight. The step is
    xi -= lr * (g + gamma xi) (``optimizer="sgd"``, the paper's Algorithm 1) or an Adam step of
    that gradient (``optimizer="adam"``, default, as the authors' released code: betas (0.9, 0.999),
    eps 1e-8, the decay added to the gradient like ``torch.optim.Adam``'s weight_decay). A task
    without a loss before or after the step has delta 0. Defaults: lr 0.025, gamma 0.01.

    ``weights()`` reports z. The logits, the Adam moments and the log-losses recorded by the last
    training-mode :meth:`combine` are buffers (saved with ``state_dict``).
    """

    name = "famo"
    needs_post_step_losses = True

    def __init__(
        self,
        task_names: Iterable[str],
        lr: float = 0.025,
        gamma: float = 0.01,
        optimizer: str = "adam",
        eps: float = 1e-8,
        min_losses: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(task_names)
        self.lr = check_number("famo", "lr", lr, 0.0, low_open=True)
        self.gamma = check_number("famo", "gamma", gamma, 0.0)
        self.eps = check_number("famo", "eps", eps, 0.0)
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"famo weighting: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.optimizer = optimizer
        k = len(self.task_names)
        floors = torch.zeros(k, dtype=torch.float64)
        if min_losses is not None:
            extra = [n for n in min_losses if n not in self._index]
            if extra:
                raise ValueError(f"famo weighting: min_losses for unknown task(s) {extra}")
            for n, v in min_losses.items():
                floors[self._index[n]] = check_number("famo", f"min_losses['{n}']", v)
        self.register_buffer("min_losses", floors)
        self.register_buffer("logits", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("exp_avg", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("exp_avg_sq", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))
        self.register_buffer("prev_log", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("prev_mask", torch.zeros(k, dtype=torch.bool))

    def _shifted(self, index: int, name: str, loss: Tensor) -> Tensor:
        d = loss - self.min_losses[index].to(loss.dtype) + self.eps
        if not float(d.detach()) > 0:
            raise ValueError(f"famo weighting: task '{name}': loss {float(loss.detach()):.6g} minus its min_loss "
                             f"{float(self.min_losses[index]):.6g} is not > 0; set min_losses below the loss")
        return d

    def combine(
        self, losses: Mapping[str, Tensor | None], step: int | None = None, epoch: int | None = None
    ) -> Tensor:
        return self._combine(losses, None)

    def _total_to_backward(self, losses: Mapping[str, Tensor | None], reduce: Reduce | None,
                           step: int | None) -> Tensor:
        """With ``reduce`` (data parallel), c and the factors z_t / (c D_t) come from each task's loss
        averaged over the processes that have it, so the averaged gradient is that of the whole batch
        and the recorded log-losses agree everywhere."""
        return self._combine(losses, reduce)

    def _combine(self, losses: Mapping[str, Tensor | None], reduce: Reduce | None) -> Tensor:
        present = self._present(losses)
        z = torch.softmax(self.logits, dim=0)
        shifted = [self._shifted(i, n, loss) for i, n, loss in present]
        d = torch.stack([s.float() if s.dtype in (torch.float16, torch.bfloat16) else s for s in shifted])
        index = [i for i, _, _ in present]
        zp = z[index].to(d.dtype)
        if reduce is None:
            c = (zp / d.detach()).sum()
            self._record(index, torch.log(d.detach()))
            return (zp * torch.log(d)).sum() / c
        # each task's mean D over the processes that have it; sums and counts have one shape everywhere
        sums = d.new_zeros(2, len(self.task_names))
        sums[0, index] = d.detach()
        sums[1, index] = 1.0
        sums = reduce(sums)
        everywhere = [i for i, n in enumerate(sums[1].tolist()) if n > 0]
        log_d = torch.log(sums[0, everywhere] / sums[1, everywhere])
        z_all = z[everywhere].to(d.dtype)
        c = (z_all / log_d.exp()).sum()  # over the tasks of the whole batch
        self._record(everywhere, log_d)
        # the whole batch's value; the gradient sum_t z_t / (c D_t) grad L_t with the global c and D
        global_d = torch.ones_like(sums[0])
        global_d[everywhere] = log_d.exp()
        surrogate = (zp / (c * global_d[index]) * d).sum()
        return (z_all * log_d).sum() / c + surrogate - surrogate.detach()

    def _record(self, tasks: list[int], log_d: Tensor) -> None:
        """Keep the log-losses before the step for :meth:`after_step` (training mode only)."""
        if self.training:
            self.prev_mask.zero_()
            self.prev_log[tasks] = log_d.to(self.prev_log)
            self.prev_mask[tasks] = True

    def _log_shifted(self, values: Mapping[int, float]) -> dict[int, float]:
        out = {}
        for i, v in values.items():
            d = v - float(self.min_losses[i]) + self.eps
            if not d > 0:
                raise ValueError(f"famo weighting: task '{self.task_names[i]}': loss {v:.6g} minus its min_loss "
                                 f"{float(self.min_losses[i]):.6g} is not > 0; set min_losses below the loss")
            out[i] = math.log(d)
        return out

    def after_step(
        self, losses: Mapping[str, Tensor | float | None], before: Mapping[str, Tensor | float | None] | None = None
    ) -> None:
        """Update the logits from ``before`` (default: what the last training-mode combine saw) and
        ``losses``, the same batch's losses after the optimiser step."""
        after = self._log_shifted(self._values(losses, "loss"))
        if before is not None:
            old = self._log_shifted(self._values(before, "loss"))
        else:
            if not bool(self.prev_mask.any()):
                raise ValueError("famo weighting: after_step needs the losses before the step: call backward "
                                 "(or combine in training mode) first, or pass before=")
            old = {i: float(self.prev_log[i]) for i in range(len(self.task_names)) if bool(self.prev_mask[i])}
        delta = torch.zeros_like(self.logits)
        for i, v in after.items():
            if i in old:
                delta[i] = old[i] - v
        z = torch.softmax(self.logits, dim=0)
        grad = z * (delta - (z * delta).sum()) + self.gamma * self.logits
        if self.optimizer == "sgd":
            self.logits -= self.lr * grad
        else:
            b1, b2 = _ADAM_BETAS
            self.updates += 1
            t = int(self.updates)
            self.exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
            self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - b2**t)).add_(_ADAM_EPS)
            self.logits.addcdiv_(self.exp_avg, denom, value=-self.lr / (1 - b1**t))
        self.prev_mask.zero_()

    def weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, torch.softmax(self.logits, dim=0).tolist(), strict=True))

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}, lr={self.lr}, gamma={self.gamma}, optimizer={self.optimizer!r}"


@register_weighting
class ABDP(Weighting):
    """Adaptive Balanced Domain Prioritization for multi-domain training (formulation of this project).

    MPNAS (Wang et al., WACV 2021) describes ABDP in words: loss weights that adapt during
    training to each domain's difficulty so that hard domains are prioritised while the joint
    training stays balanced. Its formula could not be found, so this is the formulation used here:

    * difficulty: each domain's training loss, smoothed by an exponential moving average
      m_d <- momentum * m_d + (1 - momentum) * L_d (the first value seeds it), divided by its first
      value m_d(0): r_d = m_d / m_d(0), the fraction of its starting loss a domain still has
      (GradNorm's inverse training rate, Chen et al. 2018). Dividing by the start makes domains
      with different class counts (starting losses log C) comparable, and a domain whose loss
      falls slowly is the hard one;
    * priority relative to the others, balanced: lambda_d = K * softmax(log r / T)_d, i.e.
      lambda_d proportional to r_d ** (1 / T), normalised so the weights sum to K (the scale of the
      plain sum, as DWA, Liu et al. 2019). T (``temperature``, default 2) sets how strongly hard
      domains are favoured: T -> inf is equal weighting, small T nearly picks the hardest one.

    The total is sum_d lambda_d * L_d with lambda held constant. The weights move in
    :meth:`after_step` (once per optimiser step, with the step's losses; under data parallel the
    losses averaged over the processes) and are 1 until then; a domain not seen yet has r = 1. A
    first loss <= 0 is an error (its ratio is undefined). The state is in buffers (``state_dict``).
    """

    name = "abdp"

    def __init__(self, task_names: Iterable[str], momentum: float = 0.9, temperature: float = 2.0) -> None:
        super().__init__(task_names)
        self.momentum = check_number("abdp", "momentum", momentum, 0.0, 1.0, high_open=True)
        self.temperature = check_number("abdp", "temperature", temperature, 0.0, low_open=True)
        k = len(self.task_names)
        self.register_buffer("smoothed", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("start", torch.ones(k, dtype=torch.float64))
        self.register_buffer("seen", torch.zeros(k, dtype=torch.bool))
        self.register_buffer("lambdas", torch.ones(k, dtype=torch.float64))

    def combine(
        self, losses: Mapping[str, Tensor | None], step: int | None = None, epoch: int | None = None
    ) -> Tensor:
        return torch.stack([self.lambdas[i].to(loss.dtype) * loss for i, _, loss in self._present(losses)]).sum()

    def after_step(
        self, losses: Mapping[str, Tensor | float | None], before: Mapping[str, Tensor | float | None] | None = None
    ) -> None:
        """Fold the step's losses into each domain's moving average and recompute the weights."""
        values = self._values(losses, "loss")
        for i, v in values.items():
            if bool(self.seen[i]):
                self.smoothed[i] = self.momentum * self.smoothed[i] + (1 - self.momentum) * v
            else:
                if not v > 0:
                    raise ValueError(f"abdp weighting: task '{self.task_names[i]}': first loss {v:.6g} must be "
                                     "> 0 (the difficulty is the loss relative to its first value)")
                self.smoothed[i] = v
                self.start[i] = v
                self.seen[i] = True
        ratio = torch.where(self.seen, self.smoothed / self.start, torch.ones_like(self.start))
        log_ratio = torch.log(ratio.clamp_min(1e-12))
        self.lambdas.copy_(len(self.task_names) * torch.softmax(log_ratio / self.temperature, dim=0))

    def weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.lambdas.tolist(), strict=True))

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}, momentum={self.momentum}, temperature={self.temperature}"
