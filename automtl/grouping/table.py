"""Tables of trained networks for task grouping: which tasks each network serves, its cost, its per-task loss.

A :class:`Table` holds one :class:`Network` per (task set, cost): a full-size network costs 1, a half-size one
0.5 (the budget is counted in full networks). A network serves exactly the tasks it has a loss for; an empty
cell in a file means "not served", never "loss 0".

Two file layouts are read by :func:`read_table`:

* ``format="csv"`` (automtl's own, written by :func:`write_csv`)::

      tasks,cost,seg,depth,normals
      seg+depth,1,0.21,0.34,
      normals,0.5,,,0.12

  one row per network: ``tasks`` joined by ``+``, ``cost``, one column per task (empty when not served);
* ``format="standley"`` (the layout of the published tables of Standley et al.): tab-separated, no header,
  one column per task in the order given by ``tasks=[...]``. Row 1 holds the half-size single-task networks
  (cost 0.5), one value per column; every later row is a full-size network (cost 1) whose tasks are its
  non-empty cells. Rows may be missing (a subset that was not trained has no row); an empty cell in row 1
  means that task has no half-size network.

Both readers accept CRLF line ends, blank trailing lines and (standley) trailing tabs, and reject ragged
rows, non-numbers, non-finite numbers and repeated networks with one line naming file, line and column.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("csv", "standley")
HALF_COST = 0.5
FULL_COST = 1.0


class GroupingError(ValueError):
    """Bad grouping input (a table, a budget, a task list): the message is one line saying what to fix."""


@dataclass(frozen=True)
class Network:
    """A trained (or, with ``estimated``, estimated) network: the tasks it serves, its cost and per-task loss.

    ``tasks`` is in the table's task order once the network is in a :class:`Table`; ``losses`` maps every
    served task (and only those) to its loss, lower is better.
    """

    tasks: tuple[str, ...]
    cost: float
    losses: Mapping[str, float] = field(compare=True)
    estimated: bool = False

    @property
    def name(self) -> str:
        """The task set joined by ``+`` (as in the CSV's ``tasks`` column)."""
        return "+".join(self.tasks)

    def label(self) -> str:
        """``name`` plus its size when it is not a full network: ``seg (half)``, ``a+b (cost 0.75)``."""
        if self.cost == HALF_COST:
            return f"{self.name} (half)"
        if self.cost == FULL_COST:
            return self.name
        return f"{self.name} (cost {self.cost:g})"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: tasks, cost, losses and whether the losses are estimates."""
        return {"tasks": list(self.tasks), "cost": self.cost, "losses": dict(self.losses),
                "estimated": self.estimated}


def check_tasks(tasks: Sequence[str], where: str = "tasks") -> tuple[str, ...]:
    """The task names as a tuple; GroupingError for empty, repeated or ill-formed names."""
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    names = tuple(str(t).strip() for t in tasks)
    if not names:
        raise GroupingError(f"{where}: no tasks given; name them, e.g. tasks=['seg', 'depth']")
    for name in names:
        if not name or "+" in name or "," in name or name != name.strip():
            raise GroupingError(f"{where}: task name {name!r} is empty or holds '+' or ','; rename it")
        if name in ("tasks", "cost"):
            raise GroupingError(f"{where}: task name {name!r} is a column of the CSV layout; rename it")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise GroupingError(f"{where}: task {name!r} is listed twice")
        seen.add(name)
    return names


def _number(text: str, where: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise GroupingError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise GroupingError(f"{where}: {what} {text!r} is not a finite number")
    return value


class Table:
    """Networks over one task list, at most one per (task set, cost), each serving only tasks it has a loss for.

    ``Table(tasks, networks)`` checks every network (known tasks, a finite loss for each served task, a
    positive finite cost) and puts its tasks into table order. ``source`` names the table in error messages.
    """

    def __init__(self, tasks: Sequence[str], networks: Iterable[Network], source: str = "table") -> None:
        self.source = source
        self.tasks: tuple[str, ...] = check_tasks(tasks, source)
        index = {t: i for i, t in enumerate(self.tasks)}
        nets: list[Network] = []
        seen: dict[tuple[tuple[str, ...], float], Network] = {}
        for net in networks:
            where = f"{source}: network {'+'.join(net.tasks) or '(no tasks)'}"
            if not net.tasks:
                raise GroupingError(f"{where}: serves no task; drop it")
            unknown = [t for t in net.tasks if t not in index]
            if unknown:
                raise GroupingError(f"{where}: unknown task {unknown[0]!r} (tasks: {', '.join(self.tasks)})")
            if len(set(net.tasks)) != len(net.tasks):
                raise GroupingError(f"{where}: lists a task twice")
            if set(net.losses) != set(net.tasks):
                missing = sorted(set(net.tasks) - set(net.losses), key=index.__getitem__)
                extra = sorted(set(net.losses) - set(net.tasks), key=str)
                what = f"has no loss for {missing[0]!r}" if missing else f"has a loss for {extra[0]!r}, not served"
                raise GroupingError(f"{where}: {what}; a network serves exactly the tasks it has a loss for")
            cost = float(net.cost)
            if not (math.isfinite(cost) and cost > 0):
                raise GroupingError(f"{where}: cost {net.cost!r} must be a positive number")
            losses = {}
            for t in sorted(net.tasks, key=index.__getitem__):
                value = net.losses[t]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise GroupingError(f"{where}: loss of {t!r} is {value!r}, not a finite number")
                losses[t] = float(value)
            ordered = Network(tuple(losses), cost, losses, net.estimated)
            key = (ordered.tasks, cost)
            if key in seen:
                raise GroupingError(f"{where}: a network for these tasks at cost {cost:g} appears twice; keep one")
            seen[key] = ordered
            nets.append(ordered)
        nets.sort(key=lambda n: (tuple(index[t] for t in n.tasks), n.cost))
        self.networks: tuple[Network, ...] = tuple(nets)
        self._by_key = seen

    def __len__(self) -> int:
        return len(self.networks)

    def __iter__(self) -> Iterator[Network]:
        return iter(self.networks)

    def __repr__(self) -> str:
        return f"Table({len(self.networks)} networks over {', '.join(self.tasks)}; {self.source})"

    def get(self, tasks: Iterable[str], cost: float) -> Network | None:
        """The network serving exactly ``tasks`` at ``cost``, or None."""
        index = {t: i for i, t in enumerate(self.tasks)}
        wanted = set(tasks)
        if not wanted <= set(index):
            return None
        return self._by_key.get((tuple(sorted(wanted, key=index.__getitem__)), float(cost)))

    def unserved(self) -> list[str]:
        """Tasks no network of the table serves."""
        served = {t for net in self.networks for t in net.tasks}
        return [t for t in self.tasks if t not in served]


# --- readers ---------------------------------------------------------------------------------------


def read_table(path: str | os.PathLike, format: str = "csv", tasks: Sequence[str] | None = None) -> Table:
    """Read a table of networks from ``path`` in ``format`` (``"csv"`` or ``"standley"``).

    ``tasks`` gives the column order of a standley file (required: it has no header). For a CSV it is
    optional; when given, the file's task columns must be exactly these tasks, and the table takes this order.
    """
    if format not in FORMATS:
        raise GroupingError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GroupingError(f"{p}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    if format == "standley":
        if tasks is None:
            raise GroupingError(f"{p}: a standley table has no header; give its task order (--tasks a,b,...)")
        return parse_standley(text, tasks, str(p))
    return parse_csv(text, str(p), tasks)


def _lines(text: str) -> list[str]:
    """Lines without line ends (LF, CRLF or CR), blank trailing lines dropped."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def parse_standley(text: str, tasks: Sequence[str], source: str = "table") -> Table:
    """Parse the published tables' layout (see the module docstring); ``source`` names it in errors."""
    names = check_tasks(tasks, f"{source}: tasks")
    n = len(names)
    lines = _lines(text)
    if not lines:
        raise GroupingError(f"{source}: empty file; row 1 must hold the {n} half-size networks' losses")
    networks: list[Network] = []
    for lineno, line in enumerate(lines, 1):
        cells = [c.strip() for c in line.split("\t")]
        while len(cells) > n and not cells[-1]:
            cells.pop()  # trailing tabs
        if len(cells) != n:
            if lineno > 1 and not any(cells):
                continue  # a blank line between rows: no network
            raise GroupingError(
                f"{source}:{lineno}: {len(cells)} tab-separated cells, expected {n} (one per task: "
                f"{', '.join(names)}); check the row or --tasks"
            )
        losses = {
            names[col]: _number(cell, f"{source}:{lineno}: column {col + 1} ({names[col]})", "cell")
            for col, cell in enumerate(cells)
            if cell
        }
        if lineno == 1:
            networks.extend(Network((t,), HALF_COST, {t: v}) for t, v in losses.items())
        elif losses:
            networks.append(Network(tuple(losses), FULL_COST, losses))
    seen: dict[tuple[str, ...], int] = {}
    for lineno, line in enumerate(lines[1:], 2):
        key = tuple(names[c] for c, cell in enumerate(line.split("\t")[:n]) if cell.strip())
        if key and key in seen:
            raise GroupingError(
                f"{source}:{lineno}: the full-size network {'+'.join(key)} already has a row (line {seen[key]}); "
                "keep one"
            )
        seen[key] = lineno
    return Table(names, networks, source)


def parse_csv(text: str, source: str = "table", tasks: Sequence[str] | None = None) -> Table:
    """Parse automtl's CSV layout (see the module docstring); ``source`` names it in errors."""
    lines = _lines(text)
    if not lines:
        raise GroupingError(f"{source}: empty file; the first line must be the header tasks,cost,<task>,...")
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    header = [h.strip() for h in rows[0]]
    while header and not header[-1]:
        header.pop()
    if header[:2] != ["tasks", "cost"] or len(header) < 3:
        raise GroupingError(
            f"{source}:1: the header must be tasks,cost followed by one column per task, got {','.join(header)!r}"
        )
    columns = check_tasks(header[2:], f"{source}:1: header")
    if tasks is not None:
        wanted = check_tasks(tasks, f"{source}: tasks")
        if set(wanted) != set(columns):
            raise GroupingError(
                f"{source}:1: the file's tasks {', '.join(columns)} differ from the given {', '.join(wanted)}"
            )
        order: Sequence[str] = wanted
    else:
        order = columns
    width = len(header)
    networks: list[Network] = []
    seen: dict[tuple[frozenset[str], float], int] = {}
    for lineno, row in enumerate(rows[1:], 2):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue  # a blank line
        while len(cells) > width and not cells[-1]:
            cells.pop()
        if len(cells) != width:
            raise GroupingError(f"{source}:{lineno}: {len(cells)} cells, expected {width} as in the header")
        where = f"{source}:{lineno}"
        named = [t.strip() for t in cells[0].split("+")]
        if not cells[0] or any(t not in columns for t in named):
            bad = next((t for t in named if t not in columns), cells[0])
            raise GroupingError(f"{where}: column 1 (tasks): unknown task {bad!r} (tasks: {', '.join(columns)})")
        if len(set(named)) != len(named):
            raise GroupingError(f"{where}: column 1 (tasks): {cells[0]!r} lists a task twice")
        cost = _number(cells[1], f"{where}: column 2 (cost)", "cost")
        if cost <= 0:
            raise GroupingError(f"{where}: column 2 (cost): {cells[1]!r} must be positive")
        losses: dict[str, float] = {}
        for col, task in enumerate(columns, 3):
            cell = cells[col - 1]
            if task in named:
                if not cell:
                    raise GroupingError(f"{where}: column {col} ({task}): empty, but the network serves {task!r}")
                losses[task] = _number(cell, f"{where}: column {col} ({task})", "loss")
            elif cell:
                raise GroupingError(
                    f"{where}: column {col} ({task}): {cell!r} given, but {task!r} is not in tasks {cells[0]!r}"
                )
        key = (frozenset(named), cost)
        if key in seen:
            raise GroupingError(f"{where}: network {cells[0]} at cost {cost:g} already has a row (line {seen[key]})")
        seen[key] = lineno
        networks.append(Network(tuple(named), cost, losses))
    return Table(order, networks, source)


# --- writer ----------------------------------------------------------------------------------------


def write_csv(table: Table, path: str | os.PathLike) -> Path:
    """Write ``table`` in automtl's CSV layout (readable by :func:`read_table`); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["tasks", "cost", *table.tasks])
        for net in table.networks:
            writer.writerow(
                [net.name, repr(net.cost), *(repr(net.losses[t]) if t in net.losses else "" for t in table.tasks)]
            )
    return out
