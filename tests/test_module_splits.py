"""Modules split into several files keep their import path: every name they exported still imports
from there, and a pickle written when a class lived in the old module still loads."""

from __future__ import annotations

import importlib
import pickle

import pytest
import torch

from automtl.search import searcher
from automtl.train import data, tasks


def _old_path_pickle(obj: object, old_module: str) -> bytes:
    """``obj`` pickled as if its class were defined in ``old_module`` (protocol 0 names it in text)."""
    data = pickle.dumps(obj, protocol=0)
    new = f"c{type(obj).__module__}\n{type(obj).__qualname__}\n".encode()
    assert new in data
    return data.replace(new, f"c{old_module}\n{type(obj).__qualname__}\n".encode())


def _check_exports(module: object) -> None:
    for name in module.__all__:
        obj = getattr(module, name)
        where = getattr(obj, "__module__", None)
        if isinstance(obj, type) or callable(obj) and where and where.startswith("automtl."):
            assert getattr(importlib.import_module(where), obj.__qualname__) is obj, name


def test_tasks_exports_every_name_from_its_modules() -> None:
    _check_exports(tasks)
    assert {"Task", "Segmentation", "Edges", "dense_head", "get_task", "TASKS"} <= set(tasks.__all__)
    assert tasks.Segmentation.__module__ == "automtl.train.label_tasks"
    assert tasks.TASKS["depth"] is tasks.Depth
    assert isinstance(tasks.get_task("normals"), tasks.Normals)


def test_task_pickled_from_the_old_module_loads_with_its_state() -> None:
    seg = tasks.Segmentation("seg", 3, head=tasks.dense_head(4, 3), weight=2.0)
    loaded = pickle.loads(_old_path_pickle(seg, "automtl.train.tasks"))
    assert type(loaded) is tasks.Segmentation
    assert (loaded.name, loaded.num_classes, loaded.weight) == ("seg", 3, 2.0)
    pred, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    assert loaded.metrics(pred, target) == seg.metrics(pred, target)


def test_searcher_exports_the_config_and_schedule_from_their_module() -> None:
    _check_exports(searcher)
    from automtl.search import search_config

    assert searcher.SearchConfig is search_config.SearchConfig
    assert searcher.temperature is search_config.temperature
    config = searcher.SearchConfig(search_iterations=100, tau_interval=None)
    assert searcher.temperature(4, config) == pytest.approx(5.0 * 0.965**2)  # interval 100 // 50 = 2
    with pytest.raises(ValueError, match="sharing_floor"):
        searcher.SearchConfig(sharing_floor=1.5)


def test_search_config_pickled_from_the_old_module_loads_equal() -> None:
    config = searcher.SearchConfig(warmup_steps=3, budget_target=0.5, split_fractions=(0.5, 0.3, 0.2))
    loaded = pickle.loads(_old_path_pickle(config, "automtl.search.searcher"))
    assert type(loaded) is searcher.SearchConfig
    assert loaded == config


def test_data_exports_every_name_and_the_digit_caches_tests_clear() -> None:
    _check_exports(data)
    from automtl.train import digits, scenes

    assert data.SyntheticScenes.__module__ == "automtl.train.scenes"
    assert data.SCENE_WIDTH == scenes.SCENE_WIDTH and data.SHAPE_KINDS == scenes.SHAPE_KINDS
    assert data._load_digits is digits._load_digits and data._digit_pool is digits._digit_pool


def test_datasets_pickled_from_the_old_module_load_and_give_the_same_items() -> None:
    scenes_ds = data.SyntheticScenes(3, size=16, seed=4, tasks=("segmentation", "depth"))
    loaded = pickle.loads(_old_path_pickle(scenes_ds, "automtl.train.data"))
    assert type(loaded) is data.SyntheticScenes
    x, y = loaded[2]
    x0, y0 = scenes_ds[2]
    assert torch.equal(x, x0) and torch.equal(y["depth"], y0["depth"]) and set(y) == {"segmentation", "depth"}
    both = data.MultiDomain({"a": scenes_ds}, target_keys={"a": "depth"})
    again = pickle.loads(_old_path_pickle(both, "automtl.train.data"))
    assert type(again) is data.MultiDomain and len(again) == 3
    assert torch.equal(again[1]["a"][1], scenes_ds[1][1]["depth"])
