"""The search: the loop over stages, policies, regularizers, checkpoints and data-parallel helpers.

``automtl.search.search(model, tasks, data, SearchConfig(...))`` runs a whole search;
:class:`Searcher` gives each stage alone.
"""

from .searcher import SearchConfig, Searcher, SearchResult, evaluate, search, temperature

__all__ = ["SearchConfig", "SearchResult", "Searcher", "evaluate", "search", "temperature"]
