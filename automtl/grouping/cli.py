"""``automtl group``: task grouping from the command line.

    automtl group select TABLE --budget 2                       # automtl's CSV
    automtl group select results.txt --budget 3 --format standley --tasks seg,depth,normals,edges,keypoints
    automtl group select val.csv --budget 2 --approx hoa --score-with test.csv --json

``group`` holds one sub-subcommand per job in :data:`SUBCOMMANDS`, each an (add_arguments, run) pair like the
top-level commands: ``select`` and ``train`` (training the candidate networks of a config into a run
directory, :mod:`.run`). Bad input raises :class:`~automtl.grouping.table.GroupingError` (a ``ValueError``), which the
top-level ``main`` prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING

from .table import FORMATS, GroupingError

if TYPE_CHECKING:
    from .select import Selection

SubCommand = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _budget(text: str) -> Fraction:
    try:
        value = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of full networks, e.g. 2 or 2.5") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the budget must be positive")
    return value


def _select_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", metavar="TABLE", help="a table of networks' (validation) losses")
    p.add_argument("--budget", type=_budget, required=True, metavar="B",
                   help="inference budget in full-size networks (a half-size network costs 0.5)")
    p.add_argument("--format", choices=FORMATS, default="csv",
                   help="csv: automtl's (tasks,cost,<task>...); standley: the published tab-separated layout")
    p.add_argument("--tasks", default=None, metavar="a,b,...",
                   help="task order of the columns (required with --format standley)")
    p.add_argument("--approx", choices=("hoa",), default=None,
                   help="hoa: estimate networks of 3+ tasks from the pair networks (only pairs need training)")
    p.add_argument("--score-with", default=None, metavar="TEST_TABLE",
                   help="a table of test losses (same format and tasks) to score the chosen networks")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--picture", default=None, metavar="PNG",
                   help="also draw the selections at every budget from the cheapest cover up to B (steps of 0.5)")


def _select_run(args: argparse.Namespace) -> int:
    from .select import cheapest_cover, select
    from .table import read_table

    tasks = args.tasks.split(",") if args.tasks is not None else None
    table = read_table(args.table, format=args.format, tasks=tasks)
    test = read_table(args.score_with, format=args.format, tasks=tasks or table.tasks) if args.score_with else None
    sel = select(table, args.budget, approx=args.approx, score_with=test)
    if args.picture:
        from .pictures import selection_picture
        from .select import select_budgets

        budgets = budget_steps(cheapest_cover(table, args.approx)[0], args.budget)
        path = selection_picture(select_budgets(table, budgets, approx=args.approx, score_with=test), args.picture)
        if not args.json:
            print(f"wrote {path}: the selections at budgets {', '.join(f'{float(b):g}' for b in budgets)}")
    if args.json:
        print(json.dumps(sel.to_dict()))
        return 0
    print(selection_text(sel))
    return 0


def budget_steps(cheapest: float, budget: Fraction, step: Fraction = Fraction(1, 2)) -> list[Fraction]:
    """Budgets from the first multiple of ``step`` at or above ``cheapest`` up to ``budget`` (always included)."""
    steps: list[Fraction] = []
    value = math.ceil(Fraction(repr(cheapest)) / step) * step
    while value < budget:
        steps.append(value)
        value += step
    return [*steps, budget]


def selection_text(sel: Selection) -> str:
    """A selection as a small table: one row per chosen network, its per-task losses, ``*`` where read."""
    name_w = max([len("network")] + [len(n.label()) for n in sel.networks])
    widths = [max(len(t), 8) for t in sel.tasks]
    lines = ["  ".join([f"{'network':<{name_w}}", f"{'cost':>5}", *(f"{t:>{w}}" for t, w in zip(sel.tasks, widths,
                                                                                                  strict=True))])]
    for net in sel.networks:
        cells = []
        for t, w in zip(sel.tasks, widths, strict=True):
            if t in net.losses:
                mark = "*" if sel.served_by[t] is net else " "
                cells.append(f"{net.losses[t]:>{w - 1}.4g}{mark}")
            else:
                cells.append(" " * w)
        lines.append("  ".join([f"{net.label():<{name_w}}", f"{net.cost:>5g}", *cells]).rstrip())
    if any(n.estimated for n in sel.networks):
        lines.append("(networks of 3+ tasks: losses estimated by HOA from the pair networks)")
    lines.append(f"* the network each task is read from; budget {sel.budget:g}, cost {sel.cost:g}")
    lines.append(f"estimated loss: {sel.estimated_loss:.6g}")
    if sel.scored:
        per_task = ", ".join(f"{t} {v:.4g}" for t, v in sel.task_losses.items())
        lines.append(f"test loss:      {sel.loss:.6g} ({per_task})")
    return "\n".join(lines)


def _budgets(text: str) -> list[float]:
    return [float(_budget(b)) for b in text.split(",") if b.strip()]


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from .train import MODES

    p.add_argument("config", metavar="CONFIG", help="a run configuration (.yaml/.toml): backbone, tasks, data")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the run directory (new or empty; an earlier grouping run of the same config resumes)")
    p.add_argument("--mode", choices=MODES, default="exhaustive",
                   help="exhaustive: every subset; hoa: singles and pairs; esa: every subset for a fraction of the "
                        "steps; tag: affinities of one joint run (default exhaustive)")
    p.add_argument("--budgets", type=_budgets, default=None, metavar="B1,B2,...",
                   help="budgets in full networks to select for (default 1 .. the number of tasks)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps of every network (default: the config's search.finetune_steps, else 200)")
    p.add_argument("--esa-fraction", type=float, default=0.2, help="esa: the fraction of the steps (default 0.2)")
    p.add_argument("--no-half", action="store_true", help="train no half-size networks")
    p.add_argument("--tag-every", type=int, default=5, help="tag: steps between affinity records (default 5)")
    p.add_argument("--export", action="store_true",
                   help="also write each selection as one grouped model: grouped/<mode>_b<budget>.onnx and .json")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _train_run(args: argparse.Namespace) -> int:
    import sys

    from ..app.config import load_config
    from .run import group_train
    from .train import GroupTrainConfig

    cfg = load_config(args.config)
    steps = args.steps if args.steps is not None else int(getattr(cfg.search, "finetune_steps", 0) or 200)
    options = GroupTrainConfig(steps=steps, esa_fraction=args.esa_fraction, half=not args.no_half,
                               tag_every=args.tag_every)
    log = None if args.quiet or args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    results = group_train(cfg, args.out, mode=args.mode, budgets=args.budgets, options=options, log=log,
                          export=args.export)
    if args.json:
        print(json.dumps({"out": str(args.out), "results": [r.to_dict() for r in results]}))
        return 0
    print(f"{'budget':>6}  {'method':<10}  {'cost':>4}  {'test loss':>9}  {'train s':>7}  networks")
    for r in results:
        if r.selection is None:
            print(f"{r.budget:>6g}  {r.method:<10}  {'-':>4}  {'-':>9}  {r.selection_seconds:>7.1f}  ({r.note})")
            continue
        nets = ", ".join(n.label() for n in r.selection.networks)
        print(f"{r.budget:>6g}  {r.method:<10}  {r.selection.cost:>4g}  {r.selection.loss:>9.4g}  "
              f"{r.selection_seconds:>7.1f}  {nets}")
    print(f"tables and selections in {args.out}")
    return 0


SUBCOMMANDS: dict[str, SubCommand] = {
    "select": ("choose the networks that minimise the total loss within a budget (exact)",
               _select_arguments, _select_run),
    "train": ("train the candidate networks of a config (exhaustive, hoa, esa or tag) and select per budget",
              _train_arguments, _train_run),
}

DESCRIPTION = (
    "Task grouping (Standley et al.): choose which tasks share a network under an inference budget. "
    "`select` reads a table of trained networks' losses and prints the exact best selection; `train` trains "
    "the candidate networks of a config and selects per budget."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare ``automtl group``'s sub-subcommands on its parser."""
    sub = p.add_subparsers(dest="group_command", metavar="JOB", required=True)
    for name, (help_text, add, run) in SUBCOMMANDS.items():
        q = sub.add_parser(name, help=help_text, description=help_text)
        q.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback on errors")
        add(q)
        q.set_defaults(group_run=run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``automtl group`` job; returns its exit code."""
    if not hasattr(args, "group_run"):  # pragma: no cover - argparse requires a job
        raise GroupingError("automtl group: name a job, e.g. `automtl group select TABLE --budget 2`")
    return int(args.group_run(args))
