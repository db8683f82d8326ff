"""Policy regularizers of the search (DESIGN §5): the AutoMTL sharing prior and a cost budget.

Both read the soft branch probabilities ``g = model.policy.probabilities()``, shaped
``(T, V, 3)`` over (shared, specific, skip). A choice node without a skip branch has
``g_skip = 0`` there (the policy masks it), and the sharing term still counts its
``softplus(s·(0 − g_shared))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..compiler.mtl import SHARED, SKIP, SPECIFIC

if TYPE_CHECKING:
    from ..model.supermodel import SuperModel

__all__ = ["BUDGET_MODES", "COST_KINDS", "CostModel", "budget_penalty", "fit_to_budget", "sharing_regularizer"]

COST_KINDS = ("params", "flops")
BUDGET_MODES = ("max", "target")


def sharing_regularizer(
    probs: torch.Tensor, depths: Sequence[int] | torch.Tensor, sharpness: float = 6.0
) -> torch.Tensor:
    """AutoMTL's prior towards sharing the lower layers, unweighted (multiply by ``λ_policy``).

    ``Σ_t Σ_v ((D − d_v)/D) · [softplus(s·(g_spec − g_shared)) + softplus(s·(g_skip − g_shared))]``
    for ``probs`` of shape ``(T, V, 3)``, node depths ``d_v`` (searchable operators on the
    longest path from the input, inclusive) and ``D = max(d_v)``: the shallower a node, the
    more it costs a task to leave the shared branch there; the deepest nodes are free.
    """
    if probs.dim() != 3 or probs.shape[-1] != 3:
        raise ValueError(f"probs must be (tasks, nodes, 3), got {tuple(probs.shape)}")
    d = torch.as_tensor(depths, dtype=probs.dtype, device=probs.device)
    if d.shape != (probs.shape[1],):
        raise ValueError(f"{d.numel()} depths for {probs.shape[1]} choice nodes")
    if d.numel() == 0:
        return probs.sum() * 0
    top = d.max()
    if not bool(top > 0):
        raise ValueError(f"node depths must be >= 1, got {d.tolist()}")
    weight = (top - d) / top  # (V,)
    g_sh, g_sp, g_sk = probs[..., SHARED], probs[..., SPECIFIC], probs[..., SKIP]
    per = F.softplus(sharpness * (g_sp - g_sh)) + F.softplus(sharpness * (g_sk - g_sh))
    return (per * weight).sum()


def budget_penalty(ratio: torch.Tensor, target: float, weight: float = 1.0, mode: str = "max") -> torch.Tensor:
    """The budget term on the expected cost ratio (cost / cost of T separate backbones).

    ``mode="max"``: ``weight · relu(ratio − target)``, zero while within the budget;
    ``mode="target"``: ``weight · |ratio − target|``, which also pulls a cheaper policy up to the target.
    """
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0.0 < target <= 1.0:
        raise ValueError(f"budget target must be in (0, 1] (a fraction of T separate backbones), got {target!r}")
    if mode not in BUDGET_MODES:
        raise ValueError(f"budget mode must be one of {BUDGET_MODES}, not {mode!r}")
    gap = ratio - target
    return weight * (F.relu(gap) if mode == "max" else gap.abs())


def fit_to_budget(
    probs: torch.Tensor, pick: torch.Tensor, ratio_of: Callable[[torch.Tensor], float], target: float,
    fill: bool = False,
) -> torch.Tensor:
    """Adjust an architecture ``pick`` (branch index per task and node, ``(T, V)``) to a cost budget.

    The argmax of a policy whose *expected* cost meets a budget need not meet it (a spread
    policy rounds every node the same way). Greedily, while the cost ratio is above ``target``,
    the move to a cheaper architecture that loses the least log-probability per unit of cost
    saved is made; with ``fill``, moves to dearer architectures that lose the least
    log-probability per unit of cost added are then made while the ratio stays within
    ``target``. A move sends the k tasks of one node that lose least to one branch (k = 1..T:
    two tasks leaving ``specific`` for ``shared`` save a weight where one alone saves nothing).
    ``ratio_of`` maps a ``(T, V)`` pick to its cost ratio; unavailable branches (probability 0)
    are never chosen.
    """
    pick = pick.clone()
    logp = probs.detach().double().clamp_min(0).log()
    T, V, B = probs.shape
    current = ratio_of(pick)
    eps = 1e-12

    def best_move(cheaper: bool) -> tuple[torch.Tensor, float] | None:
        best: tuple[float, int, torch.Tensor, float] | None = None
        order = 0
        for v in range(V):
            for b in range(B):
                movers = [t for t in range(T) if int(pick[t, v]) != b and math.isfinite(float(logp[t, v, b]))]
                movers.sort(key=lambda t: float(logp[t, v, int(pick[t, v])] - logp[t, v, b]))
                trial = pick.clone()
                lost = 0.0
                for t in movers:
                    lost += float(logp[t, v, int(pick[t, v])] - logp[t, v, b])
                    trial[t, v] = b
                    r = ratio_of(trial)
                    delta = r - current
                    ok = delta < -eps if cheaper else (delta > eps and r <= target + eps)
                    if ok:
                        order += 1
                        key = (lost / abs(delta), order)
                        if best is None or key < best[:2]:
                            best = (key[0], key[1], trial.clone(), r)
        return None if best is None else (best[2], best[3])

    while current > target + eps:
        move = best_move(cheaper=True)
        if move is None:
            break
        pick, current = move
    while fill:
        move = best_move(cheaper=False)
        if move is None:
            break
        pick, current = move
    return pick


class CostModel:
    """Differentiable expected cost of the model derived from a policy, and its exact baseline.

    Branches are sampled independently per (task, node) from ``probs``, so a shared weight
    counts once if any task uses it: ``|W|·(1 − Π_t(1 − p_t,shared))``, plus ``|W|·Σ_t p_t,specific``
    and ``|projection|·Σ_t p_t,skip`` (an identity skip is free).

    * ``params``: exact in expectation. Batch norms are counted like the derived model holds
      them: ``bn="specific"`` T copies, ``bn="follow"`` by the gate of the choice they follow
      (the shared bank once if any task shares, one specific / skip bank per task taking it);
      non-searchable weights and the heads are constants, counted once.
    * ``flops``: an approximation. ``s`` (the probability that all tasks still hold the same
      value) is propagated from the input (1, or 0 for multi-domain inputs): a shared branch
      costs ``F·(s·(1 − Π(1 − p_shared)) + (1 − s)·Σ p_shared)``, since shared computation runs
      once only while its input is shared; other operators cost ``F·(s + (1 − s)·T)``; an
      operator with several inputs has ``s = Π s_inputs`` (independence assumed). Exact for
      one-hot policies on chains; with partly shared inputs (3+ tasks) it over-counts.

    The baseline is T separate backbones plus the heads, as in ``MultiTaskModel.report()``.
    """

    def __init__(self, model: SuperModel, kind: str = "params", multi_domain: bool = False) -> None:
        if kind not in COST_KINDS:
            raise ValueError(f"budget kind must be one of {COST_KINDS}, not {kind!r}")
        self.kind = kind
        self.multi_domain = multi_domain
        self.tasks = len(model.task_names)
        g = model.graph
        mtl = {n.name: n for n in model.mtl_graph}
        self.choice_of = {c.node: c for c in model.choices}
        V = max(len(model.choices), 1)
        w = torch.zeros(V, dtype=torch.float64)
        proj = torch.zeros(V, dtype=torch.float64)
        bn_follow = torch.zeros(V, 3, dtype=torch.float64)  # follow-BN params per gate and bank
        const = sum(p.numel() for p in model.heads.parameters())
        shapes = {m.index: m.weight_shape for m in model.mixed_modules()}
        self._area = {i: _prod(s[2:]) for i, s in shapes.items()}  # kernel area: projection FLOPs = F / area
        for node in g:
            if node.name in self.choice_of:
                c = self.choice_of[node.name]
                w[c.index] = node.params
                if c.skip == "projection":
                    shape = shapes[c.index]
                    proj[c.index] = shape[0] * shape[1]
            elif node.kind == "batch_norm":
                a = mtl[node.name].attrs
                if a["gate"] is None:
                    const += node.params * (1 if a["branches"] == ("shared",) else self.tasks)
                else:
                    for b in a["branches"]:
                        bn_follow[a["gate"], ("shared", "specific", "skip").index(b)] += node.params
            else:
                const += node.params
        self._w, self._proj, self._bn, self._const = w, proj, bn_follow, float(const)
        self._graph = g
        self._mtl = mtl
        self._head_flops: float | None = None
        self._baseline: dict[str, int] | None = None
        self._model = model

    # --- baseline -----------------------------------------------------------------------------
    def baseline(self) -> dict[str, int]:
        """Params and FLOPs of T separate single-task models (what ``report()["separate"]`` says)."""
        if self._baseline is None:
            heads, flops = self._heads()
            g = self._graph
            self._baseline = {"params": self.tasks * g.params + heads, "flops": self.tasks * g.flops + flops}
        return self._baseline

    def _heads(self) -> tuple[int, int]:
        """Head params, and head FLOPs from one derived model (heads cost the same in every derivation)."""
        if self._head_flops is None:
            from ..model.derive import derive

            m = self._model
            derived = derive(m, m.uniform_architecture("shared"), multi_domain=self.multi_domain)
            self._head_flops = float(sum(n.flops for n in derived.graph if n.name.startswith("head.")))
        return sum(p.numel() for p in self._model.heads.parameters()), int(self._head_flops)

    # --- expected cost ------------------------------------------------------------------------
    def expected(self, probs: torch.Tensor) -> torch.Tensor:
        """The expected cost (params or FLOPs) of the derived model under ``probs`` ``(T, V, 3)``."""
        if self.kind == "params":
            return self._params(probs)
        return self._flops(probs)

    def ratio(self, probs: torch.Tensor) -> torch.Tensor:
        """Expected cost over the cost of T separate backbones (plus heads)."""
        return self.expected(probs) / float(self.baseline()[self.kind])

    def _params(self, probs: torch.Tensor) -> torch.Tensor:
        p = probs.to(torch.float64) if probs.dtype != torch.float64 else probs
        w = self._w.to(p.device)
        proj = self._proj.to(p.device)
        bn = self._bn.to(p.device)
        any_shared = 1 - torch.prod(1 - p[..., SHARED], dim=0)  # (V,)
        n_spec = p[..., SPECIFIC].sum(0)
        n_skip = p[..., SKIP].sum(0)
        total = ((w + bn[:, 0]) * any_shared + (w + bn[:, 1]) * n_spec + (proj + bn[:, 2]) * n_skip).sum()
        return (total + self._const).to(probs.dtype)

    def _flops(self, probs: torch.Tensor) -> torch.Tensor:
        p = probs.to(torch.float64) if probs.dtype != torch.float64 else probs
        T = float(self.tasks)
        one = p.new_ones(())
        same: dict[str, torch.Tensor] = {}
        choice_in: dict[int, torch.Tensor] = {}
        total = p.new_zeros(())
        for node in self._graph:
            if node.kind == "input":
                same[node.name] = one * (0.0 if self.multi_domain else 1.0)
                continue
            s_in = one
            for i in node.inputs:
                s_in = s_in * same[i]
            F_ = float(node.flops)
            c = self.choice_of.get(node.name)
            if c is not None:
                pv = p[:, c.index]
                all_sh = torch.prod(pv[:, SHARED])
                any_sh = 1 - torch.prod(1 - pv[:, SHARED])
                total = total + F_ * (s_in * any_sh + (1 - s_in) * pv[:, SHARED].sum()) + F_ * pv[:, SPECIFIC].sum()
                if c.skip == "projection":
                    total = total + (F_ / self._area[c.index]) * pv[:, SKIP].sum()
                    same[node.name] = s_in * all_sh
                elif c.skip == "identity":
                    same[node.name] = s_in * (all_sh + torch.prod(pv[:, SKIP]))
                else:
                    same[node.name] = s_in * all_sh
                choice_in[c.index] = s_in
                continue
            a = self._mtl[node.name].attrs if node.kind == "batch_norm" else {}
            if node.kind == "batch_norm" and a["gate"] is not None:
                v = a["gate"]
                pv = p[:, v]
                s0 = choice_in.get(v, s_in)
                any_sh = 1 - torch.prod(1 - pv[:, SHARED])
                total = total + F_ * (s0 * any_sh + (1 - s0) * pv[:, SHARED].sum())
                total = total + F_ * pv[:, SPECIFIC].sum()
                if "skip" in a["branches"]:
                    total = total + F_ * pv[:, SKIP].sum()
                same[node.name] = s0 * torch.prod(pv[:, SHARED])
                continue
            if node.kind == "batch_norm" and a["branches"] != ("shared",):
                total = total + F_ * T
                same[node.name] = one * 0.0
                continue
            total = total + F_ * (s_in + (1 - s_in) * T)
            same[node.name] = s_in
        _, head_flops = self._heads()
        return (total + head_flops).to(probs.dtype)


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out
