"""Policy regularizers of the search (DESIGN §5): the AutoMTL sharing prior and a cost budget.

Both read the soft option probabilities ``g = model.policy.probabilities()``, shaped
``(T, V, K)``, and find each node's options through its choice (never by position).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..compiler.mtl import Choice
    from ..model.supermodel import SuperModel

__all__ = ["BUDGET_MODES", "COST_KINDS", "CostModel", "budget_penalty", "fit_to_budget", "shared_columns",
           "sharing_regularizer"]

COST_KINDS = ("params", "flops")
BUDGET_MODES = ("max", "target")


def sharing_regularizer(
    probs: torch.Tensor, depths: Sequence[int] | torch.Tensor, sharpness: float = 6.0,
    shared: Sequence[int] | torch.Tensor | None = None, floor: float = 0.0,
) -> torch.Tensor:
    """AutoMTL's prior towards sharing the lower layers, unweighted (multiply by ``λ_policy``).

    ``Σ_t Σ_v ((D − d_v)/D) · Σ_{k ≠ sh(v)} softplus(s·(g_k − g_sh(v)))`` for ``probs`` of shape
    ``(T, V, K)``, node depths ``d_v`` (choice nodes on the longest path from the input, inclusive),
    ``D = max(d_v)`` and ``sh(v)`` the column of node v's shared option (``shared``, from
    :func:`shared_columns`; column 0 when not given). The shallower a node, the more it costs a
    task to leave the shared option there; the deepest nodes are free. A column a node does not
    offer has ``g = 0`` (the policy masks it) and still counts ``softplus(−s·g_sh)``; a node
    without a shared option (``sh = −1``) is not regularized. ``floor`` lifts every node's weight to
    ``floor + (1 − floor)·(D − d_v)/D`` (AutoMTL: 0), so the deepest nodes too break ties towards sharing.
    """
    if probs.dim() != 3:
        raise ValueError(f"probs must be (tasks, nodes, options), got {tuple(probs.shape)}")
    d = torch.as_tensor(depths, dtype=probs.dtype, device=probs.device)
    if d.shape != (probs.shape[1],):
        raise ValueError(f"{d.numel()} depths for {probs.shape[1]} choice nodes")
    if d.numel() == 0:
        return probs.sum() * 0
    top = d.max()
    if not bool(top > 0):
        raise ValueError(f"node depths must be >= 1, got {d.tolist()}")
    weight = floor + (1 - floor) * (top - d) / top  # (V,)
    V, K = probs.shape[1:]
    sh = torch.zeros(V, dtype=torch.long) if shared is None else torch.as_tensor(shared, dtype=torch.long)
    has = (sh >= 0).to(probs.device)
    sh = sh.clamp_min(0).to(probs.device)
    g_sh = probs.gather(-1, sh.view(1, V, 1).expand(probs.shape[0], V, 1))  # (T, V, 1)
    others = torch.ones(V, K, dtype=torch.bool, device=probs.device)
    others[torch.arange(V, device=probs.device), sh] = False
    per = (F.softplus(sharpness * (probs - g_sh)) * others).sum(-1)  # (T, V)
    return (per * (weight * has)).sum()


def shared_columns(choices: Sequence[Choice]) -> torch.Tensor:
    """The gate column of each choice node's ``"shared"``-bank option (−1 where it has none)."""
    cols = [next((k for k, o in enumerate(c.options) if o.bank == "shared"), -1) for c in choices]
    return torch.tensor(cols, dtype=torch.long)


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

    Options are sampled independently per (task, node) from ``probs`` ``(T, V, K)``; each
    option's params and FLOPs come from its choice kind (:meth:`ChoiceKind.cost
    <automtl.model.choices.ChoiceKind.cost>`), and its bank says how copies add up: a bank shared
    by whoever picks the option (``"shared"``, a group's, a block's) counts once if any task uses
    it, ``|W|·(1 − Π_t(1 − p_t,o))``; a task's own bank or a weightless option counts per task,
    ``|W|·Σ_t p_t,o`` (an identity costs nothing).

    * ``params``: exact in expectation. Batch norms are counted like the derived model holds
      them: ``bn="specific"`` T copies, ``bn="follow"`` by the option of the choice they follow
      (the shared bank once if any task shares, one bank per task otherwise); non-searchable
      weights and the heads are constants, counted once.
    * ``flops``: an approximation. ``s`` (the probability that all tasks still hold the same
      value) is propagated from the input (1, or 0 for multi-domain inputs): an option on a
      shared bank costs ``F·(s·(1 − Π(1 − p)) + (1 − s)·Σ p)``, since shared computation runs
      once only while its input is shared; other operators cost ``F·(s + (1 − s)·T)``; an
      operator with several inputs has ``s = Π s_inputs`` (independence assumed). Exact for
      one-hot policies on chains; with partly shared inputs (3+ tasks) it over-counts.

    The baseline is T separate backbones plus the heads, as in ``MultiTaskModel.report()``.
    """

    def __init__(self, model: SuperModel, kind: str = "params", multi_domain: bool = False) -> None:
        from ..model.choices import get_choice_kind
        from ..model.derive import head_flops

        if kind not in COST_KINDS:
            raise ValueError(f"budget kind must be one of {COST_KINDS}, not {kind!r}")
        self.kind = kind
        self.multi_domain = multi_domain
        self.tasks = len(model.task_names)
        g = model.graph
        mtl = {n.name: n for n in model.mtl_graph}
        self.choice_of = {c.node: c for c in model.choices}
        V = max(len(model.choices), 1)
        K = max((len(c.options) for c in model.choices), default=1)
        z = lambda: torch.zeros(V, K, dtype=torch.float64)  # noqa: E731
        # per (node, option): params counted once if any task picks it / once per task picking it; FLOPs
        self._p_any, self._p_sum, self._flops_of = z(), z(), z()
        self._bank_shared = torch.zeros(V, K, dtype=torch.bool)  # picking it on a shared input computes once
        self._identity = torch.zeros(V, K, dtype=torch.bool)
        const = sum(p.numel() for p in model.heads.parameters())
        for node in g:
            c = self.choice_of.get(node.name)
            if c is not None:
                ck = get_choice_kind(c.choice_kind)
                m = mtl[node.name]
                in_shape = g[node.inputs[0]].shape
                for k, o in enumerate(c.options):
                    params, flops = ck.cost(m, in_shape, o)
                    shared_bank = o.bank not in ("task", None)
                    (self._p_any if shared_bank else self._p_sum)[c.index, k] += params
                    self._flops_of[c.index, k] = flops
                    self._bank_shared[c.index, k] = shared_bank
                    self._identity[c.index, k] = ck.is_identity(c, o)
            elif node.kind == "batch_norm":
                a = mtl[node.name].attrs
                if a["gate"] is None:
                    const += node.params * (1 if a["branches"] == ("shared",) else self.tasks)
                else:
                    for k, b in enumerate(a["branches"]):
                        (self._p_any if b == "shared" else self._p_sum)[a["gate"], k] += node.params
            else:
                const += node.params
        self._const = float(const)
        self._graph = g
        self._mtl = mtl
        trunk_shape = g[g.outputs[0]].shape
        self._head_params = sum(p.numel() for p in model.heads.parameters())
        self._head_flops = sum(head_flops(model.heads[t], trunk_shape) for t in model.task_names)

    # --- baseline -----------------------------------------------------------------------------
    def baseline(self) -> dict[str, int]:
        """Params and FLOPs of T separate single-task models (what ``report()["separate"]`` says)."""
        g = self._graph
        return {"params": self.tasks * g.params + self._head_params, "flops": self.tasks * g.flops + self._head_flops}

    # --- expected cost ------------------------------------------------------------------------
    def expected(self, probs: torch.Tensor) -> torch.Tensor:
        """The expected cost (params or FLOPs) of the derived model under ``probs`` ``(T, V, K)``."""
        if self.kind == "params":
            return self._params(probs)
        return self._flops(probs)

    def ratio(self, probs: torch.Tensor) -> torch.Tensor:
        """Expected cost over the cost of T separate backbones (plus heads)."""
        return self.expected(probs) / float(self.baseline()[self.kind])

    def _params(self, probs: torch.Tensor) -> torch.Tensor:
        p = probs.to(torch.float64) if probs.dtype != torch.float64 else probs
        any_ = 1 - torch.prod(1 - p, dim=0)  # (V, K)
        total = (self._p_any.to(p.device) * any_ + self._p_sum.to(p.device) * p.sum(0)).sum()
        return (total + self._const).to(probs.dtype)

    def _flops(self, probs: torch.Tensor) -> torch.Tensor:
        p = probs.to(torch.float64) if probs.dtype != torch.float64 else probs
        T = float(self.tasks)
        one = p.new_ones(())
        same: dict[str, torch.Tensor] = {}
        choice_in: dict[int, torch.Tensor] = {}
        total = p.new_zeros(())
        shared_bank = self._bank_shared.to(p.device)
        identity = self._identity.to(p.device)
        flops_of = self._flops_of.to(p.device)
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
                pv = p[:, c.index]  # (T, K)
                all_, any_, n = torch.prod(pv, 0), 1 - torch.prod(1 - pv, 0), pv.sum(0)
                sb = shared_bank[c.index]
                per = torch.where(sb, s_in * any_ + (1 - s_in) * n, n)
                total = total + (flops_of[c.index] * per).sum()
                same[node.name] = s_in * (all_ * (sb | identity[c.index])).sum()
                choice_in[c.index] = s_in
                continue
            a = self._mtl[node.name].attrs if node.kind == "batch_norm" else {}
            if node.kind == "batch_norm" and a["gate"] is not None:
                v = a["gate"]
                pv = p[:, v, : len(a["branches"])]
                s0 = choice_in.get(v, s_in)
                sb = torch.tensor([b == "shared" for b in a["branches"]], device=p.device)
                any_, n = 1 - torch.prod(1 - pv, 0), pv.sum(0)
                total = total + F_ * torch.where(sb, s0 * any_ + (1 - s0) * n, n).sum()
                same[node.name] = s0 * (torch.prod(pv, 0) * sb).sum()
                continue
            if node.kind == "batch_norm" and a["branches"] != ("shared",):
                total = total + F_ * T
                same[node.name] = one * 0.0
                continue
            total = total + F_ * (s_in + (1 - s_in) * T)
            same[node.name] = s_in
        return (total + self._head_flops).to(probs.dtype)
