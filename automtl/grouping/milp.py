"""The same selection as an integer program solved by SciPy's HiGHS (``scipy.optimize.milp``).

An independent check of :func:`automtl.grouping.select` (tests and benchmarks compare the two): binary
``x[n]`` (network ``n`` chosen), continuous ``y[n, t]`` in [0, 1] (task ``t`` read from ``n``)::

    minimise   sum loss[n, t] * y[n, t]
    subject to sum_n y[n, t] = 1 for every task t,   y[n, t] <= x[n],   sum cost[n] * x[n] <= budget

It returns the optimal loss in floating point (HiGHS' tolerances apply) and one optimal set of networks,
without :func:`select`'s tie rules.
"""

from __future__ import annotations

import numpy as np

from .select import _candidates
from .table import GroupingError, Network, Table


def select_milp(table: Table, budget: float, approx: str | None = None) -> tuple[float, list[Network]]:
    """(optimal total loss, chosen networks) of ``table`` within ``budget``; GroupingError when infeasible."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    cands = [net for net, _ in _candidates(table, approx)]
    n_nets = len(cands)
    pairs = [(i, t) for i, net in enumerate(cands) for t in net.tasks]
    n_vars = n_nets + len(pairs)
    c = np.zeros(n_vars)
    for k, (i, t) in enumerate(pairs):
        c[n_nets + k] = cands[i].losses[t]
    task_row = {t: r for r, t in enumerate(table.tasks)}
    rows, cols, vals = [], [], []
    # coverage: one row per task
    for k, (_, t) in enumerate(pairs):
        rows.append(task_row[t])
        cols.append(n_nets + k)
        vals.append(1.0)
    # linking: y[n, t] - x[n] <= 0
    base = len(table.tasks)
    for k, (i, _) in enumerate(pairs):
        rows += [base + k, base + k]
        cols += [n_nets + k, i]
        vals += [1.0, -1.0]
    # budget
    budget_row = base + len(pairs)
    for i, net in enumerate(cands):
        rows.append(budget_row)
        cols.append(i)
        vals.append(float(net.cost))
    a = coo_matrix((vals, (rows, cols)), shape=(budget_row + 1, n_vars)).tocsr()
    lower = np.concatenate([np.ones(base), np.full(len(pairs), -np.inf), [-np.inf]])
    upper = np.concatenate([np.ones(base), np.zeros(len(pairs)), [float(budget) + 1e-9]])
    integrality = np.concatenate([np.ones(n_nets), np.zeros(len(pairs))])
    res = milp(c, constraints=LinearConstraint(a, lower, upper), integrality=integrality,
               bounds=Bounds(0, 1), options={"mip_rel_gap": 0.0})
    if res.status != 0 or res.x is None:
        raise GroupingError(f"{table.source}: no selection within budget {budget:g} ({res.message})")
    used = {i for k, (i, _) in enumerate(pairs) if res.x[n_nets + k] > 1e-6}  # a chosen network a task reads
    return float(res.fun), [cands[i] for i in sorted(used) if res.x[i] > 0.5]
