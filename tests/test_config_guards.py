"""Config guards: search strategies, user factories, hostile files, capped messages, late errors, memory."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import os
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_config import line_of, load_error, write

from automtl.app import cli
from automtl.app.config import (
    ConfigError,
    RunConfig,
    build_dataset,
    build_model,
    build_tasks,
    dump_config,
    load_config,
    resources,
    strategy_options,
)
from automtl.app.config.strategies import strategy_names
from automtl.search import SearchConfig, search

TINY = """\
backbone:
  name: tiny_cnn
  input_shape: [3, 16, 16]
  trunk_output: block
tasks:
  depth: {kind: depth}
data:
  images: 8
device: cpu
"""


# search strategies -----------------------------------------------------------------------------


def test_strategy_defaults_to_automtl_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, TINY + "search: {strategy: automtl, warmup_steps: 3}\n"))
    assert cfg.strategy == "automtl" and isinstance(cfg.search, SearchConfig) and cfg.search.warmup_steps == 3
    assert load_config(write(tmp_path, TINY, "plain.yaml")).strategy == "automtl"
    dump_config(cfg, tmp_path / "dumped.yaml")
    assert "strategy: automtl" in (tmp_path / "dumped.yaml").read_text()
    assert load_config(tmp_path / "dumped.yaml") == cfg


def test_strategy_options_lookup() -> None:
    assert strategy_options("automtl") is SearchConfig
    with pytest.raises(ConfigError) as info:
        strategy_options("zzz")
    assert str(info.value) == f"unknown search strategy 'zzz'; known: {', '.join(strategy_names())}"


@pytest.mark.parametrize(("text", "needle", "piece"), [
    ("search:\n  strategy: automtl2\n", "automtl2",
     "search.strategy: unknown search strategy 'automtl2'; did you mean 'automtl'? known: automtl"),  # , <others>
    ("search:\n  strategy: automtl\n  warmup_step: 3\n", "warmup_step",
     "unknown key 'warmup_step' in search; did you mean 'warmup_steps'?"),
    ("search:\n  strategy: 3\n", "strategy", "search.strategy: expected a string, got an int 3"),
])
def test_strategy_errors(tmp_path: Path, text: str, needle: str, piece: str) -> None:
    full = TINY + text
    path, message = load_error(tmp_path, full)
    assert message.startswith(f"{path}:{line_of(full, needle)}: {piece}"), message


def test_run_config_checks_the_strategy_options_type() -> None:
    with pytest.raises(ConfigError, match="the automtl strategy takes SearchConfig options, not dict"):
        RunConfig(*_parts(), search={"warmup_steps": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown search strategy 'nope'"):
        RunConfig(*_parts(), search=SearchConfig(), strategy="nope")


def _parts() -> tuple:
    from automtl.app.config import BackboneConfig, DataConfig, TaskConfig

    return BackboneConfig("tiny_cnn", (3, 16, 16), "block"), {"depth": TaskConfig("depth")}, DataConfig()


# user factories --------------------------------------------------------------------------------

FACTORIES = '''\
import torch
from torch import nn
from torch.utils.data import Dataset

CALLS = []


class Blobs(Dataset):
    """Random images; depth is their brightness, bright says whether it is above 0.5."""

    def __init__(self, n, size, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, size, size, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        return x, {"depth": x.mean(0, keepdim=True) + 0.1, "bright": (x.mean() > 0.5).long()}


def make_dataset(n: int, size: int = 16, seed: int = 0, tasks=None):
    CALLS.append({"n": n, "size": size, "seed": seed, "tasks": tasks})
    return Blobs(n, size, seed)


def make_splits(n: int = 4):
    return [Blobs(n, 16, 0), Blobs(0, 16, 1), Blobs(n, 16, 2)]


def make_head(in_channels, out_channels, width: int = 4, scale_factor=1):
    CALLS.append({"in": in_channels, "out": out_channels, "width": width, "scale": scale_factor})
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(in_channels, width), nn.ReLU(),
                         nn.Linear(width, out_channels))


def not_a_module(in_channels, out_channels):
    return "a head"


def needs_root(root, n=4):
    return Blobs(n, 16, 0)


def positional(n, /):
    return Blobs(n, 16, 0)


def broken(n=4):
    raise RuntimeError("the data server is down")


SIZE = 3
'''

FACTORY_CONFIG = """\
backbone:
  name: tiny_cnn
  input_shape: [3, 16, 16]
  trunk_output: block
