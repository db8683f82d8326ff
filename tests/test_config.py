"""Run configuration files: parsing, validation with file:line messages, resolution and building."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import automtl
import automtl.app.config as config_module
from automtl.app.config import (
    BackboneConfig,
    ConfigError,
    DataConfig,
    RunConfig,
    TaskConfig,
    build_dataset,
    build_model,
    build_tasks,
    config_from_dict,
    demo_config,
    dump_config,
    load_config,
    resolve_device,
)
from automtl.search.searcher import SearchConfig
from automtl.train.tasks import Classification, Depth, Normals, Segmentation, dense_head

EXAMPLE_YAML = re.search(r"```yaml\n(.*?)```", config_module.__doc__ or "", re.S).group(1)

EXAMPLE_TOML = """\
seed = 0
device = "auto"
baselines = ["independent", "all-shared"]
checkpoint_every = 200

[backbone]
name = "resnet18"
input_shape = [3, 32, 32]
trunk_output = "layer2"
bn = "follow"
skip = true

[tasks.segmentation]
kind = "segmentation"

[tasks.depth]
kind = "depth"
weight = 1.0

[tasks.normals]
kind = "normals"
head = "dense"
hidden_channels = 32

[data]
name = "synthetic_scenes"
images = 500
size = 32

[search]
warmup_steps = 60
search_iterations = 40
finetune_steps = 80
tau_interval = 10
"""

TINY_YAML = """\
backbone:
  name: tiny_cnn
  input_shape: [3, 16, 16]
  trunk_output: block
tasks:
  segmentation: {kind: segmentation}
  depth: {kind: depth, weight: 0.5}
  normals: {kind: normals, hidden_channels: 8}
  edges: {kind: edges, pos_weight: auto}
data:
  images: 8
device: cpu
"""

DIGITS_YAML = """\
backbone:
  name: tiny_cnn
  input_shape: [3, 16, 32]
  trunk_output: block
tasks:
  left: {kind: classification}
  sum_parity: {kind: classification, head: classification}
data:
  name: multi_digits
  images: 8
