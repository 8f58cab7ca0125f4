"""The class-loss options of issue 12 against plain-numpy references written here.

Per-sample normalisation, the focal Tversky term's uncovered false positives, the equal-logit
form of coarse labels (values and logit gradients), the config keys that switch them, and the
compiled model's loss weights.
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from stardist_hier.model.losses import (  # noqa: E402
    class_loss_from_config,
    hierarchical_class_loss,
    modified_crossentropy,
    modified_focal_tversky,
)

from test_losses import (H, N_OUT, logit_grads, pack, random_labels, random_probs, ref_ce,  # noqa: E402
                         ref_ft_pixel, softmax)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def run(loss, y_true, y_pred):
    return np.asarray(loss(tf.constant(y_true), tf.constant(y_pred)))


# ---------------------------------------------------------------------------------------
# per-sample normalisation


def test_per_sample_normalisation_is_the_mean_of_per_sample_means(rng):
    shape = (4, 6, 5)
    lsets = [H.label_set(n) for n in ("coarse", "mixed", "root", "leaves")]
    labels = np.stack([random_labels(rng, shape[1:], ls, p_ignore=p) for ls, p in zip(lsets, (0.1, 0.8, 0.3, 0))])
    labels[2] = -1  # a sample without a valid pixel adds 0 and still counts
    probs = random_probs(rng, shape, exact=True)
    y = pack(labels, lsets)
    w = rng.uniform(0.5, 2, N_OUT)
    per_pixel = ref_ce(labels, probs, lsets, w) + 0.5 * ref_ft_pixel(labels, probs, lsets, 0.7, 0.75)
    expected = []
    for b in range(shape[0]):
        valid = labels[b] >= 0
        expected.append(per_pixel[b][valid].mean() if valid.any() else 0.0)
    ours = run(hierarchical_class_loss(w, N_OUT, focal_tversky_weight=0.5, normalization="per_sample"), y, probs)
    assert ours.shape == shape
    assert ours.mean() == pytest.approx(np.mean(expected), rel=1e-5)
    for b in range(shape[0]):  # per sample: the same values scaled by pixels / valid pixels
        n_valid = np.count_nonzero(labels[b] >= 0)
        scale = labels[b].size / n_valid if n_valid else 0.0
        np.testing.assert_allclose(ours[b], per_pixel[b] * scale, rtol=1e-5, atol=1e-6)
    # 'pixels' is today's loss: the plain mean over all pixels, ignored ones as zeros
    today = run(hierarchical_class_loss(w, N_OUT, focal_tversky_weight=0.5), y, probs)
    np.testing.assert_allclose(today, per_pixel, rtol=1e-5, atol=1e-6)
    assert abs(today.mean() - ours.mean()) > 1e-3  # the two differ on this batch


def test_per_sample_leaves_the_classwise_term_alone(rng):
    shape = (2, 5, 5)
    lsets = [H.label_set("coarse"), H.label_set("mixed")]
    labels = np.stack([random_labels(rng, shape[1:], ls, p_ignore=0.5) for ls in lsets])
    probs = random_probs(rng, shape)
    y = pack(labels, lsets)
    w = np.ones(N_OUT)
    ft = run(modified_focal_tversky(N_OUT, mode="classwise"), y, probs)
    ce = run(modified_crossentropy(w, N_OUT), y, probs)
    ours = run(hierarchical_class_loss(w, N_OUT, mode="classwise", normalization="per_sample"), y, probs)
    scale = np.array([labels[b].size / np.count_nonzero(labels[b] >= 0) for b in range(2)])[:, None, None]
    np.testing.assert_allclose(ours, scale * ce + ft, rtol=1e-5, atol=1e-6)


def test_bad_option_values():
    w = np.ones(N_OUT)
    with pytest.raises(ValueError, match="normalization"):
        hierarchical_class_loss(w, N_OUT, normalization="per_image")
    with pytest.raises(ValueError, match="coarse_label_mode"):
        modified_crossentropy(w, N_OUT, coarse_label_mode="mean")
    with pytest.raises(ValueError, match="pixelwise"):
        modified_focal_tversky(N_OUT, mode="classwise", uncovered_fp=True)


# ---------------------------------------------------------------------------------------
# focal Tversky: uncovered leaves as false positives


def ref_ft_uncovered_fp(labels, probs, label_sets, alpha, gamma, eps=1e-6):
    """Eq. 4 with the denominator over every output channel (uncovered mass is a false positive)."""
    out = np.zeros(labels.shape)
    for b in range(labels.shape[0]):
        ls = label_sets[b]
        m = len(ls.ids) + 1
        for idx in np.ndindex(labels.shape[1:]):
            k = labels[(b,) + idx]
            if k < 0:
                continue
            y = probs[(b,) + idx].astype(np.float64)
            S = [0] if k == 0 else list(H.leaf_channels(ls.nodes[k]))
            ti = (y[S].sum() + m * eps) / (alpha + (1 - alpha) * y.sum() + eps)
            out[(b,) + idx] = max(1 - ti, eps) ** gamma
    return out


def test_uncovered_fp_against_numpy(rng):
    shape = (3, 5, 4)
    lsets = [H.label_set(n) for n in ("coarse", "mixed", "leaves")]
    labels = np.stack([random_labels(rng, shape[1:], ls) for ls in lsets])
    probs = random_probs(rng, shape, exact=True)
    y = pack(labels, lsets)
    ours = run(modified_focal_tversky(N_OUT, 0.7, 0.75, uncovered_fp=True), y, probs)
    np.testing.assert_allclose(ours, ref_ft_uncovered_fp(labels, probs, lsets, 0.7, 0.75), rtol=1e-5, atol=1e-6)
    # a label set covering every leaf: the same as the literal Eq. 4
    np.testing.assert_allclose(ours[2], run(modified_focal_tversky(N_OUT, 0.7, 0.75), y, probs)[2], rtol=1e-6)


def test_uncovered_fp_makes_the_uncovered_mistake_cost_as_much():
    """The docstring's MoNuSAC example: 0.5 on fibroblast (uncovered) costs 0.595 like 0.5 on neutrophil."""
    from stardist_hier.hierarchy import ClassHierarchy
    from stardist_hier.model.targets import ClassTargetEncoder

    h = ClassHierarchy.default()
    n_out = h.n_classes + 1
    monusac = h.label_set("monusac")
    lymph = next(k for k, v in monusac.nodes.items() if v == "lymphocyte")
    target = ClassTargetEncoder(n_out).encode(np.ones((1, 1), np.int32), {1: lymph}, monusac)[None]
    loss = modified_focal_tversky(n_out, alpha=0.7, gamma=0.75, uncovered_fp=True)
    values = []
    for other in ("fibroblast", "neutrophil"):
        y = np.zeros((1, 1, 1, n_out), np.float32)
        y[..., h.leaf_channels("lymphocyte")[0]] = 0.5
        y[..., h.leaf_channels(other)[0]] = 0.5
        values.append(float(run(loss, target, y).ravel()[0]))
    ti = 0.5 / 1.0
    np.testing.assert_allclose(values, [(1 - ti) ** 0.75] * 2, rtol=1e-4)


