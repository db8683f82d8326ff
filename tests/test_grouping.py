"""Task grouping: tables, readers, exact selection (checked by brute force), HOA, scoring, the CLI, pictures."""

from __future__ import annotations

import itertools
import json
import struct
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from automtl.app.cli import main
from automtl.grouping import (
    GroupingError,
    Network,
    Table,
    cheapest_cover,
    hoa_table,
    parse_csv,
    parse_standley,
    read_table,
    select,
    select_budgets,
    write_csv,
)
from automtl.grouping.cli import budget_steps
from automtl.grouping.milp import select_milp
from automtl.grouping.pictures import affinity_picture, selection_picture

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


def chosen(sel) -> list[tuple[tuple[str, ...], float]]:
    return [(n.tasks, n.cost) for n in sel.networks]


# --- random tables -------------------------------------------------------------------------------------

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
    t = hoa_table(_pairs_table(5, seed=1))
    sels = select_budgets(t, [1, 1.5, 2, 3, 4, 5])
    losses = [s.estimated_loss for s in sels]
    assert losses == sorted(losses, reverse=True) and losses[0] > losses[-1]
    assert [s.budget for s in sels] == [1, 1.5, 2, 3, 4, 5]


def _pairs_table(n: int, seed: int) -> Table:
    import random

    rng = random.Random(seed)
    tasks = [f"t{i}" for i in range(n)]
    nets = [Network((t,), 0.5, {t: round(rng.uniform(0.5, 1.5), 3)}) for t in tasks]
    for k in range(1, n + 1):
        for subset in itertools.combinations(tasks, k):
            nets.append(Network(subset, 1.0, {t: round(rng.uniform(0.3, 1.2), 3) for t in subset}))
    return Table(tasks, nets)


@pytest.mark.parametrize("budget", [1, 2.5, 4])
def test_exact_selection_matches_highs_milp(budget: float) -> None:
    t = _pairs_table(7, seed=int(2 * budget))
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


# --- readers -------------------------------------------------------------------------------------------

STANDLEY = (
    "0.5\t0.6\t0.7\r\n"        # half-size networks of a, b, c (CRLF line ends)
    "0.4\t\t\r\n"              # a alone, full size
    "\t0.55\t\t\r\n"           # b alone (a trailing tab)
    "0.3\t0.5\t\r\n"           # a+b; the rows of c alone and a+c are missing
    "\t0.45\t0.6\r\n"          # b+c
    "0.35\t0.5\t0.65\r\n"      # a+b+c
    "\r\n\r\n"                 # blank trailing lines
)


def test_standley_reader_on_a_hand_written_file(tmp_path: Path) -> None:
    path = tmp_path / "results.txt"
    path.write_bytes(STANDLEY.encode())
    t = read_table(path, format="standley", tasks=["a", "b", "c"])
    assert t.tasks == ("a", "b", "c") and len(t) == 8
    assert [(n.name, n.cost) for n in t if n.cost == 0.5] == [("a", 0.5), ("b", 0.5), ("c", 0.5)]
    assert t.get(["a", "b"], 1).losses == {"a": 0.3, "b": 0.5}
    assert t.get(["b", "c"], 1).losses == {"b": 0.45, "c": 0.6}
    assert t.get(["c"], 1) is None and t.get(["a", "c"], 1) is None
    assert t.get(["b"], 1).losses == {"b": 0.55}
    # by hand: budget 1 -> only a+b+c covers; budget 2 -> a+b with b+c (0.3 + 0.45 + 0.6) beats a+b+c with b+c
    # (0.35 + 0.45 + 0.6) and a+b with c half (0.3 + 0.5 + 0.7)
    assert chosen(select(t, 1)) == [(("a", "b", "c"), 1.0)]
    sel = select(t, 2)
    assert chosen(sel) == [(("a", "b"), 1.0), (("b", "c"), 1.0)] and sel.estimated_loss == pytest.approx(1.35)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.5\t0.6\t0.7\n0.4\t0.2\n", r"results.txt:2: 2 tab-separated cells, expected 3"),
        ("0.5\t0.6\t0.7\n0.4\t0.2\t0.1\t0.9\n", r"results.txt:2: 4 tab-separated cells, expected 3"),
        ("0.5\t0.6\t0.7\n0.4\tabc\t\n", r"results.txt:2: column 2 \(b\): cell 'abc' is not a number"),
        ("0.5\tnan\t0.7\n", r"results.txt:1: column 2 \(b\): cell 'nan' is not a finite number"),
        ("0.5\t0.6\t0.7\n0.4\t0.2\t\n0.1\t0.3\t\n", r"results.txt:3: the full-size network a\+b already has a row"),
        ("", r"results.txt: empty file"),
    ],
)
def test_standley_reader_errors_name_file_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "results.txt"
    path.write_text(text)
    with pytest.raises(GroupingError, match=message):
        read_table(path, format="standley", tasks=["a", "b", "c"])


