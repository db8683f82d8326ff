"""Search quality on a known-answer problem: does the search find the architecture that matters?

    python benchmarks/quality.py --out docs/quality.md            # 3 seeds, about 10 minutes on 2 cores
    python benchmarks/quality.py --quick                          # seconds (what CI runs, via bench_quality.py)

Data: :class:`automtl.train.colour_codes.ColourCodes` with four tasks, codes a: 0, b: 1, c: 2, d: 0
(d is a copy of a). The network (:class:`~automtl.train.colour_codes.ColourCodeNet`, 6 convolutions
of width 16 with batch norm; ``bn="follow"``) writes each task's logits with its last convolution,
so tasks with different codes cannot share everything up to the logits, and sharing it all costs
accuracy; the colour evidence below is the same for all tasks. Compared, every final model
trained from scratch for the same number of steps with the same optimiser and batch:
independent single-task networks, all-shared, the hand-written "share the first half, branch
after", random architectures (each (node, task) shared or specific with probability 1/2, as
AutoMTL's ablation), and the searched architecture (default ``SearchConfig``, step counts set
here; the search's own steps are reported apart). Mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from automtl.model.architecture import Architecture
from automtl.model.supermodel import SuperModel, build
from automtl.search import SearchConfig, Searcher, TrainConfig, Trainer, evaluate
from automtl.train.colour_codes import ColourCodeNet, ColourCodes
from automtl.train.tasks import Segmentation

SHIFTS = {"a": 0, "b": 1, "c": 2, "d": 0}
SIZE = 8


def make(names: list[str], seed: int) -> tuple[SuperModel, dict[str, Segmentation]]:
    torch.manual_seed(seed)
    model = build(ColourCodeNet(), {t: nn.Identity() for t in names}, input_shape=(3, SIZE, SIZE), skip=False)
    return model, {t: Segmentation(t, 3) for t in names}


def train(model: SuperModel, tasks: dict, arch: Architecture, data: tuple, test: DataLoader, steps: int,
          seed: int) -> dict[str, Any]:
    """Derive ``arch`` from ``model``, re-initialise, train ``steps`` steps, evaluate on ``test``."""
    derived = model.derive(arch)
    torch.manual_seed(seed + 1)
    for m in derived.modules():
        if m is not derived and callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
    config = TrainConfig(batch_size=32, weight_lr=3e-3, seed=seed, quiet=True)
    Trainer(derived, tasks, data, config).train(steps)
    metrics = evaluate(derived, tasks, test)["metrics"]
    report = derived.report()
    return {"miou": {t: metrics[t]["miou"] for t in tasks}, "params": report["total"]["params"],
            "flops": report["total"]["flops"], "arch": arch, "latency": latency(derived)}


def latency(model: nn.Module, rounds: int = 30) -> float:
    x = torch.randn(8, 3, SIZE, SIZE)
    with torch.inference_mode():
        model.eval()(x)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def random_arch(model: SuperModel, gen: torch.Generator) -> Architecture:
    pick = torch.randint(0, 2, (len(model.task_names), len(model.choices)), generator=gen)
    return model.architecture_from_indices(pick)


def half_shared(model: SuperModel) -> Architecture:
    half = len(model.choices) // 2
    pick = torch.tensor([[0 if v < half else 1 for v in range(len(model.choices))] for _ in model.task_names])
    return model.architecture_from_indices(pick)


def delta(miou: dict[str, float], base: dict[str, float]) -> float:
    return 100.0 * statistics.mean((miou[t] - base[t]) / base[t] for t in base)


def run_seed(seed: int, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    names = list(SHIFTS)
    data = ColourCodes(args.train + args.val, SHIFTS, SIZE, seed)
    test = DataLoader(ColourCodes(args.test, SHIFTS, SIZE, seed + 100), batch_size=256)
    train_part, val_part = Subset(data, range(args.train)), Subset(data, range(args.train, args.train + args.val))
    half = args.train // 2
    rows: dict[str, Any] = {}
    ind_miou: dict[str, float] = {}
    params = flops = lat = 0.0
    for t in names:  # independent: one network per task
        model, tasks = make([t], seed)
        r = train(model, tasks, model.uniform_architecture("shared"), (train_part, val_part), test, args.steps, seed)
        ind_miou[t], params, flops, lat = r["miou"][t], params + r["params"], flops + r["flops"], lat + r["latency"]
    rows["independent"] = {"miou": ind_miou, "params": params, "flops": flops, "latency": lat}
    model, tasks = make(names, seed)
    for name, arch in (("all-shared", model.uniform_architecture("shared")), ("half-shared", half_shared(model))):
        rows[name] = train(model, tasks, arch, (train_part, val_part), test, args.steps, seed)
    gen = torch.Generator().manual_seed(seed)
    rows["random"] = [train(model, tasks, random_arch(model, gen), (train_part, val_part), test, args.steps, seed)
                      for _ in range(args.random)]
    t0 = time.time()
    smodel, stasks = make(names, seed)
    config = SearchConfig(warmup_steps=args.warmup, search_iterations=args.search, finetune_steps=0, seed=seed,
                          quiet=True)
    s = Searcher(smodel, stasks, (Subset(data, range(half)), Subset(data, range(half, args.train)), val_part), config)
    s.warmup()
    s.search()
    arch = s.derive()
    search_time = time.time() - t0
    rows["searched"] = train(model, tasks, arch, (train_part, val_part), test, args.steps, seed)
    rows["searched"]["search_s"] = search_time
    log(f"seed {seed}: searched shares {arch.shared_fraction():.2f} in {search_time:.0f} s")
    for r in [rows[k] for k in ("all-shared", "half-shared", "searched")] + rows["random"] + [rows["independent"]]:
        r["delta"] = delta(r["miou"], ind_miou)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--train", type=int, default=1024)
    p.add_argument("--val", type=int, default=256)
    p.add_argument("--test", type=int, default=1024)
    p.add_argument("--steps", type=int, default=600, help="training steps of every final model")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--search", type=int, default=300, help="search iterations (1 weight + 1 policy step each)")
    p.add_argument("--random", type=int, default=10, help="random architectures per seed")
    p.add_argument("--quick", action="store_true", help="tiny settings, seconds (CI)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.train, args.val, args.test, args.steps = 1, 128, 64, 128, 10
        args.warmup, args.search, args.random = 5, 5, 2
    torch.set_num_threads(args.threads)
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)

    runs = [run_seed(seed, args, log) for seed in range(args.seeds)]
    text = report(runs, args, time.time() - start, argv)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


def _ms(values: list[float], fmt: str = "{:+.1f}") -> str:
    """Mean ± standard deviation, both in ``fmt``'s precision (the std without a sign)."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.replace('+', '').format(statistics.stdev(values))}"


