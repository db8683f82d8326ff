"""SlimDA quality benchmark: printed digits -> handwritten digits, one slimmable bank per method and seed.

For every seed, three banks are trained with the same number of weight steps and the same model
batch (the sandwich rule): ``source_only`` (source labels only), ``symnet`` (the slimmable SymNet
baseline) and ``slimda`` (SymNet + SEED + OSTC). At each budget (a fraction of the largest network's
FLOPs) the budget search samples width configurations under it and picks one by UPEM (no target
label); the oracle picks the candidate with the best target test accuracy. Reported: target test
accuracy of the UPEM-picked network per method and budget, UPEM-picked vs oracle for SlimDA, the
Spearman correlation between -UPEM and accuracy over all of SlimDA's scored candidates, and the
time per training step of the bank vs the largest network alone (same batch).

    .venv/bin/python benchmarks/slimda_quality.py --out docs/slimda_results.md      # 3 seeds
    AUTOMTL_BENCH_QUICK=1 .venv/bin/python benchmarks/slimda_quality.py              # seconds-to-minutes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from automtl.model.width import build_slim_classifier  # noqa: E402
from automtl.search.slimda import SlimDAConfig, SlimDASearcher  # noqa: E402
from automtl.search.slimda_losses import spearman  # noqa: E402
from automtl.train.domain_shift import domain_shift_digits  # noqa: E402
from automtl.train.tasks import Classification  # noqa: E402

METHODS = ("source_only", "symnet", "slimda")
BUDGETS = (1.0, 0.5, 0.25, 0.125, 0.0625)


def backbone() -> nn.Module:
    """A small CNN for 8x8 digits (four conv layers with batch norm, global pool)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1, stride=2), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def make(method: str, seed: int, args: argparse.Namespace, data: Any) -> SlimDASearcher:
    torch.manual_seed(seed)
    model = build_slim_classifier(backbone(), 10, input_shape=(1, 8, 8))
    cfg = SlimDAConfig(method=method, steps=args.steps, widths=args.widths, model_batch=args.model_batch,
                       batch_size=args.batch, eval_batch_size=256, weight_lr=args.lr, seed=seed, quiet=True,
                       calibration_batches=4, budget_candidates=args.candidates)
    return SlimDASearcher(model, {"digit": Classification("digit", 10)}, data, cfg)


def step_cost(s: SlimDASearcher, rounds: int) -> dict[str, float]:
    """Median seconds of one training step (loss, backward, update) of the model batch and of the largest alone."""
    from automtl.model.width import sandwich
    from automtl.search.streams import split_batch

    xs, ys = split_batch(s.streams["source"].next(), s.names, False, s.device)
    xt, _ = split_batch(s.streams["target"].next(), s.names, True, s.device)
    full = [s.model.trunk.uniform(max(s.config.widths))]
    times: dict[str, list[float]] = {"bank": [], "largest": []}
    s.model.train()
    for _ in range(rounds):
        for name in ("bank", "largest"):
            configs = full if name == "largest" else sandwich(s.model.trunk, s.config.widths, s.config.model_batch,
                                                              s.rng)
            t0 = time.perf_counter()
            total, _ = s.step_loss(xs, ys["digit"], xt, configs, 0)
            s.opt.zero_grad()
            total.backward()
            s.opt.step()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def evaluate_bank(s: SlimDASearcher, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"budgets": {}, "pairs": []}
    for b in BUDGETS:
        found = s.search_budget(b, args.candidates, seed)
        accs = [s.accuracy(c["widths"]) for c in found["candidates"]]
        picked = s.accuracy(found["widths"])
        out["budgets"][b] = {"upem_pick": picked, "oracle": max(accs), "flops_ratio": found["flops_ratio"],
                             "candidates": len(accs)}
        out["pairs"] += [(c["upem"], a, c["flops_ratio"]) for c, a in zip(found["candidates"], accs, strict=True)]
    seen = {}
    for u, a, f in out["pairs"]:
        seen[(round(u, 12), round(f, 12))] = (u, a)
    pairs = list(seen.values())
    out["spearman"] = spearman([-u for u, _ in pairs], [a for _, a in pairs])
    out["configs"] = len(pairs)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "out"}, "runs": []}
    for seed in args.seeds:
        data = domain_shift_digits(args.source, seed)
        for method in METHODS:
            t0 = time.perf_counter()
            s = make(method, seed, args, data)
            s.run()
            train_s = time.perf_counter() - t0
            ev = evaluate_bank(s, args, seed)
            row = {"method": method, "seed": seed, "train_s": train_s, **ev}
            if method == "slimda":
                row["step_cost"] = step_cost(s, args.cost_rounds)
            results["runs"].append(row)
            accs = " ".join(f"{b:g}:{100 * v['upem_pick']:.1f}" for b, v in ev["budgets"].items())
            print(f"seed {seed} {method:11s} {train_s:6.0f}s  target acc by budget {accs}  "
                  f"spearman {ev['spearman']:.2f}", flush=True)
    return results


