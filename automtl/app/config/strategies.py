"""Which search strategies a config may name, and the dataclass of each one's options.

:func:`strategy_options` is the one place the config asks the search which strategies exist:
``search: {strategy: NAME, ...}`` is validated against ``strategy_options(NAME)``'s fields.
"""

from __future__ import annotations

from .errors import ConfigError, quote, suggest

__all__ = ["DEFAULT_STRATEGY", "strategy_names", "strategy_options"]

DEFAULT_STRATEGY = "automtl"
"""The strategy of a config whose ``search`` section names none."""


def _registry() -> dict[str, type]:
    """Strategy name -> options dataclass (imported late: the search imports the model and data)."""
    from ...search.strategies import STRATEGIES

    return {name: strategy.options for name, strategy in STRATEGIES.items()}


def strategy_names() -> list[str]:
    """The strategies a config may name."""
    return list(_registry())


def strategy_options(name: str) -> type:
    """The options dataclass of search strategy ``name``; one line listing the known ones when there is none."""
    known = _registry()
    if not isinstance(name, str) or name not in known:
        raise ConfigError(f"unknown search strategy {quote(name)}; {suggest(name, list(known), 'known')}")
    return known[name]