tasks:
  depth: {kind: depth}
  bright:
    kind: classification
    num_classes: 2
    head: {factory: "userfactories:make_head", width: 6}
data:
  factory: "userfactories:make_dataset"
  n: 12
  size: 16
search: {warmup_steps: 1, search_iterations: 1, finetune_steps: 1, batch_size: 4, eval_batch_size: 4}
seed: 3
device: cpu
"""


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user module ``userfactories`` in the test's folder, importable for this test only."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "userfactories.py").write_text(FACTORIES)
    (folder / "userbroken.py").write_text("import torch\nraise ImportError('no GPU driver here')\n")
    (folder / "userdeps.py").write_text("import not_installed_anywhere\n")
    for name in ("userfactories", "userbroken", "userdeps"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_user_dataset_and_head_run_from_a_config(tmp_path: Path, factories: Path) -> None:
    cfg = load_config(write(tmp_path, FACTORY_CONFIG))
    assert cfg.data.factory == "userfactories:make_dataset" and cfg.data.options == {"n": 12, "size": 16}
    head = cfg.tasks["bright"]
    assert (head.head, head.head_factory, head.head_options) == ("factory", "userfactories:make_head", {"width": 6})
    module = sys.modules["userfactories"]
    data = build_dataset(cfg)
    assert len(data) == 12 and module.CALLS[-1] == {"n": 12, "size": 16, "seed": 3, "tasks": ("depth", "bright")}
    model = build_model(cfg)
    assert module.CALLS[-1]["width"] == 6 and module.CALLS[-1]["out"] == 2 and module.CALLS[-1]["scale"] >= 1
    assert isinstance(model.heads["bright"][2], torch.nn.Linear) and model.heads["bright"][2].out_features == 6
    result = search(model, build_tasks(cfg), data, dataclasses.replace(cfg.search, quiet=True))
    assert set(result.metrics) >= {"depth", "bright"}
    out = dict(zip(cfg.tasks, result.model(torch.rand(2, 3, 16, 16)), strict=True))  # one output per task
    assert out["bright"].shape == (2, 2) and out["depth"].shape == (2, 1, 16, 16)
    dump_config(cfg, tmp_path / "again.yaml")
    assert load_config(tmp_path / "again.yaml") == cfg


def test_user_factory_returning_splits(tmp_path: Path, factories: Path) -> None:
    text = TINY.replace("data:\n  images: 8\n", "data: {factory: 'userfactories:make_splits'}\n")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        build_dataset(load_config(path))
    assert str(info.value) == (f"{path}:{line_of(text, 'factory')}: data.factory: userfactories:make_splits "
                               "returned an empty 'policy' split")


@pytest.mark.parametrize(("data", "needle", "piece"), [
    ("{factory: 'nopkg_at_all.data:make'}", "factory",
     "data.factory: no module named 'nopkg_at_all' (install it, or add its folder to PYTHONPATH)"),
    ("{factory: 'userdeps:make'}", "factory",
     "data.factory: importing 'userdeps' failed: No module named 'not_installed_anywhere'"),
    ("{factory: 'userbroken:make'}", "factory", "data.factory: importing 'userbroken' raised ImportError: no GPU"),
    ("{factory: 'userfactories:make_datset'}", "factory",
     "data.factory: module 'userfactories' has no attribute 'make_datset'; did you mean 'make_dataset'?"),
    ("{factory: 'userfactories:SIZE'}", "factory",
     "data.factory: 'userfactories:SIZE' is an int 3, not a function or class to call"),
    ("{factory: 'userfactories'}", "factory",
     "data.factory: expected 'module:function' such as 'my_pkg.data:make_dataset', got 'userfactories'"),
    ("\n  factory: 'userfactories:make_dataset'\n  n: 8\n  sise: 16", "sise",
     "unknown key 'sise' in data (keyword arguments of userfactories:make_dataset); did you mean 'size'?"),
    ("\n  factory: 'userfactories:make_dataset'\n  n: 8\n  size: big", "big",
     "data.size: expected an int, got a string 'big'"),
    ("\n  factory: 'userfactories:needs_root'\n  n: 8", "factory",
     "data.factory: userfactories:needs_root needs the argument 'root': add root: ... to data"),
    ("\n  factory: 'userfactories:positional'", "factory",
     "data.factory: userfactories:positional needs the positional-only argument 'n'"),
    ("{factory: 'userfactories:make_dataset', name: synthetic_scenes}", "factory",
     "data: give either name (a built-in dataset) or factory, not both"),
])
def test_data_factory_errors_at_load(tmp_path: Path, factories: Path, data: str, needle: str, piece: str) -> None:
    text = TINY.replace("data:\n  images: 8\n", f"data: {data}\n")
    path, message = load_error(tmp_path, text)
    assert message.startswith(f"{path}:{line_of(text, needle)}: {piece}"), message


@pytest.mark.parametrize(("head", "needle", "piece"), [
    ("{factory: 'userfactories:make_head', widht: 3}", "widht",
     "unknown key 'widht' in tasks.depth.head (keyword arguments of userfactories:make_head); did you mean 'width'?"),
    ("{factory: 'userfactories:make_head', in_channels: 3}", "in_channels",
     "tasks.depth.head.in_channels: set by automtl"),
    ("{factory: 'userfactories:make_dataset'}", "factory",
     "tasks.depth.head.factory: userfactories:make_dataset takes no argument 'in_channels'"),
    ("{width: 3}", "width", "tasks.depth.head: a head mapping needs factory: 'module:function'"),
    ("{factory: 'userfactories:nope'}", "nope", "tasks.depth.head.factory: module 'userfactories' has no attribute"),
])
def test_head_factory_errors_at_load(tmp_path: Path, factories: Path, head: str, needle: str, piece: str) -> None:
    text = TINY.replace("depth: {kind: depth}", f"depth:\n    kind: depth\n    head: {head}")
    path, message = load_error(tmp_path, text)
    assert message.startswith(f"{path}:{line_of(text, needle)}: {piece}"), message


@pytest.mark.parametrize(("text", "needle", "piece"), [
    (TINY.replace("data:\n  images: 8\n", "data: {factory: 'userfactories:broken'}\n"), "factory",
     "data.factory: userfactories:broken(...) raised RuntimeError: the data server is down"),
    (TINY.replace("data:\n  images: 8\n", "data: {factory: 'userfactories:make_dataset', n: 1}\n"), "factory",
     "data.factory: userfactories:make_dataset returned 1 item, which split by search.split_fractions "
     "[0.4, 0.4, 0.2] leaves the 'weights' split empty; it needs at least 3 items"),
    (TINY.replace("data:\n  images: 8\n", "data: {factory: 'userfactories:make_dataset', n: 8, size: 8}\n"),
     "input_shape", "backbone.input_shape [3, 16, 16] does not match the images of data.factory: "
     "userfactories:make_dataset: [3, 8, 8]"),
])
def test_data_factory_errors_at_build(tmp_path: Path, factories: Path, text: str, needle: str, piece: str) -> None:
    path = write(tmp_path, text)
    cfg = load_config(path)
    with pytest.raises(ConfigError) as info:
        build_dataset(cfg)
    assert str(info.value) == f"{path}:{line_of(text, needle)}: {piece}"


def test_head_factory_must_return_a_module(tmp_path: Path, factories: Path) -> None:
    head = "depth:\n    kind: depth\n    head: {factory: 'userfactories:not_a_module'}"
    text = TINY.replace("depth: {kind: depth}", head)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        build_model(load_config(path))
    assert str(info.value) == (f"{path}:{line_of(text, 'not_a_module')}: tasks.depth.head.factory: "
                               "userfactories:not_a_module returned a string 'a head', not an nn.Module")


# hostile files ---------------------------------------------------------------------------------


def test_billion_laughs_is_refused(tmp_path: Path) -> None:
    lines = ['lol0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"lol{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    text = TINY + "\n".join(lines) + "\n"
    path, message = load_error(tmp_path, text)
    assert message == (f"{path}:{line_of(text, 'lol5:')}: this value expands to more than 100000 values (YAML "
                       "aliases repeat what their anchor holds); a run config needs a few hundred: write it out "
                       "without aliases")


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    text = TINY + "search: &s\n  weighting_kwargs: *s\n"
    path, message = load_error(tmp_path, text)
    assert message.startswith(f"{path}:{line_of(text, 'search:')}: a YAML alias refers to the anchor it is inside")


def test_aliases_of_a_sane_size_still_work(tmp_path: Path) -> None:
    text = TINY.replace("tasks:\n  depth: {kind: depth}\n", "tasks:\n  depth: &d {kind: depth}\n  normals: *d\n")
    with pytest.raises(ConfigError, match="the synthetic_scenes target 'normals' needs kind normals, not depth"):
        load_config(write(tmp_path, text))
    text = TINY + "baselines: &b [independent]\n"
    assert load_config(write(tmp_path, text, "b.yaml")).baselines == ("independent",)


@pytest.mark.parametrize("name", ["run.yaml", "run.toml"])
def test_deep_nesting_is_refused(tmp_path: Path, name: str) -> None:
    deep = "[" * 5000 + "]" * 5000
    if name.endswith(".yaml"):
        text = TINY + f"search:\n  weighting_kwargs: {{a: {deep}}}\n"
    else:
        text = f'[tasks.depth]\nkind = "depth"\n[search.weighting_kwargs]\na = {deep}\n'
    path, message = load_error(tmp_path, text, name)
    assert message == f"{path}:{line_of(text, '[[[')}: nesting deeper than 64 levels; a run config needs a few"


# capped messages -------------------------------------------------------------------------------

HUGE = "x" * 1_000_000


@pytest.mark.parametrize(("text", "piece"), [
    (TINY.replace("name: tiny_cnn", f"name: {HUGE}"), "backbone.name: 'xxxx"),
    (TINY + f"? {HUGE}\n: 1\n", "unknown key 'xxxx"),  # YAML's plain keys are at most 1024 characters
    (TINY.replace("depth: {kind: depth}", f"? {HUGE}\n  : {{kind: depth}}"), "task 'xxxx"),
    (TINY.replace("images: 8", f"name: {HUGE}"), "data.name: unknown dataset 'xxxx"),
    (TINY + f"search: {{weighting: {HUGE}}}\n", "search.weighting: unknown loss weighting 'xxxx"),
    (TINY + f"search: {{strategy: {HUGE}}}\n", "search.strategy: unknown search strategy 'xxxx"),
    (TINY + f"search: {{budget_kind: {HUGE}}}\n", "search.budget_kind: SearchConfig.budget_kind must be one of"),
])
def test_error_lines_cap_echoed_input(tmp_path: Path, text: str, piece: str) -> None:
    path, message = load_error(tmp_path, text)
    assert piece in message and re.search(r"\.\.\. \(10000\d\d characters\)", message)
    assert len(message) < len(path) + 700


def test_long_trunk_output_is_capped_at_build(tmp_path: Path) -> None:
    path = write(tmp_path, TINY.replace("trunk_output: block", f"trunk_output: {HUGE}"))
    with pytest.raises(ConfigError) as info:
        build_model(load_config(path))
    assert "backbone.trunk_output: 'xxx" in str(info.value) and len(str(info.value)) < len(path) + 700


# late errors found at load ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "needle", "piece"), [
    (TINY.replace("images: 8", "images: 1"), "images",
     "data.images: 1 image split by search.split_fractions [0.4, 0.4, 0.2] leaves the 'weights' split empty; "
     "it needs at least 3 items"),
    (TINY.replace("images: 8", "images: 3") + "search: {split_fractions: [0.5, 0.4, 0.1]}\n", "images",
     "data.images: 3 images split by search.split_fractions [0.5, 0.4, 0.1] leave the 'val' split empty; "
     "it needs at least 6 items"),
    (TINY + "search: {split_fractions: [0.0, 0.5, 0.5]}\n", "split_fractions",
     "search.split_fractions: the 'weights' fraction must be in (0, 1], got 0.0"),
    (TINY + "search: {split_fractions: [0.5, 0.5, 1.0e-300]}\n", "images",
     "data.images: 8 images split by search.split_fractions [0.5, 0.5, 1e-300] leave the 'val' split empty; "
     "it needs about 1e+300 items"),
    (TINY + "search: {split_fractions: [0.6, 0.6, 0.2]}\n", "split_fractions",
     "search.split_fractions: [0.6, 0.6, 0.2] sum to 1.4, more than 1"),
    (TINY + "search: {weighting: uncertainy}\n", "uncertainy",
     "search.weighting: unknown loss weighting 'uncertainy'; did you mean 'uncertainty'? known:"),
    (TINY + "search:\n  weighting: dwa\n  weighting_kwargs: {temprature: 2}\n", "temprature",
     "unknown key 'temprature' in search.weighting_kwargs (options of the dwa weighting); did you mean "
     "'temperature'?"),
    (TINY + f"seed: {2**70}\n", "seed", "seed: expected an int in the 64-bit range (-2**63 to 2**63 - 1), got an int"),
    (TINY + f"seed: {2**40}\n", "seed", f"seed: must be an int in [0, {2**32 - 1}], got {2**40}"),
    (TINY + f"search: {{warmup_steps: {2**70}}}\n", "warmup_steps",
     f"search.warmup_steps: expected an int in the 64-bit range (-2**63 to 2**63 - 1), got an int {2**70}"),
    (TINY.replace("images: 8", f"images: 8\n  max_shapes: {2**64}"), "max_shapes",
     "data.max_shapes: expected an int in the 64-bit range"),
    (TINY.replace("depth: {kind: depth}", f"depth: {{kind: depth, weight: {10**400}}}"), "weight",
     "tasks.depth.weight: expected a finite number"),
    (TINY.replace("[3, 16, 16]", "[3, 16, 100000]"), "input_shape", "backbone.input_shape: [3, 16, 100000] has a side"),
])
def test_late_errors_are_found_at_load(tmp_path: Path, text: str, needle: str, piece: str) -> None:
    path, message = load_error(tmp_path, text)
    assert message.startswith(f"{path}:{line_of(text, needle)}: {piece}"), message


def test_split_fractions_are_checked_for_user_data_at_load(tmp_path: Path, factories: Path) -> None:
    text = FACTORY_CONFIG.replace("batch_size: 4,", "batch_size: 4, split_fractions: [0.5, 0.5, 0.5],")
    path, message = load_error(tmp_path, text)
    assert message == f"{path}:{line_of(text, 'split_fractions')}: search.split_fractions: [0.5, 0.5, 0.5] sum to " \
                      "1.5, more than 1"


def test_classification_on_user_data_needs_num_classes(tmp_path: Path, factories: Path) -> None:
    text = FACTORY_CONFIG.replace("    num_classes: 2\n", "")
    path, message = load_error(tmp_path, text)
    assert message == (f"{path}:{line_of(text, 'bright:')}: tasks.bright: a classification task needs num_classes: "
                       "add num_classes: ... to tasks.bright")


# memory ----------------------------------------------------------------------------------------

GIB = 2**30


@pytest.fixture
def eight_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with 8 GiB of memory, whatever this one has."""
    monkeypatch.setattr(resources, "host_memory", lambda: (8 * GIB, "test"))


