"""predict_image: one block equals predict_instances, blocks equal one block, classes, TTA, bad input."""

import numpy as np
import pytest

from stardist_hier.hierarchy import HierarchyError
from stardist_hier.patches import normalize_image
from stardist_hier.predict import tta as T
from stardist_hier.predict.blocks import block_grid, cover, default_context, instances_from_maps
from stardist_hier.predict.engine import level_label_sets, predict_image, resolve_label_set
from stardist_hier.predict.slides import InputError

from predict_helpers import image, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def thresh(model):
    """A probability threshold keeping the top 3% of cells (a few dozen nuclei per image)."""
    p = model.predict(normalize_image(image()), axes="YXC")[0]
    return float(np.quantile(p, 0.97))


def _match(a_points, b_points, tol=1e-3):
    """Index pairs of equal points (each point of a to the nearest of b)."""
    if len(a_points) == 0 or len(b_points) == 0:
        return np.zeros((0, 2), int)
    d = np.linalg.norm(a_points[:, None] - b_points[None], axis=-1)
    j = d.argmin(axis=1)
    ok = d[np.arange(len(a_points)), j] <= tol
    return np.stack([np.flatnonzero(ok), j[ok]], axis=1)


# ----------------------------------------------------------------------------------------


def test_one_block_equals_predict_instances_and_classes_follow_the_label_set(model, thresh):
    img = image()
    r = predict_image(model, img, label_set="consep", levels=True, prob_thresh=thresh)
    labels, det = model.predict_instances(normalize_image(img), label_set="consep", prob_thresh=thresh)
    assert 10 < len(r) == len(det["prob"])
    assert np.array_equal(r.labels, labels)
    np.testing.assert_allclose(r.coord, det["coord"], atol=1e-4)
    np.testing.assert_allclose(r.points, det["points"])
    np.testing.assert_allclose(r.prob, det["prob"], rtol=1e-6)
    assert r.coord.shape == (len(r), 2, 16) and r.coord.dtype == np.float32 and r.class_id.dtype == np.int64
    # independent reference of the class rule: sum the leaves under each node, arg-max without background
    h = model.hierarchy
    ls = h.label_set("consep")
    leaf = r.info["leaf_class_prob"]
    np.testing.assert_allclose(leaf, det["class_prob"], atol=1e-5)
    sums = np.zeros((len(r), ls.max_id + 1))
    sums[:, 0] = leaf[:, 0]
    for cid, node in ls.nodes.items():
        sums[:, cid] = leaf[:, list(h.leaf_channels(node))].sum(axis=1)
    np.testing.assert_allclose(r.class_prob, sums, atol=1e-5)
    ids = np.array(ls.ids)
    np.testing.assert_array_equal(r.class_id, ids[sums[:, ids].argmax(axis=1)])
    np.testing.assert_array_equal(r.class_id, det["class_id"])
    assert len(set(r.class_id.tolist())) > 1  # the test sees more than one class
    # the level above: depth-1 nodes, their leaves summed
    assert list(r.levels) == ["depth1"] and list(r.level_class_id) == ["depth1"]
    d1 = r.levels["depth1"]
    d1_sums = np.stack([leaf[:, list(h.leaf_channels(d1.nodes[c]))].sum(axis=1) for c in d1.ids], axis=1)
    np.testing.assert_array_equal(r.level_class_id["depth1"], np.array(d1.ids)[d1_sums.argmax(axis=1)])


def test_label_image_rows_match_instances(model, thresh):
    r = predict_image(model, image((180, 200), 1), label_set="consep", prob_thresh=thresh, block_size=128,
                      min_overlap=16, context=24)
    assert r.info["blocks"] > 1
    present = np.unique(r.labels[r.labels > 0])
    assert len(present) >= 0.9 * len(r) and present.max() <= len(r)
    # the pixels labelled i + 1 lie inside polygon i (rasterised independently)
    from skimage.draw import polygon

    for i in present - 1:
        mask = np.zeros(r.labels.shape, bool)
        mask[polygon(r.coord[i, 0], r.coord[i, 1], r.labels.shape)] = True
        lab = r.labels == i + 1
        assert (lab & mask).sum() >= 0.95 * lab.sum(), i


