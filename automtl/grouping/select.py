"""Exact network selection under an inference budget (Standley et al.), with the HOA and ESA approximations.

Given a :class:`~automtl.grouping.table.Table` and a budget (in full networks), :func:`select` chooses the set
of networks with total cost <= budget that minimises the sum over tasks of the lowest loss any chosen network
gives the task. Every task must be served: a budget below the cheapest cover of all tasks is an error (the
paper counts an unserved task as a very large loss, so whenever a cover fits, the optimum covers every task).

**Method.** Dynamic programming over subsets of tasks, exact by construction (no tolerance, no heuristic).
In an optimal selection each task is read from its best chosen network, so the chosen networks split the
tasks into groups, one per network. ``best[A]`` (for every task subset ``A``) keeps, per total cost, the best
way to serve exactly ``A`` with networks that each serve at least one of its tasks; it is built from the
subset holding ``A``'s lowest task and every network covering that subset. Only cost/loss trade-offs that are
not dominated are kept (higher cost must mean strictly lower loss), and costs over the budget are dropped.
Losses and costs are compared as exact rational numbers (the decimal a float prints as), so ties are real
ties. Time grows about 3x per task: 10 tasks (1,033 networks) take 0.1-0.2 s (docs/grouping.md).

**Ties.** Among selections with the same total loss the one chosen has (1) the lower cost, then (2) fewer
networks, then (3) the smaller list of networks, each network ordered by its tasks' positions in the table's
task order (then by cost, half before full), the lists compared item by item. A task is read from the chosen
network with its lowest loss, the first in that order on a tie. Since costs are positive, rule (1) means no
chosen network is useless: each gives some task a loss strictly lower than every other chosen network.

**HOA** (``approx="hoa"``): only single-task and pair networks are needed. Networks of <= 2 tasks keep their
losses; for every subset ``S`` of >= 3 tasks a full-size network is estimated, task ``t``'s loss being the
mean of ``t``'s loss in the full-size pair networks ``{t, u}`` with ``u`` in ``S`` that the table holds (a
subset where some task has no such pair is not a candidate). Rows of >= 3 tasks in the table are ignored.

**ESA** (early-stopping approximation) needs nothing special: select on the table of losses of networks
trained for a fraction of the steps, and score on the test table of the fully trained ones::

    select(read_table("early.csv"), 2, score_with=read_table("test.csv"))

``score_with`` (a table of test losses) scores a selection: each task's lowest test loss over the chosen
networks, each looked up by task set and cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import combinations
from typing import Any

from .table import FULL_COST, GroupingError, Network, Table

APPROXIMATIONS = (None, "hoa")


def exact(value: float | int | str | Fraction) -> Fraction:
    """``value`` as the exact rational it denotes: floats as the decimal they print as (0.1 is 1/10)."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise GroupingError(f"{value!r} is not a finite number")
        return Fraction(repr(value))
    try:
        return Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        raise GroupingError(f"{value!r} is not a number") from None


