"""The one loop: strategies by name, step hooks, the Trainer, resuming registered state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import automtl
from automtl.search import STRATEGIES, SearchConfig, Searcher, StepInfo, TrainConfig, Trainer, get_strategy
from automtl.search.loop import Loop
from automtl.train.data import MultiDigits
from automtl.train.tasks import Classification


def _setup() -> tuple[automtl.SuperModel, dict, MultiDigits]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    data = MultiDigits(96, seed=0, size=8, tasks=("left", "sum_parity"))
    classes = {t: MultiDigits.NUM_CLASSES[t] for t in data.tasks}
    tasks = {t: Classification(t, n) for t, n in classes.items()}
    heads = {t: nn.Linear(8, n) for t, n in classes.items()}
    return automtl.build(net, heads, input_shape=(1, 8, 16)), tasks, data


def test_strategies_by_name() -> None:
    assert get_strategy("automtl").loop is Searcher and get_strategy("automtl").options is SearchConfig
    assert issubclass(SearchConfig, TrainConfig) and all(issubclass(s.loop, Loop) for s in STRATEGIES.values())
    with pytest.raises(ValueError, match="unknown search strategy .nope.; known: automtl"):
        get_strategy("nope")


def test_step_hook_sees_each_task_loss_and_its_gradient_before_weighting() -> None:
    model, tasks, data = _setup()
    seen: list[tuple[str, dict[str, float], dict[str, torch.Tensor], int]] = []

    def hook(info: StepInfo) -> None:
        if info.losses:
            size = sum(p.numel() for p in info.shared if p.requires_grad)
            seen.append((info.stage, {t: float(v.detach()) for t, v in info.losses.items()}, info.task_gradients(),
                         size))

    s = Searcher(model, tasks, data, SearchConfig(warmup_steps=2, search_iterations=1, finetune_steps=0,
                                                  batch_size=8, quiet=True))
    s.step_hooks.append(hook)
    s.warmup()
    assert [st for st, _, _, _ in seen] == ["warmup", "warmup"]
    _, losses, grads, n_shared = seen[0]
    assert set(losses) == set(grads) == set(model.task_names)
    assert losses == {t: pytest.approx(s.history["warmup"][0]["loss"][t]) for t in losses}
    assert all(g.shape == (n_shared,) and g.abs().sum() > 0 for g in grads.values())
    a, b = grads.values()
    assert not torch.allclose(a, b)  # two tasks, two different gradients of the same trunk


def test_trainer_trains_a_derived_model_and_logs() -> None:
    model, tasks, data = _setup()
    derived = model.derive(model.uniform_architecture("shared"))
    before = [p.detach().clone() for p in derived.parameters()]
    trainer = Trainer(derived, tasks, data, TrainConfig(batch_size=8, quiet=True, weighting="pcgrad"))
    out = trainer.train(5)
    assert out is derived and not out.training
    assert len(trainer.history["train"]) == 5 and all(r["total"] > 0 for r in trainer.history["train"])
    assert any(not torch.equal(a, b) for a, b in zip(before, derived.parameters(), strict=True))
    ev = trainer.validate()
    assert set(ev["metrics"]) == set(model.task_names)


def test_trainer_resumes_exactly(tmp_path: Path) -> None:
    def run(stop: int | None) -> list[torch.Tensor]:
        model, tasks, data = _setup()
        derived = model.derive(model.uniform_architecture("shared"))
        t = Trainer(derived, tasks, data, TrainConfig(batch_size=8, quiet=True))
        t.steps = 6
        t.progress = {"stage": "train", "step": 0}
        if stop is not None:
            assert not t.run_stages(stop_after=stop, checkpoint=tmp_path / "c.pt")
            model, tasks, data = _setup()
            derived = model.derive(model.uniform_architecture("shared"))
            t = Trainer(derived, tasks, data, TrainConfig(batch_size=8, quiet=True))
            t.steps = 6
            from automtl.search.checkpoint import load

            t.load_state_dict(load(tmp_path / "c.pt"))
        assert t.run_stages()
        return [p.detach().clone() for p in t.model.parameters()]

    for a, b in zip(run(None), run(3), strict=True):
        assert torch.equal(a, b)
