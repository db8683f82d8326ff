"""Task grouping: tables, exact selection (checked by brute force on random tables and against HiGHS), HOA,
ties, budgets and scoring. Readers, the command line and pictures are in test_grouping_files.py."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
from grouping_tables import chosen, pairs_table, tables
from hypothesis import HealthCheck, event, given, settings

from automtl.grouping import (
    GroupingError,
    Network,
    Table,
    cheapest_cover,
    hoa_table,
    select,
    select_budgets,
)
from automtl.grouping.milp import select_milp

# --- brute force -------------------------------------------------------------------------------------


def _q(x: float) -> Fraction:
    return Fraction(repr(float(x)))


Row = tuple[tuple[str, ...], Fraction, dict[str, Fraction]]  # tasks, cost, exact losses


def exact_rows(table: Table) -> list[Row]:
    return [(n.tasks, _q(n.cost), {t: _q(v) for t, v in n.losses.items()}) for n in table.networks]


def brute_force(tasks: tuple[str, ...], rows: list[Row], budget: float) -> tuple[Fraction, list] | None:
    """Every subset of networks within budget that serves every task; the best by the documented tie rules."""
    index = {t: i for i, t in enumerate(tasks)}
    nets = sorted(rows, key=lambda n: (tuple(index[t] for t in n[0]), n[1]))
    limit = _q(budget)
    best = None
    for k in range(1, len(nets) + 1):
        if min((n[1] for n in nets), default=limit + 1) * k > limit:
            break
        for combo in itertools.combinations(range(len(nets)), k):
            cost = sum((nets[i][1] for i in combo), Fraction(0))
            if cost > limit:
                continue
            total = Fraction(0)
            for t in tasks:
                values = [nets[i][2][t] for i in combo if t in nets[i][2]]
                if not values:
                    break
                total += min(values)
            else:
                key = (total, cost, k, combo)
                if best is None or key < best:
                    best = key
    if best is None:
        return None
    return best[0], [(nets[i][0], float(nets[i][1])) for i in best[3]]


def hoa_by_hand(table: Table) -> list[Row]:
    """HOA's networks written out plainly: <= 2 tasks as they are, every larger subset from its pair networks."""
    rows = [r for r in exact_rows(table) if len(r[0]) <= 2]
    pair = {frozenset(r[0]): r[2] for r in rows if len(r[0]) == 2 and r[1] == 1}
    for k in range(3, len(table.tasks) + 1):
        for subset in itertools.combinations(table.tasks, k):
            losses = {}
            for t in subset:
                vals = [pair[frozenset((t, u))][t] for u in subset if u != t and frozenset((t, u)) in pair]
                if not vals:
                    break
                losses[t] = sum(vals, Fraction(0)) / len(vals)
            else:
                rows.append((subset, Fraction(1), losses))
    return rows


# --- random tables -------------------------------------------------------------------------------------


def _check_against_brute_force(table: Table, budget: float, approx: str | None = None) -> None:
    reference = brute_force(table.tasks, hoa_by_hand(table) if approx == "hoa" else exact_rows(table), budget)
    event(f"{len(table.tasks)} tasks, " + ("no cover within the budget" if reference is None else "selected"))
    if reference is None:
        with pytest.raises(GroupingError, match="no network serves task|below the cheapest cover"):
            select(table, budget, approx=approx)
        return
    sel = select(table, budget, approx=approx)
    assert chosen(sel) == reference[1]
    assert sel.estimated_loss == float(reference[0])
    assert sel.cost <= budget and sel.loss == sel.estimated_loss
    # no chosen network is useless: each gives some task a loss strictly below every other chosen network's
    for net in sel.networks:
        others = [m for m in sel.networks if m is not net]
        assert any(all(t not in m.losses or net.losses[t] < m.losses[t] for m in others) for t in net.tasks)
    # every task is read from a chosen network with its lowest loss
    for t, net in sel.served_by.items():
        assert net.losses[t] == min(m.losses[t] for m in sel.networks if t in m.losses)
        assert sel.estimated_task_losses[t] == net.losses[t]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_exact_selection_equals_brute_force(case: tuple[Table, float]) -> None:
    _check_against_brute_force(*case)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables(hoa=True))
def test_hoa_selection_equals_brute_force_on_estimates(case: tuple[Table, float]) -> None:
    _check_against_brute_force(*case, approx="hoa")


