"""``automtl mpnas CONFIG --out DIR``: an MPNAS search from a config file, its results in a folder.

The config names ``search: {strategy: mpnas, ...}`` (options: :class:`~automtl.search.mpnas.MPNASConfig`),
a backbone whose residual blocks become block / zero choices (found by name,
:func:`~automtl.model.blocks.find_graph_blocks`; each domain with its own batch norms), one
classification task per domain, and a data factory returning multi-domain data (``{domain: (x, y)}``
items), such as ``automtl.train.domains:suite_splits``. The folder gets ``architecture.json``,
``model.pt`` (the derived model, trained from scratch), ``result.json`` (metrics, paths, sharing,
the Jaccard matrix, params and FLOPs against one backbone per domain) and ``pictures/``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a run config (.yaml / .toml) with search: {strategy: mpnas, ...}")
    p.add_argument("--out", required=True, help="folder for the results (made when missing)")
    p.add_argument("--shared-bn", action="store_true", help="shared blocks share their batch norms too")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _data(cfg: Any) -> Any:
    """The config's data factory called directly (its items are ``{domain: (x, y)}``)."""
    import importlib
    import inspect

    from .config import ConfigError

    ref = cfg.data.factory
    if ref is None:
        raise ConfigError(f"{cfg.source}: data: mpnas needs multi-domain data from a factory, such as "
                          "data: {factory: 'automtl.train.domains:suite_splits'}")
    module, _, name = ref.partition(":")
    function = getattr(importlib.import_module(module), name)
    params = inspect.signature(function).parameters
    kwargs = dict(cfg.data.options)
    if "seed" in params:
        kwargs.setdefault("seed", cfg.seed)
    if "tasks" in params:
        kwargs.setdefault("tasks", tuple(cfg.tasks))
    return function(**kwargs)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..model.blocks import with_blocks
    from ..search.mpnas import MPNASConfig, MPNASSearcher
    from .config import ConfigError, build_model, build_tasks, load_config
    from .pictures import render_all

    cfg = load_config(args.config, check_memory=False)
    if not isinstance(cfg.search, MPNASConfig):
        raise ConfigError(f"{args.config}: search.strategy is {cfg.strategy!r}; `automtl mpnas` runs "
                          "search: {strategy: mpnas, ...} (use `automtl search` for the others)")
    model = with_blocks(build_model(cfg), domain_bn=not args.shared_bn)
    tasks = build_tasks(cfg)
    searcher = MPNASSearcher(model, tasks, _data(cfg), replace(cfg.search, quiet=args.quiet))
    result = searcher.run()
    assert result is not None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.architecture.save(out / "architecture.json")
    result.model.save(out / "model.pt")
    report = result.report
    summary = {"metrics": result.metrics, "paths": result.paths, "sharing": result.sharing,
               "jaccard": result.jaccard, "params": report["total"]["params"], "flops": report["total"]["flops"],
               "params_ratio": report["params_ratio"], "flops_ratio": report["flops_ratio"]}
    (out / "result.json").write_text(json.dumps(summary, indent=1) + "\n")
    pictures = render_all(result.architecture, out / "pictures", history=result.history)
    for domain, path in result.paths.items():
        acc = result.metrics[domain].get("accuracy")
        print(f"{domain}: {' '.join(path) or '(no block)'}" + (f"; accuracy {acc:.3f}" if acc is not None else ""))
    print(f"params {100 * report['params_ratio']:.0f}%, FLOPs {100 * report['flops_ratio']:.0f}% of one backbone "
          f"per domain; results in {out} ({', '.join(sorted(pictures))} pictures)")
    return 0
