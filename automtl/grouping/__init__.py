"""Task grouping (Standley et al., ICML 2020): which tasks share a network under an inference budget.

* :mod:`.table` — tables of networks (tasks served, cost, per-task loss); automtl's CSV and the published
  tables' tab-separated layout (:func:`read_table`, :func:`write_csv`);
* :mod:`.select` — exact selection under a budget (:func:`select`), the HOA and ESA approximations;
* :mod:`.pictures` — the selection per budget, and a task-affinity matrix;
* :mod:`.cli` — the ``automtl group`` command.

Importing the package loads only the standard library; SciPy (the integer-program check in :mod:`.milp`)
and matplotlib (:mod:`.pictures`) are imported when used.
"""

from .select import Selection, cheapest_cover, hoa_table, score, select, select_budgets
from .table import GroupingError, Network, Table, parse_csv, parse_standley, read_table, write_csv

__all__ = [
    "GroupingError",
    "Network",
    "Selection",
    "Table",
    "cheapest_cover",
    "hoa_table",
    "parse_csv",
    "parse_standley",
    "read_table",
    "score",
    "select",
    "select_budgets",
    "write_csv",
]
