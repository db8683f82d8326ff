"""Reports of a derived model: params, FLOPs, the baseline of separate backbones, ratios and sharing,
computed by hand on tiny_cnn, and the generated code."""

from __future__ import annotations

import pytest
from derive_helpers import (
    n_params,
    tiny,
)
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")


# --- reports ---------------------------------------------------------------------------------------
def test_report_by_hand_on_tiny_cnn() -> None:
    """Params, FLOPs, baseline, ratios and sharing of a mixed architecture, computed by hand."""
    heads = {"a": nn.Sequential(nn.Linear(10, 3)), "b": nn.Sequential(nn.Linear(10, 2))}
    model = tiny("follow", heads=heads)
    arch = model.uniform_architecture("shared")
    arch.choices["block.conv1"].update(a="specific", b="shared")
    arch.choices["block.conv2"].update(a="skip", b="specific")  # an identity skip for a
    derived = model.derive(arch)
    report = derived.report()
    # tiny_cnn at 1x3x32x32: per-operator params and FLOPs (a multiply-add counts as 2)
    P = {"conv1": 216, "bn1": 16, "conv2": 1152, "bn2": 32, "block.conv1": 2304, "block.bn1": 32,
         "block.conv2": 2304, "block.bn2": 32, "fc": 170}
    F = {"conv1": 442_368, "bn1": 16_384, "relu1": 8192, "conv2": 589_824, "bn2": 8192, "relu2": 4096,
         "block.conv1": 1_179_648, "block.bn1": 8192, "block.relu1": 4096, "block.conv2": 1_179_648,
         "block.bn2": 8192, "add": 4096, "block.relu2": 4096, "avgpool": 4096, "flatten": 0, "fc": 320}
    assert model.graph.params == sum(P.values()) == 6258
    assert model.graph.flops == sum(F.values()) == 3_461_440
    head_p, head_f = {"a": 33, "b": 22}, {"a": 2 * 10 * 3, "b": 2 * 10 * 2}
    stem_p = P["conv1"] + P["bn1"] + P["conv2"] + P["bn2"]
    stem_f = sum(F[k] for k in ("conv1", "bn1", "relu1", "conv2", "bn2", "relu2"))
    tail_f = sum(F[k] for k in ("block.bn1", "block.relu1", "block.bn2", "add", "block.relu2", "avgpool", "fc"))
    # a: block.conv1 specific, block.conv2 skipped (its BN follows: the per-task skip bank)
    # b: block.conv1 shared, block.conv2 specific
    per_task = {
        "a": {"params": stem_p + P["block.conv1"] + 2 * 32 + P["fc"] + head_p["a"],
              "flops": stem_f + F["block.conv1"] + tail_f + head_f["a"]},
        "b": {"params": stem_p + P["block.conv1"] + P["block.conv2"] + 2 * 32 + P["fc"] + head_p["b"],
              "flops": stem_f + F["block.conv1"] + F["block.conv2"] + tail_f + head_f["b"]},
    }
    assert report["tasks"] == ["a", "b"]
    assert report["per_task"] == per_task
    total_p = stem_p + 2 * P["block.conv1"] + P["block.conv2"] + 4 * 32 + P["fc"] + sum(head_p.values())
    total_f = stem_f + 2 * F["block.conv1"] + F["block.conv2"] + 2 * tail_f + sum(head_f.values())
    assert report["total"] == {"params": total_p, "flops": total_f}
    assert total_p == n_params(derived)
    separate = {"params": 2 * 6258 + 55, "flops": 2 * 3_461_440 + 100}
    assert report["separate"] == separate
    assert report["params_ratio"] == pytest.approx(total_p / separate["params"])
    assert report["flops_ratio"] == pytest.approx(total_f / separate["flops"])
    assert report["shared_fraction"] == pytest.approx(5 / 8)  # conv1, conv2 for both; block.conv1 for b
    sharing = report["sharing"]
    assert sharing["conv1"] == sharing["relu2"] == ["a+b"]
    assert sharing["block.conv1"] == ["a", "b"] and sharing["block.conv2"] == ["b"]
    assert sharing["block.bn2"] == ["a", "b"] and sharing["fc"] == ["a", "b"]


def test_all_shared_report_is_one_backbone() -> None:
    model = tiny("follow", tasks=2, heads={"a": nn.Sequential(nn.Linear(10, 3)), "b": nn.Sequential(nn.Linear(10, 2))})
    report = model.derive(model.uniform_architecture("shared")).report()
    assert report["total"] == {"params": 6258 + 55, "flops": 3_461_440 + 100}
    assert report["per_task"] == {"a": {"params": 6258 + 33, "flops": 3_461_440 + 60},
                                  "b": {"params": 6258 + 22, "flops": 3_461_440 + 40}}
    assert report["flops_ratio"] == pytest.approx((3_461_440 + 100) / (2 * 3_461_440 + 100))
    assert set(report["sharing"]) >= {"conv1", "fc", "head.a.0", "head.b.0"}
    assert report["shared_fraction"] == 1.0


def test_code_is_readable() -> None:
    model = tiny("follow", tasks=2)
    arch = model.uniform_architecture("shared")
    arch.choices["block.conv2"]["t1"] = "specific"
    code = model.derive(arch).code
    print(code)
    assert "gates" not in code and "mtl" not in code and "tile_tasks" not in code
    assert "self.conv1(x)" in code and "self.block_conv2_t1_(" in code and "torch.nn.functional.relu(" in code
    assert "return (" in code
    assert len(code.splitlines()) < 40
