"""The hierarchical class losses against plain-numpy references written here."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from stardist.models.base import weighted_categorical_crossentropy  # noqa: E402

from stardist_hier.hierarchy import ClassHierarchy  # noqa: E402
from stardist_hier.model.losses import (  # noqa: E402
    hierarchical_class_loss,
    modified_crossentropy,
    modified_focal_tversky,
)

EPS = 1e-7

TREE = {
    "hierarchy": {"root": {"A": {"a1": None, "a2": None, "a3": None}, "B": {"b1": None, "b2": None}, "c": None}},
    "label_sets": {
        "leaves": {1: "a1", 2: "a2", 3: "a3", 4: "b1", 5: "b2", 6: "c"},
        "coarse": {1: "A", 2: "b1", 3: "b2"},  # 'c' uncovered
        "mixed": {1: "a1", 2: "B", 3: "c"},  # a2, a3 uncovered
        "root": {1: "root"},
    },
}
H = ClassHierarchy.from_dict(TREE)
N_OUT = H.n_classes + 1


def random_probs(rng, shape, n_out=N_OUT, exact=False):
    p = rng.dirichlet(np.full(n_out, 0.7), size=shape).astype(np.float32)
    if exact:  # some pixels with probabilities exactly 0 and 1
        flat = p.reshape(-1, n_out)
        hot = rng.integers(0, n_out, size=len(flat))
        chosen = rng.random(len(flat)) < 0.4
        flat[chosen] = 0
        flat[chosen, hot[chosen]] = 1
    return p


def random_labels(rng, shape, label_set, p_ignore=0.1):
    """Per pixel: a class id of the label set (0 = background) or -1 = ignore."""
    ids = np.array((0,) + label_set.ids)
    lab = ids[rng.integers(0, len(ids), size=shape)]
    lab[rng.random(shape) < p_ignore] = -1
    return lab


def pack(labels, label_sets):
    """Packed target built here from the definitions (independently of targets.py)."""
    B = labels.shape[0]
    out = np.zeros(labels.shape + (2 * N_OUT,), np.float32)
    for b in range(B):
        ls = label_sets[b]
        for idx in np.ndindex(labels.shape[1:]):
            k = labels[(b,) + idx]
            if k < 0:
                out[(b,) + idx][:N_OUT] = -1
            elif k == 0:
                out[(b,) + idx][0] = 1
            else:
                for ch in H.leaf_channels(ls.nodes[k]):
                    out[(b,) + idx][ch] = 1
            groups = np.full(N_OUT, -1)
            groups[0] = 0
            for dense, cid in enumerate(ls.ids, 1):
                for ch in H.leaf_channels(ls.nodes[cid]):
                    groups[ch] = dense
            out[(b,) + idx][N_OUT:] = groups
    return out


def leaf_onehot(labels, ls):
    """Stock StarDist's one-hot class target of leaf labels (rows of -1 where ignored)."""
    onehot = np.zeros(labels.shape + (N_OUT,), np.float32)
    for idx in np.ndindex(labels.shape):
        k = labels[idx]
        if k < 0:
            onehot[idx] = -1
        else:
            onehot[idx][0 if k == 0 else H.leaf_channels(ls.nodes[k])[0]] = 1
    return onehot


def ref_ce(labels, probs, label_sets, weights):
    out = np.zeros(labels.shape)
    for b in range(labels.shape[0]):
        for idx in np.ndindex(labels.shape[1:]):
            k = labels[(b,) + idx]
            if k < 0:
                continue
            y = probs[(b,) + idx].astype(np.float64)
            y = y / np.sum(y + EPS)
            S = [0] if k == 0 else list(H.leaf_channels(label_sets[b].nodes[k]))
            w = np.mean([weights[j] for j in S])
            s = min(max(sum(y[j] for j in S), EPS), 1 - EPS)
            out[(b,) + idx] = -w * np.log(s)
    return out