@pytest.mark.parametrize(("change", "needle", "pieces"), [
    (("depth: {kind: depth}", "depth: {kind: depth, hidden_channels: 10000000}"), "hidden_channels",
     ["tasks.depth head parameters:", "lower tasks.depth.hidden_channels (10000000)"]),
    (("images: 8", "images: 1000000000"), "images",
     ["data index of 1000000000 items: 52.2 GiB", "lower data.images (1000000000)"]),
    (("[3, 16, 16]", "[3, 4096, 4096]"), "input_shape",
     ["trunk activations of a batch of 3:", "lower backbone.input_shape [3, 4096, 4096] or search.batch_size (16)"]),
])
def test_memory_guard_refuses_with_the_estimate(tmp_path: Path, eight_gib: None, no_cuda: None,
                                                change: tuple[str, str], needle: str, pieces: list[str]) -> None:
    text = TINY.replace(*change)
    path, message = load_error(tmp_path, text)
    assert message.startswith(f"{path}:{line_of(text, needle)}: the search would need about "), message
    assert "GiB of memory (" in message and "but this machine has 8.0 GiB (test)" in message
    for piece in pieces:
        assert piece in message, message


def test_memory_guard_counts_the_digit_pool_before_making_it(tmp_path: Path, eight_gib: None, no_cuda: None) -> None:
    text = ("backbone: {name: tiny_cnn, input_shape: [1, 2048, 4096], trunk_output: block}\n"
            "tasks:\n  left: {kind: classification}\ndata: {name: multi_digits, images: 8}\nsearch: {batch_size: 1}\n")
    path, message = load_error(tmp_path, text)
    assert "digit pool of 1348 images of 2048x2048: 21.1 GiB" in message and "this machine has 8.0 GiB" in message


