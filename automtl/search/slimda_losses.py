"""The losses and the label-free metric of SlimDA: SymNet's adaptation, SEED, UPEM, and a rank correlation.

* :func:`symnet_losses`: Domain-Symmetric Networks (Y. Zhang, H. Tang, K. Jia, M. Tan, "Domain-Symmetric
  Networks for Adversarial Domain Adaptation", CVPR 2019), as the paper defines them. A source
  classifier ``Cs`` and a target classifier ``Ct`` (K classes each) over shared features; ``Cst`` is
  their concatenation, a softmax over 2K outputs ``p``. The classifiers minimise the source
  cross-entropy of ``Cs`` and of ``Ct`` (cross-domain training: ``Ct`` learns the categories from source
  labels) plus the *domain discrimination* loss
  ``-1/ns Σ_s log Σ_{k<K} p_k(x_s) - 1/nt Σ_t log Σ_{k>=K} p_k(x_t)``
  (source mass on the ``Cs`` half, target mass on the ``Ct`` half). The feature extractor minimises
  the *category-level confusion* ``-1/(2ns) Σ_s [log p_{y_s}(x_s) + log p_{y_s+K}(x_s)]`` plus
  ``λ`` times the *domain-level confusion* ``-1/(2nt) Σ_t [log Σ_{k<K} p_k(x_t) + log Σ_{k>=K} p_k(x_t)]``
  and the target entropy of ``q_k = p_k + p_{k+K}`` (``λ`` ramps from 0 to 1, :func:`confusion_weight`).
* :func:`seed_loss`: SEED, stochastic ensemble distillation (Meng et al., "Slimmable Domain
  Adaptation", CVPR 2022). The target predictions of the networks of one model batch are averaged
  (a Monte-Carlo ensemble over the bank), sharpened with a temperature ``T < 1`` (``q ∝ p̄^{1/T}``,
  which lowers the entropy) and distilled into every sampled network: the mean over networks of the
  cross-entropy ``-Σ_k q_k log p_k``. The paper's exact weighting of the ensemble (its "model
  confidence") is not available here; this formulation averages the members' probabilities
  equally, which is a Monte-Carlo estimate of the bank's expected prediction.
* :func:`upem`: UPEM, the unsupervised performance evaluation metric of SlimDA: the discrepancy
  between a candidate network's target predictions and the anchor's (the largest network). The
  paper's exact discrepancy is not available here; this one is the mean Jensen-Shannon divergence
  between the two softmax outputs (symmetric, bounded by log 2, 0 for the anchor itself). Smaller
  is taken to be better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["confusion_weight", "seed_loss", "sharpen", "spearman", "symnet_losses", "upem"]


def _half_mass(st: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``log Σ_{k<K} p_k`` and ``log Σ_{k>=K} p_k`` of the 2K-way softmax of ``st`` (stable)."""
    total = torch.logsumexp(st, 1)
    return torch.logsumexp(st[:, :k], 1) - total, torch.logsumexp(st[:, k:], 1) - total


def symnet_losses(src_s: torch.Tensor, src_t: torch.Tensor, labels: torch.Tensor, tgt_s: torch.Tensor,
                  tgt_t: torch.Tensor) -> dict[str, torch.Tensor]:
    """SymNet's five terms from the logits of ``Cs`` and ``Ct`` on a source batch (with ``labels``) and
    a target batch: ``task_s``, ``task_t``, ``domain`` (the classifiers'), ``category``,
    ``domain_confusion``, ``entropy`` (the feature extractor's). Which parameters each term trains is
    the caller's business (the classifiers' terms on detached features, the extractor's through
    detached classifier weights)."""
    k = src_s.shape[1]
    src_st, tgt_st = torch.cat([src_s, src_t], 1), torch.cat([tgt_s, tgt_t], 1)
    src_lo, _ = _half_mass(src_st, k)
    tgt_lo, tgt_hi = _half_mass(tgt_st, k)
    log_p_src = F.log_softmax(src_st, 1)
    p_tgt = F.softmax(tgt_st, 1)
    q = p_tgt[:, :k] + p_tgt[:, k:]
    own, other = log_p_src.gather(1, labels[:, None]), log_p_src.gather(1, labels[:, None] + k)
    return {
        "task_s": F.cross_entropy(src_s, labels),
        "task_t": F.cross_entropy(src_t, labels),
        "domain": -src_lo.mean() - tgt_hi.mean(),
        "category": -0.5 * (own.mean() + other.mean()),
        "domain_confusion": -0.5 * (tgt_lo.mean() + tgt_hi.mean()),
        "entropy": -(q * torch.log(q.clamp_min(1e-12))).sum(1).mean(),
    }


def confusion_weight(progress: float) -> float:
    """SymNet's ramp of the confusion terms, ``2 / (1 + exp(-10 p)) - 1`` at training progress ``p`` in [0, 1]."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """``p^{1/T}`` renormalised over the last dimension (``T < 1`` sharpens, ``T = 1`` keeps ``p``)."""
    if temperature <= 0:
        raise ValueError(f"the sharpening temperature must be > 0, got {temperature}")
    logp = torch.log(p.clamp_min(1e-12)) / temperature
    return F.softmax(logp, -1)


def seed_loss(student_logits: Sequence[torch.Tensor], teacher_logits: Sequence[torch.Tensor],
              temperature: float) -> torch.Tensor:
    """SEED: the sharpened mean of the teachers' softmax (no gradient) distilled into every student:
    the mean over students and samples of ``-Σ_k q_k log softmax(student)_k``."""
    with torch.no_grad():
        ensemble = torch.stack([F.softmax(t.float(), -1) for t in teacher_logits]).mean(0)
        q = sharpen(ensemble, temperature)
    losses = [-(q * F.log_softmax(s.float(), -1)).sum(-1).mean() for s in student_logits]
    return torch.stack(losses).mean()


def upem(candidate_logits: torch.Tensor, anchor_logits: torch.Tensor) -> float:
    """UPEM: the mean Jensen-Shannon divergence between the candidate's and the anchor's predictions."""
    p, a = F.softmax(candidate_logits.float(), -1), F.softmax(anchor_logits.float(), -1)
    m = 0.5 * (p + a)
    logm = torch.log(m.clamp_min(1e-12))

    def kl(x: torch.Tensor) -> torch.Tensor:
        return (x * (torch.log(x.clamp_min(1e-12)) - logm)).sum(-1)

    return float((0.5 * (kl(p) + kl(a))).mean())


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (ties get their mean rank)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"spearman needs two sequences of one length >= 2, got {len(a)} and {len(b)}")

    def ranks(v: Sequence[float]) -> torch.Tensor:
        t = torch.tensor(list(v), dtype=torch.float64)
        order = torch.argsort(t)
        r = torch.empty_like(t)
        r[order] = torch.arange(len(t), dtype=torch.float64)
        for value in torch.unique(t):  # ties: the mean of their ranks
            tie = t == value
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else 0.0
