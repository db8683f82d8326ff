"""MPNAS against its baselines on the built-in multi-domain suite, at an equal training budget.

    python benchmarks/mpnas_quality.py --quick --jobs 3        # the quick table: 3 seeds in 3 processes
    python benchmarks/mpnas_quality.py --quick --seeds 0 --smoke   # seconds: the script runs end to end
    python benchmarks/mpnas_quality.py --quick --seeds 0 --json s0.json   # one seed's raw results ...
    python benchmarks/mpnas_quality.py --merge s0.json s1.json s2.json    # ... and one table of several
    python benchmarks/mpnas_quality.py                         # the larger table (32x32, more steps)

Data: :func:`automtl.train.domains.domain_suite` (digits, textures, shapes, scenes, glyphs), every
domain resized to the input. Backbone: :class:`automtl.model.blocks.SmallResNet` (a stem, two
stages of two residual blocks; the four identity-shaped blocks are the searched block / zero
choices). Methods, every final model trained from scratch for ``--steps`` steps of one batch per
domain (same optimiser, batch and learning rate):

* ``independent``: one backbone per domain, each trained alone on its domain;
* ``single-path multi-head``: one backbone, every block, a head per domain (equal weighting);
* ``multi-head search``: MPNAS with one controller for all domains (one path), equal weighting;
* ``MPNAS equal``: per-domain controllers, the derived model trained with equal weighting;
* ``MPNAS ABDP``: the same search, the derived model trained with ABDP.

The searches' own ``--search-steps`` steps are on top (reported apart, as in the paper). Reported:
per-domain and mean validation accuracy, params, FLOPs, CPU latency (one image per domain, median
of 30 runs, one thread), mean ± std over seeds; then the targets checked, and seed 0's paths.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import multiprocessing
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from automtl.model.blocks import SmallResNet, build_blocks
from automtl.model.derive import MultiTaskModel, derive
from automtl.search import TrainConfig, Trainer, evaluate
from automtl.search.mpnas import MPNASConfig, MPNASSearcher
from automtl.search.paths import FixedPath, jaccard, recalibrate_batch_norms, reinitialise
from automtl.train.data import MultiDomain
from automtl.train.domains import DomainSuite, domain_suite
from automtl.train.tasks import classification_head

METHODS = ("independent", "single-path multi-head", "multi-head search", "MPNAS equal", "MPNAS ABDP")


def supermodel(suite: DomainSuite, domains: list[str], seed: int, args: argparse.Namespace,
               kernels: tuple[int, ...] = ()) -> Any:
    torch.manual_seed(seed)
    heads = {d: classification_head(args.width * 2, suite.num_classes[d]) for d in domains}
    return build_blocks(SmallResNet(args.width, 2, 2), heads, input_shape=(3, suite.size, suite.size),
                        domain_bn=args.domain_bn and len(domains) > 1, kernels=kernels)


def train(model: Any, pick: torch.Tensor, suite: DomainSuite, domains: list[str], args: argparse.Namespace,
          seed: int, weighting: str = "equal") -> tuple[MultiTaskModel, dict[str, float]]:
    """Train the paths ``pick`` of ``model`` from scratch (re-initialised, at the fixed paths), derive it,
    and return the derived model with its validation accuracy per domain."""
    tasks = {d: suite.tasks[d] for d in domains}
    data = (MultiDomain({d: suite.domain(d) for d in domains}), MultiDomain({d: suite.domain(d, "val")
                                                                             for d in domains}))
    arch = model.architecture_from_indices(pick)
    fresh = reinitialise(copy.deepcopy(model), seed + 1)
    cfg = TrainConfig(batch_size=args.batch, weight_lr=args.lr, seed=seed, quiet=True, weighting=weighting)
    path = FixedPath(fresh, arch, multi_domain=True)
    Trainer(path, tasks, data, cfg).train(args.steps)
    if args.recalibrate:  # batch-norm statistics at the trained weights, as MPNASSearcher.train_derived does
        batches = DataLoader(data[0], batch_size=args.batch, shuffle=True, collate_fn=_collate,
                             generator=torch.Generator().manual_seed(seed))

        def forward(batch: dict[str, Any]) -> None:
            path(*[batch[d][0] for d in domains])

        recalibrate_batch_norms(path, batches, forward, args.recalibrate)
    derived = derive(fresh.eval(), arch, multi_domain=True).eval()
    metrics = evaluate(derived, tasks, DataLoader(data[1], batch_size=256, collate_fn=_collate))["metrics"]
    return derived, {d: metrics[d]["accuracy"] for d in domains}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    from automtl.train.data import collate

    return collate(items)


def latency(models: list[MultiTaskModel], size: int, inputs: list[int]) -> float:
    """Milliseconds of one forward of every model on one image per input (median of 30, one thread)."""
    xs = [[torch.randn(1, 3, size, size) for _ in range(n)] for n in inputs]
    for m in models:
        m.eval()
    with torch.no_grad():
        for _ in range(3):
            for m, x in zip(models, xs, strict=True):
                m(*x)
        times = []
        for _ in range(30):
            start = time.perf_counter()
            for m, x in zip(models, xs, strict=True):
                m(*x)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def row(acc: dict[str, float], models: list[MultiTaskModel], size: int, inputs: list[int]) -> dict[str, Any]:
    reports = [m.report()["total"] for m in models]
    return {"acc": acc, "mean": statistics.mean(acc.values()), "params": sum(r["params"] for r in reports),
            "flops": sum(r["flops"] for r in reports), "latency": latency(models, size, inputs)}


def run_seed(suite: DomainSuite, args: argparse.Namespace, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    domains = list(suite.tasks)
    T = len(domains)
    out: dict[str, Any] = {}
    # independent: one backbone per domain
    acc, models = {}, []
    for d in domains:
        m = supermodel(suite, [d], seed, args)
        derived, a = train(m, torch.zeros(1, len(m.choices), dtype=torch.long), suite, [d], args, seed)
        acc.update(a)
        models.append(derived)
    out["independent"] = row(acc, models, suite.size, [1] * T)
    # single-path multi-head: every block, shared by all
    m = supermodel(suite, domains, seed, args)
    derived, a = train(m, torch.zeros(T, len(m.choices), dtype=torch.long), suite, domains, args, seed)
    out["single-path multi-head"] = row(a, [derived], suite.size, [T])
    # the searches
    info: dict[str, Any] = {}
    for controller, names in (("shared", ("multi-head search",)), ("per_domain", ("MPNAS equal", "MPNAS ABDP"))):
        model = supermodel(suite, domains, seed, args, tuple(args.kernels))
        cfg = MPNASConfig(search_steps=args.search_steps, train_steps=0, batch_size=args.batch, weight_lr=args.lr,
                          policy_lr=args.policy_lr, cost_kind="flops", cost_target=args.cost_target,
                          beta=args.beta, controller=controller, seed=seed, quiet=True)
        searcher = MPNASSearcher(model, suite.tasks, suite.splits(), cfg)
        start = time.perf_counter()
        searcher.run_stages()
        search_s = time.perf_counter() - start
        arch = searcher.architecture()
        pick = model.architecture_tensor(arch)
        for name in names:
            weighting = "abdp" if name == "MPNAS ABDP" else "equal"
            derived, a = train(model, pick, suite, domains, args, seed, weighting)
            out[name] = row(a, [derived], suite.size, [T])
            out[name]["search_s"] = search_s
        if controller == "per_domain":
            from automtl.search.paths import block_paths, sharing

            paths = block_paths(model, arch)
            info = {"paths": paths, "sharing": sharing(model, arch), "jaccard": jaccard(paths),
                    "probs": (1 - searcher.controller.probabilities().detach()[..., 1]).tolist(),  # P(runs)
                    "blocks": [c.node for c in model.choices],
                    "options": {d: {c.node: arch.branch(c.node, d) for c in model.choices} for d in domains}}
    return out, info


def pm(values: list[float], fmt: str = "{:.3f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def table(results: list[dict[str, Any]], domains: list[str]) -> list[str]:
    lines = ["| method | " + " | ".join(domains) + " | mean acc | params | FLOPs | latency (ms) |",
             "|---|" + "---|" * (len(domains) + 4)]
    base = results[0]["independent"]
    for name in METHODS:
        rs = [r[name] for r in results]
        cells = [pm([r["acc"][d] for r in rs]) for d in domains]
        p = statistics.mean(r["params"] for r in rs)
        f = statistics.mean(r["flops"] for r in rs)
        cost = f"{p / 1e3:.1f}k ({100 * p / base['params']:.0f}%) | {f / 1e6:.2f}M ({100 * f / base['flops']:.0f}%)"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {pm([r['mean'] for r in rs])} | {cost} "
                     f"| {pm([r['latency'] for r in rs], '{:.2f}')} |")
    return lines


def targets(results: list[dict[str, Any]]) -> list[str]:
    def mean(name: str, key: str) -> float:
        return statistics.mean(r[name][key] for r in results)

    ind, abdp = "independent", "MPNAS ABDP"
    checks = [
        ("params <= 35% of independent", mean(abdp, "params") / mean(ind, "params") <= 0.35,
         f"{100 * mean(abdp, 'params') / mean(ind, 'params'):.0f}%"),
        ("FLOPs <= 70% of independent", mean(abdp, "flops") / mean(ind, "flops") <= 0.70,
         f"{100 * mean(abdp, 'flops') / mean(ind, 'flops'):.0f}%"),
        ("mean accuracy >= independent", mean(abdp, "mean") >= mean(ind, "mean"),
         f"{mean(abdp, 'mean'):.3f} vs {mean(ind, 'mean'):.3f}"),
        ("mean accuracy > single-path multi-head", mean(abdp, "mean") > mean("single-path multi-head", "mean"),
         f"{mean(abdp, 'mean'):.3f} vs {mean('single-path multi-head', 'mean'):.3f}"),
        ("ABDP >= equal weighting", mean(abdp, "mean") >= mean("MPNAS equal", "mean"),
         f"{mean(abdp, 'mean'):.3f} vs {mean('MPNAS equal', 'mean'):.3f}"),
    ]
    return [f"| {what} | {'met' if ok else '**not met**'} | {value} |" for what, ok, value in checks]


def report(results: list[dict[str, Any]], infos: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The markdown: the setting, the table over seeds, the targets, the first seed's paths and Jaccard matrix."""
    domains = list(results[0]["independent"]["acc"])
    lines = [f"Suite {meta['size']}x{meta['size']}, {meta['n_train']} training / {meta['n_val']} validation images per "
             f"domain; SmallResNet width {meta['width']}; final models {meta['steps']} steps, searches "
             f"{meta['search_steps']} steps (+); batch {meta['batch']} per domain, Adam lr {meta['lr']}; reward "
             f"absolute, beta {meta['beta']}, FLOPs target {meta['cost_target']} of the full path; "
             + (f"the searches also offer every block at kernel {', '.join(map(str, meta['kernels']))}; "
                if meta.get("kernels") else "") + "batch norms "
             f"{'shared' if meta['shared_bn'] else 'per domain'} in shared blocks, their statistics "
             + (f"recomputed over {meta['recalibrate']} training batches after training" if meta["recalibrate"] else
                "as trained") + f"; seeds {', '.join(map(str, meta['seeds']))}; {meta['minutes']:.1f} min on "
             f"{meta['machine']} (1 thread per seed). Accuracy on the validation images.", "",
             *table(results, domains), "", "| target | | measured |", "|---|---|---|", *targets(results), ""]
    info = infos[0]
    blocks = info["blocks"]
    lines += [f"Seed {meta['seeds'][0]}, MPNAS paths (1 = the block runs) over {', '.join(blocks)}:", "",
              "| domain | " + " | ".join(blocks) + f" | {'P(runs)' if meta.get('kernels') else 'P(block)'} |",
              "|---|" + "---|" * (len(blocks) + 1)]
    for d, probs in zip(domains, info["probs"], strict=True):
        picked = info.get("options", {}).get(d, {})
        cells = [{"block": "1", "zero": "0"}.get(picked[b], picked[b]) if b in picked else  # a variant: its name
                 "1" if b in info["paths"][d] else "0" for b in info["blocks"]]
        lines.append(f"| {d} | " + " | ".join(cells) + " | " + ", ".join(f"{p:.2f}" for p in probs) + " |")
    lines += ["", f"Jaccard similarity of the domains' block sets (seed {meta['seeds'][0]}):", "",
              "| | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
    for a in domains:
        lines.append(f"| {a} | " + " | ".join(f"{info['jaccard'][a][b]:.2f}" for b in domains) + " |")
    return "\n".join(lines) + "\n"


def merge(paths: list[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Several runs' raw results (``--json``, e.g. one process per seed) as one: seeds in order, minutes summed."""
    parts = sorted((json.loads(p.read_text()) for p in paths), key=lambda r: r["meta"]["seeds"][0])
    for part in parts:
        part["meta"].setdefault("kernels", [])  # runs from before --kernels offered none
    meta = dict(parts[0]["meta"])
    setting = {k: v for k, v in meta.items() if k not in ("seeds", "minutes")}
    for part in parts[1:]:
        other = {k: v for k, v in part["meta"].items() if k not in ("seeds", "minutes")}
        if other != setting:
            raise SystemExit(f"--merge: the runs differ in their setting: {setting} vs {other}")
    meta["seeds"] = [s for p in parts for s in p["meta"]["seeds"]]
    meta["minutes"] = sum(p["meta"]["minutes"] for p in parts)
    return [r for p in parts for r in p["results"]], [i for p in parts for i in p["infos"]], meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16x16 images, fewer steps (the quick table)")
    ap.add_argument("--smoke", action="store_true", help="a few steps only: checks the script runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in this many processes at once (one thread each)")
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of every search and training")
    ap.add_argument("--kernels", type=int, nargs="*", default=[],
                    help="the searches also offer each block at these kernels (e.g. 5 7); the baselines run the block")
    ap.add_argument("--width", type=int, default=None, help="SmallResNet width (default 32)")
    ap.add_argument("--shared-bn", action="store_true",
                    help="shared blocks share their batch norms too (default: each domain its own, 'domain_block')")
    ap.add_argument("--steps", type=int, default=None, help="training steps of every final model (default 600 / 1200)")
    ap.add_argument("--search-steps", type=int, default=None, help="steps of each search (default 900 / 1500)")
    ap.add_argument("--recalibrate", type=int, default=20, metavar="N",
                    help="batch-norm statistics recomputed over N training batches after training (0: as trained)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown here (default: print)")
    ap.add_argument("--json", type=Path, default=None, help="write the raw results here (for --merge)")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                    help="no run: one table from the raw results of several runs (e.g. one process per seed)")
    args = ap.parse_args(argv)
    if args.merge:
        text = report(*merge(args.merge))
    else:
        text = run(args)
    if args.out is not None:
        args.out.write_text(text)
    print(text)
    return 0


@functools.lru_cache(maxsize=1)
def _suite(size: int, n_train: int, n_val: int) -> DomainSuite:
    """The suite, made once per process (deterministic: every process makes the same one)."""
    return domain_suite(size, n_train, n_val, seed=0)


def _seed_job(args: argparse.Namespace, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One seed's results (its own process with ``--jobs``: the suite is made again there, deterministically)."""
    torch.set_num_threads(args.threads)
    r, info = run_seed(_suite(*args.suite), args, seed)
    print(f"seed {seed}: " + ", ".join(f"{k} {v['mean']:.3f}" for k, v in r.items()), file=sys.stderr, flush=True)
    return r, info


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    args.domain_bn = not args.shared_bn
    size, n_train, n_val = (16, 400, 200) if args.quick else (32, 800, 300)
    args.width = 32 if args.width is None else args.width
    steps, search_steps = (600, 900) if args.quick else (1200, 1500)
    args.steps = steps if args.steps is None else args.steps
    args.search_steps = search_steps if args.search_steps is None else args.search_steps
    if args.smoke:
        args.steps, args.search_steps, n_train, n_val = 4, 4, 32, 16
    args.batch, args.policy_lr, args.beta, args.cost_target = 16, 0.05, -0.1, 0.5
    start = time.perf_counter()
    args.suite = (size, n_train, n_val)
    if args.jobs > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
            done = list(pool.map(_seed_job, [args] * len(args.seeds), args.seeds))
    else:
        done = [_seed_job(args, seed) for seed in args.seeds]
    results, infos = [r for r, _ in done], [i for _, i in done]
    meta = {"size": size, "n_train": n_train, "n_val": n_val, "width": args.width, "steps": args.steps,
            "search_steps": args.search_steps, "batch": args.batch, "lr": args.lr, "beta": args.beta,
            "cost_target": args.cost_target, "shared_bn": args.shared_bn,
            "kernels": list(args.kernels), "recalibrate": args.recalibrate,
            "seeds": list(args.seeds), "minutes": (time.perf_counter() - start) / 60, "machine": platform.machine()}
    if args.json is not None:
        args.json.write_text(json.dumps({"meta": meta, "results": results, "infos": infos},
                                        default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else str(o)))
    return report(results, infos, meta)


if __name__ == "__main__":
    sys.exit(main())
