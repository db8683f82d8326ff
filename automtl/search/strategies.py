"""The registry of search strategies: each a :class:`~automtl.search.loop.Loop` and its options dataclass.

``search: {strategy: automtl, ...}`` in a config selects one by name; its options are validated
against its own dataclass. A new method registers itself with :func:`register_strategy`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..compiler.registry import Registry
from .loop import Loop, TrainConfig
from .mpnas import MPNASConfig, MPNASSearcher
from .searcher import SearchConfig, Searcher


@dataclass(frozen=True)
class Strategy:
    """A search method: its loop class, the dataclass of its options, and how ``automtl search`` runs it.

    ``runner`` is the ``"module:function"`` that runs a config of this strategy into a folder (the
    common run directory, :func:`automtl.app.runs.run_search`, by default); ``run_kind`` the
    ``"module:attribute"`` of its :class:`~automtl.app.run_kinds.RunKind` there (what differs per
    strategy in a run directory). Both are imported on first use, so the search layer never
    imports the app."""

    name: str
    loop: type[Loop]
    options: type[TrainConfig]
    summary: str = ""
    runner: str = "automtl.app.runs:run_search"
    run_kind: str = ""


STRATEGIES: Registry[Strategy] = Registry("search strategy")


def register_strategy(strategy: Strategy) -> Strategy:
    """Make ``search: {strategy: NAME}`` run ``strategy`` (names are unique)."""
    return STRATEGIES.add(strategy.name, strategy)


def get_strategy(name: str) -> Strategy:
    return STRATEGIES.find(name)


register_strategy(Strategy("automtl", Searcher, SearchConfig,
                           "per-task Gumbel-softmax policies over shared / specific / skip (AutoMTL)",
                           run_kind="automtl.app.runs:AUTOMTL"))


def _register_slimda() -> None:
    from .slimda import SlimDAConfig, SlimDASearcher

    register_strategy(Strategy("slimda", SlimDASearcher, SlimDAConfig,
                               "a slimmable bank adapted to an unlabelled domain (SymNet + SEED + OSTC), "
                               "a network per FLOPs budget picked by UPEM (SlimDA)",
                               runner="automtl.app.slimda:run_slimda"))  # a folder of its own


_register_slimda()
register_strategy(Strategy("mpnas", MPNASSearcher, MPNASConfig,
                           "per-domain REINFORCE controllers over block / zero paths, then ABDP training (MPNAS)",
                           run_kind="automtl.app.mpnas_cli:MPNAS_RUN"))
