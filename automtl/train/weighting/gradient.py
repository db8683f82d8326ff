"""Gradient-level weightings: per-task gradients of the shared parameters, combined by a rule.

PCGrad (Yu et al., 2020, "Gradient Surgery for Multi-Task Learning").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .base import GradientWeighting, register_weighting

__all__ = ["PCGrad"]


@register_weighting
class PCGrad(GradientWeighting):
    """Projecting conflicting gradients (Yu et al., 2020).

    For every task i present, starting from g_i^PC = g_i, and for every other task j in a random
    order: when g_i^PC . g_j < 0 (the gradients conflict), g_i^PC -= (g_i^PC . g_j) / |g_j|^2 * g_j,
    the projection of g_i^PC onto the normal plane of g_j (the original g_j, as in the paper). The
    shared parameters get sum_i g_i^PC; the other parameters the gradient of the plain sum.

    The order is drawn with a CPU ``torch.Generator`` seeded by ``seed``: one permutation of the
    other tasks per task per step, so processes with the same seed draw the same orders. Its state
    is saved in ``state_dict`` (checkpoint and resume continue the same sequence of orders).
    """

    name = "pcgrad"

    def __init__(self, task_names: Iterable[str], seed: int = 0) -> None:
        super().__init__(task_names)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"pcgrad weighting: seed must be an integer, got {seed!r}")
        self.seed = seed
        self._gen = torch.Generator(device="cpu")
        self._gen.manual_seed(seed)

    def combine_gradients(self, grads: Tensor, tasks: Sequence[int]) -> Tensor:
        k = grads.shape[0]
        out = grads.clone()
        sq = (grads * grads).sum(dim=1)
        safe = torch.where(sq > 0, sq, torch.ones_like(sq))
        for i in range(k):
            others = [j for j in range(k) if j != i]
            order = torch.randperm(k - 1, generator=self._gen).tolist() if k > 1 else []
            for o in order:
                j = others[o]
                dot = torch.dot(out[i], grads[j])
                # no projection (an exact zero coefficient) unless the gradients conflict
                out[i] = out[i] - torch.clamp(dot, max=0) / safe[j] * grads[j]
        return out.sum(dim=0)

    def get_extra_state(self) -> Tensor:
        return self._gen.get_state()

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, Tensor) or state.dtype != torch.uint8:
            raise ValueError("pcgrad weighting: the saved state is not a random generator state (uint8 tensor)")
        self._gen.set_state(state.detach().cpu())

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}, seed={self.seed}"
