"""Config fuzzing: random values at random keys, and random edits of a valid file's text, give a config or
one ConfigError line, nothing else."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automtl.app.config import (
    ConfigError,
    RunConfig,
    load_config,
)

# fuzzing ---------------------------------------------------------------------------------------

FUZZ_BASE = {
    "backbone": {"name": "tiny_cnn", "input_shape": [3, 16, 16], "trunk_output": "block", "bn": "follow",
                 "skip": True},
    "tasks": {"segmentation": {"kind": "segmentation"}, "depth": {"kind": "depth", "weight": 1.0},
              "normals": {"kind": "normals", "hidden_channels": 8}},
    "data": {"name": "synthetic_scenes", "images": 20, "size": 16},
    "search": {"strategy": "automtl", "warmup_steps": 1, "batch_size": 4, "weighting": "dwa",
               "weighting_kwargs": {"temperature": 2.0}, "split_fractions": [0.4, 0.4, 0.2]},
    "seed": 0,
    "device": "cpu",
    "baselines": ["independent"],
    "checkpoint_every": 10,
}


def _paths(value: object, path: tuple = ()) -> list[tuple]:
    out = [path] if path else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*path, i))
    return out


FUZZ_PATHS = _paths(FUZZ_BASE)

fuzz_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 65536, 10**9]), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.sampled_from(["auto", "cuda", "layer2", "x.onnx", "1e-3", "dense", "classification"]),
    st.lists(st.integers(min_value=-3, max_value=70000), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers(min_value=-3, max_value=3), max_size=2),
)


@settings(max_examples=int(os.environ.get("AUTOMTL_FUZZ_EXAMPLES", "120")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.sampled_from(FUZZ_PATHS), st.booleans(), fuzz_values), min_size=1, max_size=3))
def test_fuzzed_configs_load_or_fail_in_one_line(tmp_path: Path, edits: list) -> None:
    """Random values at random keys (or new keys beside them): a config, or one ConfigError line, nothing else."""
    data = copy.deepcopy(FUZZ_BASE)
    for path, add, new in edits:
        parent = data
        for key in path[:-1]:
            parent = parent[key] if isinstance(parent, dict | list) and _has(parent, key) else None
            if parent is None:
                break
        if isinstance(parent, dict):
            parent[f"{path[-1]}x" if add else path[-1]] = new
        elif isinstance(parent, list) and isinstance(path[-1], int) and path[-1] < len(parent):
            parent[path[-1]] = new
    file = tmp_path / "fuzz.yaml"
    file.write_text(yaml.safe_dump(data))
    try:
        cfg = load_config(file)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(str(file)) and len(message) < len(str(file)) + 1100
    else:
        assert isinstance(cfg, RunConfig) and cfg.to_dict()["backbone"]["name"] == "tiny_cnn"


def _has(container: dict | list, key: object) -> bool:
    return key in container if isinstance(container, dict) else isinstance(key, int) and key < len(container)


@settings(max_examples=int(os.environ.get("AUTOMTL_FUZZ_EXAMPLES", "120")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=st.sampled_from([".yaml", ".toml"]), data=st.data())
def test_fuzzed_config_text_loads_or_fails_in_one_line(tmp_path: Path, suffix: str, data: st.DataObject) -> None:
    """Random characters inserted, deleted or replaced in a valid file: a config, or one ConfigError line."""
    text = yaml.safe_dump(FUZZ_BASE) if suffix == ".yaml" else TOML_BASE
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        at = data.draw(st.integers(min_value=0, max_value=len(text)))
        cut = data.draw(st.integers(min_value=0, max_value=3))
        new = data.draw(st.text(alphabet="[]{}:,&*!|>-?#'\"=.\n x1", max_size=4))
        text = text[:at] + new + text[at + cut:]
    file = tmp_path / f"fuzz{suffix}"
    file.write_text(text)
    try:
        assert isinstance(load_config(file), RunConfig)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(file))


TOML_BASE = """\
seed = 0
device = "cpu"
baselines = ["independent"]

[backbone]
name = "tiny_cnn"
input_shape = [3, 16, 16]
trunk_output = "block"

[tasks.depth]
kind = "depth"
weight = 1.0

[tasks.normals]
kind = "normals"
hidden_channels = 8

[data]
images = 20

[search]
strategy = "automtl"
warmup_steps = 1
weighting_kwargs = {}
"""
