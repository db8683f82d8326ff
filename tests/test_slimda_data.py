"""SlimDA's generated domain pairs: printed -> handwritten digits, grey -> coloured striped shapes."""

from __future__ import annotations

import pytest
import torch

from automtl.train.domain_shift import SHAPES, FontDigits, HandDigits, domain_shift_shapes, render_shapes


def test_digit_pair_items_and_halves() -> None:
    src, adapt, test = FontDigits(20, seed=0), HandDigits("adapt"), HandDigits("test")
    x, y = src[0]
    assert x.shape == (1, 8, 8) and 0 <= float(x.min()) and float(x.max()) <= 1 and 0 <= int(y["digit"]) < 10
    assert len(adapt) + len(test) == 1797 and not torch.equal(adapt.x[:5], test.x[:5])


def test_shapes_are_balanced_deterministic_and_shifted() -> None:
    x, y = render_shapes(60, 3, "source")
    assert x.shape == (60, 3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.bincount(y, minlength=len(SHAPES)).tolist() == [10] * len(SHAPES)
    again, _ = render_shapes(60, 3, "source")
    assert torch.equal(x, again) and not torch.equal(x, render_shapes(60, 4, "source")[0])
    t, _ = render_shapes(60, 3, "target")
    # the source is grey (equal channels up to noise); the target is coloured: its channels differ
    assert float((x - x.mean(1, keepdim=True)).abs().mean()) < 0.05 < float((t - t.mean(1, keepdim=True)).abs().mean())
    # every shape class looks different: the mean source images of two classes are not the same picture
    means = torch.stack([x[y == k].mean(0) for k in range(len(SHAPES))])
    apart = torch.cdist(means.flatten(1), means.flatten(1)).masked_fill(torch.eye(len(SHAPES)).bool(), 9)
    assert float(apart.min()) > 0.5
    with pytest.raises(ValueError, match="domain must be 'source' or 'target'"):
        render_shapes(4, 0, "other")


def test_the_shape_pair_trains_a_slimda_bank() -> None:
    from torch import nn

    from automtl.model.width import build_slim_classifier
    from automtl.search.slimda import SlimDAConfig, SlimDASearcher
    from automtl.train.tasks import Classification

    source, target, test = domain_shift_shapes(48, seed=0, n_target=32, n_test=40)
    assert len(source) == 48 and len(target) == 32 and len(test) == 40 and set(test[0][1]) == {"shape"}
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten())
    model = build_slim_classifier(net, len(SHAPES), input_shape=(3, 16, 16), task="shape")
    cfg = SlimDAConfig(steps=2, batch_size=8, eval_batch_size=16, quiet=True, calibration_batches=1)
    s = SlimDASearcher(model, {"shape": Classification("shape", len(SHAPES))}, (source, target, test), cfg)
    assert s.run() and len(s.history["train"]) == 2
    assert 0.0 <= s.accuracy(model.trunk.full()) <= 1.0