def test_memory_guard_can_be_skipped_to_read_a_run(tmp_path: Path, eight_gib: None) -> None:
    path = write(tmp_path, TINY.replace("images: 8", "images: 1000000000"))
    with pytest.raises(ConfigError, match="data index of 1000000000 items"):
        load_config(path)
    assert load_config(path, check_memory=False).data.options["n"] == 10**9  # a larger machine's run, read here


def test_memory_estimate_of_a_small_config(tmp_path: Path, eight_gib: None) -> None:
    cfg = load_config(write(tmp_path, TINY))  # fits: no error
    parts = resources.estimate(cfg._ctx, cfg, {"depth": 1}, 8)  # type: ignore[attr-defined]
    by_label = {p.label.split(" ")[0] + " " + p.label.split(" ")[1]: p.bytes for p in parts}
    assert by_label["data index"] == 8 * resources.BYTES_PER_INDEX
    model = build_model(cfg)
    torch.manual_seed(0)
    model.fill_specific()  # what the search holds after warm-up: a shared and a per-task bank at every choice
    params = sum(p.numel() for p in model.parameters())
    estimated = sum(p.bytes for p in parts if "parameters" in p.label) / (4 * 4)  # 4 bytes, 4 copies (Adam)
    assert params * 0.8 <= estimated <= params * 1.25


