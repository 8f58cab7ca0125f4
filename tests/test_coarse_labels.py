"""Sub-classes through coarse and root labels (issue 12, section 2).

* ``train_coarse_label_mode='equal_logit'``: after optimisation steps on coarse labels only,
  the split among a node's leaves stays where it was while the node's mass learns; today's
  loss (``'sum'``) moves the split (the leading leaf takes the node over).
* A class the training never labelled at or below is marked in predictions.
"""

import json
import warnings

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from stardist_hier.model.losses import hierarchical_class_loss  # noqa: E402

from test_losses import H, N_OUT, pack  # noqa: E402


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def within(p, channels):
    """Split among ``channels`` (numpy): p[c] / sum p[channels]."""
    q = p[..., channels]
    return q / q.sum(-1, keepdims=True)


def optimise(mode, problem, optimizer, lr, steps=120, head=False):
    """Optimise the class loss (Eq. 2 + Eq. 4) alone on the logits themselves, or on a linear head.

    ``head=True``: logits = features @ W + b with fixed per-pixel features (the last layer of a
    network); ``W`` is shared by every pixel of both samples.
    """
    p = problem
    loss = hierarchical_class_loss(np.ones(N_OUT), N_OUT, coarse_label_mode=mode)
    target = tf.constant(pack(p["labels"], p["lsets"]))
    if head:
        W = tf.Variable(p["W"])
        b = tf.Variable(p["b"])
        variables = [W, b]
        feats = tf.constant(p["features"])

        def logits():
            return tf.einsum("bhwf,fc->bhwc", feats, W) + b
    else:
        z = tf.Variable(p["logits"])
        variables = [z]

        def logits():
            return z
    z0 = logits().numpy().astype(np.float64)
    opt = tf.keras.optimizers.SGD(lr) if optimizer == "sgd" else tf.keras.optimizers.Adam(lr)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(loss(target, tf.nn.softmax(logits())))
        opt.apply_gradients(zip(tape.gradient(value, variables), variables))

    for _ in range(steps):
        step()
    return softmax(z0), softmax(logits().numpy().astype(np.float64))


@pytest.fixture(scope="module")
def problem():
    """'A' (a1, a2, a3) labels in the 'coarse' set and root labels; a1 leads inside A at the start."""
    rng = np.random.default_rng(3)
    shape = (2, 6, 6)
    lsets = [H.label_set("coarse"), H.label_set("root")]
    labels = np.zeros(shape, int)
    labels[0, :, :3] = 1  # 'A' = {a1, a2, a3}
    labels[0, 0, 5] = 2  # one b1 pixel (a leaf)
    labels[1, :4] = 1  # root: any nucleus
    a = list(H.leaf_channels("A"))
    bias = np.zeros(N_OUT)
    bias[a] = [1.5, 0.3, -0.5]  # a1 leads inside A
    bias[0] = 2.5  # background leads: the nodes have mass to learn
    logits = rng.normal(0, 0.2, shape + (N_OUT,)) + bias
    features = rng.normal(0, 1, shape + (8,))
    features[..., 0] = labels > 0  # a feature the head can learn the mass from
    return dict(labels=labels, lsets=lsets, logits=logits.astype(np.float32), A=a, fg=list(range(1, N_OUT)),
                features=features.astype(np.float32), W=rng.normal(0, 0.3, (8, N_OUT)).astype(np.float32),
                b=bias.astype(np.float32))


@pytest.mark.parametrize("optimizer,lr", [("sgd", 40.0), ("adam", 0.05)])
def test_equal_logit_keeps_the_split_and_learns_the_mass(problem, optimizer, lr):
    p = problem
    y0, y1 = optimise("equal_logit", p, optimizer, lr)
    on_a, on_root = p["labels"][0] == 1, p["labels"][1] == 1
    # the node's mass learns ...
    assert y0[0][on_a][:, p["A"]].sum(-1).max() < 0.4 and y1[0][on_a][:, p["A"]].sum(-1).min() > 0.9
    assert y0[1][on_root][:, p["fg"]].sum(-1).max() < 0.6 and y1[1][on_root][:, p["fg"]].sum(-1).min() > 0.9
    # ... and the split below it stays where it was, at every pixel (labelled or background)
    np.testing.assert_allclose(within(y1[0], p["A"]), within(y0[0], p["A"]), atol=1e-3)
    np.testing.assert_allclose(within(y1[1], p["fg"]), within(y0[1], p["fg"]), atol=1e-3)


def test_todays_loss_moves_the_split(problem):
    """The failure the option removes: under 'sum' the leading leaf takes the node over.

    (Adam on independent per-pixel logits hides it: its per-coordinate step size cancels the
    gradient's proportionality to each leaf's probability; shared weights do not, see below.)
    """
    p = problem
    y0, y1 = optimise("sum", p, "sgd", 40.0)
    on_a = p["labels"][0] == 1
    assert y1[0][on_a][:, p["A"]].sum(-1).min() > 0.9  # the mass learns too
    lead0 = within(y0[0][on_a], p["A"])[:, 0]
    lead1 = within(y1[0][on_a], p["A"])[:, 0]
    assert np.all(lead1 > lead0 + 0.05)  # a1's share under A grew at every A pixel
    assert np.abs(within(y1[1], p["fg"]) - within(y0[1], p["fg"])).max() > 0.1