def test_blocks_give_the_nuclei_of_one_block(model, thresh):
    img = image((260, 240), 2)
    ctx = default_context(model)
    whole = predict_image(model, img, label_set="consep", prob_thresh=thresh)
    blocks = predict_image(model, img, label_set="consep", prob_thresh=thresh, block_size=200, min_overlap=32,
                           context=ctx[0])
    assert whole.info["blocks"] == 1 and blocks.info["blocks"] == 4 and len(whole) > 30
    pairs = _match(whole.points, blocks.points)
    # blocks aligned to the network's downsampling, context >= receptive field: the same
    # maps, so the very same nuclei, polygons and classes
    assert len(pairs) == len(whole) == len(blocks)
    np.testing.assert_allclose(whole.coord[pairs[:, 0]], blocks.coord[pairs[:, 1]], atol=1e-3)
    np.testing.assert_array_equal(whole.class_id[pairs[:, 0]], blocks.class_id[pairs[:, 1]])
    np.testing.assert_allclose(whole.class_prob[pairs[:, 0]], blocks.class_prob[pairs[:, 1]], atol=1e-5)
    # no nucleus twice (de-duplication on block edges)
    d = np.linalg.norm(blocks.points[:, None] - blocks.points[None], axis=-1) + np.eye(len(blocks)) * 1e9
    assert d.min() > 1.0


def test_no_deduplication_would_double_count(model, thresh):
    """The test above can fail: keeping every block's nuclei duplicates those in the overlaps."""
    from stardist_hier.predict import blocks as B

    img = normalize_image(image((260, 240), 2))
    n_all = 0
    for block in cover(img.shape[:2], 200, 32, default_context(model), block_grid(model)):
        prob, dist, pc = B.predict_maps(model, block.read(img, axes="YX"))
        _, inst = instances_from_maps(model, block.read(img, axes="YX").shape[:2], prob, dist, pc, thresh)
        n_all += len(inst["prob"])
    whole = predict_image(model, img, normalize=False, prob_thresh=thresh)
    assert n_all > 1.3 * len(whole)


def test_objects_larger_than_the_overlap_are_kept_once(model, thresh):
    img = image((200, 200), 2)
    r = predict_image(model, img, label_set="consep", prob_thresh=thresh, block_size=100, min_overlap=2, context=24)
    assert r.info["oversized"] > 0
    d = np.linalg.norm(r.points[:, None] - r.points[None], axis=-1) + np.eye(len(r)) * 1e9
    assert d.min() > 1.0


def test_default_context_is_the_receptive_field(model):
    ctx = default_context(model)  # wraps model._axes_tile_overlap: fails loudly if it changes
    assert len(ctx) == 2 and all(isinstance(c, int) and 8 <= c <= 256 for c in ctx)
    assert block_grid(model) == (8, 8)  # 2 ** unet_n_depth * grid


def test_cover_of_small_and_odd_images():
    for shape in [(50, 70), (300, 129), (515, 700)]:
        blocks = cover(shape, 256, 32, 24, (2, 2))
        # the cores partition the image; write regions cover it
        seen = np.zeros(shape, int)
        from stardist_hier.predict.blocks import core_slices

        for b in blocks:
            seen[core_slices(b)] += 1
        assert (seen == 1).all(), shape
    with pytest.raises(ValueError, match="block_size"):
        cover((500, 500), 100, 64, 32, (2, 2))


@pytest.mark.parametrize("transform", [(1, False), (0, True)])
def test_tta_rotated_image_gives_rotated_prediction(model, thresh, transform):
    """Sides 1 mod grid (129 x 97 at grid 2): the cells of the rotated image are the rotated cells."""
    from stardist_hier.predict.blocks import predict_maps

    img = normalize_image(image((129, 97), 3))
    merged = predict_maps(model, img, tta=True)[0]  # the median is smoother: its own threshold
    kw = dict(label_set="consep", prob_thresh=float(np.quantile(merged, 0.95)), normalize=False)
    ref = predict_image(model, img, tta=True, **kw)
    rot = predict_image(model, np.ascontiguousarray(T.transform_image(img, transform)), tta=True, **kw)
    assert len(ref) > 10 and len(rot) == len(ref)
    # polygon centres mapped back into the original frame
    back = _undo_points(rot.points, transform, img.shape[:2])
    pairs = _match(ref.points, back, tol=1e-3)
    assert len(pairs) == len(ref)
    np.testing.assert_array_equal(ref.class_id[pairs[:, 0]], rot.class_id[pairs[:, 1]])
    np.testing.assert_allclose(ref.prob[pairs[:, 0]], rot.prob[pairs[:, 1]], atol=1e-5)
    # vertices: undo the transform on each vertex, and the ray order
    perm = T.ray_permutation(16, transform)
    v = rot.coord[pairs[:, 1]]  # (n, 2, R)
    v_back = np.stack([_undo_points(v[:, :, k], transform, img.shape[:2]) for k in range(16)], axis=-1)
    np.testing.assert_allclose(ref.coord[pairs[:, 0]], v_back[:, :, perm], atol=2e-3)
    # label images agree pixel for pixel up to polygon rasterisation
    from stardist.matching import matching

    m = matching(ref.labels, T.untransform_map(rot.labels, transform), thresh=0.5)
    assert m.tp == len(ref) and m.mean_matched_score > 0.98
    # without TTA the same check fails: the random network is far from equivariant
    plain = predict_image(model, img, **kw)
    plain_rot = predict_image(model, np.ascontiguousarray(T.transform_image(img, transform)), **kw)
    assert len(_match(plain.points, _undo_points(plain_rot.points, transform, img.shape[:2]))) < 0.5 * len(plain)


