"""Checkpoint and exact resume of a search (:mod:`automtl.search.checkpoint`).

A search stopped after ``k`` steps, saved to disk, loaded into a fresh model and searcher (with
the global RNG disturbed in between) and resumed must reach the same bits at step ``n`` as an
uninterrupted run: logits, weights, optimiser states, loss-weighting state and history, then the
same fine-tuned model. ``k`` lies inside warm-up, on the warm-up/search boundary and inside the
policy search (mid-round). The tiny search crosses epochs of both streams and uses DWA, whose
statistics follow the epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_search import Labelled, Plain
from torch import nn

from automtl.model.supermodel import build
from automtl.search.checkpoint import FORMAT, VERSION
from automtl.search.searcher import SearchConfig, Searcher
from automtl.train.tasks import Segmentation

SHIFTS = {"a": 0, "b": 1}
# 64 items: weights/policy splits of 26 -> 3 batches of 8 per epoch; 4 + 4 * (1 + 2) = 16 steps
CONFIG = dict(warmup_steps=4, search_iterations=4, weight_steps_per_iter=1, policy_steps_per_iter=2,
              finetune_steps=3, batch_size=8, eval_every=2, eval_batches=1, weighting="dwa", tau_interval=2,
              tau_decay=0.5, quiet=True, seed=3)
TOTAL = 4 + 4 * 3


pytestmark = pytest.mark.usefixtures("deterministic")


def make(layers: int = 3, init_seed: int = 0, **overrides: Any) -> Searcher:
    """A fresh tiny searcher; ``init_seed`` sets the model's initial weights."""
    torch.manual_seed(init_seed)
    model = build(Plain(layers=layers), {t: nn.Identity() for t in SHIFTS}, input_shape=(3, 8, 8), skip=True)
    tasks = {t: Segmentation(t, 3) for t in SHIFTS}
    return Searcher(model, tasks, Labelled(64, SHIFTS, seed=1), SearchConfig(**{**CONFIG, **overrides}))


