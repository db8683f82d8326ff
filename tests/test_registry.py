"""The one registry class behind operator kinds, choice kinds, strategies and weightings."""

from __future__ import annotations

import pytest

from automtl.compiler.ops import REGISTRY, OpKind, register
from automtl.compiler.registry import Registry
from automtl.search.strategies import STRATEGIES, register_strategy
from automtl.train.weighting import WEIGHTINGS


def test_names_are_unique_and_unknown_names_list_the_known_ones() -> None:
    r: Registry[int] = Registry("colour", KeyError)
    assert r.add("red", 1) == 1 and r.find("red") == 1
    with pytest.raises(ValueError, match="colour 'red' is registered twice"):
        r.add("red", 2)
    r.add("blue", 3)
    with pytest.raises(KeyError, match="unknown colour 'green'; known: blue, red"):
        r.find("green")
    assert r["red"] == 1 and sorted(r) == ["blue", "red"]


def test_folded_case_and_the_same_entry_again() -> None:
    r: Registry[str] = Registry("weighting", fold_case=True)
    r.add("Equal", "a")
    assert r.find("EQUAL") == "a" and list(r) == ["equal"]
    r.add("equal", "a", same=lambda old, new: old == new)  # one thing registered again: accepted
    with pytest.raises(ValueError, match="registered twice"):
        r.add("equal", "b", same=lambda old, new: old == new)


def test_the_project_registries_are_registries() -> None:
    for registry in (REGISTRY, STRATEGIES, WEIGHTINGS):
        assert isinstance(registry, Registry) and len(registry) > 0
    with pytest.raises(ValueError, match="operator kind 'relu' is registered twice"):
        register(OpKind("relu", lambda n, s: s[0]))
    with pytest.raises(ValueError, match="search strategy 'automtl' is registered twice"):
        register_strategy(STRATEGIES["automtl"])


def test_a_strategy_names_its_runner_and_run_kind_in_its_one_registry_entry() -> None:
    from automtl.app.run_kinds import RunKind, load_ref, run_kind
    from automtl.app.rundir import RunError
    from automtl.app.runs import run_search
    from automtl.app.slimda import run_slimda

    assert isinstance(run_kind("automtl"), RunKind) and isinstance(run_kind("mpnas"), RunKind)
    assert run_kind("mpnas") is not run_kind("automtl")
    assert load_ref(STRATEGIES["automtl"].runner) is run_search and load_ref(STRATEGIES["slimda"].runner) is run_slimda
    # slimda writes a folder of its own: it has no run kind, and asking names the strategies that have one
    with pytest.raises(RunError, match="'slimda' does not write an automtl run directory .*: automtl, mpnas"):
        run_kind("slimda")
    with pytest.raises(RunError, match="'nope' does not write"):
        run_kind("nope")