# ---------------------------------------------------------------------------------------
# equal-logit coarse labels: same values, equal logit gradients within each label-set class


def groups_of(ls):
    """Leaf groups from the node names (0 = background channel, -1 = uncovered)."""
    g = np.full(N_OUT, -1)
    g[0] = 0
    for dense, cid in enumerate(ls.ids, 1):
        g[list(H.leaf_channels(ls.nodes[cid]))] = dense
    return g


def ref_pixel_loss(y, S, ls, w, alpha=0.7, gamma=0.75, eps=1e-6):
    """CE (Eq. 2) + pixelwise focal Tversky (Eq. 4) of one pixel with admitted leaves ``S``, float64."""
    p = y / np.sum(y + 1e-7)
    wS = w[0] if 0 in S else np.mean(w[S])
    ce = -wS * np.log(np.clip(p[S].sum(), 1e-7, 1 - 1e-7))
    g = groups_of(ls)
    m = g.max() + 1
    ti = (y[S].sum() + m * eps) / (alpha + (1 - alpha) * y[g >= 0].sum() + eps)
    return ce + max(1 - ti, eps) ** gamma


def numeric_grads(labels, logits, lsets, w, equal_logit, h=1e-5):
    """Central differences of the numpy loss: per channel, or per group shift / group size."""
    out = np.zeros_like(logits, dtype=np.float64)
    n = labels.size
    for b in range(labels.shape[0]):
        ls = lsets[b]
        g = groups_of(ls)
        for idx in np.ndindex(labels.shape[1:]):
            k = labels[(b,) + idx]
            if k < 0:
                continue
            S = [0] if k == 0 else list(H.leaf_channels(ls.nodes[k]))
            z = logits[(b,) + idx].astype(np.float64)
            f = lambda d: ref_pixel_loss(softmax(z + d), S, ls, w)  # noqa: E731
            for c in range(N_OUT):
                members = np.flatnonzero(g == g[c]) if (equal_logit and g[c] >= 0) else np.array([c])
                d = np.zeros(N_OUT)
                d[members] = h
                out[(b,) + idx][c] = (f(d) - f(-d)) / (2 * h) / len(members) / n
    return out


