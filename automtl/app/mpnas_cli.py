"""MPNAS in a run directory: ``automtl search CONFIG`` with ``search: {strategy: mpnas, ...}``.

The config names ``search: {strategy: mpnas, ...}`` (options: :class:`~automtl.search.mpnas.MPNASConfig`),
a backbone whose residual blocks become block / zero choices (found by name,
:func:`~automtl.model.blocks.find_graph_blocks`; each domain with its own batch norms unless
``domain_bn: false``), one classification task per domain, and a data factory returning
multi-domain data (``{domain: (x, y)}`` items), such as ``automtl.train.domains:suite_splits``.

:data:`MPNAS_RUN` is its :class:`~automtl.app.run_kinds.RunKind`: the run directory, its manifest,
lock, checkpoints, ``--resume``, failure states, ``report.md`` and pictures are those of every
search (:mod:`automtl.app.runs`). The baselines are trained like the derived model (from scratch,
at fixed paths, for ``train_steps`` steps, with ``final_weighting``): ``independent`` is one
backbone per domain, ``all-shared`` the single-path multi-head model (every block, one head per
domain). The report adds each domain's path, the blocks' status (shared / specific / dropped)
and the Jaccard matrix; ``automtl show`` draws them, ``automtl export --onnx`` writes one input
and one output per domain. ``automtl mpnas CONFIG --out DIR`` is the same run.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from ..model.derive import MultiTaskModel
from ..train.tasks import Task
from .config import RunConfig
from .run_kinds import RunKind

__all__ = ["MPNAS_RUN", "add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a run config (.yaml / .toml) with search: {strategy: mpnas, ...}")
    p.add_argument("--out", required=True, help="run directory (new or empty; --resume: the stopped run)")
    p.add_argument("--resume", action="store_true", help="continue the stopped run in --out from its last checkpoint")
    p.add_argument("--shared-bn", action="store_true",
                   help="shared blocks share their batch norms too (search.domain_bn: false)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def data(cfg: RunConfig) -> Any:
    """The config's data factory called directly (its items are ``{domain: (x, y)}``)."""
    from .config import ConfigError
    from .config.build import call_data_factory

    if cfg.data.factory is None:
        raise ConfigError(f"{cfg.source}: data: mpnas needs multi-domain data from a factory, such as "
                          "data: {factory: 'automtl.train.domains:suite_splits'}")
    return call_data_factory(cfg)


def model(cfg: RunConfig, names: Sequence[str] | None = None) -> Any:
    """The config's backbone as a block supermodel for ``names`` (default: every domain)."""
    from ..model.blocks import with_blocks
    from .config import build_model

    return with_blocks(build_model(cfg, names), domain_bn=cfg.search.domain_bn, kernels=cfg.search.kernels or ())


def _searcher(supermodel: Any, tasks: Mapping[str, Task], data: Any, config: Any, checkpoint: str | None) -> Any:
    from ..search.mpnas import MPNASSearcher

    if checkpoint is not None:
        return MPNASSearcher.resume(checkpoint, supermodel, tasks, data, config)
    return MPNASSearcher(supermodel, tasks, data, config)


def _baseline(cfg: RunConfig, tasks: Mapping[str, Task], data: Any, steps: int
              ) -> tuple[MultiTaskModel, dict[str, Any]]:
    """A model of ``tasks`` running every block, trained like the derived model (from scratch, ``steps``)."""
    from ..search.mpnas import MPNASSearcher

    names = list(tasks)
    m = model(cfg, names)
    s = MPNASSearcher(m, tasks, data, replace(cfg.search, search_steps=0, quiet=True))
    arch = m.architecture_from_indices(torch.zeros(len(names), len(m.choices), dtype=torch.long))
    derived = s.train_derived(arch, steps=steps)
    return derived, s.validate(derived)["metrics"]


def _state(searcher: Any) -> dict[str, Any]:
    return {"model": searcher.model.state_dict(), "controller": searcher.controller.state_dict(),
            "baseline": searcher.baseline.state_dict()}


