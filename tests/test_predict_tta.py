"""Test-time augmentation: ray index maps, grid alignment, and the rotated-image property with a model."""

import numpy as np
import pytest

from stardist_hier.predict import tta


def _label_image(shape=(61, 70), seed=0):
    """A few non-overlapping ellipses (star-convex) as a label image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    k = 0
    for _ in range(40):
        cy, cx = rng.uniform(8, shape[0] - 8), rng.uniform(8, shape[1] - 8)
        a, b, th = rng.uniform(3, 7), rng.uniform(3, 7), rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u, v = dy * np.cos(th) + dx * np.sin(th), -dy * np.sin(th) + dx * np.cos(th)
        m = (u / a) ** 2 + (v / b) ** 2 <= 1
        if (lab[m] == 0).all():
            k += 1
            lab[m] = k
    return lab


def test_vector_map_matches_the_array_transforms():
    # independent reference: move one marked pixel and read off where it went
    H, W = 7, 9
    for t in tta.TRANSFORMS:
        M = tta.vector_map(t)
        base = np.zeros((H, W), int)
        base[3, 4] = 1
        moved = np.zeros((H, W), int)
        moved[3 + 1, 4 + 2] = 1  # displacement (1, 2)
        p0 = np.argwhere(tta.transform_image(base, t))[0]
        p1 = np.argwhere(tta.transform_image(moved, t))[0]
        assert tuple(p1 - p0) == tuple(M @ np.array([1, 2])), t


def test_untransform_inverts_transform_and_transforms_are_the_dihedral_group():
    x = np.arange(5 * 6 * 2).reshape(5, 6, 2)
    seen = set()
    for t in tta.TRANSFORMS:
        y = tta.transform_image(x, t)
        assert np.array_equal(tta.untransform_map(y, t), x)
        seen.add(y.tobytes() + bytes(y.shape))
    assert len(seen) == 8


@pytest.mark.parametrize("n_rays", [8, 16, 32])
def test_ray_permutation_against_explicit_angles(n_rays):
    # reference: transformed ray j has angle phi_j' computed by hand for each transform
    phi = 2 * np.pi * np.arange(n_rays) / n_rays
    for k, flip in tta.TRANSFORMS:
        a = np.pi - phi if flip else phi.copy()  # flip columns: dx -> -dx, i.e. phi -> pi - phi
        # rot90: (dy, dx) = (sin a, cos a) -> (-dx, dy) = (-cos a, sin a) = (sin(a - pi/2), cos(a - pi/2))
        a = a - k * np.pi / 2
        expect = np.rint((a % (2 * np.pi)) / (2 * np.pi / n_rays)).astype(int) % n_rays
        assert np.array_equal(tta.ray_permutation(n_rays, (k, flip)), expect), (k, flip)
    assert np.array_equal(tta.ray_permutation(n_rays, (0, False)), np.arange(n_rays))


def test_ray_permutation_refuses_rays_that_do_not_map():
    with pytest.raises(ValueError, match="divisible by 4"):
        tta.ray_permutation(30, (1, False))


@pytest.mark.parametrize("grid", [(1, 1), (2, 2), (4, 4)])
@pytest.mark.parametrize("shape", [(61, 70), (64, 64)])
def test_tta_on_an_exactly_equivariant_predictor_returns_the_plain_prediction(grid, shape):
    """The "network" is StarDist's own star_dist on the label image: an exactly equivariant map.

    So every transformed prediction, undone, must equal the plain one: the ray index map and
    the grid alignment are then right (a wrong one differs by whole pixels).
    """
    from stardist.geometry import star_dist
    from stardist.utils import edt_prob

    n_rays = 32
    lab = _label_image(shape)

    def predict(x):
        lbl = np.rint(x[..., 0]).astype(np.int32)
        g = grid
        d = star_dist(lbl, n_rays)[:: g[0], :: g[1]]
        p = edt_prob(lbl)[:: g[0], :: g[1]]
        c = np.stack([lbl == 0, lbl > 0], axis=-1).astype(np.float32)[:: g[0], :: g[1]]
        return p, d, c

    img = lab[..., None].astype(np.float32)
    plain = predict(img)
    for t in tta.TRANSFORMS:
        got = tta.predict_tta(predict, img, n_rays, grid, transforms=[t])
        assert got[0].shape == plain[0].shape
        # edge padding copies a border row: compare the interior cells
        inner = (slice(0, -1), slice(0, -1))
        np.testing.assert_allclose(got[0][inner], plain[0][inner], atol=1e-5, err_msg=str(t))
        np.testing.assert_allclose(got[1][inner], plain[1][inner], atol=2e-3, err_msg=str(t))
        np.testing.assert_array_equal(got[2][inner], plain[2][inner])
    merged = tta.predict_tta(predict, img, n_rays, grid)
    np.testing.assert_allclose(merged[1][:-1, :-1], plain[1][:-1, :-1], atol=2e-3)


def test_without_grid_alignment_the_check_fails():
    """The alignment matters: with grid 2, a reversed axis without the pad is off by a pixel."""
    from stardist.geometry import star_dist

    lab = _label_image((64, 64))
    t = (0, True)  # flip columns
    d_plain = star_dist(lab, 32)[::2, ::2]
    flipped = star_dist(np.ascontiguousarray(tta.transform_image(lab, t)), 32)[::2, ::2]
    undone = tta.untransform_map(flipped, t)[..., tta.ray_permutation(32, t)]
    assert np.abs(undone - d_plain).max() > 0.5


def test_merge_is_median_mean_mean():
    rng = np.random.default_rng(1)
    probs = [rng.random((3, 4)) for _ in range(8)]
    dists = [rng.random((3, 4, 8)) for _ in range(8)]
    classes = [rng.random((3, 4, 5)) for _ in range(8)]
    p, d, c = tta.merge(probs, sum(dists), sum(classes), 8)
    np.testing.assert_allclose(p, np.median(np.array(probs), axis=0), rtol=1e-6)
    np.testing.assert_allclose(d, np.mean(np.array(dists), axis=0), rtol=1e-6)
    np.testing.assert_allclose(c, np.mean(np.array(classes), axis=0), rtol=1e-6)
