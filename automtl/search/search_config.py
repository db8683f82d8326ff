"""The AutoMTL search's hyper-parameters (:class:`SearchConfig`, validated on construction) and the
Gumbel-softmax temperature schedule they define (:func:`temperature`)."""

from __future__ import annotations

from dataclasses import dataclass

from .loop import TrainConfig, _is_int, _is_number
from .regularizers import BUDGET_MODES, COST_KINDS

__all__ = ["SearchConfig", "temperature"]


@dataclass
class SearchConfig(TrainConfig):
    """The AutoMTL search's hyper-parameters (AutoMTL's defaults where the paper gives one), on top
    of what every loop takes (:class:`~automtl.search.loop.TrainConfig`)."""

    # stage lengths, in optimiser steps
    warmup_steps: int = 200
    # "sample": each warm-up step every task takes a uniformly random option at every node, so each
    # branch is trained alone (specific branches start as copies of the shared ones and specialise);
    # "mix": AutoMTL's uniform mixture of the branches, specific branches copied from shared at the end
    warmup_paths: str = "mix"
    search_iterations: int = 500  # rounds of (weight_steps_per_iter, policy_steps_per_iter)
    weight_steps_per_iter: int = 1  # N
    policy_steps_per_iter: int = 1  # M
    finetune_steps: int = 500
    finetune_lr: float | None = None  # None: weight_lr
    # policy optimiser (Adam on the logits)
    policy_lr: float = 1e-2
    policy_weight_decay: float = 5e-4  # AutoMTL's
    # Gumbel-softmax temperature: tau_start * tau_decay ** (policy_step // tau_interval), >= tau_min;
    # tau_interval None: 1/50 of the search's policy steps, so tau anneals 50 times (5 -> 0.84) whatever its length
    tau_start: float = 5.0
    tau_decay: float = 0.965
    tau_interval: int | None = None
    tau_min: float = 0.0
    search_mode: str = "soft"  # gates of the weight steps: "soft" or "hard" (straight-through)
    policy_mode: str = "soft"  # gates of the policy steps
    # regularizers
    lambda_policy: float = 5e-3  # AutoMTL's 5e-4 let identical tasks split (docs/quality.md)
    sharpness: float = 6.0
    sharing_floor: float = 0.2  # the deepest node's prior weight (AutoMTL: 0), see sharing_regularizer
    budget_target: float | None = None  # fraction of T separate backbones, in (0, 1]
    budget_kind: str = "params"  # "params" or "flops"
    budget_weight: float = 1.0
    budget_mode: str = "max"  # "max": penalise above the target; "target": penalise any distance to it
    # derivation and fine-tuning
    derive: str = "argmax"  # "argmax" or "sample"
    sample_k: int = 8
    finetune_from: str = "supermodel"  # "supermodel" or "scratch"
    split_fractions: tuple[float, float, float] = (0.4, 0.4, 0.2)  # weights, policy, val

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("warmup_steps", "search_iterations", "weight_steps_per_iter", "policy_steps_per_iter",
                     "finetune_steps"):
            self._check(name, _is_int(getattr(self, name), 0), "an int >= 0")
        self._check("sample_k", _is_int(self.sample_k, 1), "an int >= 1")
        self._check("tau_interval", self.tau_interval is None or _is_int(self.tau_interval, 1), "None or an int >= 1")
        for name in ("policy_lr", "tau_start"):
            self._check(name, _is_number(getattr(self, name), 0, True), "a finite number > 0")
        self._check("finetune_lr", self.finetune_lr is None or _is_number(self.finetune_lr, 0, True),
                    "None or a finite number > 0")
        self._check("sharing_floor", _is_number(self.sharing_floor, 0) and self.sharing_floor <= 1,
                    "a number in [0, 1]")
        for name in ("policy_weight_decay", "lambda_policy", "sharpness", "budget_weight", "tau_min"):
            self._check(name, _is_number(getattr(self, name), 0), "a finite number >= 0")
        self._check("tau_decay", isinstance(self.tau_decay, int | float) and 0 < self.tau_decay <= 1,
                    "a number in (0, 1]")
        t = self.budget_target
        self._check("budget_target", t is None or (_is_number(t, 0, True) and t <= 1),
                    "None or a fraction in (0, 1] of T separate backbones")
        choices = {
            "search_mode": ("soft", "hard"), "policy_mode": ("soft", "hard"), "budget_kind": COST_KINDS,
            "warmup_paths": ("sample", "mix"),
            "budget_mode": BUDGET_MODES, "derive": ("argmax", "sample"), "finetune_from": ("supermodel", "scratch"),
        }
        for name, allowed in choices.items():
            self._check(name, getattr(self, name) in allowed, f"one of {allowed}")
        self._check("split_fractions", len(self.split_fractions) == 3, "three fractions (weights, policy, val)")


def temperature(policy_step: int, config: SearchConfig) -> float:
    """τ after ``policy_step`` policy steps: ``max(tau_min, tau_start · tau_decay^(step // tau_interval))``.

    ``tau_interval=None`` is 1/50 of the search's policy steps (at least 1)."""
    interval = config.tau_interval
    if interval is None:
        interval = max(1, config.search_iterations * config.policy_steps_per_iter // 50)
    return max(config.tau_min, config.tau_start * config.tau_decay ** (policy_step // interval))
