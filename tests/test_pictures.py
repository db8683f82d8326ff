"""Pictures (DESIGN §7): valid PNGs of the expected size, the Jaccard matrix by hand, bad input."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("matplotlib")
np = pytest.importorskip("numpy")

from automtl.app.pictures import (  # noqa: E402
    _label_step,
    _sharing_size,
    _similarity_size,
    policy_picture,
    render_all,
    sharing_picture,
    similarity_matrix,
    task_similarity,
    training_curves,
)
from automtl.model.architecture import Architecture  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DPI = 50  # small pictures keep the tests fast; sizes still follow figsize x dpi

# Shared sets: a = {n1, n2, n3, n5}, b = {n1, n2, n4}, c = {n1, n3}
CHOICES = {
    "n1": {"a": "shared", "b": "shared", "c": "shared"},
    "n2": {"a": "shared", "b": "shared", "c": "specific"},
    "n3": {"a": "shared", "b": "skip", "c": "shared"},
    "n4": {"a": "specific", "b": "shared", "c": "skip"},
    "n5": {"a": "shared", "b": "specific", "c": "specific"},
}


def arch(choices: dict[str, dict[str, str]] | None = None, tasks: tuple[str, ...] = ("a", "b", "c")) -> Architecture:
    return Architecture("digest", list(tasks), {}, CHOICES if choices is None else choices)


def history() -> dict[str, list[dict[str, Any]]]:
    """A SearchResult-shaped history: warm-up 6 steps, search 3 iterations (2 weight + 1 policy step),
    a derive record, fine-tune 4 steps, validation at the end of each stage and mid fine-tune."""
    h: dict[str, list[dict[str, Any]]] = {"warmup": [], "search": [], "derive": [{"method": "argmax"}],
                                          "finetune": [], "val": []}
    for s in range(6):
        h["warmup"].append({"step": s, "loss": {"a": 2.0 - 0.1 * s, "b": 1.5, "c": None if s == 2 else 1.0}})
    h["val"].append({"stage": "warmup", "step": 6, "loss": {"a": 1.5, "b": 1.4, "c": 1.0}, "metrics": {}})
    w = 6
    for it in range(3):
        for _ in range(2):
            h["search"].append({"iteration": it, "phase": "weights", "step": w, "loss": {"a": 1.2, "b": 1.1, "c": 0.9}})
            w += 1
        h["search"].append({"iteration": it, "phase": "policy", "step": it, "loss": {"a": 1.3, "b": 1.2, "c": 0.8}})
    h["val"].append({"stage": "search", "step": 3, "loss": {"a": 1.1, "b": 1.0, "c": 0.9}, "metrics": {}})
    for s in range(4):
        h["finetune"].append({"step": s, "loss": {"a": 0.8 - 0.1 * s, "b": 0.7, "c": 0.6}})
    h["val"].append({"stage": "finetune", "step": 1, "loss": {"a": 0.7, "b": 0.7, "c": 0.6}, "metrics": {}})
    h["val"].append({"stage": "finetune", "step": 4, "loss": {"a": 0.6, "b": 0.6, "c": float("nan")}, "metrics": {}})
    return h


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of a valid PNG file."""
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    from matplotlib.image import imread

    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img.shape[1], img.shape[0]


def expected(size: tuple[float, float], dpi: int) -> tuple[int, int]:
    return round(size[0] * dpi), round(size[1] * dpi)


# --- sharing picture ------------------------------------------------------------------------------


def test_sharing_picture_is_a_png_of_figsize_times_dpi(tmp_path: Path) -> None:
    out = sharing_picture(arch(), tmp_path / "sub" / "sharing.png", dpi=DPI)
    assert out == tmp_path / "sub" / "sharing.png"
    size = _sharing_size(5, 3, 2)
    assert size[0] == 6.0  # five nodes: the minimum width
    assert png_size(out) == expected(size, DPI)


def test_sharing_picture_custom_order_and_title(tmp_path: Path) -> None:
    out = sharing_picture(arch(), tmp_path / "s.png", order=["n5", "n4", "n3", "n2", "n1"], title="mine", dpi=DPI)
    assert png_size(out) == expected(_sharing_size(5, 3, 2), DPI)
    with pytest.raises(ValueError, match="'zz'"):
        sharing_picture(arch(), tmp_path / "x.png", order=["n1", "n2", "n3", "n4", "zz"])
    with pytest.raises(ValueError, match="missing \\['n5'\\]"):
        sharing_picture(arch(), tmp_path / "x.png", order=["n1", "n2", "n3", "n4"])


def test_sharing_width_scales_with_nodes_within_limits() -> None:
    small, resnet50, huge = (_sharing_size(n, 3, 20)[0] for n in (5, 53, 500))
    assert small == 6.0 and 6.0 < resnet50 <= 22.0 and huge == 22.0
    assert _label_step(53, resnet50) == 1  # every ResNet-50 conv is named
    assert _label_step(500, huge) > 1  # a very long backbone names every k-th node


# --- similarity -----------------------------------------------------------------------------------


