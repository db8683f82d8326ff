"""How each search strategy runs in a run directory (:mod:`automtl.app.runs`): one :class:`RunKind` per
strategy, named by its entry in the strategy registry (:attr:`automtl.search.strategies.Strategy.run_kind`)
and looked up by the config's ``search.strategy``.

Everything else about a run directory (manifest, lock, checkpoints, resume, failure states, the
report and the pictures) is common to every strategy; a kind says only how the strategy builds its
data and model, makes or resumes its searcher, trains a baseline, counts the searched model's
weight steps, measures latency and adds its own entries to the report. ``automtl`` lives in
:mod:`automtl.app.runs`, ``mpnas`` in :mod:`automtl.app.mpnas_cli`; each is imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..model.derive import MultiTaskModel
from ..model.latency import measure_latency
from ..train.tasks import Task
from .config import RunConfig
from .rundir import RunError

__all__ = ["RunKind", "load_ref", "run_kind"]


@dataclass(frozen=True)
class RunKind:
    """How one search strategy runs in a run directory (the rest is common to every strategy).

    ``data(cfg)``, ``model(cfg, task_names)`` (``None``: all tasks), ``searcher(model, tasks, data,
    search_config, checkpoint)`` (a new one, or resumed from ``checkpoint``), ``baseline(cfg, tasks,
    data, steps)`` (a model of ``tasks`` trained from scratch, and its validation metrics),
    ``steps(cfg)`` (the weight steps the searched model took: each baseline takes as many),
    ``latency(models, cfg)`` (ms; one batch per model input by default), ``state(searcher)`` (what
    ``supermodel.pt`` keeps),
    ``results(result)`` (the search result's own entries of ``result.json``),
    ``extra(report, searched, cfg)`` (the strategy's own report entries) and ``markdown(report)``
    (its own lines of ``report.md``).
    """

    name: str
    data: Callable[[RunConfig], Any]
    model: Callable[[RunConfig, Sequence[str] | None], Any]
    searcher: Callable[[Any, Mapping[str, Task], Any, Any, str | None], Any]
    baseline: Callable[[RunConfig, Mapping[str, Task], Any, int], tuple[MultiTaskModel, dict[str, Any]]]
    steps: Callable[[RunConfig], int]
    latency: Callable[[Sequence[MultiTaskModel], RunConfig], float] = field(
        default=lambda models, cfg: measure_latency(models, (1, *cfg.backbone.input_shape)))
    state: Callable[[Any], Any] = field(default=lambda searcher: searcher.model.state_dict())
    results: Callable[[Any], dict[str, Any]] = field(default=lambda result: {})
    extra: Callable[[dict[str, Any], Any, RunConfig], dict[str, Any]] = field(default=lambda r, s, c: {})
    markdown: Callable[[Mapping[str, Any]], list[str]] = field(default=lambda report: [])


def load_ref(ref: str) -> Any:
    """The object a ``"package.module:attribute"`` reference names (imported now)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def run_kind(strategy: str) -> RunKind:
    """The :class:`RunKind` of ``strategy``; ``RunError`` naming the strategies that write a run directory."""
    from ..search.strategies import STRATEGIES

    entry = STRATEGIES.get(strategy)
    ref = entry.run_kind if entry is not None else ""
    if not ref:
        kinds = ", ".join(name for name, s in STRATEGIES.items() if s.run_kind)
        raise RunError(f"search.strategy {strategy!r} does not write an automtl run directory (those that do: "
                       f"{kinds})")
    kind = load_ref(ref)
    if not isinstance(kind, RunKind):
        raise TypeError(f"strategy {strategy!r}: run_kind {ref!r} is a {type(kind).__name__}, not a RunKind")
    return kind
