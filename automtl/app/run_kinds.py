"""How each search strategy runs in a run directory (:mod:`automtl.app.runs`): one :class:`RunKind` per
strategy in :data:`RUN_KINDS`, looked up by the config's ``search.strategy``.

Everything else about a run directory (manifest, lock, checkpoints, resume, failure states, the
report and the pictures) is common to every strategy; a kind says only how the strategy builds its
data and model, makes or resumes its searcher, trains a baseline, counts the searched model's
weight steps, measures latency and adds its own entries to the report. ``automtl`` lives in
:mod:`automtl.app.runs`, ``mpnas`` in :mod:`automtl.app.mpnas_cli`; each is imported on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..model.derive import MultiTaskModel
from ..model.latency import measure_latency
from ..train.tasks import Task
from .config import RunConfig
from .rundir import RunError

__all__ = ["RUN_KINDS", "RunKind", "run_kind"]


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


#: the run kind of each strategy that writes a run directory (each imported on first use)
RUN_KINDS: dict[str, RunKind | Callable[[], RunKind]] = {
    "automtl": lambda: __import__("automtl.app.runs", fromlist=["AUTOMTL"]).AUTOMTL,
    "mpnas": lambda: __import__("automtl.app.mpnas_cli", fromlist=["MPNAS_RUN"]).MPNAS_RUN,
}


def run_kind(strategy: str) -> RunKind:
    """The :class:`RunKind` of ``strategy``; ``RunError`` naming the ones that write a run directory."""
    kind = RUN_KINDS.get(strategy)
    if kind is None:
        raise RunError(f"search.strategy {strategy!r} does not write an automtl run directory (those that do: "
                       f"{', '.join(RUN_KINDS)})")
    if not isinstance(kind, RunKind):
        kind = RUN_KINDS[strategy] = kind()
    return kind
