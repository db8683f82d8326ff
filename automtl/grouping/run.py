"""``automtl group train CONFIG``: candidate networks of a run configuration, trained into a run directory.

The config's backbone (cut at ``trunk_output``), tasks, heads and data are the ones ``automtl search`` uses
(:mod:`automtl.app.config`); the training options (batch size, optimiser, learning rate, weighting) are the
``search`` section's :class:`~automtl.search.loop.TrainConfig` fields. A full network for a task subset is
the supermodel of those tasks at the all-shared architecture, derived; a half network is the backbone thinned
by :func:`automtl.compiler.width.half_size` with heads built for its thinner output (a task whose head comes
from a user factory keeps the full output width instead, so its factory's head still fits).

The run directory holds::

    group-run.json       the resolved config and the grouping options (a resume must match them)
    networks/*.json      one result per trained network (kept: a rerun trains only what is missing),
    networks/*.pt        and its trained weights
    val.csv, test.csv    the fully trained networks' validation and test losses (automtl's CSV)
    esa_val.csv          the early-stopped networks' validation losses (mode esa)
    tag.json             the TAG affinity matrix (mode tag)
    selections.json      per budget: the selection, its scored test loss, the training seconds it needed
    pictures/            selection_<mode>.png (networks per budget), affinity.png (mode tag)
    grouped/             with ``export``: <mode>_b<budget>.onnx, one model per selection, and its report .json
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from ..compiler.width import half_size
from .table import GroupingError
from .train import (
    FULL,
    HALF,
    Candidate,
    CandidateTrainer,
    GroupTrainConfig,
    MethodResult,
    run_method,
    train_config_of,
    write_results,
)

MANIFEST = "group-run.json"


def config_networks(cfg: Any) -> Callable[[tuple[str, ...], str], nn.Module]:
    """The network factory of a run configuration: ``(tasks, "full" | "half")`` -> a derived model."""
    from ..app.config import build_model

    def make(tasks: tuple[str, ...], size: str) -> nn.Module:
        model = build_model(cfg, list(tasks))
        if size == HALF:
            model = half_model(cfg, model)
        return model.derive(model.uniform_architecture("shared"))

    return make


def half_model(cfg: Any, full: Any) -> Any:
    """The supermodel of ``full``'s tasks on the half-FLOPs backbone, heads rebuilt for its output."""
    from ..app.config import build_tasks
    from ..app.config.settings import natural_head
    from ..model.supermodel import build
    from ..train.tasks import classification_head, dense_head

    keep = any(cfg.tasks[t].head_factory is not None for t in full.task_names)
    thin = half_size(full.graph, keep_outputs=keep)
    shape = thin.graph[thin.graph.outputs[0]].shape
    if keep:
        heads = {t: full.heads[t] for t in full.task_names}
    else:
        tasks = build_tasks(cfg)
        heads = {}
        for t in full.task_names:
            tc = cfg.tasks[t]
            kind = natural_head(tc.kind) if tc.head == "auto" else tc.head
            if kind == "classification":
                heads[t] = classification_head(shape[1], tasks[t].out_channels)
            else:
                hidden = None if tc.hidden_channels is None else max(1, round(tc.hidden_channels * thin.factor))
                scale = cfg.backbone.input_shape[1] // shape[2]
                heads[t] = dense_head(shape[1], tasks[t].out_channels, scale_factor=scale, hidden_channels=hidden)
    return build(thin.graph, heads, bn=cfg.backbone.bn, skip=cfg.backbone.skip)


def _claim(out: Path, manifest: dict[str, Any]) -> None:
    """Start a new run in an empty (or missing) folder, or continue one with the same config and options."""
    path = out / MANIFEST
    if path.is_file():
        try:
            held = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise GroupingError(f"{path}: not a grouping run manifest; use another --out folder") from None
        for key in ("config", "options"):
            if held.get(key) != manifest[key]:
                raise GroupingError(f"{out}: holds a grouping run with another {key}; use another --out folder "
                                    f"or the same {key} to resume it")
        return
    if out.exists() and any(out.iterdir()):
        raise GroupingError(f"{out}: the folder holds other files; give an empty or new folder to --out")
    from ..app.integrity import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(manifest, indent=1))


