"""Quality benchmark: independent single-task models vs the all-shared model vs the searched model.

    python benchmarks/quality.py --out docs/quality.md

Three dense tasks of :class:`automtl.train.data.SyntheticScenes` (segmentation, depth, surface normals)
on the zoo's ``tiny_cnn`` trunk (cut after its residual block, stride 2) with one small dense
head per task. Every model is trained from scratch for the same number of steps with the same
optimiser and batch size; the searched architecture comes from a warm-up and a policy search on
the same training images first. Metrics are measured on held-out scenes. Runs on the CPU.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from automtl.model.supermodel import build
from automtl.search.searcher import SearchConfig, Searcher, evaluate
from automtl.train.data import SyntheticScenes
from automtl.train.tasks import Depth, Normals, Segmentation, Task

TASKS = ("segmentation", "depth", "normals")
DEPTH_SCALE = 10.0  # depths (about 1-14 scene units) are divided by this for training, metrics are scaled back


class Rendered(Dataset):
    """SyntheticScenes rendered once into tensors (depth divided by DEPTH_SCALE)."""

    def __init__(self, n: int, size: int, seed: int) -> None:
        scenes = SyntheticScenes(n, size=size, seed=seed, tasks=TASKS)
        items = [scenes[i] for i in range(n)]
        self.x = torch.stack([x for x, _ in items])
        self.y = {t: torch.stack([y[t] for _, y in items]) for t in TASKS}
        self.y["depth"] = self.y["depth"] / DEPTH_SCALE

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.x[i], {t: y[i] for t, y in self.y.items()}


def make_tasks(names: tuple[str, ...]) -> dict[str, Task]:
    all_tasks: dict[str, Task] = {"segmentation": Segmentation("segmentation", 4), "depth": Depth("depth"),
                                  "normals": Normals("normals")}
    return {t: all_tasks[t] for t in names}


PRIMARY = {"segmentation": ("miou", True), "depth": ("abs_err", False), "normals": ("mean_angle", False)}


def build_model(names: tuple[str, ...], size: int, seed: int) -> Any:
    torch.manual_seed(seed)
    tasks = make_tasks(names)
    heads = {t: task.make_head(16, scale_factor=2) for t, task in tasks.items()}
    return build("tiny_cnn", heads, trunk_output="block", input_shape=(3, size, size), bn="follow"), tasks


def scaled(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {t: dict(m) for t, m in metrics.items()}
    if "depth" in out:
        for k in ("abs_err", "rmse"):
            out["depth"][k] *= DEPTH_SCALE
    return out


def delta_mtl(metrics: dict[str, dict[str, float]], base: dict[str, dict[str, float]]) -> float:
    """Mean over tasks of the sign-adjusted relative change of the primary metric, in percent."""
    terms = []
    for t, (key, higher) in PRIMARY.items():
        rel = (metrics[t][key] - base[t][key]) / base[t][key]
        terms.append(rel if higher else -rel)
    return 100.0 * sum(terms) / len(terms)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--train", type=int, default=2000, help="training scenes (split in half for weights/policy)")
    p.add_argument("--val", type=int, default=300)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--steps", type=int, default=1500, help="training steps of every final model")
    p.add_argument("--warmup", type=int, default=400)
    p.add_argument("--search", type=int, default=1000, help="search iterations (1 weight + 1 policy step each)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.time()

    train = Rendered(args.train, args.size, seed=args.seed)
    val = Rendered(args.val, args.size, seed=args.seed + 1)
    test = Rendered(args.test, args.size, seed=args.seed + 2)
    half = args.train // 2
    weights = torch.utils.data.Subset(train, range(half))
    policy = torch.utils.data.Subset(train, range(half, args.train))
    test_loader = torch.utils.data.DataLoader(test, batch_size=128)
    config = SearchConfig(warmup_steps=args.warmup, search_iterations=args.search, finetune_steps=args.steps,
                          batch_size=args.batch, weight_lr=args.lr, finetune_from="scratch", seed=args.seed,
                          device=args.device, quiet=True)
    rows: dict[str, dict[str, Any]] = {}
    timing: dict[str, float] = {}

    def log(msg: str) -> None:
        print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)

    # independent single-task models
    t0 = time.time()
    ind_metrics: dict[str, dict[str, float]] = {}
    ind_params = ind_flops = 0
    for t in TASKS:
        model, tasks = build_model((t,), args.size, args.seed)
        s = Searcher(model, tasks, (weights, policy, val), config)
        net = s.finetune(model.uniform_architecture("shared"))
        ind_metrics[t] = evaluate(net, tasks, test_loader, device=args.device)["metrics"][t]
        rep = net.report()
        ind_params += rep["total"]["params"]
        ind_flops += rep["total"]["flops"]
        log(f"independent {t}: {ind_metrics[t]}")
    rows["independent (3 single-task models)"] = {"metrics": ind_metrics, "params": ind_params, "flops": ind_flops}
    timing["independent"] = time.time() - t0

    # all-shared and searched: one supermodel, the same scratch training
    model, tasks = build_model(TASKS, args.size, args.seed)
    s = Searcher(model, tasks, (weights, policy, val), config)
    t0 = time.time()
    shared = s.finetune(model.uniform_architecture("shared"))
    rep = shared.report()
    rows["all-shared"] = {"metrics": evaluate(shared, tasks, test_loader, device=args.device)["metrics"],
                          "params": rep["total"]["params"], "flops": rep["total"]["flops"]}
    timing["all-shared"] = time.time() - t0
    log(f"all-shared: {rows['all-shared']['metrics']}")

    model, tasks = build_model(TASKS, args.size, args.seed)
    s = Searcher(model, tasks, (weights, policy, val), config)
    t0 = time.time()
    s.warmup()
    s.search()
    arch = s.derive()
    timing["search"] = time.time() - t0
    log(f"searched architecture: shared fraction {arch.shared_fraction():.3f}")
    t0 = time.time()
    searched = s.finetune()
    rep = searched.report()
    rows["searched"] = {"metrics": evaluate(searched, tasks, test_loader, device=args.device)["metrics"],
                        "params": rep["total"]["params"], "flops": rep["total"]["flops"]}
    timing["searched fine-tune"] = time.time() - t0
    log(f"searched: {rows['searched']['metrics']}")

    base = scaled(ind_metrics)
    lines = [
        "# Quality benchmark",
        "",
        "Command (CPU):",
        "",
        "```",
        command.strip(),
        "```",
        "",
        f"SyntheticScenes at {args.size}x{args.size}: {args.train} training scenes (half for weight steps, half "
        f"for policy steps; every final model trains on all of them), {args.val} validation scenes, metrics on "
        f"{args.test} held-out test scenes. Trunk: the zoo's `tiny_cnn` cut after its residual block (16 channels "
        "at stride 2), `bn=\"follow\"` (batch norms share as their convolution does); one dense head per task "
        "(3x3 conv, BN, ReLU, 1x1 conv, x2 upsampling). "
        f"Every model trains from scratch for {args.steps} Adam steps (lr {args.lr}, batch {args.batch}, equal "
        f"loss weights). The search: {args.warmup} warm-up steps, then {args.search} iterations of one weight "
        "step and one policy step (AutoMTL defaults: tau 5, x0.965 every 100 policy steps, lambda_policy 5e-4, "
        "s = 6, policy Adam lr 0.01), argmax derivation. Depth is trained divided by 10; its errors are in "
        "scene units.",
        "",
        "| model | seg mIoU ↑ | depth abs err ↓ | normals mean angle (°) ↓ | Δ_MTL vs independent | params | "
        "FLOPs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in rows.items():
        m = scaled(row["metrics"])
        d = delta_mtl(m, base)
        lines.append(
            f"| {name} | {m['segmentation']['miou']:.4f} | {m['depth']['abs_err']:.4f} | "
            f"{m['normals']['mean_angle']:.2f} | {d:+.2f}% | {row['params']:,} | {row['flops'] / 1e6:.2f} M |"
        )
    shared_nodes = ", ".join(
        f"`{node}`: " + "/".join(per[t][:2] for t in TASKS) for node, per in arch.choices.items()
    )
    lines += [
        "",
        "Δ_MTL = mean over the three tasks of the relative change of the primary metric against the independent "
        "models, sign-adjusted so that positive is better (Maninis et al., 2019; Vandenhende et al., 2021). "
        "Params and FLOPs count all three tasks together (heads included; FLOPs per 32x32 image as the compiler "
        "counts them, multiply-adds x2).",
        "",
        f"Searched architecture (branch per task in the order {'/'.join(TASKS)}; sh = shared, sp = specific, "
        f"sk = skip): {shared_nodes}; shared fraction {arch.shared_fraction():.3f}.",
        "",
        f"One seed ({args.seed}) and one run per model: no variance estimate, so differences of a few tenths of "
        "a percent between rows should not be read as significant.",
        "",
        "Wall-clock on this machine: " + ", ".join(f"{k} {v:.0f} s" for k, v in timing.items())
        + f"; total {time.time() - start:.0f} s ({platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s), torch {torch.__version__}).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if any(math.isnan(v) for row in rows.values() for m in row["metrics"].values() for v in m.values()):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
