"""SlimDA quality benchmark: one slimmable bank per method and seed on a domain pair (``--pair digits|shapes``).

``digits``: printed digits -> scikit-learn's handwritten digits (899 target test images); ``shapes``: grey
shapes -> coloured shapes on striped backgrounds (generated, 4000 target test images). For every seed, three
banks are trained with the same number of weight steps and the same model batch (the sandwich rule):
``source_only`` (source labels only), ``symnet`` (the slimmable SymNet baseline) and ``slimda`` (SymNet + SEED
+ OSTC). At each budget (a fraction of the largest network's FLOPs) the budget search samples width
configurations under it and picks one by UPEM (no target label). Target labels are read only here, to judge:
the in-sample oracle picks the candidate with the best test accuracy (measured on the same images, which favours
it), the held-out oracle picks on one half of the test images and is judged on the other (both ways, averaged).
Over all scored candidates of a bank (every budget): Spearman(-UPEM, test accuracy), the same against the
accuracy on every target image, Spearman(FLOPs, accuracy), and the split-half reliability of the accuracies
(how much of their ranking is signal; its Spearman-Brown ceiling bounds any score's correlation). Also the
time per training step of the bank vs the largest network alone (same batch).

    .venv/bin/python benchmarks/slimda_quality.py --seeds 0 --out /tmp/slimda/seed0.md    # one seed
    .venv/bin/python benchmarks/slimda_quality.py --merge /tmp/slimda/seed{0,1,2}.json --out merged.md
    AUTOMTL_BENCH_QUICK=1 .venv/bin/python benchmarks/slimda_quality.py              # one seed, 20 steps
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
from automtl.train.domain_shift import SHAPE_TASK, SHAPES, domain_shift_digits, domain_shift_shapes  # noqa: E402
from automtl.train.tasks import Classification  # noqa: E402

METHODS = ("source_only", "symnet", "slimda")
BUDGETS = (1.0, 0.5, 0.25, 0.125, 0.0625)


#: the domain pairs: (data factory, task, classes, input shape)
PAIRS = {"digits": (domain_shift_digits, "digit", 10, (1, 8, 8)),
         "shapes": (domain_shift_shapes, SHAPE_TASK, len(SHAPES), (3, 16, 16))}


def backbone(channels: int = 1, widths: tuple[int, ...] = (16, 32, 32, 64)) -> nn.Module:
    """A small CNN (four conv layers with batch norm, global pool; the 2nd and 4th stride 2)."""
    layers: list[nn.Module] = []
    for i, w in enumerate(widths):
        layers += [nn.Conv2d(channels, w, 3, padding=1, stride=2 if i % 2 else 1), nn.BatchNorm2d(w), nn.ReLU()]
        channels = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def make(method: str, seed: int, args: argparse.Namespace, data: Any) -> SlimDASearcher:
    _, task, classes, shape = PAIRS[args.pair]
    torch.manual_seed(seed)
    model = build_slim_classifier(backbone(shape[0], tuple(args.channels)), classes, input_shape=shape, task=task)
    cfg = SlimDAConfig(method=method, steps=args.steps, widths=args.widths, model_batch=args.model_batch,
                       batch_size=args.batch, eval_batch_size=256, weight_lr=args.lr, seed=seed, quiet=True,
                       calibration_batches=4, budget_candidates=args.candidates)
    return SlimDASearcher(model, {task: Classification(task, classes)}, data, cfg)


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
            total, _ = s.step_loss(xs, ys[s.task], xt, configs, 0)
            s.opt.zero_grad()
            total.backward()
            s.opt.step()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def correct(s: SlimDASearcher, widths: dict[str, float], loader: str = "test") -> torch.Tensor:
    """Per-sample correctness (bool) of ``widths`` on a labelled loader, BN calibrated as the searcher does.

    Evaluation only: the target's labels are read here, never in training or in the budget search."""
    from automtl.search.streams import split_batch

    s.model.eval()
    s.model.trunk.calibrate(widths, s.calibration_images())
    out = []
    for batch in s.loaders[loader]:
        x, y = split_batch(batch, s.names, True, s.device)
        out.append(s.model(x)[s.task].argmax(1) == y[s.task])
    return torch.cat(out)


def halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random split of ``n`` test samples into two halves (for held-out oracles and split-half checks)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1000 + seed))
    return order[: n // 2], order[n // 2 :]


def evaluate_bank(s: SlimDASearcher, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Budget searches (UPEM picks) and the target labels' verdict on every scored candidate.

    Besides the in-sample oracle (the best candidate by test accuracy, measured on the same samples, which
    favours it: the maximum of noisy accuracies), a held-out oracle is picked on one half of the test samples
    and measured on the other (both ways, averaged), as is the UPEM pick. The split-half reliability (Spearman
    between the candidates' accuracies on the two halves) says how much of the accuracy ranking is signal."""
    out: dict[str, Any] = {"budgets": {}, "pairs": []}
    scored: dict[tuple[float, float], tuple[float, torch.Tensor, torch.Tensor, float]] = {}
    for b in BUDGETS:
        found = s.search_budget(b, args.candidates, seed)
        right = [correct(s, c["widths"]) for c in found["candidates"]]
        n = len(right[0])
        ha, hb = halves(n, seed)
        picked = next(i for i, c in enumerate(found["candidates"]) if c["widths"] == found["widths"])
        acc = [float(r.float().mean()) for r in right]
        held = []
        for pick_on, judge_on in ((ha, hb), (hb, ha)):
            best = max(range(len(right)), key=lambda i: float(right[i][pick_on].float().mean()))
            held.append((float(right[best][judge_on].float().mean()), float(right[picked][judge_on].float().mean())))
        out["budgets"][b] = {"upem_pick": acc[picked], "oracle": max(acc), "flops_ratio": found["flops_ratio"],
                             "candidates": len(acc), "oracle_heldout": statistics.mean(h[0] for h in held),
                             "upem_pick_heldout": statistics.mean(h[1] for h in held)}
        for c, r in zip(found["candidates"], right, strict=True):
            all_right = torch.cat([correct(s, c["widths"], "target_eval"), r])  # every target image, labels read here
            scored[(round(c["upem"], 12), round(c["flops_ratio"], 12))] = (
                c["upem"], r, all_right, c["flops_ratio"])
    ha, hb = halves(len(next(iter(scored.values()))[1]), seed)
    rows = list(scored.values())
    out["pairs"] = [(u, float(r.float().mean()), f) for u, r, _, f in rows]
    acc = [float(r.float().mean()) for _, r, _, _ in rows]
    out["spearman"] = spearman([-u for u, _, _, _ in rows], acc)
    out["spearman_all_target"] = spearman([-u for u, _, _, _ in rows], [float(a.float().mean()) for _, _, a, _ in rows])
    out["spearman_flops"] = spearman([f for _, _, _, f in rows], acc)
    out["split_half"] = spearman([float(r[ha].float().mean()) for _, r, _, _ in rows],
                                 [float(r[hb].float().mean()) for _, r, _, _ in rows])
    out["accuracy_range"] = (min(acc), max(acc))
    out["configs"] = len(rows)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "out"}, "runs": []}
    for seed in args.seeds:
        data = PAIRS[args.pair][0](args.source, seed)
        for method in args.methods:
            t0 = time.perf_counter()
            s = make(method, seed, args, data)
            s.run()
            train_s = time.perf_counter() - t0
            ev = evaluate_bank(s, args, seed)
            row = {"method": method, "seed": seed, "train_s": train_s, **ev}
            if method == "slimda" and args.cost_rounds:
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


def _per_seed(values: list[float], digits: int = 2, scale: float = 1.0) -> str:
    return ", ".join(f"{scale * v:.{digits}f}" for v in values)


def _ceiling(split_half: float) -> float:
    """The highest rank correlation any score can reach with accuracy measured on the whole test set, when the
    accuracies of its two halves correlate by ``split_half`` (Spearman-Brown, then the square root)."""
    whole = 2 * split_half / (1 + split_half) if split_half > 0 else 0.0
    return whole ** 0.5


def table(results: dict[str, Any]) -> str:
    runs = results["runs"]
    by = {m: [r for r in runs if r["method"] == m] for m in METHODS}
    lines = ["| budget (FLOPs) | source-only | slimmable SymNet | SlimDA (UPEM pick) | SlimDA (oracle pick) "
             "| UPEM - oracle, in-sample | UPEM - oracle, held-out |",
             "|---|---|---|---|---|---|---|"]
    for b in BUDGETS:
        cells = [_ms([r["budgets"][b]["upem_pick"] for r in by[m]]) for m in METHODS]
        slim = [r["budgets"][b] for r in by["slimda"]]
        cells.append(_ms([v["oracle"] for v in slim]))
        cells.append(_ms([v["upem_pick"] - v["oracle"] for v in slim]))
        cells.append(_ms([v["upem_pick_heldout"] - v["oracle_heldout"] for v in slim]))
        lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (" + ", ".join(str(r["seed"]) for r in by["slimda"]) + "), target accuracy (%) at "
              "budgets " + " / ".join(f"{b:g}" for b in BUDGETS) + ":"]
    for m in METHODS:
        lines.append(f"* {m}: " + "; ".join(" / ".join(f"{100 * r['budgets'][b]['upem_pick']:.1f}" for b in BUDGETS)
                                             for r in by[m]))
    slim = by["slimda"]
    gaps = [max(r["budgets"][b]["oracle"] - r["budgets"][b]["upem_pick"] for b in BUDGETS) for r in slim]
    held = [max(r["budgets"][b]["oracle_heldout"] - r["budgets"][b]["upem_pick_heldout"] for b in BUDGETS)
            for r in slim]
    lines += [f"* largest single-seed gap oracle - UPEM pick (points): in-sample {_per_seed(gaps, 1, 100)}; "
              f"held-out {_per_seed(held, 1, 100)}", ""]
    lines += ["| bank | configurations | accuracy range (%) | Spearman(-UPEM, test acc) | "
              "Spearman(-UPEM, acc on all target images) | Spearman(FLOPs, test acc) | split-half reliability | "
              "ceiling |", "|---|---|---|---|---|---|---|---|"]
    for m in METHODS:
        for r in by[m]:
            lo, hi = r["accuracy_range"]
            lines.append(f"| {m} seed {r['seed']} | {r['configs']} | {100 * lo:.1f}-{100 * hi:.1f} | "
                         f"{r['spearman']:.2f} | {r['spearman_all_target']:.2f} | {r['spearman_flops']:.2f} | "
                         f"{r['split_half']:.2f} | {_ceiling(r['split_half']):.2f} |")
    rho = [r["spearman"] for r in slim]
    ratio = [r["step_cost"]["bank"] / r["step_cost"]["largest"] for r in slim]
    lines += ["", f"Spearman(-UPEM, target accuracy), SlimDA, over {min(r['configs'] for r in slim)}+ configurations "
                  f"per seed: {statistics.mean(rho):.2f} ± {statistics.stdev(rho) if len(rho) > 1 else 0:.2f} "
                  f"(per seed {_per_seed(rho)})",
              f"Time per training step, bank (model batch {results['args']['model_batch']}) / largest network alone: "
              f"{statistics.mean(ratio):.2f}x (per seed {_per_seed(ratio)})"]
    return "\n".join(lines)