def _undo_points(p, t, shape):
    """Map (y, x) points of the transformed image back to the original (plain numpy)."""
    H, W = shape
    k, flip = t
    y, x = p[:, 0].astype(np.float64), p[:, 1].astype(np.float64)
    # undo rot90 k times, the last first: rot90 maps (y, x) of an image of width w to (w - 1 - x, y),
    # so (r, c) of the rotated image came from (c, rows - 1 - r), rows = the rotated image's rows
    for step in range(k):
        rows = W if (k - step) % 2 == 1 else H
        y, x = x, rows - 1 - y
    if flip:
        x = W - 1 - x
    return np.stack([y, x], axis=1)


def test_undo_points_reference():
    rng = np.random.default_rng(0)
    H, W = 7, 5
    for t in T.TRANSFORMS:
        img = np.zeros((H, W), int)
        y, x = rng.integers(0, H), rng.integers(0, W)
        img[y, x] = 1
        p = np.argwhere(T.transform_image(img, t)).astype(float)
        np.testing.assert_array_equal(_undo_points(p, t, (H, W)), [[y, x]])


# ----------------------------------------------------------------------------------------
# label sets and bad input


def test_label_set_resolution(model, monkeypatch):
    h = model.hierarchy
    assert resolve_label_set(model, "monusac").name == "monusac"
    assert resolve_label_set(model, "leaves").n_label_classes == h.n_classes + 1
    # the model's default label set; without one, the model's own rule (the leaves)
    monkeypatch.setattr(model.config, "default_label_set", "pannuke", raising=False)
    assert resolve_label_set(model).name == "pannuke"
    monkeypatch.setattr(model.config, "default_label_set", None, raising=False)
    expected = model.resolve_label_set(None) if hasattr(model, "resolve_label_set") else h.label_set(next(iter(h.label_sets)))
    assert resolve_label_set(model).name == expected.name
    with pytest.raises(HierarchyError, match="monusac"):  # the known ones are listed
        resolve_label_set(model, "monusak")
    assert level_label_sets(h.label_set("monusac")).keys() == {"depth1"}
    assert level_label_sets(h.cut(1)) == {}
    # the levels follow the label set that predict_image resolved
    r = predict_image(model, image((64, 64)), label_set="pannuke", levels=True, prob_thresh=0.99)
    assert r.label_set.name == "pannuke" and set(r.levels) == {"depth1"}


def test_model_without_classes():
    m = tiny_model(hierarchy=None)
    img = image((96, 96), 4)
    p = m.predict(normalize_image(img), axes="YXC")[0]
    r = predict_image(m, img, prob_thresh=float(np.quantile(p, 0.9)))
    assert r.label_set is None and r.class_id is None and r.class_prob is None and r.levels == {}
    assert len(r) > 0 and r.labels.max() == len(r)
    with pytest.raises(ValueError, match="no classes"):
        predict_image(m, img, label_set="consep")


def test_wrong_channels_name_the_image(model):
    img = image((64, 64))
    with pytest.raises(InputError, match=r"grey\.png: .*model needs .*3"):
        predict_image(model, img[..., 0], name="grey.png")
    with pytest.raises(InputError, match=r"two\.tif: 2 channel"):
        predict_image(model, img[..., :2], name="two.tif")
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    a = predict_image(model, rgba, label_set="consep")
    b = predict_image(model, img, label_set="consep")
    assert len(a) == len(b)


def test_empty_image_gives_empty_arrays(model):
    r = predict_image(model, np.zeros((64, 64, 3), np.uint8), label_set="consep", prob_thresh=0.99)
    assert len(r) == 0 and r.coord.shape == (0, 2, 16) and r.class_prob.shape == (0, 8)
    assert r.class_id.shape == (0,) and r.labels.max() == 0