def test_standley_needs_tasks_and_reader_checks_format(tmp_path: Path) -> None:
    path = tmp_path / "r.txt"
    path.write_text("0.5\t0.6\n")
    with pytest.raises(GroupingError, match="has no header; give its task order"):
        read_table(path, format="standley")
    with pytest.raises(GroupingError, match="format 'tsv' is not one of csv, standley"):
        read_table(path, format="tsv")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_table(tmp_path / "missing.csv")


def test_csv_round_trip_and_task_order(tmp_path: Path) -> None:
    t = parse_standley(STANDLEY, ["a", "b", "c"], "s")
    path = write_csv(t, tmp_path / "t.csv")
    assert path.read_text().splitlines()[:2] == ["tasks,cost,a,b,c", "a,0.5,0.5,,"]
    back = read_table(path)
    assert [(n.tasks, n.cost, dict(n.losses)) for n in back] == [(n.tasks, n.cost, dict(n.losses)) for n in t]
    reordered = read_table(path, tasks=["c", "a", "b"])
    assert reordered.tasks == ("c", "a", "b") and reordered.get(["a", "b"], 1).tasks == ("a", "b")
    assert chosen(select(reordered, 2)) == [(("c", "b"), 1.0), (("a", "b"), 1.0)]  # table order: c, a, b


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("task,cost,a\n", r"t.csv:1: the header must be tasks,cost"),
        ("tasks,cost,a,b\na+b,1,0.5\n", r"t.csv:2: 3 cells, expected 4"),
        ("tasks,cost,a,b\na+b,1,0.5,\n", r"t.csv:2: column 4 \(b\): empty, but the network serves 'b'"),
        ("tasks,cost,a,b\na,1,0.5,0.2\n", r"t.csv:2: column 4 \(b\): '0.2' given, but 'b' is not in tasks 'a'"),
        ("tasks,cost,a,b\na+z,1,0.5,\n", r"t.csv:2: column 1 \(tasks\): unknown task 'z'"),
        ("tasks,cost,a,b\na,one,0.5,\n", r"t.csv:2: column 2 \(cost\): cost 'one' is not a number"),
        ("tasks,cost,a,b\na,-1,0.5,\n", r"t.csv:2: column 2 \(cost\): '-1' must be positive"),
        ("tasks,cost,a,b\na,1,x,\n", r"t.csv:2: column 3 \(a\): loss 'x' is not a number"),
        ("tasks,cost,a,b\na,1,1,\n\na,1.0,2,\n", r"t.csv:4: network a at cost 1 already has a row \(line 2\)"),
    ],
)
def test_csv_reader_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(GroupingError, match=message):
        read_table(path)


