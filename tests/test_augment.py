"""The class-aware augmenter: rare-class frequencies, mask alignment, seeding, sampler."""

import numpy as np
import pytest

from stardist_hier.augment import (AugmentConfig, ClassAwareAugmenter, encode_class_ids, find_rare_classes,
                                   oversample_indices, rare_image_indices)


def blobs(n_images=12, size=48, seed=0, rare_every=4):
    """Label images with a few square nuclei; every ``rare_every``-th image holds class 3 (rare)."""
    rng = np.random.default_rng(seed)
    Y, C = [], []
    for k in range(n_images):
        y = np.zeros((size, size), np.int32)
        cls = {}
        for i in range(1, 5):
            r, c = rng.integers(2, size - 10, 2)
            y[r:r + 7, c:c + 7] = i
        for i in np.unique(y[y > 0]):
            cls[int(i)] = 1 if i % 2 else 2
        if k % rare_every == 0:
            cls[int(np.unique(y[y > 0])[0])] = 3
        y[:3, :3] = -1  # an ignore region survives renumbering
        Y.append(y)
        C.append(cls)
    return Y, C


def test_encode_class_ids_keeps_instances_and_classes():
    Y, C = blobs()
    Yc, Cc, stride = encode_class_ids(Y, C)
    for y, c, yc, cc in zip(Y, C, Yc, Cc):
        assert (yc == -1).sum() == (y == -1).sum() and ((yc == 0) == (y == 0)).all()
        # one-to-one renumbering that keeps every instance and its class
        for i, cls in c.items():
            new = np.unique(yc[y == i])
            assert len(new) == 1 and cc[int(new[0])] == cls and int(new[0]) // stride == cls
        assert len(cc) == len(c)


def test_find_rare_classes_and_images():
    Y, C = blobs(12, rare_every=4)
    assert find_rare_classes(C, 0.5) == [3]
    assert rare_image_indices(C, [3]) == [0, 4, 8]
    assert find_rare_classes([{1: 1}], 0.5) == []


def test_rare_class_patches_are_augmented_more_often():
    Y, C = blobs(12, rare_every=4)
    X = [np.stack([y.astype(np.float32)] * 3, -1) for y in Y]
    cfg = AugmentConfig(p_geometric_common=0.3, p_geometric_rare=0.9, p_elastic_common=0.1, p_elastic_rare=0.6,
                        p_color=0.0)
    Yc, Cc, aug = ClassAwareAugmenter.for_dataset(Y, C, cfg, seed=1)
    assert aug.rare_classes == (3,)
    for _ in range(40):
        for x, y in zip(X, Yc):
            aug(x, y)
    n = aug.counts
    assert n["patches"] == 480 and n["rare"] == 120  # 3 of 12 images hold the rare class
    geo_rare, geo_common = n["geometric_rare"] / n["rare"], n["geometric_common"] / (n["patches"] - n["rare"])
    el_rare, el_common = n["elastic_rare"] / n["rare"], n["elastic_common"] / (n["patches"] - n["rare"])
    assert geo_rare == pytest.approx(0.9, abs=0.08) and geo_common == pytest.approx(0.3, abs=0.08)
    assert el_rare == pytest.approx(0.6, abs=0.1) and el_common == pytest.approx(0.1, abs=0.06)
    assert geo_rare > 2 * geo_common and el_rare > 3 * el_common


def test_rare_images_are_drawn_more_often_by_the_sampler():
    from stardist.models.model2d import StarDistData2D

    Y, C = blobs(12, rare_every=4)
    rare = rare_image_indices(C, [3])
    idx = oversample_indices(len(Y), rare, 3.0)
    counts = np.bincount(idx, minlength=12)
    assert all(counts[k] == 3 for k in rare) and all(counts[k] == 1 for k in range(12) if k not in rare)
    # through StarDist's own generator: count the images drawn over many batches
    X = [np.zeros((48, 48), np.float32) + k for k in idx]  # pixel value = source image index
    data = StarDistData2D(X, [Y[k] for k in idx], batch_size=3, n_rays=8, length=100, patch_size=(48, 48))
    drawn = np.concatenate([np.asarray(data.batch(i)) for i in range(100)])
    per_image = np.bincount(np.asarray(idx)[drawn], minlength=12)
    assert per_image[rare].mean() > 2.5 * np.delete(per_image, rare).mean()
    frac = oversample_indices(10, [0, 1, 2, 3], 1.5, seed=0)
    assert len(frac) == 12 and frac == oversample_indices(10, [0, 1, 2, 3], 1.5, seed=0)