def group_train(cfg: Any, out: str | os.PathLike[str], *, mode: str = "exhaustive",
                budgets: Sequence[float] | None = None, options: GroupTrainConfig | None = None,
                data: Any = None, quiet: bool = True, log: Callable[[str], None] | None = None,
                export: bool = False) -> list[MethodResult]:
    """Train the candidates ``mode`` needs for ``cfg``'s tasks into ``out``, select at every budget
    (default 1 .. number of tasks) and write the tables, ``selections.json`` and pictures; with ``export``
    also each selection as one grouped model (ONNX and report, ``grouped/``). Returns the results."""
    from ..app.config import build_dataset, build_tasks

    options = options or GroupTrainConfig()
    names = list(cfg.tasks)
    budgets = list(budgets) if budgets is not None else list(range(1, len(names) + 1))
    out = Path(out)
    manifest = {"config": cfg.to_dict(), "options": {**asdict(options), "split_fractions":
                                                     list(options.split_fractions)}}
    _claim(out, manifest)
    tasks = build_tasks(cfg)
    config = train_config_of(cfg.search, quiet=quiet)
    ct = CandidateTrainer(tasks, config_networks(cfg), data if data is not None else build_dataset(cfg), config,
                          options, out, log=log)
    affinity = None
    if mode == "tag":
        affinity = _tag(cfg, ct, out)
    results = run_method(ct, mode, budgets, affinity)
    write_results(out, ct, results)
    _pictures(out, mode, results, affinity)
    if export:
        export_groupings(ct, results, out / "grouped", tuple(cfg.backbone.input_shape))
    return results


def _pictures(out: Path, mode: str, results: Sequence[MethodResult], affinity: Any) -> None:
    """``pictures/selection_<mode>.png`` (the selections per budget) and, for TAG, ``pictures/affinity.png``."""
    from .pictures import affinity_picture, selection_picture

    chosen = [r.selection for r in results if r.selection is not None]
    if chosen:
        selection_picture(chosen, out / "pictures" / f"selection_{mode}.png", title=f"{mode} selections")
    if affinity is not None:
        affinity_picture(affinity.matrix, affinity.tasks, out / "pictures" / "affinity.png", title="TAG affinity")


def export_groupings(ct: CandidateTrainer, results: Sequence[MethodResult], folder: str | os.PathLike[str],
                     input_shape: Sequence[int]) -> list[Path]:
    """For every selection: one grouped model (:mod:`.model`) as ``<method>_b<budget>.onnx`` and its report
    (params, FLOPs, latency, per task) as ``<method>_b<budget>.json``; returns the ONNX paths."""
    from ..app.export import export_onnx
    from ..app.integrity import atomic_write_text
    from .model import selection_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in results:
        if r.selection is None:
            continue
        models = {(n.tasks, n.cost): ct.model(c) for n, c in zip(r.selection.networks, ct.full(r.selection.networks),
                                                                strict=True)}
        grouped = selection_model(r.selection, models)
        stem = f"{r.method}_b{r.budget:g}"
        path = folder / f"{stem}.onnx"
        export_onnx(grouped, path, tuple(input_shape))
        report = grouped.report(latency_shape=(1, *input_shape))
        atomic_write_text(folder / f"{stem}.json", json.dumps({"budget": r.budget, "method": r.method,
                                                                "test_loss": r.selection.loss, **report}, indent=1))
        paths.append(path)
    return paths


def _tag(cfg: Any, ct: CandidateTrainer, out: Path) -> Any:
    """The affinity matrix of one joint run of all tasks (kept in ``tag.json``)."""
    import numpy as np

    from .tag import Affinity, tag_affinity

    path = out / "tag.json"
    if path.is_file():
        rec = json.loads(path.read_text(encoding="utf-8"))
        return Affinity(tuple(rec["tasks"]), np.asarray(rec["matrix"]), int(rec["count"]), float(rec["seconds"]))
    model = ct.fresh(Candidate(tuple(ct.names), FULL, ct.options.steps))  # the all-task network's initial weights
    aff = tag_affinity(model, ct.tasks, ct.splits[:2], ct.config, ct.options.steps, ct.options.tag_every,
                       ct.options.tag_lr)
    from ..app.integrity import atomic_write_text

    atomic_write_text(path, json.dumps(aff.to_dict(), indent=1))
    return aff
