"""The ``automtl`` command line: one subcommand per job, each an (add_arguments, run) pair.

    automtl compile resnet18                       # op table with totals
    automtl compile net.prototxt --input-shape 3,128,128 --json
    automtl search run.yaml --out runs/r1          # search into a run directory (torchrun: data-parallel)
    automtl derive runs/r1 --sample 8              # re-derive from the searched policy
    automtl report runs/r1                         # the comparison table
    automtl show runs/r1                           # the pictures
    automtl export runs/r1 --onnx

To add a subcommand, put a :class:`Command` into :data:`COMMANDS`. ``run`` returns the exit code;
:func:`main` turns a :class:`CompileError`, ``ValueError`` or ``OSError`` into one line
``automtl: error: <message>`` on stderr and exit code 2 (``--debug`` re-raises instead), and
Ctrl-C into one line and exit code 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..grouping import cli as _grouping_cli

PROG = "automtl"
ERROR_EXIT = 2


@dataclass(frozen=True)
class Command:
    """A subcommand: its one-line help, how it declares its arguments and what it does."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


# --- shared argument types -----------------------------------------------------------------------
def parse_shape(text: str) -> tuple[int, ...] | list[tuple[int, ...]]:
    """``"3,224,224"`` (or ``3x224x224``, or ``N,C,H,W``) -> a tuple; ``;`` separates several inputs."""
    shapes: list[tuple[int, ...]] = []
    for part in text.split(";"):
        dims = [d for d in part.replace("x", ",").replace(" ", "").split(",") if d]
        try:
            shape = tuple(int(d) for d in dims)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 3,224,224") from None
        if len(shape) not in (3, 4) or min(shape) <= 0:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a shape like 3,224,224 (C,H,W or N,C,H,W, all positive)"
            )
        shapes.append(shape)
    return shapes[0] if len(shapes) == 1 else shapes


def jsonable(value: Any) -> Any:
    """Shapes and other IR values as plain JSON: tuples become lists, unknown objects their repr."""
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _fmt_shape(shape: Any) -> str:
    if isinstance(shape, tuple) and all(isinstance(d, int) for d in shape):
        return "x".join(map(str, shape))
    return str(shape)


# --- automtl compile -------------------------------------------------------------------------------
def _compile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("backbone", help="a zoo name (see `automtl compile --help`), a .prototxt or an .onnx file")
    p.add_argument(
        "--input-shape", type=parse_shape, metavar="C,H,W",
        help="input shape (C,H,W or N,C,H,W; ';' between several inputs); default: the zoo's or the file's",
    )
    p.add_argument("--dialect", choices=("auto", "caffe", "automtl"), default="auto",
                   help="prototxt dialect (default: auto)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def graph_report(graph: Any) -> dict[str, Any]:
    """The JSON document ``automtl compile --json`` prints for ``graph``."""
    return {
        "name": graph.name,
        "params": int(graph.params),
        "flops": int(graph.flops),
        "inputs": {i: jsonable(graph[i].shape) for i in graph.inputs},
        "outputs": {o: jsonable(s) for o, s in graph.output_shapes().items()},
        "ops": [
            {**row, "shape": jsonable(row["shape"]), "inputs": list(graph[row["name"]].inputs)}
            for row in graph.summary()
        ],
    }


def _compile_run(args: argparse.Namespace) -> int:
    from ..api import compile as compile_backbone

    graph = compile_backbone(args.backbone, args.input_shape, dialect=args.dialect)
    if args.json:
        print(json.dumps(graph_report(graph)))
        return 0
    print(graph.table())
    print()
    print(f"inputs:  {', '.join(f'{i} {_fmt_shape(graph[i].shape)}' for i in graph.inputs)}")
    print(f"outputs: {', '.join(f'{o} {_fmt_shape(s)}' for o, s in graph.output_shapes().items())}")
    print(f"params:  {graph.params:,}")
    print(f"FLOPs:   {graph.flops:,}")
    return 0


def _zoo_names() -> str:
    try:
        from .. import backbones

        return ", ".join(backbones.names())
    except ImportError:  # pragma: no cover - the zoo ships with the package
        return "(the zoo is not installed)"


# --- automtl search / derive / report / show -----------------------------------------------------
def _search_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="a YAML or TOML run config (see the README)")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>); must be new or empty")
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped run in --out from its last checkpoint (the config must be the run's)")
    p.add_argument("--stop-after", type=int, default=None, metavar="K",
                   help="stop after K warm-up and search steps, saving a checkpoint (go on with --resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage lines (the table is printed)")


_LEFT_GROUP = False  # this process ran a command under torchrun and has left its process group


def _distributed(run: Callable[[], int]) -> int:
    """Run under the process group ``torchrun`` describes, if any; leave it afterwards."""
    global _LEFT_GROUP
    from ..search import distributed

    joined = distributed.init_from_env()
    try:
        return run()
    finally:
        if joined:
            distributed.leave()
            _LEFT_GROUP = True


def _search_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..search.strategies import get_strategy
    from .config import load_config
    from .run_kinds import load_ref

    cfg = load_config(args.config)
    out = args.out or str(Path("runs") / Path(args.config).stem)
    if args.stop_after is not None and args.stop_after < 0:
        raise ValueError(f"--stop-after must be >= 0, got {args.stop_after}")
    runner = load_ref(get_strategy(cfg.strategy).runner)  # the run directory's, or the strategy's own folder

    def go() -> int:
        try:
            runner(cfg, out, resume=args.resume, quiet=args.quiet, stop_after=args.stop_after)
        except KeyboardInterrupt:
            if not (Path(out) / "automtl-run.json").is_file():
                print(f"{PROG}: interrupted; nothing was written to {out}", file=sys.stderr)
            else:
                print(f"{PROG}: interrupted; `automtl search {args.config} --out {out} --resume` goes on from the "
                      "last checkpoint", file=sys.stderr)
            return 130
        return 0

    return _distributed(go)


def _run_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="a run directory written by `automtl search` or `automtl demo`")


