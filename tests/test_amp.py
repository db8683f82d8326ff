"""Mixed precision (``SearchConfig.amp``): the steps run under autocast, the results stay close to
float32, and a float16 run's grad scaler is part of its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_search import Labelled, Plain
from torch import nn

from automtl.model.supermodel import build
from automtl.search.searcher import SearchConfig, Searcher
from automtl.train.tasks import Segmentation

SHIFTS = {"a": 0, "b": 1}
CONFIG = dict(warmup_steps=4, search_iterations=2, finetune_steps=2, batch_size=8, eval_batches=1, quiet=True, seed=2)


def make(**overrides) -> Searcher:
    torch.manual_seed(0)
    model = build(Plain(layers=3), {t: nn.Identity() for t in SHIFTS}, input_shape=(3, 8, 8), skip=True)
    return Searcher(model, {t: Segmentation(t, 3) for t in SHIFTS}, Labelled(48, SHIFTS, seed=1),
                    SearchConfig(**{**CONFIG, **overrides}))


def test_bf16_autocast_runs_close_to_float32() -> None:
    full, half = make(), make(amp="bf16")
    seen = []
    conv = next(m for m in half.model.modules()
                if getattr(m, "weight", None) is not None and m.weight.dim() >= 4 and m.weight.shape[-3] == 3)
    hook = conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    full.run()
    r_half = half.run()
    hook.remove()
    assert torch.bfloat16 in seen  # the convolutions really ran in bfloat16
    a = [r["total"] for r in full.history["warmup"] + full.history["search"]]
    b = [r["total"] for r in half.history["warmup"] + half.history["search"]]
    assert all(torch.isfinite(torch.tensor(b))) and a != b
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True)) < 0.05
    assert all(p.dtype == torch.float32 for p in r_half.model.parameters())  # weights stay float32
    assert all(torch.isfinite(torch.tensor(list(r_half.losses.values()))))


def test_fp16_scaler_is_checkpointed(tmp_path: Path) -> None:
    s = make(amp="fp16")
    assert s.scalers["weights"] is not None and s.scalers["policy"] is not None
    s.run(stop_after=5, checkpoint=tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert set(state["scalers"]) == {"weights", "policy"}
    assert state["scalers"]["weights"]["scale"] == s.scalers["weights"].get_scale()
    resumed = Searcher.resume(tmp_path / "c.pt", make(amp="fp16").model, {t: Segmentation(t, 3) for t in SHIFTS},
                              Labelled(48, SHIFTS, seed=1))
    assert resumed.scalers["weights"].get_scale() == s.scalers["weights"].get_scale()
    assert resumed.run() is not None


def test_amp_value_is_checked() -> None:
    with pytest.raises(ValueError, match="amp must be None, 'bf16' or 'fp16'"):
        SearchConfig(amp="fp8")