def ref_ft_pixel(labels, probs, label_sets, alpha, gamma, eps=1e-6):
    """Paper Eq. 4, term by term."""
    out = np.zeros(labels.shape)
    for b in range(labels.shape[0]):
        ls = label_sets[b]
        classes = [[0]] + [list(H.leaf_channels(ls.nodes[c])) for c in ls.ids]
        for idx in np.ndindex(labels.shape[1:]):
            k = labels[(b,) + idx]
            if k < 0:
                continue
            y = probs[(b,) + idx].astype(np.float64)
            t = [1.0 if (k == 0 and d == 0) or (k > 0 and d > 0 and ls.ids[d - 1] == k) else 0.0
                 for d in range(len(classes))]
            Y = [sum(y[j] for j in S) for S in classes]
            num = sum(t[d] * Y[d] + eps for d in range(len(classes)))
            den = alpha * sum(t) + (1 - alpha) * sum(Y) + eps
            out[(b,) + idx] = max(1 - num / den, eps) ** gamma
    return out


def ref_ft_eq3(onehot, probs, alpha, gamma, eps=1e-6):
    """Paper Eq. 3 (fixed class set) on one-hot labels; rows of -1 are ignored."""
    out = np.zeros(onehot.shape[:-1])
    for idx in np.ndindex(onehot.shape[:-1]):
        t = onehot[idx].astype(np.float64)
        if t[0] < 0:
            continue
        y = probs[idx].astype(np.float64)
        num = np.sum(t * y + eps)
        den = alpha * t.sum() + (1 - alpha) * y.sum() + eps
        out[idx] = max(1 - num / den, eps) ** gamma
    return out


def ref_ft_classwise(labels, probs, label_sets, alpha, gamma, eps=1e-6):
    out = np.zeros(labels.shape)
    for b in range(labels.shape[0]):
        ls = label_sets[b]
        classes = [[0]] + [list(H.leaf_channels(ls.nodes[c])) for c in ls.ids]
        ids = [0] + list(ls.ids)
        lab = labels[b]
        valid = lab >= 0
        if not valid.any():
            continue
        terms = []
        for d, S in enumerate(classes):
            Y = probs[b][..., S].astype(np.float64).sum(-1)
            t = (lab == ids[d]).astype(np.float64)
            tp = np.sum((t * Y)[valid])
            fn = np.sum((t * (1 - Y))[valid])
            fp = np.sum(((1 - t) * Y)[valid])
            ti = (tp + eps) / (tp + alpha * fn + (1 - alpha) * fp + eps)
            terms.append(max(1 - ti, eps) ** gamma)
        out[b] = np.mean(terms)
    return out


def run(loss, y_true, y_pred):
    return np.asarray(loss(tf.constant(y_true), tf.constant(y_pred)))


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def test_leaf_labels_equal_stock_weighted_crossentropy(rng):
    shape = (3, 7, 6)
    probs = random_probs(rng, shape)
    weights = rng.uniform(0.2, 3, N_OUT)
    ls = H.label_set("leaves")
    labels = random_labels(rng, shape, ls)
    onehot = leaf_onehot(labels, ls)
    stock = run(weighted_categorical_crossentropy(weights, ndim=2), onehot, probs)
    ours = run(modified_crossentropy(weights, N_OUT), pack(labels, [ls] * 3), probs)
    np.testing.assert_allclose(ours, stock, atol=1e-6, rtol=1e-6)
    assert np.count_nonzero(labels < 0) > 0 and np.all(ours[labels < 0] == 0)


@pytest.mark.parametrize("names", [("coarse", "mixed", "root"), ("leaves", "coarse", "coarse")])
def test_modified_crossentropy_matches_eq2(rng, names):
    shape = (3, 5, 4)
    probs = random_probs(rng, shape, exact=True)
    weights = rng.uniform(0.2, 3, N_OUT)
    lsets = [H.label_set(n) for n in names]
    labels = np.stack([random_labels(rng, shape[1:], ls) for ls in lsets])
    ours = run(modified_crossentropy(weights, N_OUT), pack(labels, lsets), probs)
    np.testing.assert_allclose(ours, ref_ce(labels, probs, lsets, weights), rtol=1e-5, atol=1e-6)