def _derive_arguments(p: argparse.ArgumentParser) -> None:
    _run_argument(p)
    p.add_argument("--sample", type=int, default=0, metavar="K",
                   help="also draw K architectures from the searched policy; keep the best on validation")
    p.add_argument("--out", default=None,
                   help="architecture file to write (default: RUN/derived/architecture-argmax.json or -sampleK.json)")
    p.add_argument("--budget", type=float, default=None, metavar="B",
                   help="a SlimDA run (RUN holds slimda.pt): write the network UPEM picks within B x the largest "
                        "network's FLOPs (--out: its folder, default RUN/derived)")


def _derive_budget(args: argparse.Namespace) -> int:
    from .slimda import derive_budget

    r = derive_budget(args.run_dir, args.budget, out=args.out)
    print(f"wrote {r['model']} and {r.get('onnx', '(no ONNX)')}: {r['flops']:,} FLOPs ({r['flops_ratio']:.3f} of the "
          f"largest network, budget {r['budget']:g}), {r['params']:,} params, UPEM {r['upem']:.4f} (best of "
          f"{r['candidates']}), latency {r['latency_ms']:.3f} ms (batch 1, cpu)")
    return 0


def _derive_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .runs import RunError, derive_run

    if args.budget is not None:
        return _derive_budget(args)
    if args.sample < 0:
        raise ValueError(f"--sample must be >= 0, got {args.sample}")
    name = f"architecture-sample{args.sample}.json" if args.sample else "architecture-argmax.json"
    out = Path(args.out) if args.out else Path(args.run_dir) / "derived" / name
    if out.exists():
        raise RunError(f"{out}: exists; nothing was changed. Choose another --out")
    arch, records, searcher = derive_run(args.run_dir, args.sample, out=out)
    candidates = [r for r in records if "candidate" in r]
    if candidates:
        print("| candidate | val loss | cost ratio | shared | within budget |")
        print("|---|---|---|---|---|")
        for r in candidates:
            name = "argmax" if r["candidate"] == 0 else f"sample {r['candidate']}"
            print(f"| {name} | {r['val_loss']:.4f} | {r['cost_ratio']:.3f} | {100 * r['shared_fraction']:.0f}% | "
                  f"{'yes' if r['within_budget'] else 'no'} |")
    model = searcher.build_derived(arch)
    rep = model.report()
    print(f"wrote {out}: shares {100 * arch.shared_fraction():.0f}% of (operator, task) choices; params "
          f"{rep['total']['params']:,} ({rep['params_ratio']:.2f}x of separate backbones), FLOPs "
          f"{rep['total']['flops']:,} ({rep['flops_ratio']:.2f}x)")
    return 0


def _report_arguments(p: argparse.ArgumentParser) -> None:
    _run_argument(p)
    p.add_argument("--json", action="store_true", help="print report.json instead of the table")