def summary(results: dict[str, Any]) -> str:
    """Per bank: the UPEM pick, the oracles and Spearman (when not every method was trained: no comparison)."""
    lines = []
    for r in results["runs"]:
        gaps = " ".join(f"{b:g}:{100 * (v['upem_pick'] - v['oracle']):+.1f}/"
                        f"{100 * (v['upem_pick_heldout'] - v['oracle_heldout']):+.1f}" for b, v in r["budgets"].items())
        accs = " ".join(f"{100 * v['upem_pick']:.1f}" for v in r["budgets"].values())
        lines.append(f"{r['method']} seed {r['seed']}: UPEM pick {accs}; UPEM - oracle (in-sample/held-out) {gaps}; "
                     f"spearman {r['spearman']:.2f}")
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
    ax.set_title(f"{results['args'].get('pair', 'digits')}: every scored width configuration")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    quick = os.environ.get("AUTOMTL_BENCH_QUICK") == "1"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0] if quick else [0, 1, 2])
    p.add_argument("--steps", type=int, default=20 if quick else 600)
    p.add_argument("--pair", choices=sorted(PAIRS), default="digits",
                   help="digits: printed -> handwritten digits; shapes: grey shapes -> coloured, striped shapes "
                        "(generated; 4000 target test images)")
    p.add_argument("--source", type=int, default=300 if quick else 3000, help="source images generated")
    p.add_argument("--widths", type=float, nargs="+", default=[0.125, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--channels", type=int, nargs=4, default=[16, 32, 32, 64],
                   help="output channels of the CNN's four conv layers (the largest network)")
    p.add_argument("--model-batch", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--candidates", type=int, default=4 if quick else 12)
    p.add_argument("--cost-rounds", type=int, default=3 if quick else 20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="the banks to train (the table needs all three; one alone is for studying it)")
    p.add_argument("--out", default=None, help="write the table here (markdown) and the raw results beside it")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="no training: merge the raw results of runs (one per seed, run in parallel) into one table")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        results = {"args": parts[0]["args"], "runs": [r for part in parts for r in part["runs"]]}
        for r in results["runs"]:  # JSON keys are strings
            r["budgets"] = {float(b): v for b, v in r["budgets"].items()}
    else:
        results = run(args)
    complete = {r["method"] for r in results["runs"]} == set(METHODS)
    text = table(results) if complete else summary(results)
    print(text)
    if args.out:
        out = Path(args.out)
        out.write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        pareto_picture(results, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
