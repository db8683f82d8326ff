"""Which label-free score picks SlimDA's network per budget best? UPEM's discrepancy against alternatives.

For each seed one SlimDA bank is trained exactly as in ``slimda_quality.py`` (digits, 16-32-32-64, 600
steps; the same bank as that benchmark's for the same seed), the budget search draws its candidates, and
every candidate is scored by each rule below from its target predictions (no target label):

* ``js_largest``: UPEM as automtl computes it, the Jensen-Shannon divergence from the largest network;
* ``js_ensemble``: the same against the mean prediction of every candidate of the bank (all budgets);
* ``disagree_largest`` / ``disagree_ensemble``: the fraction of target images whose argmax differs;
* ``ce_largest``: the cross-entropy of the candidate against the largest network's argmax;
* ``entropy``: the candidate's own mean prediction entropy (a confidence score, no anchor).

Target labels are read only to judge the picks: per budget, the pick minus the in-sample oracle and minus
the held-out oracle (as in ``slimda_quality.py``), and Spearman(-score, test accuracy) over the bank.

    .venv/bin/python benchmarks/slimda_upem_rules.py --seeds 10 11 12 13 14
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import slimda_quality as quality  # noqa: E402

from automtl.search.slimda_losses import spearman, upem  # noqa: E402

Rule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], float]  # (candidate probs, largest, ensemble)


def _entropy(p: torch.Tensor) -> float:
    return float(-(p * torch.log(p.clamp_min(1e-12))).sum(1).mean())


def _disagree(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p.argmax(1) != q.argmax(1)).float().mean())


RULES: dict[str, Rule] = {
    "js_largest": lambda p, a, e: upem(torch.log(p), torch.log(a)),
    "js_ensemble": lambda p, a, e: upem(torch.log(p), torch.log(e)),
    "disagree_largest": lambda p, a, e: _disagree(p, a),
    "disagree_ensemble": lambda p, a, e: _disagree(p, e),
    "ce_largest": lambda p, a, e: float(F.nll_loss(torch.log(p.clamp_min(1e-12)), a.argmax(1))),
    "entropy": lambda p, a, e: _entropy(p),
}


def study(seed: int, args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """One bank: per rule, the per-budget gaps to both oracles and the Spearman over its candidates."""
    s = quality.make("slimda", seed, args, quality.PAIRS["digits"][0](args.source, seed))
    s.run()
    per_budget = {}
    for b in quality.BUDGETS:
        found = s.search_budget(b, args.candidates, seed)
        per_budget[b] = [(c, F.softmax(s.target_logits(c["widths"]), -1), quality.correct(s, c["widths"]))
                         for c in found["candidates"]]
    everyone = [p for rows in per_budget.values() for _, p, _ in rows]
    largest, ensemble = per_budget[1.0][0][1], torch.stack(everyone).mean(0)
    out: dict[str, dict[str, object]] = {}
    for name, rule in RULES.items():
        gaps, held, pooled = {}, {}, {}
        for b, rows in per_budget.items():
            score = [rule(p, largest, ensemble) for _, p, _ in rows]
            acc = [float(r.float().mean()) for _, _, r in rows]
            pick = min(range(len(rows)), key=lambda i: (score[i], -rows[i][0]["flops"]))
            gaps[b] = acc[pick] - max(acc)
            ha, hb = quality.halves(len(rows[0][2]), seed)
            both = []
            for on, judge in ((ha, hb), (hb, ha)):
                best = max(range(len(rows)), key=lambda i: float(rows[i][2][on].float().mean()))
                both.append(float(rows[pick][2][judge].float().mean()) - float(rows[best][2][judge].float().mean()))
            held[b] = statistics.mean(both)
            for (c, _, _), sc, a in zip(rows, score, acc, strict=True):
                pooled[(round(c["upem"], 12), round(c["flops_ratio"], 12))] = (sc, a)
        rho = spearman([-sc for sc, _ in pooled.values()], [a for _, a in pooled.values()])
        out[name] = {"in_sample": gaps, "held_out": held, "spearman": rho}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[10, 11, 12, 13, 14])
    p.add_argument("--steps", type=int, default=600, help="training steps per bank (20: a smoke run)")
    args = p.parse_args(argv)
    args.pair, args.channels, args.model_batch, args.batch = "digits", [16, 32, 32, 64], 4, 64
    args.widths, args.lr, args.candidates, args.source = [0.125, 0.25, 0.5, 0.75, 1.0], 2e-3, 12, 3000
    torch.set_num_threads(1)
    runs = [study(seed, args) for seed in args.seeds]
    print("| rule | pick - oracle, in-sample (budgets " + " / ".join(f"{b:g}" for b in quality.BUDGETS)
          + ") | pick - oracle, held-out | worst single gap | Spearman, mean (per seed) |")
    print("|---|---|---|---|---|")
    for name in RULES:
        cell = [" / ".join(f"{100 * statistics.mean(r[name][kind][b] for r in runs):+.1f}" for b in quality.BUDGETS)
                for kind in ("in_sample", "held_out")]
        worst = min(r[name]["in_sample"][b] for r in runs for b in quality.BUDGETS)
        rho = [r[name]["spearman"] for r in runs]
        print(f"| {name} | {cell[0]} | {cell[1]} | {100 * worst:+.1f} | {statistics.mean(rho):.2f} "
              f"({', '.join(f'{x:.2f}' for x in rho)}) |")


if __name__ == "__main__":
    main()
