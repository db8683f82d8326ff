"""The search: the one loop over stages, the strategies on it, regularizers, checkpoints, data parallelism.

``automtl.search.search(model, tasks, data, SearchConfig(...))`` runs a whole AutoMTL search;
:class:`Searcher` gives each stage alone; :class:`Trainer` trains a fixed model.
"""

from .loop import Loop, Stage, StepInfo, TrainConfig
from .searcher import SearchConfig, Searcher, SearchResult, evaluate, search, temperature
from .strategies import STRATEGIES, Strategy, get_strategy, register_strategy
from .trainer import Trainer

__all__ = ["STRATEGIES", "Loop", "SearchConfig", "SearchResult", "Searcher", "Stage", "StepInfo", "Strategy",
           "TrainConfig", "Trainer", "evaluate", "get_strategy", "register_strategy", "search", "temperature"]