def report(runs: list[dict[str, Any]], args: argparse.Namespace, seconds: float, argv: list[str] | None) -> str:
    names = list(SHIFTS)
    command = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Search quality: a known-answer benchmark", "", "```", command.strip(), "```", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             f"{args.train} training images (half weight steps, half policy steps in the search; every final model "
             f"trains on all), {args.val} validation, {args.test} test images, 3x{SIZE}x{SIZE}. Final models: "
             f"{args.steps} Adam steps (lr 0.003, batch 32). Search: {args.warmup} warm-up steps, {args.search} "
             f"iterations (one weight and one policy step each), default SearchConfig otherwise. Seeds: "
             f"{len(runs)}; random architectures: {args.random} per seed.", "",
             "| model | Δ_MTL % (mIoU vs independent) | " + " | ".join(f"{t} mIoU" for t in names)
             + " | params | FLOPs | latency ms (batch 8) |",
             "|---|---|" + "---|" * len(names) + "---|---|---|"]
    for key in ("independent", "all-shared", "half-shared", "searched"):
        rows = [r[key] for r in runs]
        lines.append(f"| {key} | {_ms([r['delta'] for r in rows]) if key != 'independent' else '0'} | "
                     + " | ".join(_ms([r["miou"][t] for r in rows], "{:.3f}") for t in names)
                     + f" | {_ms([r['params'] for r in rows], '{:,.0f}')} | "
                     f"{_ms([r['flops'] for r in rows], '{:,.0f}')} | {_ms([r['latency'] for r in rows], '{:.2f}')} |")
    rand = [x for r in runs for x in r["random"]]
    lines.append(f"| random (all {len(rand)}) | {_ms([r['delta'] for r in rand])} | "
                 + " | ".join(_ms([r["miou"][t] for r in rand], "{:.3f}") for t in names)
                 + f" | {_ms([r['params'] for r in rand], '{:,.0f}')} | {_ms([r['flops'] for r in rand], '{:,.0f}')}"
                 f" | {_ms([r['latency'] for r in rand], '{:.2f}')} |")
    lines += ["", "Per seed: the searched architecture against the median random architecture of equal or larger "
              "size (params), and what the search chose.", "",
              "| seed | searched Δ_MTL | median Δ_MTL of random archs ≥ its params (n) | params vs independent | "
              "searched architecture | search s |", "|---|---|---|---|---|---|"]
    for seed, r in enumerate(runs):
        s = r["searched"]
        bigger = [x["delta"] for x in r["random"] if x["params"] >= s["params"]]
        med = f"{statistics.median(bigger):+.1f} ({len(bigger)})" if bigger else "none as large"
        lines.append(f"| {seed} | {s['delta']:+.1f} | {med} | {s['params'] / r['independent']['params']:.0%} | "
                     f"{describe(s['arch'])} | {s['search_s']:.0f} |")
    lines += ["", f"Total {seconds:.0f} s on {platform.machine()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s).", ""]
    return "\n".join(lines)


def describe(arch: Architecture) -> str:
    """Where tasks branch, in words: all-shared / all-specific said as such."""
    per = arch.choices
    if all(set(v.values()) == {"shared"} for v in per.values()):
        return "all-shared (the search found nothing to split)"
    if all(set(v.values()) == {"specific"} for v in per.values()):
        return "all-specific"
    split = [f"`{n}`: " + "/".join(v[t][:2] for t in arch.tasks) for n, v in per.items()
             if set(v.values()) != {"shared"}]
    return f"shared {arch.shared_fraction():.0%}; splits at " + ", ".join(split)


if __name__ == "__main__":
    raise SystemExit(main())
