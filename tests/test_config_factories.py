"""Config guards of user factories: a dataset and a head from the user's own module run from a config, and
every wrong factory, argument or returned value is one error line naming the file, line and key."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from config_samples import TINY
from test_config import line_of, load_error, write

from automtl.app.config import (
    ConfigError,
    build_dataset,
    build_model,
    build_tasks,
    dump_config,
    load_config,
)
from automtl.search import search

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


# late errors of user data found at load ----------------------------------------------------------


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