def test_csv_reader_tolerates_crlf_blank_lines_and_trailing_commas() -> None:
    t = parse_csv("tasks,cost,a,b,\r\na+b,1,0.5,0.25,\r\n\r\nb,0.5,,0.125\r\n\r\n", "t.csv")
    assert [(n.name, n.cost, dict(n.losses)) for n in t] == [("a+b", 1.0, {"a": 0.5, "b": 0.25}),
                                                             ("b", 0.5, {"b": 0.125})]
    with pytest.raises(GroupingError, match="differ from the given"):
        parse_csv("tasks,cost,a,b\na+b,1,1,1\n", "t.csv", tasks=["a", "c"])


# --- the command line ----------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["group", "select", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_select_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.txt"
    path.write_text(STANDLEY)
    code, out, err = _cli(capsys, str(path), "--budget", "2", "--format", "standley", "--tasks", "a,b,c")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["network", "cost", "a", "b", "c"]
    assert lines[1].split() == ["a+b", "1", "0.3*", "0.5"] and lines[2].split() == ["b+c", "1", "0.45*", "0.6*"]
    assert "estimated loss: 1.35" in out
    code, out, _ = _cli(capsys, str(path), "--budget", "2", "--format", "standley", "--tasks", "a,b,c", "--json",
                        "--score-with", str(path))
    doc = json.loads(out)
    assert code == 0
    assert [(n["tasks"], n["cost"]) for n in doc["networks"]] == [(["a", "b"], 1.0), (["b", "c"], 1.0)]
    assert doc["cost"] == 2 and doc["estimated_loss"] == pytest.approx(1.35) and doc["loss"] == pytest.approx(1.35)
    assert doc["served_by"] == {"a": "a+b", "b": "b+c", "c": "b+c"} and doc["scored"]
    code, out, _ = _cli(capsys, str(path), "--budget", "1", "--format", "standley", "--tasks", "a,b,c",
                        "--approx", "hoa", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["approx"] == "hoa" and doc["networks"][0]["estimated"]
    assert doc["estimated_loss"] == pytest.approx(0.3 + 0.475 + 0.6)  # a: a+b; b: mean(0.5, 0.45); c: b+c


def test_cli_picture_draws_every_budget_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.txt"
    path.write_text(STANDLEY)
    code, out, _ = _cli(capsys, str(path), "--budget", "2.5", "--format", "standley", "--tasks", "a,b,c",
                        "--picture", str(tmp_path / "sel.png"))
    assert code == 0 and f"wrote {tmp_path / 'sel.png'}: the selections at budgets 1, 1.5, 2, 2.5" in out
    assert _png_size(tmp_path / "sel.png")[1] > 200
    assert budget_steps(1.2, Fraction(5, 2)) == [1.5, 2, 2.5]
    assert budget_steps(1.0, Fraction(9, 4)) == [1, 1.5, 2, Fraction(9, 4)]
    assert budget_steps(1.0, Fraction(1)) == [1]


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "t.csv"
    good.write_text("tasks,cost,a,b\na,0.5,1,\nb,0.5,,1\n")
    code, out, err = _cli(capsys, str(good), "--budget", "0.5")
    assert code == 2 and out == ""
    assert err.strip() == ("automtl: error: budget 0.5 is below the cheapest cover of all 2 tasks (cost 1: a (half), "
                           "b (half)); raise the budget to at least 1")
    bad = tmp_path / "bad.txt"
    bad.write_text("0.5\t0.6\n0.1\n")
    code, _, err = _cli(capsys, str(bad), "--budget", "1", "--format", "standley", "--tasks", "a,b")
    assert code == 2 and err.count("\n") == 1 and "bad.txt:2: 1 tab-separated cells, expected 2" in err
    bad.write_text("0.5\t0.6\n0.1\t?\n")
    code, _, err = _cli(capsys, str(bad), "--budget", "1", "--format", "standley", "--tasks", "a,b")
    assert code == 2 and "bad.txt:2: column 2 (b): cell '?' is not a number" in err
    code, _, err = _cli(capsys, str(bad), "--budget", "1", "--format", "standley")
    assert code == 2 and "give its task order" in err
    code, _, err = _cli(capsys, str(good), "--budget", "two")
    assert code == 2 and "'two' is not a number of full networks" in err
    code, _, err = _cli(capsys, str(tmp_path / "none.csv"), "--budget", "1")
    assert code == 2 and "none.csv: no such file" in err
    code, out, _ = _cli(capsys, str(good), "--budget", "1", "--score-with", str(tmp_path / "none.csv"))
    assert code == 2 and out == ""
    code = main(["group"])
    assert code == 2 and "required" in capsys.readouterr().err


# --- pictures ------------------------------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_selection_picture_grows_with_budgets(tmp_path: Path) -> None:
    t = _pairs_table(4, seed=3)
    one = selection_picture(select_budgets(t, [1]), tmp_path / "one.png")
    many = selection_picture(select_budgets(t, [1, 2, 3, 4]), tmp_path / "sub" / "many.png")
    (_, h1), (_, h2) = _png_size(one), _png_size(many)
    assert h2 > h1
    with pytest.raises(GroupingError, match="no selections"):
        selection_picture([], tmp_path / "x.png")
    other = select(_pairs_table(3, seed=0), 1)
    with pytest.raises(GroupingError, match="draw one table's selections together"):
        selection_picture([select(t, 1), other], tmp_path / "x.png")


def test_affinity_picture(tmp_path: Path) -> None:
    path = affinity_picture([[0.0, 0.2, -0.1], [0.1, 0.0, 0.05], [-0.3, 0.0, 0.0]], ["a", "b", "c"],
                            tmp_path / "aff.png")
    w, h = _png_size(path)
    assert w > 100 and h > 100
    with pytest.raises(GroupingError, match=r"the matrix is \(2, 2\), expected 3x3"):
        affinity_picture([[0, 1], [1, 0]], ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(GroupingError, match="affinity b -> a is inf"):
        affinity_picture([[0, 1], [float("inf"), 0]], ["a", "b"], tmp_path / "x.png")


def _standley_text(table: Table) -> str:
    """``table`` in the published layout: the half-size row, then full-size rows by subset size."""
    lines = ["\t".join(repr(n.losses[t]) if (n := table.get([t], 0.5)) else "" for t in table.tasks)]
    for k in range(1, len(table.tasks) + 1):
        for subset in itertools.combinations(table.tasks, k):
            net = table.get(subset, 1)
            if net is not None:
                lines.append("\t".join(repr(net.losses[t]) if t in net.losses else "" for t in table.tasks))
    return "\n".join(lines)  # no newline at the end, as in the published files


def test_standley_and_csv_files_of_one_table_select_alike(tmp_path: Path) -> None:
    full = _pairs_table(5, seed=7)
    table = Table(full.tasks, [n for i, n in enumerate(full.networks) if i % 7 != 3])  # some rows missing
    (tmp_path / "t.txt").write_text(_standley_text(table))
    write_csv(table, tmp_path / "t.csv")
    from_standley = read_table(tmp_path / "t.txt", format="standley", tasks=list(table.tasks))
    from_csv = read_table(tmp_path / "t.csv")
    assert [(n.tasks, n.cost, dict(n.losses)) for n in from_standley] == \
        [(n.tasks, n.cost, dict(n.losses)) for n in table]
    for budget in (1, 1.5, 2, 3, 5):
        for approx in (None, "hoa"):
            a, b = select(from_standley, budget, approx=approx), select(from_csv, budget, approx=approx)
            assert chosen(a) == chosen(b) and a.estimated_loss == b.estimated_loss


@settings(max_examples=40, deadline=None)
@given(tables())
def test_csv_round_trip_keeps_every_network(case: tuple[Table, float]) -> None:
    table, _ = case
    back = parse_csv(_csv_text(table), "t.csv")
    assert [(n.tasks, n.cost, dict(n.losses)) for n in back] == [(n.tasks, n.cost, dict(n.losses)) for n in table]


def _csv_text(table: Table) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return write_csv(table, Path(folder) / "t.csv").read_text()
