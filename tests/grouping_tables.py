"""Task-grouping tables the grouping tests share: random tables (a hypothesis strategy), a seeded table of
every subset, and the (tasks, cost) pairs of a selection's networks."""

from __future__ import annotations

import itertools

from hypothesis import strategies as st

from automtl.grouping import Network, Table

MAX_BUDGET = {2: 4.0, 3: 4.0, 4: 2.5, 5: 1.5}  # keeps the brute force small


@st.composite
def tables(draw: st.DrawFn, hoa: bool = False) -> tuple[Table, float]:
    n = draw(st.integers(2, 5))
    tasks = [f"t{i}" for i in range(n)]
    # few distinct values: ties between selections are common
    value = st.sampled_from([0.25, 0.5, 0.75, 1.0, 1.25]) if draw(st.booleans()) else st.floats(0.1, 2.0)
    nets = []
    for t in tasks:
        if draw(st.integers(0, 3)):  # a quarter of the half-size networks are missing
            nets.append(Network((t,), 0.5, {t: draw(value)}))
    for k in range(1, n + 1):
        for subset in itertools.combinations(tasks, k):
            keep = k <= 2 if hoa else draw(st.integers(0, 2)) > 0  # a third of the rows are missing
            if keep or (hoa and draw(st.booleans())):
                nets.append(Network(subset, 1.0, {t: draw(value) for t in subset}))
    budget = draw(st.sampled_from([b / 2 for b in range(1, int(2 * MAX_BUDGET[n]) + 1)]))
    return Table(tasks, nets), budget


def pairs_table(n: int, seed: int) -> Table:
    import random

    rng = random.Random(seed)
    tasks = [f"t{i}" for i in range(n)]
    nets = [Network((t,), 0.5, {t: round(rng.uniform(0.5, 1.5), 3)}) for t in tasks]
    for k in range(1, n + 1):
        for subset in itertools.combinations(tasks, k):
            nets.append(Network(subset, 1.0, {t: round(rng.uniform(0.3, 1.2), 3) for t in subset}))
    return Table(tasks, nets)


def chosen(sel) -> list[tuple[tuple[str, ...], float]]:
    return [(n.tasks, n.cost) for n in sel.networks]
