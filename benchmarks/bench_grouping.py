"""Task-grouping selection speed: every (budget, method) of a 5-task table, and exact selection for T = 5..10.

Tables are synthetic and complete: one full-size network per non-empty task subset plus a half-size network
per task (T = 10: 1,023 + 10 networks). A network's loss for task t is t's base loss, raised a little per
extra task and moved by the mean pairwise affinity of t with its partners, so that grouping matters and
different budgets choose different groupings. ``esa`` selects on a noisier "early-stopped" copy and scores
on the full table; ``hoa`` estimates networks of 3+ tasks from the pairs. HiGHS (``scipy.optimize.milp``)
solves the same problem as a check and for comparison.

``AUTOMTL_BENCH_QUICK=1`` keeps T <= 7 and three budgets, so the file runs in seconds. Nothing here asserts a
time; each benchmark checks its result.
"""

from __future__ import annotations

import itertools
import os
import random
from functools import cache
from typing import Any

import pytest

from automtl.grouping import Network, Table, select
from automtl.grouping.milp import select_milp

QUICK = os.environ.get("AUTOMTL_BENCH_QUICK") == "1"
BUDGETS = (1, 2.5, 5) if QUICK else (1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5)
METHODS = ("exact", "hoa", "esa")
SIZES = tuple(range(5, 8)) if QUICK else tuple(range(5, 11))


@cache
def synthetic_table(n_tasks: int, seed: int = 0, noise: float = 0.0) -> Table:
    """A complete table over ``n_tasks`` tasks (see the module docstring); ``noise`` perturbs every loss."""
    rng = random.Random(seed)
    tasks = [f"task{i}" for i in range(n_tasks)]
    base = {t: rng.uniform(0.5, 1.5) for t in tasks}
    affinity = {frozenset(p): rng.uniform(-0.08, 0.08) for p in itertools.combinations(tasks, 2)}
    noisy = random.Random(seed + 1)

    def loss(t: str, subset: tuple[str, ...]) -> float:
        others = [u for u in subset if u != t]
        pull = sum(affinity[frozenset((t, u))] for u in others) / len(others) if others else 0.0
        value = base[t] * (1 + 0.01 * len(others) - pull * min(len(others), 3) / 3)
        return round(value * (1 + noise * noisy.uniform(-1, 1)), 5)

    nets = [Network((t,), 0.5, {t: round(base[t] * 1.04, 5)}) for t in tasks]
    for k in range(1, n_tasks + 1):
        for subset in itertools.combinations(tasks, k):
            nets.append(Network(subset, 1.0, {t: loss(t, subset) for t in subset}))
    return Table(tasks, nets, f"synthetic-{n_tasks}")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("budget", BUDGETS)
def test_select_five_tasks(benchmark: Any, budget: float, method: str) -> None:
    """Every (budget, method) of a 5-task table (36 networks)."""
    benchmark.group = "5 tasks: one selection per (budget, method)"
    full = synthetic_table(5)
    if method == "esa":
        early = synthetic_table(5, noise=0.05)
        sel = benchmark(select, early, budget, score_with=full)
    else:
        sel = benchmark(select, full, budget, approx="hoa" if method == "hoa" else None, score_with=full)
    assert sel.cost <= budget and set(sel.served_by) == set(full.tasks)
    if method == "exact":
        assert sel.loss == sel.estimated_loss
    # the exact selection is the best a budget allows, so no method's test loss is lower
    assert sel.loss >= select(full, budget).estimated_loss - 1e-12


@pytest.mark.parametrize("n_tasks", SIZES)
def test_exact_selection_scaling(benchmark: Any, n_tasks: int) -> None:
    """Exact selection at budget 5 for T tasks (2^T - 1 full + T half networks): time grows about 3^T."""
    benchmark.group = "exact selection at budget 5, T = 5..10"
    table = synthetic_table(n_tasks)
    benchmark.extra_info["networks"] = len(table)
    sel = benchmark.pedantic(select, args=(table, 5), rounds=3 if QUICK or n_tasks < 10 else 5, iterations=1)
    reference, _ = select_milp(table, 5)
    assert sel.estimated_loss == pytest.approx(reference, abs=1e-9) and sel.cost <= 5


@pytest.mark.parametrize("n_tasks", SIZES)
def test_highs_milp_scaling(benchmark: Any, n_tasks: int) -> None:
    """The same problem as an integer program under SciPy's HiGHS, for comparison (no tie rules)."""
    benchmark.group = "HiGHS milp at budget 5, T = 5..10"
    table = synthetic_table(n_tasks)
    loss, nets = benchmark.pedantic(select_milp, args=(table, 5), rounds=3, iterations=1)
    assert sum(n.cost for n in nets) <= 5 and loss == pytest.approx(select(table, 5).estimated_loss, abs=1e-9)