@pytest.mark.parametrize("names", [("coarse", "mixed", "root"), ("leaves", "coarse", "mixed")])
def test_equal_logit_values_and_logit_gradients(rng, names):
    shape = (3, 4, 3)
    lsets = [H.label_set(n) for n in names]
    labels = np.stack([random_labels(rng, shape[1:], ls) for ls in lsets])
    logits = rng.normal(0, 1.5, shape + (N_OUT,)).astype(np.float32)
    y = pack(labels, lsets)
    w = rng.uniform(0.5, 2, N_OUT)
    make = lambda mode: hierarchical_class_loss(w, N_OUT, coarse_label_mode=mode)  # noqa: E731
    v_sum, g_sum = logit_grads(make("sum"), y, logits)
    v_eq, g_eq = logit_grads(make("equal_logit"), y, logits)
    assert v_eq == pytest.approx(v_sum, rel=1e-6)  # the same loss value
    np.testing.assert_allclose(g_sum, numeric_grads(labels, logits, lsets, w, False), rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(g_eq, numeric_grads(labels, logits, lsets, w, True), rtol=2e-3, atol=1e-6)
    # within each label-set class of a sample the logit gradient is one value
    for b, ls in enumerate(lsets):
        g = groups_of(ls)
        for grp in range(1, g.max() + 1):
            ch = np.flatnonzero(g == grp)
            np.testing.assert_allclose(g_eq[b][..., ch], g_eq[b][..., ch[:1]].repeat(len(ch), -1), rtol=1e-4,
                                       atol=1e-9)
    # a coarse label set: the two gradients differ
    assert not np.allclose(g_eq[-1], g_sum[-1], rtol=1e-2, atol=1e-6)
    # with leaf labels only it is today's loss, gradients included
    if names[0] == "leaves":
        np.testing.assert_allclose(g_eq[0], g_sum[0], rtol=1e-4, atol=1e-9)


def test_equal_logit_ce_closed_form(rng):
    """d CE / d z_k = w (Y_G - [G = label]) / |G| for channel k in group G; w y_k off the groups."""
    shape = (2, 4, 4)
    lsets = [H.label_set("coarse"), H.label_set("mixed")]
    labels = np.stack([random_labels(rng, shape[1:], ls, p_ignore=0.2) for ls in lsets])
    logits = rng.normal(0, 1.5, shape + (N_OUT,)).astype(np.float32)
    w = rng.uniform(0.5, 2, N_OUT)
    _, grad = logit_grads(modified_crossentropy(w, N_OUT, coarse_label_mode="equal_logit"), pack(labels, lsets), logits)
    ref = np.zeros(shape + (N_OUT,))
    for b, ls in enumerate(lsets):
        g = groups_of(ls)
        for idx in np.ndindex(shape[1:]):
            k = labels[(b,) + idx]
            if k < 0:
                continue
            yy = softmax(logits[(b,) + idx].astype(np.float64))
            label_group = 0 if k == 0 else g[H.leaf_channels(ls.nodes[k])[0]]
            wS = w[0] if k == 0 else np.mean(w[list(H.leaf_channels(ls.nodes[k]))])
            for c in range(N_OUT):
                if g[c] < 0:
                    ref[(b,) + idx][c] = wS * yy[c]
                else:
                    G = g == g[c]
                    ref[(b,) + idx][c] = wS * (yy[G].sum() - (g[c] == label_group)) / G.sum()
    np.testing.assert_allclose(grad, ref / labels.size, rtol=2e-3, atol=1e-8)


def test_equal_logit_is_finite_at_probabilities_zero_and_one(rng):
    shape = (3, 4, 4)
    lsets = [H.label_set(n) for n in ("coarse", "mixed", "root")]
    labels = np.stack([random_labels(rng, shape[1:], ls) for ls in lsets])
    for probs in (random_probs(rng, shape, exact=True), np.eye(N_OUT, dtype=np.float32)[np.full(shape, 3)]):
        p = tf.Variable(probs)
        with tf.GradientTape() as tape:
            v = tf.reduce_mean(hierarchical_class_loss(np.ones(N_OUT), N_OUT, coarse_label_mode="equal_logit",
                                                       mode="classwise")(tf.constant(pack(labels, lsets)), p))
        g = tape.gradient(v, p).numpy()
        assert np.isfinite(float(v)) and np.all(np.isfinite(g))


# ---------------------------------------------------------------------------------------
# the config keys, and the compiled model's loss weights


def test_config_keys_switch_the_options(rng):
    from stardist_hier.model.config import HierConfig2D

    TREE = {"hierarchy": {"root": {"A": {"a1": None, "a2": None, "a3": None}, "B": {"b1": None, "b2": None},
                                   "c": None}},
            "label_sets": {n: dict(H.label_set(n).nodes) for n in ("leaves", "coarse", "mixed", "root")}}
    shape = (2, 4, 4)
    lsets = [H.label_set("coarse"), H.label_set("mixed")]
    labels = np.stack([random_labels(rng, shape[1:], ls, p_ignore=0.4) for ls in lsets])
    probs = random_probs(rng, shape)
    y = pack(labels, lsets)
    w = np.ones(N_OUT)
    base = HierConfig2D(hierarchy=TREE)
    assert (base.train_class_loss_normalization, base.train_coarse_label_mode, base.train_unannotated_mode,
            base.train_focal_tversky_uncovered_fp) == ("pixels", "sum", "background", False)
    np.testing.assert_allclose(run(class_loss_from_config(base), y, probs),
                               ref_ce(labels, probs, lsets, w) + ref_ft_pixel(labels, probs, lsets, 0.7, 0.75),
                               rtol=1e-5, atol=1e-6)
    off = HierConfig2D(hierarchy=TREE, train_focal_tversky_weight=0.0)
    np.testing.assert_allclose(run(class_loss_from_config(off), y, probs), ref_ce(labels, probs, lsets, w),
                               rtol=1e-5, atol=1e-6)
    per = HierConfig2D(hierarchy=TREE, train_class_loss_normalization="per_sample", train_focal_tversky_weight=0.0)
    scale = np.array([labels[b].size / np.count_nonzero(labels[b] >= 0) for b in range(2)])[:, None, None]
    np.testing.assert_allclose(run(class_loss_from_config(per), y, probs), scale * ref_ce(labels, probs, lsets, w),
                               rtol=1e-5, atol=1e-6)
    fp = HierConfig2D(hierarchy=TREE, train_focal_tversky_uncovered_fp=True, train_class_ce_weight=0.0)
    np.testing.assert_allclose(run(class_loss_from_config(fp), y, probs),
                               ref_ft_uncovered_fp(labels, probs, lsets, 0.7, 0.75), rtol=1e-5, atol=1e-6)
    for bad in (dict(train_class_loss_normalization="image"), dict(train_coarse_label_mode="mean"),
                dict(train_unannotated_mode="ignore"), dict(train_focal_tversky_uncovered_fp=1),
                dict(train_focal_tversky_uncovered_fp=True, train_focal_tversky_mode="classwise"),
                dict(trained_label_counts={"nope": 3}), dict(trained_label_counts={"A": -1})):
        ok, invalid = HierConfig2D(hierarchy=TREE, **bad).is_valid(return_invalid=True)
        assert not ok and len(invalid) == 1 and invalid[0] in bad, (bad, invalid)


def test_train_loss_weights_weigh_the_class_loss():
    """The compiled loss is prob + w_dist * dist + w_class * class (train_loss_weights), per batch."""
    from stardist_hier import HierConfig2D, HierStarDist2D
    from stardist_hier.model.targets import HierStarDistData2D

    from test_targets import make_images

    tiny = dict(n_rays=8, n_channel_in=3, grid=(2, 2), unet_n_depth=1, unet_n_filter_base=4, net_conv_after_unet=8,
                train_patch_size=(32, 32), train_batch_size=2, train_reduce_lr=None)
    X, Y, C = make_images(2, size=32, classes=(1, 2, 3, 4, 5))
    results = {}
    for weights in ((1.0, 0.2, 1.0), (0.5, 0.3, 4.0)):
        m = HierStarDist2D(HierConfig2D(hierarchy="default", train_loss_weights=weights, **tiny), basedir=None)
        if results:
            m.keras_model.set_weights(results["weights"])
        m.prepare_for_training()
        data = HierStarDistData2D(X, Y, hierarchy=m.hierarchy, label_sets="pannuke", classes=C, batch_size=2,
                                  n_rays=8, length=1, patch_size=(32, 32), grid=(2, 2))
        np.random.seed(0)
        x, t = data[0]
        r = m.keras_model.test_on_batch(x, t, return_dict=True)
        parts = np.array([r["prob_loss"], r["dist_loss"], r["prob_class_loss"]])
        assert r["loss"] == pytest.approx(float(np.dot(weights, parts)), rel=1e-5)
        results.setdefault("weights", m.keras_model.get_weights())
        results[weights] = parts
    # the same network and batch: the parts agree, only their weights differ
    np.testing.assert_allclose(results[(1.0, 0.2, 1.0)], results[(0.5, 0.3, 4.0)], rtol=1e-5)