# --- hand-made tables ----------------------------------------------------------------------------------


def test_ties_prefer_lower_cost_then_fewer_networks_then_table_order() -> None:
    # same loss 2 at cost 1: one full a+b, or two half networks -> fewer networks wins
    t = Table(["a", "b"], [Network(("a", "b"), 1, {"a": 1, "b": 1}), Network(("a",), 0.5, {"a": 1}),
                           Network(("b",), 0.5, {"b": 1})])
    assert chosen(select(t, 1)) == [(("a", "b"), 1.0)]
    # the same loss from a dearer pair network, or two half networks: lower cost beats fewer networks
    t = Table(["a", "b"], [Network(("a", "b"), 1.5, {"a": 1, "b": 1}), Network(("a",), 0.5, {"a": 1}),
                           Network(("b",), 0.5, {"b": 1})])
    assert chosen(select(t, 2)) == [(("a",), 0.5), (("b",), 0.5)]
    # loss 4 at cost 2 with 2 networks three ways: {a+b, c}, {a+c, b}, {a+b, a+c}; the last is first in table order
    t = Table(["a", "b", "c"], [Network(("a", "b"), 1, {"a": 1, "b": 2}), Network(("c",), 1, {"c": 1}),
                                Network(("a", "c"), 1, {"a": 1, "c": 1}), Network(("b",), 1, {"b": 2})])
    assert chosen(select(t, 2)) == [(("a", "b"), 1.0), (("a", "c"), 1.0)]
    # decimals compare exactly as written: 0.1 + 0.2 ties with 0.3 + 0.0 (in floats it would not), so the
    # selection with fewer networks wins
    t = Table(["a", "b"], [Network(("a", "b"), 1, {"a": 0.1, "b": 0.2}), Network(("a",), 0.5, {"a": 0.3}),
                           Network(("b",), 0.5, {"b": 0.0})])
    sel = select(t, 1)
    assert chosen(sel) == [(("a", "b"), 1.0)] and sel.cost == 1.0 and sel.estimated_loss == 0.3


def test_never_chooses_a_network_that_improves_no_task() -> None:
    # budget 3 allows adding a+b+c (first in table order among the fitting lists), which improves no task
    t = Table(["a", "b", "c"], [Network(("a", "b"), 1, {"a": 1, "b": 1}), Network(("c",), 1, {"c": 1}),
                                Network(("a", "b", "c"), 1, {"a": 1, "b": 2, "c": 2})])
    sel = select(t, 3)
    assert chosen(sel) == [(("a", "b"), 1.0), (("c",), 1.0)] and sel.estimated_loss == 3


def test_budget_below_cheapest_cover_and_unserved_task_are_errors() -> None:
    t = Table(["a", "b", "c"], [Network(("a",), 0.5, {"a": 1}), Network(("b", "c"), 1, {"b": 1, "c": 1})])
    with pytest.raises(GroupingError, match=r"budget 1 is below the cheapest cover of all 3 tasks \(cost 1.5: "
                                            r"a \(half\), b\+c\); raise the budget to at least 1.5"):
        select(t, 1)
    assert select(t, 1.5).cost == 1.5
    with pytest.raises(GroupingError, match="no network serves task 'c'"):
        select(Table(["a", "b", "c"], [Network(("a", "b"), 1, {"a": 1, "b": 1})]), 5)
    assert cheapest_cover(t) == (1.5, (t.networks[0], t.networks[1]))
    with pytest.raises(GroupingError, match="must be positive"):
        select(t, 0)
    with pytest.raises(GroupingError, match="approx 'toa'"):
        select(t, 2, approx="toa")


def test_hoa_estimates_by_hand() -> None:
    t = Table(["a", "b", "c"], [
        Network(("a", "b"), 1, {"a": 0.2, "b": 0.4}), Network(("a", "c"), 1, {"a": 0.4, "c": 0.6}),
        Network(("b", "c"), 1, {"b": 0.8, "c": 1.0}), Network(("a",), 0.5, {"a": 1.0}),
        Network(("a", "b", "c"), 1, {"a": 9, "b": 9, "c": 9}),  # a real triple row: HOA ignores it
    ])
    est = hoa_table(t)
    triple = est.get(["a", "b", "c"], 1)
    assert triple is not None and triple.estimated
    assert triple.losses == pytest.approx({"a": 0.3, "b": 0.6, "c": 0.8})
    assert est.get(["a", "b"], 1).losses == {"a": 0.2, "b": 0.4} and not est.get(["a", "b"], 1).estimated
    sel = select(t, 1, approx="hoa")
    assert chosen(sel) == [(("a", "b", "c"), 1.0)] and sel.estimated_loss == pytest.approx(1.7)
    assert sel.networks[0].estimated
    exact_sel = select(t, 1)  # the real triple row
    assert exact_sel.estimated_loss == 27