@dataclass(frozen=True)
class Selection:
    """The networks chosen for one budget, what they cost, and their estimated and scored losses.

    ``estimated_loss`` is the objective the selection minimised (the table's losses, or HOA's estimates);
    ``loss`` is the test loss when the selection was scored with ``score_with``, else the estimate.
    ``served_by`` names, per task, the chosen network it is read from; ``task_losses`` are the scored
    (or estimated) per-task losses, ``estimated_task_losses`` the estimates.
    """

    tasks: tuple[str, ...]
    budget: float
    networks: tuple[Network, ...]
    cost: float
    estimated_loss: float
    loss: float
    served_by: dict[str, Network] = field(compare=False)
    estimated_task_losses: dict[str, float] = field(compare=False)
    task_losses: dict[str, float] = field(compare=False)
    approx: str | None = None
    scored: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: budget, approx, networks (tasks, cost, losses), cost, losses, who serves each task."""
        return {
            "budget": self.budget,
            "approx": self.approx,
            "networks": [n.to_dict() for n in self.networks],
            "cost": self.cost,
            "estimated_loss": self.estimated_loss,
            "loss": self.loss,
            "scored": self.scored,
            "served_by": {t: n.name for t, n in self.served_by.items()},
            "estimated_task_losses": dict(self.estimated_task_losses),
            "task_losses": dict(self.task_losses),
        }


# --- candidates ------------------------------------------------------------------------------------


def _candidates(table: Table, approx: str | None) -> list[tuple[Network, dict[str, Fraction]]]:
    """The networks selection may choose, each with its exact losses (real, or HOA's estimates)."""
    if approx not in APPROXIMATIONS:
        raise GroupingError(f"approx {approx!r} is not one of None, 'hoa'")
    real = [(net, {t: exact(v) for t, v in net.losses.items()}) for net in table.networks]
    if approx is None:
        return real
    kept = [(net, losses) for net, losses in real if len(net.tasks) <= 2]
    pairs = {frozenset(net.tasks): losses for net, losses in real if len(net.tasks) == 2 and net.cost == FULL_COST}
    for size in range(3, len(table.tasks) + 1):
        for subset in combinations(table.tasks, size):
            estimate: dict[str, Fraction] = {}
            for t in subset:
                values = [pairs[key][t] for u in subset if u != t and (key := frozenset((t, u))) in pairs]
                if not values:
                    break
                estimate[t] = sum(values, Fraction(0)) / len(values)
            else:
                net = Network(subset, FULL_COST, {t: float(v) for t, v in estimate.items()}, estimated=True)
                kept.append((net, estimate))
    return kept


def hoa_table(table: Table) -> Table:
    """The table HOA selects on: networks of <= 2 tasks as they are, larger ones estimated from pairs."""
    return Table(table.tasks, [net for net, _ in _candidates(table, "hoa")], f"{table.source} (HOA)")


# --- the exact solver --------------------------------------------------------------------------------


def _common_scale(values: Iterable[Fraction]) -> int:
    """The least common denominator of ``values``: multiplying by it makes all of them integers."""
    scale = 1
    for v in values:
        scale = math.lcm(scale, v.denominator)
    return scale


def _cheapest_cover(n_tasks: int, nets: Sequence[tuple[int, int]]) -> tuple[int, tuple[int, ...]] | None:
    """(cost, network ids) of the cheapest set of networks serving every task, or None when there is none."""
    full = (1 << n_tasks) - 1
    cheapest: dict[int, tuple[int, int]] = {}
    for nid, (mask, cost) in enumerate(nets):
        sub = mask
        while sub:
            if sub not in cheapest or (cost, nid) < cheapest[sub]:
                cheapest[sub] = (cost, nid)
            sub = (sub - 1) & mask
    best: list[tuple[int, tuple[int, ...]] | None] = [None] * (full + 1)
    best[0] = (0, ())
    for mask in range(1, full + 1):
        low = mask & -mask
        rest = mask ^ low
        sub = rest
        found: tuple[int, tuple[int, ...]] | None = None
        while True:
            group = sub | low
            other = best[mask ^ group]
            if group in cheapest and other is not None:
                cost, nid = cheapest[group]
                cand = (cost + other[0], tuple(sorted((*other[1], nid))))
                if found is None or cand < found:
                    found = cand
            if not sub:
                break
            sub = (sub - 1) & rest
        best[mask] = found
    return best[full]


def _solve(n_tasks: int, nets: Sequence[tuple[int, int, Sequence[int]]], budget: int) -> tuple[int, int, tuple]:
    """The best (loss, cost, network ids) serving all tasks within ``budget``; integers throughout.

    ``nets`` are (task mask, cost, loss per task index) in tie-break order; see the module docstring.
    """
    full = (1 << n_tasks) - 1
    # groups[A]: per cost, the best (loss, id) of one network serving the tasks A (read from it alone).
    groups: list[dict[int, tuple[int, int]]] = [{} for _ in range(full + 1)]
    for nid, (mask, cost, losses) in enumerate(nets):
        if cost > budget:
            continue
        bits = [i for i in range(n_tasks) if mask >> i & 1]
        sums = [0] * (1 << len(bits))
        subs = [0] * (1 << len(bits))
        for j in range(1, 1 << len(bits)):
            low = j & -j
            b = bits[low.bit_length() - 1]
            sums[j] = sums[j ^ low] + losses[b]
            subs[j] = subs[j ^ low] | (1 << b)
            cur = groups[subs[j]].get(cost)
            if cur is None or (sums[j], nid) < cur:
                groups[subs[j]][cost] = (sums[j], nid)
    fronts_g: list[list[tuple[int, int, int]]] = [[] for _ in range(full + 1)]
    for group, per_cost in enumerate(groups):
        front = fronts_g[group]
        for cost in sorted(per_cost):
            loss, nid = per_cost[cost]
            if not front or loss < front[-1][1]:
                front.append((cost, loss, nid))
    # best[mask]: (cost, loss, count, ids) with cost ascending and loss strictly descending.
    best: list[list[tuple[int, int, int, tuple[int, ...]]]] = [[] for _ in range(full + 1)]
    best[0] = [(0, 0, 0, ())]
    for mask in range(1, full + 1):
        low = mask & -mask
        rest = mask ^ low
        per_cost: dict[int, tuple[int, int, tuple[int, ...]]] = {}
        sub = rest
        while True:
            group = sub | low
            front = best[mask ^ group]
            if front:
                for gcost, gloss, gid in fronts_g[group]:
                    for fcost, floss, fcount, fids in front:
                        cost = gcost + fcost
                        if cost > budget:
                            break
                        loss = gloss + floss
                        cur = per_cost.get(cost)
                        if cur is not None and (cur[0] < loss or (cur[0] == loss and cur[1] <= fcount)):
                            continue  # cannot beat the kept entry: worse loss, or as good with fewer networks
                        cand = (loss, fcount + 1, tuple(sorted((*fids, gid))))
                        if cur is None or cand < cur:
                            per_cost[cost] = cand
            if not sub:
                break
            sub = (sub - 1) & rest
        out = best[mask]
        for cost in sorted(per_cost):
            loss, count, ids = per_cost[cost]
            if not out or loss < out[-1][1]:
                out.append((cost, loss, count, ids))
    if not best[full]:
        raise AssertionError("no selection fits the budget although the cheapest cover does")  # pragma: no cover
    cost, loss, _count, ids = best[full][-1]
    return loss, cost, ids


# --- select -----------------------------------------------------------------------------------------


def _prepared(
    table: Table, approx: str | None, budget: Fraction | None = None
) -> tuple[list[tuple[Network, dict[str, Fraction]]], list[int], list[int], int]:
    """Candidates in tie-break order, their task masks, integer costs and the cost scale (budget included)."""
    cands = _candidates(table, approx)
    served = {t for net, _ in cands for t in net.tasks}
    unserved = [t for t in table.tasks if t not in served]
    if unserved:
        raise GroupingError(
            f"{table.source}: no network serves task {unserved[0]!r}; add a row for it (or drop the task)"
        )
    index = {t: i for i, t in enumerate(table.tasks)}
    cands.sort(key=lambda c: (tuple(index[t] for t in c[0].tasks), c[0].cost))
    cost_scale = _common_scale([exact(n.cost) for n, _ in cands] + ([budget] if budget is not None else []))
    masks = [sum(1 << index[t] for t in net.tasks) for net, _ in cands]
    costs = [int(exact(net.cost) * cost_scale) for net, _ in cands]
    return cands, masks, costs, cost_scale


def cheapest_cover(table: Table, approx: str | None = None) -> tuple[float, tuple[Network, ...]]:
    """The lowest cost at which every task is served, and one such set of networks (first in table order).

    No budget below this cost has a selection; GroupingError when some task has no network at all.
    """
    cands, masks, costs, cost_scale = _prepared(table, approx)
    cover = _cheapest_cover(len(table.tasks), list(zip(masks, costs, strict=True)))
    assert cover is not None
    return float(Fraction(cover[0], cost_scale)), tuple(cands[i][0] for i in cover[1])




def select(
    table: Table,
    budget: float | int | str | Fraction,
    approx: str | None = None,
    score_with: Table | None = None,
) -> Selection:
    """The exact best networks of ``table`` within ``budget`` (full networks); see the module docstring.

    ``approx="hoa"`` selects on HOA's estimates; ``score_with`` (test losses of the same networks, matched by
    task set and cost) scores the selection. GroupingError when a task has no network, when the budget is below
    the cheapest cover of all tasks, or when ``score_with`` lacks a chosen network.
    """
    limit = exact(budget)
    if limit <= 0:
        raise GroupingError(f"budget {_fmt(limit)} must be positive (it counts full-size networks)")
    cands, masks, costs, cost_scale = _prepared(table, approx, limit)
    int_budget = math.floor(limit * cost_scale)
    cover = _cheapest_cover(len(table.tasks), list(zip(masks, costs, strict=True)))
    assert cover is not None  # _prepared checked that every task is served
    if cover[0] > int_budget:
        need = Fraction(cover[0], cost_scale)
        names = ", ".join(cands[i][0].label() for i in cover[1])
        raise GroupingError(
            f"budget {_fmt(limit)} is below the cheapest cover of all {len(table.tasks)} tasks (cost {_fmt(need)}: "
            f"{names}); raise the budget to at least {_fmt(need)}"
        )
    loss_scale = _common_scale(v for _, losses in cands for v in losses.values())
    rows = [
        [int(losses[t] * loss_scale) if t in losses else 0 for t in table.tasks] for _, losses in cands
    ]
    loss, cost, ids = _solve(len(table.tasks), list(zip(masks, costs, rows, strict=True)), int_budget)
    chosen = [cands[i] for i in ids]
    served_by: dict[str, Network] = {}
    estimated: dict[str, float] = {}
    for t in table.tasks:
        net, losses = min((c for c in chosen if t in c[1]), key=lambda c: c[1][t])  # first on a tie
        served_by[t] = net
        estimated[t] = float(losses[t])
    networks = tuple(net for net, _ in chosen)
    total = Fraction(loss, loss_scale)
    if score_with is None:
        scored_losses, scored_total, scored = dict(estimated), float(total), False
    else:
        scored_losses = score(networks, table.tasks, score_with)
        scored_total = float(sum((exact(v) for v in scored_losses.values()), Fraction(0)))
        scored = True
    return Selection(
        tasks=table.tasks,
        budget=float(limit),
        networks=networks,
        cost=float(Fraction(cost, cost_scale)),
        estimated_loss=float(total),
        loss=scored_total,
        served_by=served_by,
        estimated_task_losses=estimated,
        task_losses=scored_losses,
        approx=approx,
        scored=scored,
    )


def score(networks: Sequence[Network], tasks: Sequence[str], test: Table) -> dict[str, float]:
    """Each task's lowest loss over ``networks`` as rows of ``test`` (matched by task set and cost)."""
    if set(test.tasks) != set(tasks):
        raise GroupingError(
            f"{test.source}: its tasks {', '.join(test.tasks)} differ from the selection's {', '.join(tasks)}"
        )
    rows = []
    for net in networks:
        row = test.get(net.tasks, net.cost)
        if row is None:
            raise GroupingError(
                f"{test.source}: has no row for the chosen network {net.label()}; train it and add its test losses"
            )
        rows.append(row)
    out: dict[str, float] = {}
    for t in tasks:
        values = [exact(r.losses[t]) for r in rows if t in r.losses]
        out[t] = float(min(values))
    return out


def select_budgets(
    table: Table, budgets: Iterable[float], approx: str | None = None, score_with: Table | None = None
) -> list[Selection]:
    """:func:`select` for each budget, in the given order (for tables and pictures per budget)."""
    return [select(table, b, approx=approx, score_with=score_with) for b in budgets]


def _fmt(value: Fraction) -> str:
    return f"{float(value):g}"