def test_a_linear_head_keeps_the_split_only_with_equal_logit(problem):
    """A last layer shared by all pixels, trained with Adam: the split under A stays only with 'equal_logit'."""
    p = problem
    on_a = p["labels"][0] == 1
    change = {}
    for mode in ("sum", "equal_logit"):
        y0, y1 = optimise(mode, p, "adam", 0.05, head=True)
        assert y1[0][on_a][:, p["A"]].sum(-1).mean() > y0[0][on_a][:, p["A"]].sum(-1).mean() + 0.3
        change[mode] = np.abs(within(y1[0], p["A"]) - within(y0[0], p["A"])).max()
    assert change["equal_logit"] < 1e-3 < 0.1 < change["sum"]


# ---------------------------------------------------------------------------------------
# untrained classes


def test_count_training_labels_and_untrained_classes():
    from stardist_hier.hierarchy import ClassHierarchy
    from stardist_hier.model.class_rule import count_training_labels, merge_label_counts, untrained_classes

    h = ClassHierarchy.default()
    y = np.zeros((8, 8), np.int32)
    y[1:3, 1:3], y[4:6, 4:6], y[6:8, 0:2] = 1, 2, 3
    monusac, pannuke, monuseg = h.label_set("monusac"), h.label_set("pannuke"), h.label_set("monuseg")
    mids = {v: k for k, v in monusac.nodes.items()}
    counts = count_training_labels([y, y, y], [{1: mids["epithelial"], 2: mids["lymphocyte"], 3: None}, 1, None],
                                   [monusac, monuseg, monusac])
    assert counts == {"epithelial": 1, "lymphocyte": 1, "nucleus": 3}
    assert merge_label_counts(None, counts) == counts
    assert merge_label_counts(counts, {"nucleus": 2, "dead": 1}) == {"dead": 1, "epithelial": 1, "lymphocyte": 1,
                                                                     "nucleus": 5}
    # PanNuke's classes by node, written out: 1 malignant_epithelial, 2 inflammatory, 3 connective, 4 dead,
    # 5 healthy_epithelial
    assert dict(pannuke.nodes) == {1: "malignant_epithelial", 2: "inflammatory", 3: "connective", 4: "dead",
                                   5: "healthy_epithelial"}
    assert untrained_classes(pannuke, {"nucleus": 10}) == (1, 2, 3, 4, 5)  # a root label says nothing below
    assert untrained_classes(pannuke, {"epithelial": 4, "lymphocyte": 2}) == (1, 3, 4, 5)
    assert untrained_classes(pannuke, {"fibroblast": 1, "nucleus": 9}) == (1, 2, 4, 5)
    assert untrained_classes(pannuke, {"dead": 1, "malignant_epithelial": 1, "healthy_epithelial": 1,
                                       "plasma_cell": 1, "muscle": 1}) == ()
    assert untrained_classes(monuseg, {"lymphocyte": 1}) == ()  # anything below the root trains the root
    assert untrained_classes(monuseg, {}) == (1,)
    assert untrained_classes(pannuke, None) is None  # no record: nothing marked


TINY = dict(n_rays=8, n_channel_in=3, grid=(2, 2), unet_n_depth=1, unet_n_filter_base=4, net_conv_after_unet=8,
            train_patch_size=(32, 32), train_batch_size=2, train_reduce_lr=None)


def test_a_model_trained_at_the_root_says_so_at_pannuke(tmp_path):
    from stardist_hier import HierConfig2D, HierStarDist2D
    from stardist_hier.model.class_rule import UntrainedClassWarning

    from test_targets import make_images

    X, Y, _ = make_images(3, size=32, neg=False)
    model = HierStarDist2D(HierConfig2D(hierarchy="default", **TINY), name="root_only", basedir=str(tmp_path))
    assert model.config.trained_label_counts is None
    model.train(X[:2], Y[:2], validation_data=(X[2:], Y[2:]), dataset="monuseg", epochs=1, steps_per_epoch=1,
                seed=0, verbose=0)
    n_nuclei = sum(int(np.count_nonzero(np.unique(y) > 0)) for y in Y[:2])
    assert model.config.trained_label_counts == {"nucleus": n_nuclei}
    saved = json.loads((tmp_path / "root_only" / "hier_config.json").read_text())
    assert saved["trained_label_counts"] == {"nucleus": n_nuclei}
    loaded = HierStarDist2D(None, name="root_only", basedir=str(tmp_path))
    assert loaded.config.trained_label_counts == {"nucleus": n_nuclei}
    with pytest.warns(UntrainedClassWarning, match="pannuke.*1 = malignant_epithelial.*5 = healthy_epithelial"):
        _, details = loaded.predict_instances(X[0], label_set="pannuke", prob_thresh=0.01)
    assert details["untrained_classes"] == (1, 2, 3, 4, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedClassWarning)
        _, details = loaded.predict_instances(X[0], label_set="monuseg", prob_thresh=0.01)
    assert details["untrained_classes"] == ()
    # a folder from before the record: no marking, no warning
    saved.pop("trained_label_counts")
    (tmp_path / "root_only" / "hier_config.json").write_text(json.dumps(saved))
    old = HierStarDist2D(None, name="root_only", basedir=str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedClassWarning)
        _, details = old.predict_instances(X[0], label_set="pannuke", prob_thresh=0.01)
    assert details["untrained_classes"] is None