def test_hoa_skips_subsets_without_pairs_for_a_task() -> None:
    t = Table(["a", "b", "c"], [Network(("a", "b"), 1, {"a": 1, "b": 1}), Network(("c",), 0.5, {"c": 1})])
    assert hoa_table(t).get(["a", "b", "c"], 1) is None
    assert chosen(select(t, 1.5, approx="hoa")) == [(("a", "b"), 1.0), (("c",), 0.5)]


def test_score_with_takes_each_tasks_lowest_test_loss() -> None:
    val = Table(["a", "b"], [Network(("a", "b"), 1, {"a": 1, "b": 3}), Network(("b",), 0.5, {"b": 1})])
    test = Table(["b", "a"], [Network(("a", "b"), 1, {"a": 2, "b": 0.5}), Network(("b",), 0.5, {"b": 4})])
    sel = select(val, 1.5, score_with=test)
    assert chosen(sel) == [(("a", "b"), 1.0), (("b",), 0.5)]
    assert sel.estimated_loss == 2 and sel.loss == 2.5 and sel.scored
    assert sel.task_losses == {"a": 2, "b": 0.5}  # b's lowest test loss is the pair's, not the half's
    with pytest.raises(GroupingError, match=r"has no row for the chosen network b \(half\)"):
        select(val, 1.5, score_with=Table(["a", "b"], [Network(("a", "b"), 1, {"a": 2, "b": 0.5})]))
    with pytest.raises(GroupingError, match="differ from the selection's"):
        select(val, 1.5, score_with=Table(["a", "c"], [Network(("a", "c"), 1, {"a": 2, "c": 0.5})]))


def test_select_budgets_losses_never_increase_with_budget() -> None:
    t = hoa_table(pairs_table(5, seed=1))
    sels = select_budgets(t, [1, 1.5, 2, 3, 4, 5])
    losses = [s.estimated_loss for s in sels]
    assert losses == sorted(losses, reverse=True) and losses[0] > losses[-1]
    assert [s.budget for s in sels] == [1, 1.5, 2, 3, 4, 5]


@pytest.mark.parametrize("budget", [1, 2.5, 4])
def test_exact_selection_matches_highs_milp(budget: float) -> None:
    t = pairs_table(7, seed=int(2 * budget))
    sel = select(t, budget)
    loss, nets = select_milp(t, budget)
    assert sel.estimated_loss == pytest.approx(loss, abs=1e-9)
    assert sum(n.cost for n in nets) <= budget
    hoa_loss, _ = select_milp(t, budget, approx="hoa")
    assert select(t, budget, approx="hoa").estimated_loss == pytest.approx(hoa_loss, abs=1e-9)


def test_table_rejects_bad_networks() -> None:
    with pytest.raises(GroupingError, match="unknown task 'z'"):
        Table(["a"], [Network(("z",), 1, {"z": 1})])
    with pytest.raises(GroupingError, match="has no loss for 'b'"):
        Table(["a", "b"], [Network(("a", "b"), 1, {"a": 1})])
    with pytest.raises(GroupingError, match="appears twice"):
        Table(["a", "b"], [Network(("a", "b"), 1, {"a": 1, "b": 2}), Network(("b", "a"), 1.0, {"a": 1, "b": 2})])
    with pytest.raises(GroupingError, match="cost 0 must be a positive number"):
        Table(["a"], [Network(("a",), 0, {"a": 1})])
    with pytest.raises(GroupingError, match="not a finite number"):
        Table(["a"], [Network(("a",), 1, {"a": float("nan")})])
    with pytest.raises(GroupingError, match="listed twice"):
        Table(["a", "a"], [])
    with pytest.raises(GroupingError, match="holds '\\+'"):
        Table(["a+b"], [])