def _ms(values: list[float]) -> str:
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:.1f} ± {100 * s:.1f}"


def table(results: dict[str, Any]) -> str:
    runs = results["runs"]
    lines = ["| budget (FLOPs) | source-only | slimmable SymNet | SlimDA (UPEM pick) | SlimDA (oracle pick) |",
             "|---|---|---|---|---|"]
    for b in BUDGETS:
        cells = []
        for method in METHODS:
            cells.append(_ms([r["budgets"][b]["upem_pick"] for r in runs if r["method"] == method]))
        cells.append(_ms([r["budgets"][b]["oracle"] for r in runs if r["method"] == "slimda"]))
        lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
    slim = [r for r in runs if r["method"] == "slimda"]
    rho = [r["spearman"] for r in slim]
    ratio = [r["step_cost"]["bank"] / r["step_cost"]["largest"] for r in slim]
    lines += ["", f"Spearman(-UPEM, target accuracy) over {min(r['configs'] for r in slim)}+ configurations per seed: "
                  f"{statistics.mean(rho):.2f} ± {statistics.stdev(rho) if len(rho) > 1 else 0:.2f} "
                  f"(per seed {', '.join(f'{v:.2f}' for v in rho)})",
              f"Time per training step, bank (model batch {results['args']['model_batch']}) / largest network alone: "
              f"{statistics.mean(ratio):.2f}x (per seed {', '.join(f'{v:.2f}' for v in ratio)})"]
    return "\n".join(lines)


def pareto_picture(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, color in zip(METHODS, ("tab:gray", "tab:blue", "tab:red"), strict=True):
        pts = [(f, a) for r in results["runs"] if r["method"] == method and r["seed"] == results["runs"][0]["seed"]
               for _, a, f in r["pairs"]]
        ax.scatter([p[0] for p in pts], [100 * p[1] for p in pts], s=8, alpha=0.5, color=color, label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("FLOPs / largest network")
    ax.set_ylabel("target test accuracy (%)")
    ax.set_title("printed -> handwritten digits: every scored width configuration")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    quick = os.environ.get("AUTOMTL_BENCH_QUICK") == "1"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0] if quick else [0, 1, 2])
    p.add_argument("--steps", type=int, default=20 if quick else 600)
    p.add_argument("--source", type=int, default=300 if quick else 3000, help="printed digits rendered")
    p.add_argument("--widths", type=float, nargs="+", default=[0.125, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--model-batch", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--candidates", type=int, default=4 if quick else 12)
    p.add_argument("--cost-rounds", type=int, default=3 if quick else 20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the table here (markdown) and the raw results beside it")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="no training: merge the raw results of runs (one per seed, run in parallel) into one table")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        results = {"args": parts[0]["args"], "runs": [r for part in parts for r in part["runs"]]}
        for r in results["runs"]:  # JSON keys are strings
            r["budgets"] = {float(b): v for b, v in r["budgets"].items()}
    else:
        results = run(args)
    text = table(results)
    print(text)
    if args.out:
        out = Path(args.out)
        out.write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        pareto_picture(results, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