def _report_run(args: argparse.Namespace) -> int:
    from .runs import load_report, report_table

    report = load_report(args.run_dir)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(report_table(report))
    print()
    print(f"searched: shares {100 * report['shared_fraction']:.0f}% of (operator, task) choices; params "
          f"{report['params_ratio']:.2f}x and FLOPs {report['flops_ratio']:.2f}x of separate backbones; "
          f"latency on {report.get('device', 'cpu')}, batch 1")
    for task, v in report["per_task"].items():
        print(f"  {task}: {v['params']:,} params, {v['flops']:,} FLOPs")
    for line in report.get("summary", []):  # a strategy's own lines (MPNAS: the paths and their Jaccard matrix)
        print(line)
    return 0


def _show_arguments(p: argparse.ArgumentParser) -> None:
    _run_argument(p)
    p.add_argument("--out", default=None, help="folder for the PNG files (default: RUN/pictures)")


def _show_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..model.architecture import Architecture
    from .pictures import render_all
    from .runs import RunDir, load_history

    run = RunDir(args.run_dir)
    run.meta()
    arch = Architecture.load(run.require("architecture.json", "the search has not finished"))
    paths = render_all(arch, Path(args.out) if args.out else run / "pictures", history=load_history(run))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", choices=("colour_codes", "synthetic_scenes"), default="colour_codes",
                   help="colour_codes (default: four tasks, sharing everything costs accuracy) or "
                        "synthetic_scenes (segmentation, depth, normals on a zoo backbone)")
    p.add_argument("--backbone", default="resnet18", help="synthetic_scenes: zoo backbone (default resnet18)")
    p.add_argument("--trunk-output", default="layer2",
                   help="synthetic_scenes: operator or submodule the heads read (default layer2)")
    p.add_argument("--size", type=int, default=32, help="synthetic_scenes: image size (default 32)")
    p.add_argument("--images", type=int, default=None, help="number of generated images (default 1280 / 500)")
    p.add_argument("--warmup-steps", type=int, default=None, help="default 200 / 60")
    p.add_argument("--search-iterations", type=int, default=None, help="default 300 / 40")
    p.add_argument("--finetune-steps", type=int, default=None, help="default 200 / 80")
    p.add_argument("--out", default=None, help="run directory (default: the first free runs/demo, runs/demo-2, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _demo_run(args: argparse.Namespace) -> int:
    from .demo import run_demo

    def go() -> int:
        run_demo(args.backbone, args.trunk_output, args.size, args.images, args.warmup_steps, args.search_iterations,
                 args.finetune_steps, out_dir=args.out, seed=args.seed, quiet=args.quiet, data=args.data)
        return 0

    return _distributed(go)


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN",
                   help="a run directory holding model.pt (as `automtl demo` writes), or a model.pt file")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (one graph, one output per task)")
    p.add_argument("--input-shape", type=parse_shape, default=None,
                   help="C,H,W of the exported input (default: the shape the model was compiled at)")
    p.add_argument("--out", default=None, help="output file (default: RUN/model.onnx, or RUN/state_dict.pt)")


def _export_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..model.derive import MultiTaskModel
    from .export import check_onnx, export_onnx, input_shapes

    src = Path(args.run_dir)
    model_file = src / "model.pt" if src.is_dir() else src
    if (src / "automtl-run.json").is_file():  # a run directory: model.pt is checked against its recorded hash
        from .runs import RunDir

        model_file = RunDir(src).require("model.pt", "the search has not finished")
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file}: no such file; run `automtl demo` (or save a MultiTaskModel) first")
    model = MultiTaskModel.load(model_file)
    folder = model_file.parent
    if not args.onnx:
        out = Path(args.out or folder / "state_dict.pt")
        torch.save(model.state_dict(), out)
        print(f"wrote {out} (state dict, {sum(p.numel() for p in model.parameters()):,} params)")
        return 0
    shapes, names = input_shapes(model, args.input_shape)  # one per domain for a multi-domain model
    out = Path(args.out or folder / "model.onnx")
    proto = export_onnx(model, out, shapes if names else shapes[0], dynamic_batch=True, input_names=names)
    diffs = check_onnx(out, model, [torch.randn(2, *s) for s in shapes])
    convs = sum(n.op_type == "Conv" for n in proto.graph.node)
    print(f"wrote {out}: {'inputs ' + ', '.join(names) + '; ' if names else ''}outputs {', '.join(model.task_names)}; "
          f"{convs} Conv nodes; "
          f"onnxruntime vs PyTorch max abs diff {max(diffs.values()):.2e}")
    return 0


