"""Built-in datasets: determinism, target consistency, splits, multi-domain batches and collation."""

from __future__ import annotations

import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from automtl.train import data
from automtl.train.data import MultiDigits, MultiDomain, SyntheticScenes, collate, make_collate, split_dataset
from automtl.train.tasks import Classification, Segmentation


@pytest.fixture(scope="module")
def scenes() -> SyntheticScenes:
    return SyntheticScenes(40, size=48, seed=1, num_classes=5)


def _same(a: tuple, b: tuple) -> bool:
    return (
        torch.equal(a[0], b[0])
        and a[1].keys() == b[1].keys()
        and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    )


# synthetic scenes ------------------------------------------------------------------------------


def test_scenes_are_deterministic_by_seed_and_index() -> None:
    a, b, c = SyntheticScenes(6, seed=3), SyntheticScenes(6, seed=3), SyntheticScenes(6, seed=4)
    for i in reversed(range(6)):  # access order does not matter
        assert _same(a[i], b[i])
    assert _same(a[-1], a[5])
    assert not torch.equal(a[2][0], c[2][0])
    assert not torch.equal(a[1][0], a[2][0])
    with pytest.raises(IndexError):
        a[6]


def test_scene_shapes_dtypes_and_ranges(scenes: SyntheticScenes) -> None:
    x, y = scenes[0]
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32
    assert set(y) == {"segmentation", "depth", "normals", "edges"}
    assert y["segmentation"].shape == (48, 48) and y["segmentation"].dtype == torch.int64
    assert y["depth"].shape == (1, 48, 48) and y["depth"].dtype == torch.float32
    assert y["normals"].shape == (3, 48, 48) and y["normals"].dtype == torch.float32
    assert y["edges"].shape == (1, 48, 48) and y["edges"].dtype == torch.float32
    seen = set()
    for i in range(len(scenes)):
        x, y = scenes[i]
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.02
        seen |= set(y["segmentation"].unique().tolist())
        assert torch.all(y["depth"] > 0)
        assert set(y["edges"].unique().tolist()) <= {0.0, 1.0}
    assert seen == {0, 1, 2, 3, 4}
    only_seg = SyntheticScenes(2, size=16, tasks=["segmentation"])[0][1]
    assert set(only_seg) == {"segmentation"}
    with pytest.raises(ValueError, match="unknown or no tasks"):
        SyntheticScenes(2, tasks=["pose"])


def test_nearer_shapes_occlude_the_background(scenes: SyntheticScenes) -> None:
    for i in range(10):
        _, y = scenes[i]
        seg, depth = y["segmentation"], y["depth"][0]
        shape = seg > 0
        # shapes lie within depth (1, 7.5); the background plane spans about (7.6, 14.4)
        assert torch.all(depth[shape] < 7.5)
        assert torch.all(depth[~shape] > 7.5)


