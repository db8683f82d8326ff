"""Policies: distributions over every choice node's options, per task, and the gates they give.

A policy is separate from the supermodel: the supermodel's forward takes gates ``(T, V, K)``
(or an architecture), and any policy makes them. Two implementations behind one registry:

* :class:`GumbelPolicy` (AutoMTL): relaxed gates by the Gumbel-softmax at a temperature
  (``soft``), or its straight-through one-hot (``hard``); trained by backpropagation;
* :class:`CategoricalPolicy` (TuNAS / MPNAS): independent categorical distributions, logits
  starting at 0, sampled paths (``sample``) trained by REINFORCE (:func:`reinforce_loss` with a
  :class:`MovingAverage` baseline).

Both give ``warmup`` (a uniform mix of the offered options) and ``fixed`` (a given pick) gates,
:meth:`Policy.sample`, :meth:`Policy.log_prob` and :meth:`Policy.entropy` of a pick. A node
offers ``len(choice.options)`` options; the columns past them are masked (probability 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..compiler.mtl import Choice

MODES = ("soft", "hard", "sample", "fixed", "warmup")


class Policy(nn.Module):
    """Per-task logits over each choice node's options, ``(T, V, K)``."""

    def __init__(self, tasks: int, choices: Sequence[Choice]) -> None:
        super().__init__()
        V = max(len(choices), 1)
        K = max((len(c.options) for c in choices), default=1)
        self.logits = nn.Parameter(torch.zeros(tasks, V, K))
        mask = torch.zeros(V, K, dtype=torch.bool)
        for c in choices:
            mask[c.index, : len(c.options)] = True
        if not choices:
            mask[0, 0] = True
        self.register_buffer("mask", mask, persistent=False)

    def _masked(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(~self.mask, float("-inf"))

    def probabilities(self) -> torch.Tensor:
        """Softmax of the logits over each node's options, ``(T, V, K)``."""
        return F.softmax(self._masked(self.logits), dim=-1)

    def argmax(self) -> torch.Tensor:
        """The most likely option per task and node, ``(T, V)``."""
        return self.probabilities().argmax(-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One option per task and node drawn from the policy, ``(T, V)`` long."""
        probs = self.probabilities().detach()
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])

    def log_prob(self, pick: torch.Tensor) -> torch.Tensor:
        """``log p(pick)`` per task ``(T,)``: the sum over nodes of the picked options' log-probabilities."""
        logp = F.log_softmax(self._masked(self.logits), dim=-1)
        return logp.gather(-1, pick.unsqueeze(-1)).squeeze(-1).sum(-1)

    def entropy(self) -> torch.Tensor:
        """Entropy per task and node ``(T, V)`` (nats): near 0 once a node is decided."""
        logp = F.log_softmax(self._masked(self.logits), dim=-1)
        p = logp.exp()
        return -(p * logp.masked_fill(~self.mask, 0.0)).sum(-1)

    def one_hot(self, pick: torch.Tensor) -> torch.Tensor:
        """Gates ``(T, V, K)`` that select ``pick`` ``(T, V)``."""
        return F.one_hot(pick, self.logits.shape[-1]).to(self.logits.dtype)

    def gates(self, mode: str, tau: float = 1.0, fixed: torch.Tensor | None = None,
              noise: torch.Tensor | None = None) -> torch.Tensor:
        """Option weights ``(T, V, K)`` for ``mode`` (see :data:`MODES`)."""
        if mode == "warmup":
            return (self.mask / self.mask.sum(-1, keepdim=True)).to(self.logits.dtype).expand_as(self.logits)
        if mode == "fixed":
            if fixed is None:
                raise ValueError("mode='fixed' needs an architecture")
            return self.one_hot(fixed)
        if mode == "sample":
            return self.one_hot(self.sample())
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        return self.relaxed(mode, tau, noise)

    def relaxed(self, mode: str, tau: float, noise: torch.Tensor | None) -> torch.Tensor:
        raise ValueError(f"{type(self).__name__} has no {mode!r} gates; use 'sample', 'fixed' or 'warmup'")


class GumbelPolicy(Policy):
    """AutoMTL's policy: Gumbel-softmax gates at temperature ``tau`` (``soft``) or straight-through (``hard``)."""

    def relaxed(self, mode: str, tau: float, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None:
            u = torch.rand_like(self.logits).clamp_(1e-10, 1 - 1e-7)
            noise = -torch.log(-torch.log(u))
        soft = F.softmax(self._masked((self.logits + noise) / tau), dim=-1)
        if mode == "soft":
            return soft
        hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
        return hard - soft.detach() + soft  # straight-through: forward one-hot, gradient of soft


class CategoricalPolicy(Policy):
    """TuNAS/MPNAS controller: independent categorical distributions, trained by REINFORCE.

    ``soft`` gates are the probabilities themselves (an expectation, for evaluation); a search
    samples paths with ``sample`` gates or :meth:`sample`, and steps on :func:`reinforce_loss`.
    """

    def relaxed(self, mode: str, tau: float, noise: torch.Tensor | None) -> torch.Tensor:
        if mode == "soft":
            return self.probabilities()
        return super().relaxed(mode, tau, noise)


def reinforce_loss(policy: Policy, pick: torch.Tensor, reward: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """REINFORCE: ``−Σ_t (r_t − b_t) · log p_t(pick_t)``; its gradient is the policy gradient estimate."""
    advantage = (torch.as_tensor(reward) - torch.as_tensor(baseline)).to(policy.logits).detach()
    return -(advantage * policy.log_prob(pick)).sum()


class MovingAverage(nn.Module):
    """An exponential moving average per task (the REINFORCE baseline; TuNAS momentum 0.95).

    The first value sets the average; after that ``b ← m·b + (1 − m)·r``.
    """

    def __init__(self, tasks: int, momentum: float = 0.95) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = momentum
        self.register_buffer("value", torch.zeros(tasks))
        self.register_buffer("started", torch.zeros(tasks, dtype=torch.bool))

    @torch.no_grad()
    def update(self, reward: torch.Tensor, tasks: torch.Tensor | None = None) -> torch.Tensor:
        """Fold ``reward`` ``(T,)`` (or one value per index in ``tasks``) in; returns the new average."""
        idx = torch.arange(self.value.numel()) if tasks is None else torch.as_tensor(tasks)
        r = torch.as_tensor(reward, dtype=self.value.dtype).reshape(-1)
        old = self.value[idx]
        new = torch.where(self.started[idx], self.momentum * old + (1 - self.momentum) * r, r)
        self.value[idx] = new
        self.started[idx] = True
        return self.value.clone()


POLICIES: dict[str, type[Policy]] = {"gumbel": GumbelPolicy, "categorical": CategoricalPolicy}


def make_policy(name: str, tasks: int, choices: Sequence[Choice], **kwargs: Any) -> Policy:
    """A policy by registry name, over ``choices`` for ``tasks`` tasks."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}") from None
    return cls(tasks, choices, **kwargs)