def test_augmentations_keep_masks_aligned():
    """The image encodes the label in its intensity; after flips, rotations and warps it still does."""
    Y, C = blobs(6, size=64)
    cfg = AugmentConfig(p_geometric_common=1, p_geometric_rare=1, p_elastic_common=1, p_elastic_rare=1, p_color=0,
                        elastic_alpha=4.0)
    Yc, Cc, aug = ClassAwareAugmenter.for_dataset(Y, C, cfg, seed=3)
    changed = 0
    for y in Yc:
        x = np.stack([y.astype(np.float32)] * 3, -1)
        xa, ya = aug(x, y)
        assert xa.shape == x.shape and ya.shape == y.shape and ya.dtype == y.dtype
        changed += int((ya != y).any())
        # instance ids are never mixed: every id after the warp existed before, with its class
        assert set(np.unique(ya).tolist()) <= set(np.unique(y).tolist())
        # image and labels agree wherever the image was not interpolated across a boundary
        agree = np.isclose(xa[..., 0], ya)
        assert agree.mean() > 0.95
        inner = ya == np.maximum.reduce([np.roll(ya, s, a) for s in (-1, 1) for a in (0, 1)])
        inner &= ya == np.minimum.reduce([np.roll(ya, s, a) for s in (-1, 1) for a in (0, 1)])
        assert agree[inner].mean() > 0.99
    assert changed == len(Yc)
    # flips and 90 degree rotations alone are exact
    x = np.stack([Yc[0].astype(np.float32)] * 3, -1)
    for s in range(10):
        xa, ya = ClassAwareAugmenter.flip_rot90(x, Yc[0], np.random.default_rng(s))
        assert (xa[..., 1] == ya).all()


def test_color_jitter_changes_colour_only_and_keeps_grey_axis():
    cfg = AugmentConfig(p_color=1, p_geometric_common=0, p_elastic_common=0, brightness=0.0, hue=0.1, saturation=0.3)
    aug = ClassAwareAugmenter(cfg, seed=0)
    y = np.zeros((16, 16), np.int32)
    grey = np.full((16, 16, 3), 0.4, np.float32)
    xg, yg = aug(grey, y)
    assert np.allclose(xg, 0.4, atol=1e-5) and (yg == y).all()  # hue/saturation leave grey alone
    rgb = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    xc, _ = aug(rgb, y)
    assert xc.dtype == np.float32 and not np.allclose(xc, rgb) and aug.counts["color"] == 2
    # luminance (Y of YIQ) is kept when brightness is 0
    lum = lambda a: a @ np.array([0.299, 0.587, 0.114], np.float32)  # noqa: E731
    assert np.allclose(lum(xc), lum(rgb), atol=1e-4)


def test_seeded_reproducibility():
    Y, C = blobs(8)
    X = [np.random.default_rng(k).random((48, 48, 3)).astype(np.float32) for k in range(8)]
    cfg = AugmentConfig(p_geometric_common=0.5, p_elastic_common=0.5, p_color=0.5)

    def run(seed):
        _, _, aug = ClassAwareAugmenter.for_dataset(Y, C, cfg, seed=seed)
        Yc = encode_class_ids(Y, C)[0]
        return [aug(x, y) for x, y in zip(X, Yc)], aug

    a, aug = run(7)
    b, _ = run(7)
    c, _ = run(8)
    assert all((xa == xb).all() and (ya == yb).all() for (xa, ya), (xb, yb) in zip(a, b))
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    aug.reseed(7)
    Yc = encode_class_ids(Y, C)[0]
    again = [aug(x, y) for x, y in zip(X, Yc)]
    assert all((xa == xb).all() for (xa, _), (xb, _) in zip(a, again))


def test_bad_config():
    with pytest.raises(ValueError, match="p_color"):
        AugmentConfig(p_color=1.5)
    with pytest.raises(ValueError, match="unknown parameter"):
        AugmentConfig.from_dict({"p_colour": 0.5})
    with pytest.raises(ValueError, match="no entry in classes"):
        encode_class_ids([np.array([[1, 2]])], [{1: 1}])