def test_edges_are_the_segmentation_boundaries(scenes: SyntheticScenes) -> None:
    for i in range(10):
        _, y = scenes[i]
        seg = y["segmentation"]
        pad = torch.nn.functional.pad(seg[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
        centre = pad[1:-1, 1:-1]
        neighbours = [pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]]
        boundary = torch.zeros_like(seg, dtype=torch.bool)
        for nb in neighbours:
            boundary |= nb != centre
        assert torch.equal(y["edges"][0].bool(), boundary)
        assert boundary.any() == (seg.unique().numel() > 1)


def test_normals_are_unit_and_follow_the_depth_gradient(scenes: SyntheticScenes) -> None:
    spacing = data.SCENE_WIDTH / scenes.size
    checked = 0
    for i in range(10):
        s = scenes.scene(i)
        n = torch.from_numpy(s["normals"])
        depth = torch.from_numpy(s["depth"][0])
        inst = torch.from_numpy(s["instances"])
        assert torch.allclose(n.norm(dim=0), torch.ones_like(n[0]), atol=1e-6)
        assert torch.all(n[2] < 0)  # facing the camera
        # interior pixels (4-neighbours on one surface): normal ~ (dz/dx, dz/dy, -1), central differences
        gx = (depth[1:-1, 2:] - depth[1:-1, :-2]) / (2 * spacing)
        gy = (depth[2:, 1:-1] - depth[:-2, 1:-1]) / (2 * spacing)
        c = inst[1:-1, 1:-1]
        interior = (
            (inst[1:-1, 2:] == c) & (inst[1:-1, :-2] == c) & (inst[2:, 1:-1] == c) & (inst[:-2, 1:-1] == c)
        )
        expected = torch.stack([gx, gy, -torch.ones_like(gx)])
        expected = expected / expected.norm(dim=0)
        got = n[:, 1:-1, 1:-1]
        assert torch.allclose(got[:, interior], expected[:, interior], atol=1e-6)
        checked += int(interior.sum())
        # normals are not trivial on shapes: curved or tilted surfaces
        on_shapes = n[:, torch.from_numpy(s["segmentation"]) > 0]
        if on_shapes.shape[1] > 20:
            assert on_shapes.std(dim=1).max() > 0.05
    assert checked > 10 * 40 * 40 * 0.5


# multi digits ----------------------------------------------------------------------------------


def test_multidigits_targets_shapes_and_determinism() -> None:
    ds = MultiDigits(50, seed=2)
    x, y = ds[0]
    assert x.shape == (1, 32, 64) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert set(y) == {"left", "right", "sum_parity", "larger"}
    for i in range(len(ds)):
        x, y = ds[i]
        left, right = int(y["left"]), int(y["right"])
        assert y["left"].dtype == torch.int64 and 0 <= left <= 9 and 0 <= right <= 9
        assert int(y["sum_parity"]) == (left + right) % 2
        assert int(y["larger"]) == (0 if left > right else 1 if right > left else 2)
        li = int(ds.left_index[i])
        assert int(ds.pool_labels[li]) == left
        assert torch.equal(x[:, :, :32], ds.pool[li])
    assert _same(ds[7], MultiDigits(50, seed=2)[7])
    other = MultiDigits(50, seed=3)
    assert not all(torch.equal(ds[i][0], other[i][0]) for i in range(10))
    x3, _ = MultiDigits(3, channels=3, size=16)[0]
    assert x3.shape == (3, 16, 32) and torch.equal(x3[0], x3[2])
    with pytest.raises(ValueError, match="split"):
        MultiDigits(3, split="val")


def test_multidigits_train_and_test_share_no_source_digit() -> None:
    train = MultiDigits(400, split="train", seed=0)
    test = MultiDigits(400, split="test", seed=0)
    train_ids = set(train.pool_ids.tolist())
    test_ids = set(test.pool_ids.tolist())
    assert not train_ids & test_ids
    assert len(train_ids) + len(test_ids) == 1797  # every bundled digit is in one split
    used_test = {int(test.pool_ids[j]) for j in torch.cat([test.left_index, test.right_index]).tolist()}
    assert used_test <= test_ids and not used_test & train_ids
    assert set(test.pool_labels.tolist()) == set(range(10))


def test_multidigits_without_scikit_learn_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    data._load_digits.cache_clear()
    data._digit_pool.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install scikit-learn"):
            MultiDigits(4)
    finally:
        data._load_digits.cache_clear()
        data._digit_pool.cache_clear()


# multi-domain and collation --------------------------------------------------------------------


def test_multidomain_items_and_collate() -> None:
    digits = MultiDigits(6, seed=0, size=8)
    plain = TensorDataset(torch.randn(4, 2), torch.arange(4))
    md = MultiDomain({"left": digits, "plain": plain})
    assert len(md) == 6 and len(MultiDomain({"left": digits, "plain": plain}, length="min")) == 4
    item = md[5]
    assert set(item) == {"left", "plain"}
    assert torch.equal(item["left"][0], digits[5][0]) and torch.equal(item["left"][1], digits[5][1]["left"])
    assert torch.equal(item["plain"][1], torch.tensor(1))  # 5 % 4
    batch = collate([md[i] for i in range(3)])
    assert batch["left"][0].shape == (3, 1, 8, 16) and batch["plain"][0].shape == (3, 2)
    assert torch.equal(batch["plain"][1], torch.tensor([0, 1, 2]))
    renamed = MultiDomain({"parity": digits}, target_keys={"parity": "sum_parity"})
    assert torch.equal(renamed[0]["parity"][1], digits[0][1]["sum_parity"])
    with pytest.raises(ValueError, match="empty"):
        MultiDomain({"a": TensorDataset(torch.zeros(0, 1), torch.zeros(0))})


def test_collate_masks_missing_labels_and_never_invents_them() -> None:
    seg_task = Segmentation("seg", 3)
    items = [
        (torch.zeros(3, 2, 2), {"seg": torch.tensor([[0, 1], [2, 1]]), "cls": None}),
        (torch.ones(3, 2, 2), {"seg": None, "cls": None}),
    ]
    with pytest.raises(ValueError, match="collate: task 'seg': some items have no target"):
        collate(items)
    x, y = make_collate({"seg": seg_task.missing_value})(items)
    assert x.shape == (2, 3, 2, 2)
    assert y["cls"] is None  # no label in the whole batch: no loss at all
    assert torch.equal(y["seg"][1], torch.full((2, 2), 255))
    assert Classification("cls", 2).loss(torch.zeros(2, 2), y["cls"]) is None
    pred = torch.randn(2, 3, 2, 2)
    padded = seg_task.loss(pred, y["seg"])
    alone = seg_task.loss(pred[:1], y["seg"][:1])
    assert padded.item() == pytest.approx(alone.item(), rel=1e-6)  # the padded item adds nothing

    loader = DataLoader(SyntheticScenes(5, size=16), batch_size=4, collate_fn=collate)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 16, 16) and yb["normals"].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="different shapes"):
        collate([(torch.zeros(3, 2, 2), {}), (torch.zeros(3, 4, 4), {})])