def test_jaccard_matrix_by_hand(tmp_path: Path) -> None:
    out, m = similarity_matrix(arch(), tmp_path / "sim.png", dpi=DPI)
    # a∩b = {n1, n2}, a∪b = all 5; a∩c = {n1, n3}, a∪c = {n1, n2, n3, n5}; b∩c = {n1}, b∪c = {n1..n4}
    want = np.array([[1.0, 0.4, 0.5], [0.4, 1.0, 0.25], [0.5, 0.25, 1.0]])
    np.testing.assert_allclose(m, want)
    np.testing.assert_allclose(m, m.T)
    assert png_size(out) == expected(_similarity_size(3, 1), DPI)


def test_jaccard_of_tasks_that_share_nothing() -> None:
    choices = {n: {"a": per["a"], "d": "specific", "e": "skip"} for n, per in CHOICES.items()}
    m = task_similarity(arch(choices, ("a", "d", "e")))
    assert m[1, 2] == m[2, 1] == 1.0  # both sets empty: defined as 1
    assert m[0, 1] == m[0, 2] == 0.0
    np.testing.assert_allclose(np.diag(m), 1.0)


# --- training curves ------------------------------------------------------------------------------


def test_training_curves_png(tmp_path: Path) -> None:
    out = training_curves(history(), tmp_path / "curves.png", dpi=DPI)
    assert png_size(out) == expected((10.0, 1.3 + 2.1 * 3), DPI)
    one = training_curves(history(), tmp_path / "one.png", tasks=["b"], dpi=DPI)
    assert png_size(one) == expected((10.0, 3.4), DPI)


def test_training_curves_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no training records"):
        training_curves({}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="no training records.*derive"):
        training_curves({"warmup": [], "derive": [{"method": "argmax"}], "val": []}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="'zz'"):
        training_curves(history(), tmp_path / "c.png", tasks=["a", "zz"])
    with pytest.raises(ValueError, match=r"history\['warmup'\]\[0\]"):
        training_curves({"warmup": [{"loss": {"a": 1.0}}]}, tmp_path / "c.png")


# --- policy -----------------------------------------------------------------------------------------


def policy_history(steps: int = 6) -> dict[str, Any]:
    """n1 decides for both tasks (the gap grows), n2 stays undecided for task b."""
    recs = []
    for k in range(steps):
        recs.append({"step": k + 1,
                     "gap": {"n1": {"a": 0.3 * k, "b": 0.2 * k}, "n2": {"a": 0.25 * k, "b": 0.01}},
                     "entropy": {"n1": {"a": 1.0 - 0.1 * k, "b": 1.0 - 0.08 * k}, "n2": {"a": 0.9, "b": 1.09}}})
    return {"policy": recs}


def test_policy_picture_needs_policy_records(tmp_path: Path) -> None:
    assert policy_picture(policy_history(), tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="no policy records"):
        policy_picture({"policy": []}, tmp_path / "q.png")


def test_policy_picture_title_says_how_many_are_undecided(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import automtl.app.pictures as pictures

    titles: list[str] = []
    real = pictures._save

    def spy(fig, path):  # noqa: ANN001, ANN202
        titles.append(fig._suptitle.get_text())
        return real(fig, path)

    monkeypatch.setattr(pictures, "_save", spy)
    policy_picture(policy_history(), tmp_path / "p.png")
    assert "1 of 4 (node, task) choices" in titles[0]


# --- render_all -----------------------------------------------------------------------------------


def test_render_all(tmp_path: Path) -> None:
    paths = render_all(arch(), tmp_path / "arch")
    assert set(paths) == {"sharing", "similarity"}
    assert paths["sharing"].name == "sharing.png" and paths["similarity"].name == "similarity.png"
    result = SimpleNamespace(architecture=arch(), history=history())
    paths = render_all(result, tmp_path / "result")
    assert set(paths) == {"sharing", "similarity", "curves"}
    result = SimpleNamespace(architecture=arch(), history={**history(), **policy_history()})
    assert set(render_all(result, tmp_path / "policy")) == {"sharing", "similarity", "curves", "policy"}
    for p in paths.values():
        assert p.parent == tmp_path / "result" and p.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(TypeError, match="Architecture or a SearchResult"):
        render_all({"choices": {}}, tmp_path)


# --- bad architectures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        ({}, "no choice nodes"),
        ({**CHOICES, "n3": {"a": "shared", "b": "shard", "c": "skip"}}, "node 'n3', task 'b': unknown branch 'shard'"),
        ({**CHOICES, "n2": {"a": "shared", "b": "shared"}}, "node 'n2' gives no branch for task 'c'"),
        ({**CHOICES, "n1": {"a": "shared", "b": "shared", "c": "shared", "x": "skip"}}, "names task 'x'"),
    ],
)
def test_bad_architecture(tmp_path: Path, choices: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sharing_picture(arch(choices), tmp_path / "s.png")
    with pytest.raises(ValueError, match=message):
        similarity_matrix(arch(choices), tmp_path / "m.png")
    assert not (tmp_path / "s.png").exists()


def test_missing_matplotlib_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"automtl\[data\]"):
        sharing_picture(arch(), tmp_path / "s.png")