device: cpu
"""

TASKS = "tasks:\n  depth: {kind: depth}\n"


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def load_error(tmp_path: Path, text: str, name: str = "run.yaml") -> tuple[str, str]:
    path = write(tmp_path, text, name)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    return path, message


# parsing and resolution ------------------------------------------------------------------------


def test_yaml_and_toml_give_the_same_resolved_config(tmp_path: Path) -> None:
    from_yaml = load_config(write(tmp_path, EXAMPLE_YAML, "run.yaml"))
    from_toml = load_config(write(tmp_path, EXAMPLE_TOML, "run.toml"))
    assert from_yaml.to_dict() == from_toml.to_dict()
    assert from_yaml == from_toml
    d = from_yaml.to_dict()
    assert d["backbone"] == {"name": "resnet18", "input_shape": [3, 32, 32], "trunk_output": "layer2",
                             "bn": "follow", "skip": True}
    assert d["tasks"]["depth"] == {"kind": "depth", "head": "auto", "hidden_channels": None, "weight": 1.0}
    assert d["tasks"]["normals"]["hidden_channels"] == 32
    assert d["data"] == {"name": "synthetic_scenes", "images": 500, "size": 32}
    assert d["search"]["warmup_steps"] == 60 and d["search"]["tau_interval"] == 10
    assert d["baselines"] == ["independent", "all-shared"] and d["amp"] is None
    assert from_yaml.source == Path(tmp_path / "run.yaml") and from_toml.source == Path(tmp_path / "run.toml")


def test_to_dict_is_resolved_and_plain(tmp_path: Path, no_cuda: None) -> None:
    cfg = load_config(write(tmp_path, EXAMPLE_YAML))
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain JSON types, no tuples
    assert "source" not in d
    search_fields = {f.name for f in dataclasses.fields(SearchConfig)}
    assert set(d["search"]) == search_fields - {"seed", "device", "amp", "quiet"} | {"strategy"}
    assert d["search"]["strategy"] == "automtl" and cfg.strategy == "automtl"  # the default strategy, written out
    assert d["search"]["split_fractions"] == [0.4, 0.4, 0.2]
    assert d["device"] == "auto" and cfg.search.device == "cpu"  # the written value is kept, the search's resolved
    assert (cfg.search.seed, cfg.search.amp) == (cfg.seed, cfg.amp)
    assert dataclasses.replace(cfg, seed=7).search.seed == 7  # the mirror follows replace()


def test_dump_config_round_trip(tmp_path: Path) -> None:
    text = EXAMPLE_YAML.replace("tau_interval: 10", "tau_interval: 10\n  split_fractions: [0.5, 0.3, 0.2]\n"
                                                   "  weight_lr: 1e-3\n  weighting: dwa\n"
                                                   "  weighting_kwargs: {temperature: 1.5}")
    cfg = load_config(write(tmp_path, text))
    assert cfg.search.split_fractions == (0.5, 0.3, 0.2)  # a YAML list becomes SearchConfig's tuple
    assert cfg.search.weight_lr == 0.001  # PyYAML reads 1e-3 as a string; it is taken as the number
    out = tmp_path / "dumped" / "config.yaml"
    out.parent.mkdir()
    dump_config(cfg, out)
    again = load_config(out)
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert "input_shape: [3, 32, 32]" in out.read_text()
    demo = demo_config(size=16, images=20)
    dump_config(demo, tmp_path / "demo.yaml")
    assert load_config(tmp_path / "demo.yaml") == demo


def test_backbone_path_is_relative_to_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nets = tmp_path / "configs" / "nets"
    nets.mkdir(parents=True)
    shutil.copy(automtl.backbones.prototxt_path("tiny_cnn"), nets / "tiny.prototxt")
    text = TASKS + "backbone: {name: nets/tiny.prototxt, input_shape: [3, 32, 32]}\n"
    monkeypatch.chdir(tmp_path)  # the cwd is not the config's folder
    cfg = load_config(write(tmp_path, text, "configs/run.yaml"))
    assert Path(cfg.backbone.name) == (nets / "tiny.prototxt").resolve()
    path, message = load_error(tmp_path, text.replace("nets/", "other/"), "configs/bad.yaml")
    assert message.startswith(f"{path}:{line_of(text, 'backbone')}: backbone.name: no such backbone file")
    assert "config file's folder" in message


def test_config_from_dict_messages_use_the_given_lines() -> None:
    data = {"tasks": {"depth": {"kind": "depth"}}, "search": {"warmup_step": 1}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert str(info.value) == "unknown key 'warmup_step' in search; did you mean 'warmup_steps'?"
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, source="x.yaml", lines={("search",): 6, ("search", "warmup_step"): 7})
    assert str(info.value).startswith("x.yaml:7: unknown key 'warmup_step'")
    assert (info.value.file, info.value.line) == ("x.yaml", 7)


# validation ------------------------------------------------------------------------------------

# (file text, text on the offending line or None for no line, pieces of the message)
ERRORS = [
    pytest.param(TASKS + "search:\n  warmup_step: 60\n", "warmup_step",
                 ["unknown key 'warmup_step' in search; did you mean 'warmup_steps'?"], id="search-key"),
    pytest.param("taks:\n  depth: {kind: depth}\n", "taks",
                 ["unknown key 'taks' at the top level; did you mean 'tasks'?"], id="top-key"),
    pytest.param(TASKS + "backbone:\n  name: resnet18\n  trunk: layer3\n", "trunk:",
                 ["unknown key 'trunk' in backbone; did you mean 'trunk_output'?"], id="backbone-key"),
    pytest.param(TASKS + "backbone:\n  zzz: 1\n", "zzz",
                 ["unknown key 'zzz' in backbone; valid keys: name, input_shape, trunk_output, bn, skip"],
                 id="no-close-key"),
    pytest.param(TASKS + "data:\n  images: 10\n  sise: 32\n", "sise",
                 ["unknown key 'sise' in data; did you mean 'size'?"], id="data-key"),
    pytest.param("tasks:\n  segmentation: {kind: segmentation}\n  depth:\n    kind: depth\n    wieght: 2\n", "wieght",
                 ["unknown key 'wieght' in tasks.depth; did you mean 'weight'?"], id="task-key"),
    pytest.param(TASKS + "search:\n  warmup_steps: sixty\n", "sixty",
                 ["search.warmup_steps: expected an int, got a string 'sixty'"], id="str-for-int"),
    pytest.param(TASKS + "seed: 1.5\n", "seed", ["seed: expected an int, got a number 1.5"], id="float-seed"),
    pytest.param(TASKS + "backbone:\n  input_shape: [3, 32]\n", "input_shape",
                 ["backbone.input_shape: expected a list of 3 positive ints [C, H, W], got a list [3, 32]"],
                 id="input-shape-length"),
    pytest.param("tasks:\n  depth: depth\n", "depth: depth",
                 ["tasks.depth must be a mapping such as {kind: depth}, got a string 'depth'"], id="task-not-mapping"),
    pytest.param("tasks:\n  segmentation: {kind: segmentaton}\n", "segmentaton",
                 ["tasks.segmentation.kind: unknown task kind 'segmentaton'; did you mean 'segmentation'?"],
                 id="task-kind"),
    pytest.param("tasks:\n  depth: {kind: depth, head: denze}\n", "denze",
                 ["tasks.depth.head: unknown head 'denze'; did you mean 'dense'?"], id="head"),
    pytest.param("tasks:\n  depth:\n    kind: depth\n    head: classification\n", "head:",
                 ["tasks.depth.head: a depth task needs a dense head, not classification"], id="head-kind"),
    pytest.param("tasks:\n  depth:\n    kind: segmentation\n", "kind:",
                 ["tasks.depth.kind: the synthetic_scenes target 'depth' needs kind depth, not segmentation"],
                 id="target-kind"),
    pytest.param("tasks:\n  segmentation:\n    kind: segmentation\n    num_classes: 3\n", "num_classes",
                 ["tasks.segmentation.num_classes: 3 does not match the 4 classes"], id="num-classes"),
    pytest.param("tasks:\n  depth:\n    kind: depth\n    weight: -1\n", "weight",
                 ["tasks.depth.weight: expected a finite number >= 0, got -1"], id="task-value"),
    pytest.param(TASKS + "backbone:\n  bn: folow\n", "folow",
                 ["backbone.bn: unknown bn mode 'folow'; did you mean 'follow'?"], id="bn"),
    pytest.param(TASKS + "backbone:\n  name: resnet19\n", "resnet19",
                 ["'resnet19' is neither a zoo backbone", "did you mean 'resnet18'?"], id="zoo-name"),
    pytest.param(TASKS + "data:\n  name: synthetic_scene\n", "synthetic_scene",
                 ["data.name: unknown dataset 'synthetic_scene'; did you mean 'synthetic_scenes'?"], id="data-name"),
    pytest.param(TASKS + "data:\n  n: 10\n", "n: 10", ["data.n: write the dataset size as images"], id="data-n"),
    pytest.param(TASKS + "data:\n  images: 10\n  size: 4\n", "size", ["data.size: must be an int >= 8, got 4"],
                 id="data-value"),
    pytest.param(TASKS + "baselines:\n  - independent\n  - all_shared\n", "all_shared",
                 ["baselines.1: unknown baseline 'all_shared'; did you mean 'all-shared'?"], id="baseline"),
    pytest.param(TASKS + "baselines: independent\n", "baselines", ["baselines: expected a list"], id="baselines-str"),
    pytest.param("tasks:\n  dept: {kind: depth}\n", "dept",
                 ["task 'dept' is not a target of the synthetic_scenes data; did you mean 'depth'? "
                  "available: segmentation, depth, normals, edges, shading"], id="task-target"),
    pytest.param("data: {name: multi_digits}\ntasks:\n  depth: {kind: depth}\n", "depth",
                 ["task 'depth' is not a target of the multi_digits data",
                  "available: left, right, sum_parity, larger"], id="task-target-digits"),
    pytest.param("tasks: {}\n", "tasks", ["tasks is empty"], id="tasks-empty"),
    pytest.param("seed: 0\n", None, ["no tasks: add a tasks section"], id="tasks-missing"),
    pytest.param("- tasks\n- seed\n", "tasks", ["the top level must be a mapping of sections"], id="top-list"),
    pytest.param("", None, ["the config is empty"], id="empty"),
    pytest.param(TASKS + "search:\n  seed: 3\n", "seed: 3", ["search.seed: set seed at the top level"],
                 id="search-seed"),
    pytest.param(TASKS + "search:\n  quiet: true\n", "quiet", ["quiet is a command-line flag"], id="search-quiet"),
    pytest.param(TASKS + "search:\n  budget_kind: watts\n", "watts",
                 ["search.budget_kind: SearchConfig.budget_kind must be one of"], id="search-value"),
    pytest.param(TASKS + "search:\n  split_fractions: [0.5, 0.5]\n", "split_fractions",
                 ["search.split_fractions: expected a list of 3 numbers"], id="split-fractions"),
    pytest.param(TASKS + "amp: fp32\n", "amp", ["amp: unknown amp mode 'fp32'"], id="amp"),
    pytest.param(TASKS + "device: gpu\n", "device", ["device: expected auto, cpu, cuda or cuda:N, got 'gpu'"],
                 id="device-format"),
    pytest.param(TASKS + "device: cuda\n", "device",
                 ["device 'cuda': CUDA is not available on this machine; use device: cpu or device: auto"],
                 id="device-cuda"),
    pytest.param(TASKS + "checkpoint_every: -5\n", "checkpoint_every",
                 ["checkpoint_every: must be an int >= 0, got -5"], id="checkpoint-every"),
    pytest.param(TASKS + "search:\n  warmup_steps: 1\n  warmup_steps: 2\n", "warmup_steps: 2",
                 ["duplicate key 'warmup_steps' in search"], id="duplicate"),
    pytest.param(TASKS + "search:\n  warmup_steps: [1\n", "warmup_steps", ["invalid YAML"], id="yaml-syntax"),
    pytest.param("data: {name: multi_digits}\ntasks:\n  left: {kind: classification}\n"
                 "backbone:\n  input_shape: [3, 32, 32]\n", "input_shape",
                 ["backbone.input_shape [3, 32, 32] does not match the multi_digits images [3, 32, 64]: "
                  "use input_shape: [3, 32, 64]"], id="digits-shape"),
    pytest.param(TASKS + "backbone:\n  input_shape: [3, 32, 48]\n", "input_shape",
                 ["does not match the synthetic_scenes images [3, 48, 48]"], id="scenes-shape"),
    pytest.param("data: {name: multi_digits}\ntasks:\n  left: {kind: classification, hidden_channels: 8}\n",
                 "hidden_channels", ["only dense heads have hidden channels"], id="hidden-classification"),
]


@pytest.mark.parametrize(("text", "needle", "pieces"), ERRORS)
def test_errors_name_file_line_and_fix(tmp_path: Path, no_cuda: None, text: str, needle: str | None,
                                       pieces: list[str]) -> None:
    path, message = load_error(tmp_path, text)
    prefix = f"{path}:{line_of(text, needle)}: " if needle is not None else f"{path}: "
    assert message.startswith(prefix), message
    for piece in pieces:
        assert piece in message, message


def test_search_config_errors_keep_its_message(tmp_path: Path) -> None:
    text = EXAMPLE_YAML.replace("warmup_steps: 60", "warmup_steps: -1")
    path, message = load_error(tmp_path, text)
    line = line_of(text, "warmup_steps")
    assert message == f"{path}:{line}: search.warmup_steps: SearchConfig.warmup_steps must be an int >= 0, got -1"


def test_toml_empty_trunk_output_means_the_backbone_output(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, EXAMPLE_TOML.replace('trunk_output = "layer2"', 'trunk_output = ""'), "r.toml"))
    assert cfg.backbone.trunk_output is None and cfg.to_dict()["backbone"]["trunk_output"] is None


def test_toml_errors_have_lines(tmp_path: Path) -> None:
    text = EXAMPLE_TOML.replace("warmup_steps = 60", "warmup_step = 60")
    path, message = load_error(tmp_path, text, "run.toml")
    assert message == (f"{path}:{line_of(text, 'warmup_step =')}: unknown key 'warmup_step' in search; "
                       "did you mean 'warmup_steps'?")
    text = 'seed = 0\n[tasks]\ndepth = {kind = "depth", wieght = 2.0}\n'
    path, message = load_error(tmp_path, text, "inline.toml")
    assert message.startswith(f"{path}:3: unknown key 'wieght' in tasks.depth; did you mean 'weight'?")
    text = EXAMPLE_TOML.replace('bn = "follow"', 'bn = follow')
    path, message = load_error(tmp_path, text, "syntax.toml")
    assert message.startswith(f"{path}:{line_of(text, 'bn =')}: invalid TOML:")
    path, message = load_error(tmp_path, '[tasks.depth]\nkind = "depth"\n[search]\nwarmup_steps = "x"\n', "t.toml")
    assert message.startswith(f"{path}:4: search.warmup_steps: expected an int")


def test_file_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: no such config file")):
        load_config(missing)
    path = write(tmp_path, TASKS, "run.json")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: unsupported config format '.json'")):
        load_config(path)


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="CUDA is not available.*use device: cpu or device: auto"):
            resolve_device(device)
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match="2 CUDA device"):
        resolve_device("cuda:2")


# building --------------------------------------------------------------------------------------


def _batch(dataset: torch.utils.data.Dataset, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    items = [dataset[i] for i in range(n)]
    x = torch.stack([x for x, _ in items])
    return x, {t: torch.stack([y[t] for _, y in items]) for t in items[0][1]}


def test_build_tiny_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, TINY_YAML))
    tasks = build_tasks(cfg)
    assert [type(t) for t in tasks.values()] == [Segmentation, Depth, Normals, automtl.train.tasks.Edges]
    assert tasks["segmentation"].num_classes == 4 and tasks["depth"].weight == 0.5
    assert tasks["edges"].pos_weight == "auto"
    data = build_dataset(cfg)
    assert len(data) == 8 and data.size == 16 and data.seed == cfg.seed
    model = build_model(cfg)
    assert isinstance(model, automtl.SuperModel) and list(model.task_names) == list(cfg.tasks)
    assert model.heads["normals"][0].out_channels == 8  # hidden_channels
    x, targets = _batch(data, 4)
    assert x.shape == (4, 3, 16, 16)
    out = model(x, mode="soft", tau=1.0)
    assert out["segmentation"].shape == (4, 4, 16, 16) and targets["segmentation"].shape == (4, 16, 16)
    for t in ("depth", "normals", "edges"):
        assert out[t].shape == targets[t].shape, t
    for t, task in tasks.items():
        assert torch.isfinite(task.loss(out[t], targets[t])), t


def test_the_shading_target_is_reachable_from_a_config(tmp_path: Path) -> None:
    text = TINY_YAML.replace("  normals: {kind: normals, hidden_channels: 8}\n", "  shading: {kind: depth}\n")
    cfg = load_config(write(tmp_path, text))
    x, targets = build_dataset(cfg)[0]
    assert set(targets) == {"segmentation", "depth", "shading", "edges"}
    assert targets["shading"].shape == (1, 16, 16) and float(targets["shading"].min()) >= 0.35
    assert isinstance(build_tasks(cfg)["shading"], Depth)
    wrong = text.replace("shading: {kind: depth}", "shading: {kind: normals}")
    _, message = load_error(tmp_path, wrong)
    assert "the synthetic_scenes target 'shading' needs kind depth, not normals" in message


def test_build_passes_the_task_subset_to_the_data(tmp_path: Path) -> None:
    text = TINY_YAML.replace("  normals: {kind: normals, hidden_channels: 8}\n", "").replace(
        "  edges: {kind: edges, pos_weight: auto}\n", "")
    cfg = load_config(write(tmp_path, text))
    assert set(build_dataset(cfg)[0][1]) == {"segmentation", "depth"}
    one = build_model(cfg, ["depth"])
    assert list(one.task_names) == ["depth"]
    with pytest.raises(ConfigError, match="unknown or no tasks"):
        build_model(cfg, ["normals"])


def test_build_multi_digits(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, DIGITS_YAML))
    data = build_dataset(cfg)
    x, targets = _batch(data, 4)
    assert x.shape == (4, 3, 16, 32) and set(targets) == {"left", "sum_parity"}
    tasks = build_tasks(cfg)
    assert all(isinstance(t, Classification) for t in tasks.values())
    assert (tasks["left"].num_classes, tasks["sum_parity"].num_classes) == (10, 2)
    model = build_model(cfg)
    for name, classes in (("left", 10), ("sum_parity", 2)):
        linear = model.heads[name][-1]
        assert isinstance(linear, nn.Linear) and linear.out_features == classes
    out = model(x, mode="soft", tau=1.0)
    assert out["left"].shape == (4, 10) and out["sum_parity"].shape == (4, 2)
    assert all(torch.isfinite(tasks[t].loss(out[t], targets[t])) for t in tasks)


def test_build_model_checks_trunk_output(tmp_path: Path) -> None:
    text = TINY_YAML.replace("trunk_output: block", "trunk_output: blok")
    path = write(tmp_path, text)
    cfg = load_config(path)  # the graph is only known at build time
    with pytest.raises(ConfigError) as info:
        build_model(cfg)
    assert str(info.value).startswith(f"{path}:{line_of(text, 'blok')}: backbone.trunk_output: 'blok'")
    assert "did you mean 'block'" in str(info.value)


def initialised_state(model: automtl.SuperModel) -> dict[str, torch.Tensor]:
    """The state dict once what build only allocates is initialised (as the Searcher does, seeded)."""
    torch.manual_seed(123)
    return model.materialize().state_dict()


def test_build_model_is_seeded_and_leaves_the_global_rng(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, TINY_YAML))
    state = torch.get_rng_state()
    a, b = build_model(cfg), build_model(cfg)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb = initialised_state(a), initialised_state(b)
    assert all(torch.equal(v, sb[k]) for k, v in sa.items())
    other = initialised_state(build_model(dataclasses.replace(cfg, seed=1)))
    assert not all(torch.equal(v, other[k]) for k, v in sa.items())


def test_hand_made_config_builds() -> None:
    cfg = RunConfig(BackboneConfig("tiny_cnn", (3, 16, 16), "block"), {"depth": TaskConfig("depth")},
                    DataConfig(options={"n": 4}), SearchConfig(), device="cpu")
    assert cfg.search.device == "cpu" and len(build_dataset(cfg)) == 4
    assert build_model(cfg)(torch.zeros(2, 3, 16, 16), mode="soft", tau=1.0)["depth"].shape == (2, 1, 16, 16)


# the demo --------------------------------------------------------------------------------------


def test_demo_config_builds_the_demo_model() -> None:
    cfg = demo_config()
    d = cfg.to_dict()
    assert d["backbone"] == {"name": "resnet18", "input_shape": [3, 32, 32], "trunk_output": "layer2",
                             "bn": "follow", "skip": True}
    assert list(d["tasks"]) == ["segmentation", "depth", "normals"]
    assert all(t["head"] == "dense" and t["hidden_channels"] == 32 for t in d["tasks"].values())
    assert d["data"] == {"name": "synthetic_scenes", "images": 500, "size": 32}
    s = cfg.search
    assert (s.warmup_steps, s.search_iterations, s.finetune_steps, s.batch_size, s.eval_batch_size,
            s.tau_interval, s.seed) == (60, 40, 80, 16, 64, 10, 0)
    assert cfg.baselines == ("independent", "all-shared")
    model = build_model(cfg)
    # what automtl/demo.py's make() builds, after its torch.manual_seed(seed)
    torch.manual_seed(0)
    graph = automtl.compile("resnet18", (3, 32, 32))
    tasks = {"segmentation": Segmentation("segmentation", 4), "depth": Depth("depth"), "normals": Normals("normals")}
    probe = automtl.build(graph, {t: nn.Identity() for t in tasks}, trunk_output="layer2", check_heads=False)
    shape = probe.graph[probe.graph.outputs[0]].shape
    heads = {t: dense_head(shape[1], tasks[t].out_channels, 32 // shape[2], hidden_channels=32) for t in tasks}
    reference = automtl.build(graph, heads, trunk_output="layer2", bn="follow")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == count(reference)
    state, ref_state = initialised_state(model), initialised_state(reference)
    assert state.keys() == ref_state.keys()
    assert all(torch.equal(v, ref_state[k]) for k, v in state.items())  # the same initial weights, too


def test_demo_config_overrides() -> None:
    cfg = demo_config(backbone="tiny_cnn", trunk_output="block", size=16, images=20, warmup_steps=1,
                      search_iterations=2, finetune_steps=3, seed=4)
    assert cfg.backbone.name == "tiny_cnn" and cfg.backbone.trunk_output == "block"
    assert cfg.backbone.input_shape == (3, 16, 16) and cfg.data.options == {"n": 20, "size": 16}
    assert (cfg.search.warmup_steps, cfg.search.search_iterations, cfg.search.finetune_steps) == (1, 2, 3)
    assert cfg.seed == cfg.search.seed == 4 and build_dataset(cfg).seed == 4
    with pytest.raises(TypeError):
        demo_config(epochs=3)  # type: ignore[call-arg]