# splits ----------------------------------------------------------------------------------------


def test_split_is_disjoint_complete_and_deterministic() -> None:
    ds = TensorDataset(torch.arange(101))
    parts = split_dataset(ds, (0.4, 0.4, 0.2), seed=5)
    indices = [list(p.indices) for p in parts]
    assert [len(i) for i in indices] == [40, 41, 20]
    flat = [j for i in indices for j in i]
    assert sorted(flat) == list(range(101))
    assert indices == [list(p.indices) for p in split_dataset(ds, (0.4, 0.4, 0.2), seed=5)]
    assert indices != [list(p.indices) for p in split_dataset(ds, (0.4, 0.4, 0.2), seed=6)]
    partial = split_dataset(ds, (0.5, 0.25), seed=0)
    assert [len(p) for p in partial] == [51, 25]  # boundaries round(50.5), round(75.75)
    assert not set(partial[0].indices) & set(partial[1].indices)


def test_split_errors_name_the_split() -> None:
    ds = TensorDataset(torch.arange(10))
    with pytest.raises(ValueError, match="the 'val' split is empty"):
        split_dataset(ds, (0.5, 0.48, 0.02))
    with pytest.raises(ValueError, match="sum to 1.2 > 1"):
        split_dataset(ds, (0.6, 0.4, 0.2))
    with pytest.raises(ValueError, match="the 'policy' fraction"):
        split_dataset(ds, (0.6, 0.0, 0.2))
    with pytest.raises(ValueError, match="the 'train' split is empty"):
        split_dataset(TensorDataset(torch.arange(1)), (0.1, 0.9), names=("train", "test"))