COMMANDS: dict[str, Command] = {
    "search": Command(
        help="search a config's backbone and tasks into a run directory",
        add_arguments=_search_arguments,
        run=_search_run,
        description="Compile the config's backbone, build the supermodel, warm up, search the policy, derive, "
        "fine-tune, train the baselines and write the run directory (config, checkpoints, metrics, model, "
        "report, pictures). Under torchrun the search is data-parallel.",
    ),
    "derive": Command(
        help="derive an architecture again from a run's searched policy (argmax, or the best of K samples); "
             "a SlimDA run's network for a budget (--budget B)",
        add_arguments=_derive_arguments,
        run=_derive_run,
        description="Derive from the searched supermodel of RUN: the argmax of the policy, or with --sample K "
        "the best on validation of the argmax and K architectures drawn from the policy (within the budget "
        "when the run has one). Writes the architecture JSON and prints its params and FLOPs.",
    ),
    "report": Command(
        help="print a run's table: per-task metrics, params, FLOPs, latency vs the baselines",
        add_arguments=_report_arguments,
        run=_report_run,
    ),
    "show": Command(
        help="draw a run's pictures: sharing per task, task similarity, training curves (PNG)",
        add_arguments=_show_arguments,
        run=_show_run,
    ),
    "mpnas": Command(
        help="run an MPNAS search (search: {strategy: mpnas}) from a config into a folder",
        add_arguments=lambda p: __import__("automtl.app.mpnas_cli", fromlist=["x"]).add_arguments(p),
        run=lambda args: __import__("automtl.app.mpnas_cli", fromlist=["x"]).run(args),
        description="Per-domain paths over the backbone's blocks (block or skip), searched by per-domain "
        "controllers, then the derived model trained from scratch (see docs/mpnas.md).",
    ),
    "export": Command(
        help="export a derived multi-task model: state dict, or ONNX with --onnx",
        add_arguments=_export_arguments,
        run=_export_run,
        description="Export the derived model of a run directory. With --onnx: one ONNX graph with one named "
        "output per task, checked by onnx.checker and compared with PyTorch under onnxruntime.",
    ),
    "demo": Command(
        help="search a built-in problem and compare independent, all-shared and searched models",
        add_arguments=_demo_arguments,
        run=_demo_run,
        description="Search shared/specific choices on the built-in ColourCodes tasks (sharing everything costs "
        "accuracy there), or with --data synthetic_scenes shared/specific/skip choices for segmentation, depth "
        "and normals on a zoo backbone; derive the compact model and print a comparison table.",
    ),
    "compile": Command(
        help="compile a backbone and print its operators, shapes, parameters and FLOPs",
        add_arguments=_compile_arguments,
        run=_compile_run,
        description="Compile a backbone into the IR and print its op table and totals. "
        "Zoo backbones: " + _zoo_names() + ".",
    ),
    "group": Command(
        help="task grouping: select the networks serving the tasks best within a budget",
        add_arguments=_grouping_cli.add_arguments,
        run=_grouping_cli.run,
        description=_grouping_cli.DESCRIPTION,
    ),
}


# --- entry point ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Turn any CNN backbone into an efficient multi-task model automatically."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.description or cmd.help, parents=[common])
        cmd.add_arguments(p)
        p.set_defaults(run=cmd.run)
    return parser


def _one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse has printed them
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else ERROR_EXIT)
    from ..compiler.errors import CompileError

    try:
        return int(args.run(args))
    except (CompileError, ValueError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return ERROR_EXIT
    except KeyboardInterrupt:  # Ctrl-C outside a run (a run's command says how to go on)
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`automtl compile resnet50 | head`): not our error
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except OSError as exc:  # the file system refused (read-only, full): the file and the reason
        if args.debug:
            raise
        from .integrity import os_error_line

        print(f"{PROG}: error: {_one_line(os_error_line(exc))}", file=sys.stderr)
        return ERROR_EXIT


def entry() -> None:
    """Console-script wrapper: exit with :func:`main`'s code (``python -m automtl`` too).

    A data-parallel process ends at once after its command (see
    :func:`~automtl.search.distributed.exit_process`): torch's gloo teardown can abort it at exit."""
    code = main()
    if _LEFT_GROUP:
        from ..search.distributed import exit_process

        exit_process(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
