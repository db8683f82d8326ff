"""Config guards: search strategies, hostile files, capped messages, late errors found at load, memory and
the one-line error of the command line. User factories are in test_config_factories.py, fuzzing in
test_config_fuzz.py."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
from pathlib import Path

import pytest
import torch
from config_samples import TINY
from test_config import line_of, load_error, write

from automtl.app import cli
from automtl.app.config import (
    ConfigError,
    RunConfig,
    build_model,
    dump_config,
    load_config,
    resources,
    strategy_options,
)
from automtl.app.config.strategies import strategy_names
from automtl.search import SearchConfig

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
