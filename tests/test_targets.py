"""Hierarchical training targets keep every stock StarDistData2D behaviour."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from skimage.draw import disk  # noqa: E402
from stardist.models.model2d import StarDistData2D  # noqa: E402

from stardist_hier.hierarchy import ClassHierarchy, HierarchyError  # noqa: E402
from stardist_hier.model.targets import HierStarDistData2D  # noqa: E402


def make_images(n, size=64, seed=0, n_obj=9, classes=(1, 2, 3), p_none=0.15, neg=True):
    rng = np.random.default_rng(seed)
    X, Y, C = [], [], []
    for _ in range(n):
        y = np.zeros((size, size), np.int32)
        for j in range(1, n_obj + 1):
            rr, cc = disk((rng.integers(6, size - 6), rng.integers(6, size - 6)), rng.integers(3, 7), shape=y.shape)
            y[rr, cc] = j
        if neg:
            y[: size // 8, : size // 3] = -1  # an ignore region
        ids = np.unique(y[y > 0])
        C.append({int(k): (None if rng.random() < p_none else int(rng.choice(classes))) for k in ids})
        X.append((rng.normal(0, 0.1, (size, size, 3)) + (y > 0)[..., None]).astype(np.float32))
        Y.append(y)
    return X, Y, C


def flip_augmenter(x, y):
    return np.flip(x, 1).copy(), np.flip(y, 1).copy()


@pytest.mark.parametrize("grid,shape_completion,augment", [((1, 1), False, False), ((2, 2), False, True),
                                                           ((2, 2), True, False), ((4, 4), False, False)])
def test_flat_hierarchy_reproduces_stock_targets(grid, shape_completion, augment):
    X, Y, C = make_images(5)
    kw = dict(batch_size=3, n_rays=8, length=4, patch_size=(48, 48), grid=grid, shape_completion=shape_completion,
              b=8, foreground_prob=0.5, augmenter=flip_augmenter if augment else None)
    stock = StarDistData2D(X, Y, n_classes=3, classes=C, **kw)
    ours = HierStarDistData2D(X, Y, hierarchy=ClassHierarchy.flat(3), label_sets="default", classes=C, **kw)
    for i in range(4):
        np.random.seed(100 + i)
        (xs,), (prob_s, dist_s, cls_s) = stock[i]
        np.random.seed(100 + i)
        (xo,), (prob_o, dist_o, cls_o) = ours[i]
        np.testing.assert_array_equal(xo, xs)
        np.testing.assert_array_equal(prob_o, prob_s)
        np.testing.assert_array_equal(dist_o, dist_s)
        assert cls_o.shape == cls_s.shape[:-1] + (8,)
        # stock's zoom leaves all-zero rows (no class loss) at some edge cells: ours ignores them
        zero_rows = (cls_s == 0).all(-1, keepdims=True)
        np.testing.assert_array_equal(cls_o[..., :4], np.where(zero_rows, -1, cls_s))
        np.testing.assert_array_equal(cls_o[..., 4:], np.broadcast_to([0, 1, 2, 3], cls_o.shape[:-1] + (4,)))
        assert (cls_s == -1).any()  # ignore regions and None classes were exercised


def test_super_class_labels_admit_all_their_leaves():
    h = ClassHierarchy.default()
    X, Y, C = make_images(2, classes=(1, 2, 3, 4), p_none=0, neg=False)
    data = HierStarDistData2D(X, Y, hierarchy=h, label_sets="monusac", classes=C, batch_size=2, n_rays=8, length=1,
                              patch_size=(64, 64), foreground_prob=0)
    monusac = h.label_set("monusac")
    np.random.seed(0)
    idx = data.batch(0)
    _, (_, _, target) = data[0]
    n_out = h.n_classes + 1
    for b, k in enumerate(idx):
        y, classes = Y[k], C[k]  # patch = whole image here
        for inst, cls in classes.items():
            rows = target[b][y == inst][:, :n_out]
            np.testing.assert_array_equal(rows, np.broadcast_to(monusac.membership[cls], rows.shape))
        np.testing.assert_array_equal(target[b][y == 0][:, :n_out], np.broadcast_to(monusac.membership[0], (int((y == 0).sum()), n_out)))
        np.testing.assert_array_equal(target[b][..., n_out:], np.broadcast_to(monusac.leaf_group, target.shape[1:3] + (n_out,)))
    # epithelial (id 1) admits both epithelial leaves
    assert monusac.membership[1, [1, 2]].tolist() == [1, 1] and monusac.membership[1].sum() == 2


def test_mixed_batch_keeps_each_samples_label_set():
    h = ClassHierarchy.default()
    X, Y, C = make_images(4, classes=(1, 2), p_none=0)
    sets = ["monusac", "pannuke", "monuseg", "consep"]
    C[2] = {k: 1 for k in C[2]}  # monuseg has one class: the root
    data = HierStarDistData2D(X, Y, hierarchy=h, label_sets=sets, classes=C, batch_size=4, n_rays=8, length=1,
                              patch_size=(64, 64))
    np.random.seed(1)
    idx = data.batch(0)
    _, (_, _, target) = data[0]
    n_out = h.n_classes + 1
    for b, k in enumerate(idx):
        np.testing.assert_array_equal(target[b, 0, 0, n_out:], h.label_set(sets[k]).leaf_group)


def test_bad_classes_are_reported_with_image_and_label_set():
    h = ClassHierarchy.default()
    X, Y, C = make_images(3, classes=(1, 2), p_none=0)
    kw = dict(hierarchy=h, batch_size=2, n_rays=8, length=1, patch_size=(64, 64))
    missing = [dict(c) for c in C]
    missing[1].pop(next(iter(missing[1])))
    with pytest.raises(ValueError, match=r"image 1 \(label set 'monusac'\): instance id\(s\) \[\d+\] .* no entry"):
        HierStarDistData2D(X, Y, label_sets="monusac", classes=missing, **kw)
    outside = [dict(c) for c in C]
    outside[2][next(iter(outside[2]))] = 9
    with pytest.raises(HierarchyError, match=r"image 2 \(label set 'monusac'\).*\[9\] not in label set 'monusac'"):
        HierStarDistData2D(X, Y, label_sets="monusac", classes=outside, **kw)
    with pytest.raises(HierarchyError, match="unknown label set 'monusak'"):
        HierStarDistData2D(X, Y, label_sets="monusak", classes=C, **kw)
    with pytest.raises(ValueError, match="3 images"):
        HierStarDistData2D(X, Y, label_sets=["monusac"], classes=C, **kw)


def test_careless_classes_get_clear_errors():
    h = ClassHierarchy.default()
    X, Y, C = make_images(2, classes=(1, 2), p_none=0, neg=False)
    kw = dict(hierarchy=h, label_sets="monusac", batch_size=2, n_rays=8, length=1, patch_size=(64, 64))
    first = next(iter(C[1]))
    cases = [
        ({**C[1], first: 0}, ValueError, rf"image 1 \(label set 'monusac'\): class id 0 \(background\) for instance id\(s\) \[{first}\]"),
        ({**C[1], 99: 1}, ValueError, r"image 1 .*entries for instance id\(s\) \[99\] that are not in the mask"),
        ({str(k): v for k, v in C[1].items()}, ValueError, r"image 1 .*must be integers.*JSON.*int\(k\)"),
        ({k: str(v) for k, v in C[1].items()}, ValueError, r"image 1 .*class ids must be integers or None.*JSON"),
        (0, ValueError, r"image 1 .*classes=0 gives every nucleus class 0"),
        (True, ValueError, r"image 1 .*classes must be a dict"),
    ]
    for bad, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            HierStarDistData2D(X, Y, classes=[C[0], bad], **kw)
    HierStarDistData2D(X, Y, classes=[C[0], {k: None for k in C[1]}], **kw)  # unknown classes are fine
    HierStarDistData2D(X, Y, classes=[C[0], 2], **kw)  # one id for all nuclei


def test_class_targets_are_matched_to_the_batch_or_refused():
    h = ClassHierarchy.default()
    X, Y, C = make_images(3, classes=(1, 2), p_none=0)
    data = HierStarDistData2D(X, Y, hierarchy=h, label_sets="monusac", classes=C, batch_size=2, n_rays=8, length=2,
                              patch_size=(48, 48))
    data[0]
    recording = data.augmenter

    def twice(x, y):  # a stock pipeline that passed a sample through the augmenter twice
        recording(x, y)
        return recording(x, y)

    data.augmenter = twice
    with pytest.raises(RuntimeError, match=r"batch 0: .* passed 4 sample\(s\) through the augmenter for a batch of 2"):
        data[0]
    seen = []

    def swapped(x, y):  # ... or in another order than the batch's
        seen.append((x, y))
        out = recording(*seen[0]) if len(seen) == 2 else recording(x, y)
        return (x, y) if len(seen) == 2 else out

    data.augmenter = swapped
    with pytest.raises(RuntimeError, match="not in the batch's order"):
        data[1]


def test_reseed_makes_batches_repeatable():
    h = ClassHierarchy.default()
    X, Y, C = make_images(4, classes=(1, 2), p_none=0)

    class Noise:
        def reseed(self, seed):
            self.rng = np.random.default_rng(seed)

        def __call__(self, x, y):
            return x + self.rng.normal(0, 0.1, x.shape).astype(np.float32), y

    batches = []
    for _ in range(2):
        data = HierStarDistData2D(X, Y, hierarchy=h, label_sets="monusac", classes=C, batch_size=2, n_rays=8, length=3,
                                  patch_size=(48, 48), augmenter=Noise())
        data.reseed(7)
        batches.append([data[i] for i in range(3)])
    for (xa, ya), (xb, yb) in zip(*batches):
        np.testing.assert_array_equal(xa[0], xb[0])
        for a, b in zip(ya, yb):
            np.testing.assert_array_equal(a, b)