def _extra(report: dict[str, Any], searched: Any, cfg: RunConfig) -> dict[str, Any]:
    """Each domain's path, the blocks' status, the Jaccard matrix, and the architecture in words."""
    from .block_pictures import block_grid, block_jaccard, block_sets, block_status

    arch = searched.architecture
    tasks = list(arch.tasks)
    blocks, grid = block_grid(arch)
    status = block_status(arch)
    matrix = block_jaccard(arch)
    jaccard = {a: {b: matrix[i][j] for j, b in enumerate(tasks)} for i, a in enumerate(tasks)}
    runs = sum(s != "skipped" for row in grid for s in row)
    shared = sum(s == "shared" for row in grid for s in row)
    every = runs == len(blocks) * len(tasks)
    counts = {k: sum(v == k for v in status.values()) for k in ("shared", "specific", "dropped")}
    words = (f"every domain runs all {len(blocks)} searched blocks: the single-path multi-head model, the same as "
             "the all-shared baseline (both trained from scratch alike)" if every else
             f"{counts['shared']} of {len(blocks)} searched blocks shared, {counts['specific']} specific to one "
             f"domain, {counts['dropped']} dropped; " +
             "; ".join(f"{t} runs {', '.join(p) or 'no searched block'}" for t, p in block_sets(arch).items()))
    summary = [f"  {t}: {' '.join('x' if s != 'skipped' else '.' for s in row)}  ({', '.join(block_sets(arch)[t])})"
               for t, row in zip(tasks, grid, strict=True)]
    summary = [f"paths over {', '.join(blocks)} (x runs the block, . skips it):", *summary, "Jaccard similarity:"]
    summary += [f"  {a}: " + " ".join(f"{jaccard[a][b]:.2f}" for b in tasks) for a in tasks]
    variants = {t: {b: per[t] for b, per in arch.choices.items() if per[t] not in ("block", "zero")} for t in tasks}
    return {"paths": block_sets(arch), "blocks": status, "jaccard": jaccard, "architecture": words,
            "variants": {t: v for t, v in variants.items() if v},
            "shared_fraction": shared / max(runs, 1), "trivial": None,  # the words say it (no fine-tuning here)
            "search_steps": cfg.search.search_steps, "summary": summary}


def _markdown(report: Mapping[str, Any]) -> list[str]:
    tasks = list(report["tasks"])
    blocks = list(report["blocks"])
    lines = ["", f"## Domain paths (the search's {report['search_steps']} steps come on top of the "
                 f"{report['baseline_steps']} training steps every model took)", "",
             "| domain | " + " | ".join(blocks) + " |", "|---|" + "---|" * len(blocks)]
    for t in tasks:
        variant = report.get("variants", {}).get(t, {})
        lines.append(f"| {t} | " + " | ".join(("runs " + variant[b] if b in variant else "runs")
                                             if b in report["paths"][t] else "skips" for b in blocks) + " |")
    lines.append("| status | " + " | ".join(report["blocks"][b] for b in blocks) + " |")
    lines += ["", "Jaccard similarity of the domains' block sets:", "", "| | " + " | ".join(tasks) + " |",
              "|---|" + "---|" * len(tasks)]
    lines += [f"| {a} | " + " | ".join(f"{report['jaccard'][a][b]:.2f}" for b in tasks) + " |" for a in tasks]
    return lines


MPNAS_RUN = RunKind(name="mpnas", data=data, model=model, searcher=_searcher, baseline=_baseline,
                    steps=lambda cfg: cfg.search.train_steps, state=_state,
                    results=lambda result: result.summary(), extra=_extra, markdown=_markdown)


def run(args: argparse.Namespace) -> int:
    """``automtl mpnas CONFIG --out DIR``: the MPNAS run of ``automtl search``, refusing other strategies."""
    from ..search.mpnas import MPNASConfig
    from .config import ConfigError, load_config
    from .runs import run_search

    cfg = load_config(args.config, check_memory=False)
    if not isinstance(cfg.search, MPNASConfig):
        raise ConfigError(f"{args.config}: search.strategy is {cfg.strategy!r}; `automtl mpnas` runs "
                          "search: {strategy: mpnas, ...} (use `automtl search` for the others)")
    if args.shared_bn:
        cfg = replace(cfg, search=replace(cfg.search, domain_bn=False))
    run_search(cfg, args.out, resume=args.resume, quiet=args.quiet, title="automtl mpnas", command="mpnas")
    return 0