def test_memory_guard_uses_gpu_memory_for_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(write(tmp_path, TINY.replace("[3, 16, 16]", "[3, 512, 512]")))
    fake = dataclasses.replace(cfg, device="cpu")
    object.__setattr__(fake, "search", dataclasses.replace(cfg.search, device="cuda:0"))
    monkeypatch.setattr(resources, "device_memory", lambda device: (16 * 2**20, "a small GPU"))
    monkeypatch.setattr(resources, "host_memory", lambda: (64 * GIB, "test"))
    with pytest.raises(ConfigError, match=r"MiB of GPU memory .* but this machine has 16 MiB \(a small GPU\)"):
        resources.check_memory(cfg._ctx, fake, {"depth": 1}, 8)  # type: ignore[attr-defined]
    resources.check_memory(cfg._ctx, cfg, {"depth": 1}, 8)  # type: ignore[attr-defined] # the CPU: 64 GiB


def test_host_memory_is_read() -> None:
    total, source = resources.host_memory()  # type: ignore[misc]
    assert total > 2**28 and source


# the command line ------------------------------------------------------------------------------


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    deep = "[" * 3000 + "]" * 3000
    path = write(tmp_path, TINY + f"search: {{weighting_kwargs: {{a: {deep}}}}}\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["search", path, "--out", str(tmp_path / "run")])
    assert code == 2
    assert err.getvalue().strip().splitlines() == [
        f"automtl: error: {path}:{len(TINY.splitlines()) + 1}: nesting deeper than 64 levels; a run config needs a few"]
    assert not (tmp_path / "run").exists()


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
