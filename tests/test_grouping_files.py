"""Task grouping from files: the Standley and CSV readers and their one-line errors, round trips, the
`automtl group select` command line and the pictures."""

from __future__ import annotations

import itertools
import json
import struct
from fractions import Fraction
from pathlib import Path

import pytest
from grouping_tables import chosen, pairs_table, tables
from hypothesis import given, settings

from automtl.app.cli import main
from automtl.grouping import (
    GroupingError,
    Table,
    parse_csv,
    parse_standley,
    read_table,
    select,
    select_budgets,
    write_csv,
)
from automtl.grouping.cli import budget_steps
from automtl.grouping.pictures import affinity_picture, selection_picture

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
    t = pairs_table(4, seed=3)
    one = selection_picture(select_budgets(t, [1]), tmp_path / "one.png")
    many = selection_picture(select_budgets(t, [1, 2, 3, 4]), tmp_path / "sub" / "many.png")
    (_, h1), (_, h2) = _png_size(one), _png_size(many)
    assert h2 > h1
    with pytest.raises(GroupingError, match="no selections"):
        selection_picture([], tmp_path / "x.png")
    other = select(pairs_table(3, seed=0), 1)
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
    full = pairs_table(5, seed=7)
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
