"""Grouping quality: the selected grouping vs one all-in-one network and independent networks at equal cost;
HOA, ESA and TAG vs the exhaustive selection; the training time each method needed.

    python benchmarks/grouping_quality.py --out docs/grouping_bench.md          # 3 seeds, a few minutes per seed
    AUTOMTL_BENCH_QUICK=1 python benchmarks/grouping_quality.py                 # seconds: 2 tasks, few steps

Five dense tasks of :class:`automtl.train.data.SyntheticScenes` (segmentation, depth, normals, edges, and
shading: the Lambertian shading map, an L1 regression like depth) on the zoo's ``tiny_cnn`` trunk cut after
its residual block (stride 2), one dense head per task (16 hidden channels, fewer on half networks).
Candidates: a full network per task subset and a half network (:func:`automtl.compiler.width.half_size`, about
half the FLOPs) per task, every one trained from scratch for the same steps with the same optimiser and batch.
Selection on validation losses, scoring on test losses of fully trained networks (the sum over tasks of each
task's loss; depth in tenths of scene units). Baselines at each budget B: the all-in-one network (cost 1) and
independent single-task networks (full or half, the best such set of cost <= B on validation). Runs on the CPU
with one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from automtl.compiler.width import half_size
from automtl.grouping.select import select
from automtl.grouping.tag import tag_affinity
from automtl.grouping.train import FULL, HALF, Candidate, CandidateTrainer, GroupTrainConfig, run_method
from automtl.model.supermodel import build
from automtl.search.loop import TrainConfig
from automtl.train.data import SyntheticScenes
from automtl.train.tasks import Depth, Edges, Normals, Segmentation, Task, dense_head

TASKS = ("segmentation", "depth", "normals", "edges", "shading")
DEPTH_SCALE = 10.0
METHODS = ("exhaustive", "hoa", "esa", "tag", "tag_lr0.1")
TAG_LRS = {"tag": None, "tag_lr0.1": 0.1}  # lookahead step: the training's learning rate, or 0.1


class Rendered(Dataset):
    """SyntheticScenes rendered once into tensors (depth divided by DEPTH_SCALE)."""

    def __init__(self, n: int, size: int, seed: int, tasks: tuple[str, ...]) -> None:
        scenes = SyntheticScenes(n, size=size, seed=seed, tasks=tasks)
        items = [scenes[i] for i in range(n)]
        self.x = torch.stack([x for x, _ in items])
        self.y = {t: torch.stack([torch.as_tensor(y[t]) for _, y in items]) for t in tasks}
        if "depth" in self.y:
            self.y["depth"] = self.y["depth"] / DEPTH_SCALE

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.x[i], {t: v[i] for t, v in self.y.items()}


def make_tasks(names: tuple[str, ...]) -> dict[str, Task]:
    kinds = {"segmentation": lambda: Segmentation("segmentation", 4), "depth": lambda: Depth("depth"),
             "normals": lambda: Normals("normals"), "edges": lambda: Edges("edges"),
             "shading": lambda: Depth("shading")}
    return {t: kinds[t]() for t in names}


def factory(tasks: dict[str, Task], size: int) -> Any:
    """``(tasks, size)`` -> the derived all-shared network on tiny_cnn (full, or thinned to half the FLOPs)."""
    from automtl import backbones

    def make(names: tuple[str, ...], which: str) -> nn.Module:
        probe = build(backbones.get("tiny_cnn"), {t: nn.Identity() for t in names}, input_shape=(3, size, size),
                      trunk_output="block", check_heads=False)
        graph, hidden = probe.graph, 16
        if which == HALF:
            thin = half_size(graph, keep_outputs=False)
            graph, hidden = thin.graph, max(1, round(16 * thin.factor))
        shape = graph[graph.outputs[0]].shape
        heads = {t: dense_head(shape[1], tasks[t].out_channels, size // shape[2], hidden) for t in names}
        model = build(graph, heads)
        return model.derive(model.uniform_architecture("shared"))

    return make


def independent(ct: CandidateTrainer, steps: int, budget: float) -> Any:
    """The best set of single-task networks (full or half) of cost <= budget, scored on test; None if none fits."""
    cands = [Candidate((t,), s, steps) for t in ct.names for s in (FULL, HALF)]
    try:
        chosen = select(ct.table(cands, "val"), budget)
    except ValueError:
        return None
    test = ct.table(ct.full(chosen.networks), "test")
    return select(ct.table(cands, "val"), budget, score_with=test)


def run_seed(seed: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    names = tuple(TASKS[: args.tasks])
    tasks = make_tasks(names)
    data = Rendered(args.images, args.size, seed, names)
    config = TrainConfig(batch_size=args.batch, eval_batch_size=128, weight_lr=args.lr, seed=seed, quiet=True)
    options = GroupTrainConfig(steps=args.steps, esa_fraction=args.esa_fraction, tag_every=args.tag_every)
    ct = CandidateTrainer(tasks, factory(tasks, args.size), data, config, options, folder / f"seed{seed}")
    budgets = [float(b) for b in args.budgets]
    out: dict[str, Any] = {"seed": seed, "methods": {}, "baselines": {}}
    t0 = time.perf_counter()
    for method in ("exhaustive", "hoa", "esa"):
        out["methods"][method] = [r.to_dict() for r in run_method(ct, method, budgets)]
    for name, lr in TAG_LRS.items():
        model = ct.fresh(Candidate(names, FULL, args.steps))
        aff = tag_affinity(model, tasks, ct.splits[:2], config, args.steps, args.tag_every, lr)
        out[f"{name}_affinity"] = aff.to_dict()
        out["methods"][name] = [r.to_dict() for r in run_method(ct, "tag", budgets, aff)]
    everything = ct.result(Candidate(names, FULL, args.steps))
    out["baselines"]["all_in_one"] = {"loss": sum(everything["test"].values()), "cost": 1.0}
    out["baselines"]["independent"] = {}
    for b in budgets:
        sel = independent(ct, args.steps, b)
        out["baselines"]["independent"][str(b)] = None if sel is None else {"loss": sel.loss, "cost": sel.cost}
    out["wall_seconds"] = time.perf_counter() - t0
    return out


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def summary(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    budgets = [float(b) for b in args.budgets]
    lines = [
        f"Tasks: {', '.join(TASKS[: args.tasks])}; SyntheticScenes {args.images} images of {args.size}x{args.size} "
        f"(60/20/20% train/val/test); tiny_cnn trunk; {args.steps} steps of batch {args.batch} per network "
        f"(ESA: {args.esa_fraction:g} of them); seeds {', '.join(str(r['seed']) for r in runs)}; "
        f"test loss = sum over tasks (mean ± std over seeds; lower is better).",
        "",
        "| budget | exhaustive | HOA | ESA | TAG | TAG (lr 0.1) | all-in-one (cost 1) | independent (cost ≤ B) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, b in enumerate(budgets):
        cells = []
        for m in METHODS:
            vals = [r["methods"][m][i]["selection"]["loss"] for r in runs if r["methods"][m][i]["selection"]]
            cells.append(_ms(vals))
        cells.append(_ms([r["baselines"]["all_in_one"]["loss"] for r in runs]))
        ind = [r["baselines"]["independent"][str(b)] for r in runs]
        cells.append(_ms([v["loss"] for v in ind if v]))
        lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
    lines += ["", "| method | trained to select | training seconds to select (mean over seeds) | ÷ exhaustive's |",
              "|---|---|---|---|"]
    for m in METHODS:
        secs = [r["methods"][m][0]["selection_seconds"] for r in runs]
        ratio = [r["methods"][m][0]["selection_seconds"] / r["methods"]["exhaustive"][0]["selection_seconds"]
                 for r in runs]
        what = {"exhaustive": "every subset + halves", "hoa": "singles, pairs + halves",
                "esa": f"every subset + halves at {args.esa_fraction:g} of the steps",
                "tag": f"one joint run of all tasks (lookahead lr {args.lr:g})",
                "tag_lr0.1": "one joint run of all tasks (lookahead lr 0.1)"}[m]
        lines.append(f"| {m} | {what} | {statistics.mean(secs):.1f} | {statistics.mean(ratio):.3f} |")
    gaps = []
    for r in runs:
        for e, h in zip(r["methods"]["exhaustive"], r["methods"]["hoa"], strict=True):
            if e["selection"] and h["selection"]:
                gaps.append(100 * (h["selection"]["loss"] - e["selection"]["loss"]) / e["selection"]["loss"])
    if gaps:
        lines += ["", f"HOA vs exhaustive (test loss, every budget and seed): mean {statistics.mean(gaps):+.2f}%, "
                      f"worst {max(gaps):+.2f}%."]
    lines += ["", "Chosen networks (seed " + str(runs[0]["seed"]) + "):", ""]
    for m in METHODS:
        for res in runs[0]["methods"][m]:
            sel = res["selection"]
            nets = ", ".join(("+".join(n["tasks"]) + (" (half)" if n["cost"] == 0.5 else "")) for n in sel["networks"]
                             ) if sel else res["note"]
            lines.append(f"- {m}, budget {res['budget']:g}: {nets}")
    lines += ["", f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
                  f"torch {torch.__version__}, 1 thread."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    quick = os.environ.get("AUTOMTL_BENCH_QUICK") == "1"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", default=quick, help="2 tasks, few steps: a smoke run")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default=None, help="write the markdown summary here")
    p.add_argument("--json", default=None, help="write every result here")
    p.add_argument("--work", default=None, help="folder for the trained networks' results (resumable)")
    args = p.parse_args(argv)
    args.tasks, args.steps, args.images, args.size, args.batch = 5, 250, 600, 16, 32
    args.lr, args.esa_fraction, args.tag_every = 2e-3, 0.2, 5
    args.budgets = [1, 1.5, 2, 2.5, 3, 4, 5]
    if args.quick:
        args.tasks, args.steps, args.images, args.budgets, args.seeds = 2, 4, 48, [1, 2], "0"
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="grouping_bench_"))
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        runs.append(run_seed(seed, args, work))
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    text = summary(runs, args)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1, default=lambda o: None if math.isnan(o) else o))
    return 0


if __name__ == "__main__":
    sys.exit(main())