def test_focal_tversky_leaf_labels_equal_eq3(rng):
    shape = (2, 6, 5)
    probs = random_probs(rng, shape)
    ls = H.label_set("leaves")
    labels = random_labels(rng, shape, ls)
    onehot = leaf_onehot(labels, ls)
    for alpha, gamma in [(0.7, 0.75), (0.3, 2.0)]:
        ours = run(modified_focal_tversky(N_OUT, alpha, gamma), pack(labels, [ls] * 2), probs)
        np.testing.assert_allclose(ours, ref_ft_eq3(onehot, probs, alpha, gamma), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("names", [("coarse", "mixed", "root"), ("leaves", "mixed", "coarse")])
def test_focal_tversky_pixelwise_matches_eq4(rng, names):
    shape = (3, 5, 5)
    probs = random_probs(rng, shape)
    lsets = [H.label_set(n) for n in names]
    labels = np.stack([random_labels(rng, shape[1:], ls) for ls in lsets])
    ours = run(modified_focal_tversky(N_OUT, 0.7, 0.75), pack(labels, lsets), probs)
    np.testing.assert_allclose(ours, ref_ft_pixel(labels, probs, lsets, 0.7, 0.75), rtol=1e-5, atol=1e-6)


def test_focal_tversky_classwise_matches_reference(rng):
    shape = (4, 6, 5)
    probs = random_probs(rng, shape)
    lsets = [H.label_set(n) for n in ("coarse", "mixed", "root", "leaves")]
    labels = np.stack([random_labels(rng, shape[1:], ls) for ls in lsets])
    labels[2] = -1  # an image whose pixels are all ignored
    ours = run(modified_focal_tversky(N_OUT, 0.7, 0.75, mode="classwise"), pack(labels, lsets), probs)
    np.testing.assert_allclose(ours, ref_ft_classwise(labels, probs, lsets, 0.7, 0.75), rtol=1e-5, atol=1e-6)
    assert np.all(ours[2] == 0)


def test_combination_is_weighted_sum(rng):
    shape = (2, 4, 4)
    probs = random_probs(rng, shape)
    lsets = [H.label_set("coarse"), H.label_set("mixed")]
    labels = np.stack([random_labels(rng, shape[1:], ls) for ls in lsets])
    y = pack(labels, lsets)
    w = np.ones(N_OUT)
    combined = run(hierarchical_class_loss(w, N_OUT, ce_weight=0.5, focal_tversky_weight=2.0), y, probs)
    expected = 0.5 * ref_ce(labels, probs, lsets, w) + 2.0 * ref_ft_pixel(labels, probs, lsets, 0.7, 0.75)
    np.testing.assert_allclose(combined, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        hierarchical_class_loss(w, N_OUT, ce_weight=0, focal_tversky_weight=0)
    with pytest.raises(ValueError):
        hierarchical_class_loss(w, N_OUT, ce_weight=-1)


def loss_and_grad(loss, y_true, probs):
    y_pred = tf.Variable(probs)
    with tf.GradientTape() as tape:
        value = tf.reduce_mean(loss(tf.constant(y_true), y_pred))
    return float(value), tape.gradient(value, y_pred).numpy()


LOSSES = {
    "ce": lambda: modified_crossentropy(np.linspace(0.5, 2, N_OUT), N_OUT),
    "ft_pixel": lambda: modified_focal_tversky(N_OUT),
    "ft_class": lambda: modified_focal_tversky(N_OUT, mode="classwise"),
    "combined": lambda: hierarchical_class_loss(np.ones(N_OUT), N_OUT, mode="classwise"),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_equal_gradient_behind_sum_node(rng, name):
    shape = (2, 4, 4)
    probs = random_probs(rng, shape)
    lsets = [H.label_set("coarse"), H.label_set("mixed")]
    labels = np.stack([random_labels(rng, shape[1:], ls, p_ignore=0) for ls in lsets])
    labels[0, 0, 0] = 1  # 'A' = {a1, a2, a3}
    labels[1, 0, 0] = 2  # 'B' = {b1, b2}
    _, grad = loss_and_grad(LOSSES[name](), pack(labels, lsets), probs)
    a = list(H.leaf_channels("A"))
    bb = list(H.leaf_channels("B"))
    g0, g1 = grad[0, 0, 0], grad[1, 0, 0]
    assert np.abs(g0[a]).max() > 0 and np.abs(g1[bb]).max() > 0
    np.testing.assert_allclose(g0[a], g0[a[0]], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(g1[bb], g1[bb[0]], rtol=1e-5, atol=1e-9)
    # a leaf label does not tie its channel to its siblings
    if name == "ce":
        labels[0, 0, 0] = 2  # b1, a leaf
        _, grad = loss_and_grad(LOSSES[name](), pack(labels, lsets), probs)
        b1, b2 = H.leaf_channels("b1")[0], H.leaf_channels("b2")[0]
        assert not np.isclose(grad[0, 0, 0, b1], grad[0, 0, 0, b2])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ignored_pixels_contribute_nothing(rng, name):
    shape = (2, 5, 5)
    lsets = [H.label_set("coarse"), H.label_set("mixed")]
    labels = np.stack([random_labels(rng, shape[1:], ls, p_ignore=0.3) for ls in lsets])
    y = pack(labels, lsets)
    probs = random_probs(rng, shape)
    other = probs.copy()
    ignored = labels < 0
    other[ignored] = random_probs(rng, (int(ignored.sum()),))
    v1, g1 = loss_and_grad(LOSSES[name](), y, probs)
    v2, _ = loss_and_grad(LOSSES[name](), y, other)
    assert v1 == pytest.approx(v2, rel=1e-6)
    assert np.all(g1[ignored] == 0)
    # all-ignore batch: loss exactly 0, gradient 0, nothing NaN
    y_all = pack(np.full(shape, -1), lsets)
    v, g = loss_and_grad(LOSSES[name](), y_all, probs)
    assert v == 0.0 and np.all(g == 0) and np.all(np.isfinite(g))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_finite_at_probabilities_zero_and_one(rng, name):
    shape = (3, 6, 6)
    lsets = [H.label_set(n) for n in ("coarse", "mixed", "root")]
    labels = np.stack([random_labels(rng, shape[1:], ls) for ls in lsets])
    probs = random_probs(rng, shape, exact=True)
    onehot = np.zeros(shape + (N_OUT,), np.float32)
    onehot[..., 3] = 1  # every pixel certain of one leaf: wrong for most labels
    for p in (probs, onehot):
        v, g = loss_and_grad(LOSSES[name](), pack(labels, lsets), p)
        assert np.isfinite(v) and np.all(np.isfinite(g))


def test_root_label_is_nucleus_versus_background(rng):
    shape = (1, 4, 4)
    probs = random_probs(rng, shape)
    ls = H.label_set("root")
    labels = np.ones(shape, int)
    ours = run(modified_crossentropy(np.ones(N_OUT), N_OUT), pack(labels, [ls]), probs)
    p64 = probs.astype(np.float64)
    fg = p64[..., 1:].sum(-1) / np.sum(p64 + EPS, -1)  # every leaf admitted: "any nucleus"
    np.testing.assert_allclose(ours, -np.log(np.clip(fg, EPS, 1 - EPS)), rtol=1e-5, atol=1e-6)


def test_bad_parameters():
    with pytest.raises(ValueError, match="class_weights"):
        modified_crossentropy([1, 1], N_OUT)
    with pytest.raises(ValueError, match="mode"):
        modified_focal_tversky(N_OUT, mode="bogus")
    with pytest.raises(ValueError, match="alpha"):
        modified_focal_tversky(N_OUT, alpha=1.5)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def logit_grads(loss, y_true, logits):
    """Mean loss over a softmax of ``logits`` and its gradient at the logits."""
    z = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = tf.reduce_mean(loss(tf.constant(y_true), tf.nn.softmax(z)))
    return float(value), tape.gradient(value, z).numpy()


def test_gradient_at_the_logits_is_proportional_to_each_leafs_probability(rng):
    """Equal at the summed probability, not at the logits: d CE / d z_k = w y_k (1 - [k in S] / Y_S)."""
    shape = (2, 5, 4)
    logits = rng.normal(0, 1.5, shape + (N_OUT,)).astype(np.float32)
    lsets = [H.label_set("coarse"), H.label_set("mixed")]
    labels = np.stack([random_labels(rng, shape[1:], ls, p_ignore=0.1) for ls in lsets])
    weights = rng.uniform(0.5, 2, N_OUT)
    _, grad = logit_grads(modified_crossentropy(weights, N_OUT), pack(labels, lsets), logits)
    y = softmax(logits.astype(np.float64))
    ref = np.zeros_like(y)
    for b in range(shape[0]):
        for idx in np.ndindex(shape[1:]):
            k = labels[(b,) + idx]
            if k < 0:
                continue
            S = [0] if k == 0 else list(H.leaf_channels(lsets[b].nodes[k]))
            w = np.mean(weights[S])
            yy = y[(b,) + idx]
            ref[(b,) + idx] = w * yy * (1 - np.isin(np.arange(N_OUT), S) / yy[S].sum()) / labels.size
    np.testing.assert_allclose(grad, ref, rtol=1e-3, atol=1e-9)
    # the paper's "same gradient for every sub-class" holds per unit of probability only
    a = list(H.leaf_channels("A"))
    px = labels[0] == 1  # 'A' in the coarse label set
    assert px.any()
    per_prob = grad[0][px][:, a] / y[0][px][:, a]
    np.testing.assert_allclose(per_prob, np.broadcast_to(per_prob[:, :1], per_prob.shape), rtol=1e-3)
    assert not np.allclose(grad[0][px][:, a], grad[0][px][:, a[:1]], rtol=1e-2)


def test_a_leaf_at_04_gets_8_times_the_push_of_leaves_at_005():
    y = np.array([0.3, 0.4, 0.05, 0.05, 0.05, 0.05, 0.1])  # background, a1, a2, a3, b1, b2, c
    assert y.sum() == pytest.approx(1)
    labels = np.ones((1, 1, 1), int)  # 'A' = {a1, a2, a3} in the coarse label set
    target = pack(labels, [H.label_set("coarse")])
    _, grad = logit_grads(modified_crossentropy(np.ones(N_OUT), N_OUT), target, np.log(y)[None, None, None].astype(np.float32))
    g = grad[0, 0, 0]
    assert np.all(g[1:4] < 0) and g[1] / g[2] == pytest.approx(8, rel=1e-4)
    np.testing.assert_allclose(g[1:4], y[1:4] * (1 - 1 / 0.5), rtol=1e-4)


def test_focal_tversky_counts_no_false_positive_on_uncovered_leaves():
    """The literal Eq. 4 at MoNuSAC (no fibroblasts): the numbers quoted in the loss docstring."""
    h = ClassHierarchy.default()
    n_out = h.n_classes + 1
    monusac = h.label_set("monusac")
    lymph_id = next(k for k, v in monusac.nodes.items() if v == "lymphocyte")
    target = np.zeros((1, 1, 1, 2 * n_out), np.float32)
    target[..., h.leaf_channels("lymphocyte")[0]] = 1
    groups = np.full(n_out, -1.0)  # built from the node names, not from LabelSet.leaf_group
    groups[0] = 0
    for dense, cid in enumerate(sorted(monusac.nodes), 1):
        groups[list(h.leaf_channels(monusac.nodes[cid]))] = dense
    target[..., n_out:] = groups
    assert lymph_id in monusac.ids and "fibroblast" not in monusac.nodes.values()
    loss = modified_focal_tversky(n_out, alpha=0.7, gamma=0.75)

    def at(other):
        p = np.zeros((1, 1, 1, n_out), np.float32)
        p[..., h.leaf_channels("lymphocyte")[0]] = 0.5
        p[..., h.leaf_channels(other)[0]] = 0.5
        return float(run(loss, target, p)[0, 0, 0])

    assert at("fibroblast") == pytest.approx(max(1 - 0.5 / (0.7 + 0.3 * 0.5), 1e-6) ** 0.75, abs=1e-5)
    assert at("fibroblast") == pytest.approx(0.514, abs=1e-3)
    assert at("neutrophil") == pytest.approx(0.595, abs=1e-3)