def snapshot(s: Searcher) -> dict[str, Any]:
    return {"model": {k: v.clone() for k, v in s.model.state_dict().items()},
            "logits": s.model.policy.logits.detach().clone(),
            "weight_opt": s.weight_opt.state_dict(), "policy_opt": s.policy_opt.state_dict(),
            "weighting": {k: v.clone() for k, v in s.weighting.state_dict().items()},
            "steps": (s.weight_step, s.policy_step, s.tau(), dict(s.progress)),
            "history": {k: list(v) for k, v in s.history.items()}, "rng": torch.get_rng_state()}


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal structures; tensors bit for bit (``torch.equal``)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"  # NaN == NaN here


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The uninterrupted run: its state after all TOTAL steps, then its fine-tuned model."""
    s = make()
    assert s.run(stop_after=TOTAL) is None
    at_n = snapshot(s)
    result = s.run()
    assert result is not None
    return at_n, {k: v.clone() for k, v in result.model.state_dict().items()}


@pytest.mark.parametrize("k", [2, 4, 9])  # inside warm-up, at its end, inside the search (mid-round)
def test_resume_is_bit_identical(k: int, tmp_path: Path, reference: tuple[dict[str, Any], dict]) -> None:
    at_n, finetuned = reference
    path = tmp_path / "search.pt"
    first = make()
    assert first.run(stop_after=k, checkpoint=path) is None
    assert first.steps_done() == k and path.exists()
    stage = first.progress["stage"]
    assert stage == ("warmup" if k < 4 else "search")
    del first

    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint must restore it
    fresh = make(init_seed=99)  # other initial weights: the checkpoint must overwrite them
    resumed = Searcher.resume(path, fresh.model, fresh.tasks, Labelled(64, SHIFTS, seed=1))
    assert resumed.steps_done() == k and resumed.progress["stage"] == stage
    torch.manual_seed(777)
    resumed = Searcher.resume(path, fresh.model, fresh.tasks, Labelled(64, SHIFTS, seed=1))  # twice is harmless
    assert resumed.run(stop_after=TOTAL) is None
    got = snapshot(resumed)
    assert torch.equal(got["logits"], at_n["logits"])
    assert_same(got, at_n, "state")
    result = resumed.run()
    assert result is not None and resumed.progress["stage"] == "done"
    assert_same({k: v for k, v in result.model.state_dict().items()}, finetuned, "finetuned")


def test_periodic_checkpoints_change_nothing_and_resume(tmp_path: Path, reference: tuple[dict, dict]) -> None:
    """``run(checkpoint_every=5)`` saves after steps 5, 10 and 15 and reaches the same bits; its last
    checkpoint resumes to the same end."""
    at_n, finetuned = reference
    path = tmp_path / "search.pt"
    s = make()
    saved = []
    real = s.save_checkpoint
    s.save_checkpoint = lambda p: (saved.append(s.steps_done()), real(p))  # type: ignore[method-assign]
    assert s.run(stop_after=TOTAL, checkpoint=path, checkpoint_every=5) is None
    assert saved == [5, 10, 15, 16]  # the periodic ones, then the one stop_after asks for
    assert_same(snapshot(s), at_n, "state")
    s = make()
    assert s.run(stop_after=15, checkpoint=path, checkpoint_every=5) is None
    resumed = Searcher.resume(path, make(init_seed=3).model, s.tasks, Labelled(64, SHIFTS, seed=1))
    result = resumed.run(checkpoint=path, checkpoint_every=5)
    assert result is not None
    assert_same(dict(result.model.state_dict()), finetuned, "finetuned")


def test_stopping_early_changes_nothing_and_in_memory_state_resumes(reference: tuple[dict, dict]) -> None:
    at_n, _ = reference
    s = make()
    s.run(stop_after=7)
    state = s.state_dict()
    assert state["format"] == FORMAT and state["version"] == VERSION and state["progress"]["step"] == 3
    other = make(init_seed=5)
    other.load_state_dict(state)
    other.run(stop_after=TOTAL)
    assert_same(snapshot(other), at_n, "state")


def test_different_config_or_backbone_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "search.pt"
    make().run(stop_after=3, checkpoint=path)
    with pytest.raises(ValueError, match=r"config differs in \['weight_lr'\]"):
        make(weight_lr=2e-3).load_state_dict(torch.load(path, weights_only=True))
    other = make(weight_lr=2e-3)
    with pytest.raises(ValueError, match=r"weight_lr"):
        Searcher.resume(path, other.model, other.tasks, Labelled(64, SHIFTS, seed=1), other.config)
    deeper = make(layers=4)
    with pytest.raises(ValueError, match=r"backbone"):
        Searcher.resume(path, deeper.model, deeper.tasks, Labelled(64, SHIFTS, seed=1))
    quiet = make(quiet=False)  # a free field
    Searcher.resume(path, quiet.model, quiet.tasks, Labelled(64, SHIFTS, seed=1), quiet.config)


def test_unknown_format_or_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "search.pt"
    make().run(stop_after=1, checkpoint=path)
    state = torch.load(path, weights_only=True)
    for change, message in (({"version": VERSION + 1}, r"unsupported .* version 2"),
                            ({"format": "other.format"}, r"unknown checkpoint format 'other.format'")):
        bad = tmp_path / "bad.pt"
        torch.save({**state, **change}, bad)
        with pytest.raises(ValueError, match=message):
            Searcher.resume(bad, make().model, make().tasks, Labelled(64, SHIFTS, seed=1))
    weights = tmp_path / "weights.pt"
    torch.save(make().model.state_dict(), weights)  # a plain state dict is no checkpoint
    with pytest.raises(ValueError, match=r"not an automtl search checkpoint"):
        Searcher.resume(weights, make().model, make().tasks, Labelled(64, SHIFTS, seed=1))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"not a readable automtl search checkpoint"):
        Searcher.resume(garbage, make().model, make().tasks, Labelled(64, SHIFTS, seed=1))
