"""HierStarDist2D: stock equivalence, multi-dataset training, model folders, prediction."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from stardist.models import Config2D, StarDist2D  # noqa: E402
from stardist.models.model2d import StarDistData2D  # noqa: E402

from stardist_hier import ClassHierarchy, HierarchyError, HierConfig2D, HierStarDist2D  # noqa: E402
from stardist_hier.model.losses import hierarchical_class_loss  # noqa: E402
from stardist_hier.model.targets import HierStarDistData2D  # noqa: E402

from test_targets import make_images  # noqa: E402

TINY = dict(n_rays=8, n_channel_in=3, grid=(2, 2), unet_n_depth=2, unet_n_filter_base=8, net_conv_after_unet=16,
            train_patch_size=(64, 64), train_batch_size=2, train_reduce_lr=None)


def test_flat_model_computes_stock_losses():
    """Defaults with n_classes and no hierarchy: every logged loss and metric is stock's."""
    kw = dict(TINY, n_classes=3, train_class_weights=(1.0, 2.0, 0.5, 3.0))
    stock = StarDist2D(Config2D(**kw), basedir=None)
    ours = HierStarDist2D(HierConfig2D(**kw), basedir=None)  # no focal Tversky term by default
    ours.keras_model.set_weights(stock.keras_model.get_weights())
    stock.prepare_for_training()
    ours.prepare_for_training()
    X, Y, C = make_images(4, size=64)
    data_kw = dict(batch_size=4, n_rays=8, length=2, patch_size=(64, 64), grid=(2, 2))
    stock_data = StarDistData2D(X, Y, n_classes=3, classes=C, **data_kw)
    our_data = HierStarDistData2D(X, Y, hierarchy=ours.hierarchy, label_sets="default", classes=C, **data_kw)
    for i in range(2):
        np.random.seed(i)
        xs, ys = stock_data[i]
        np.random.seed(i)
        xo, yo = our_data[i]
        rs = stock.keras_model.test_on_batch(xs, ys, return_dict=True)
        ro = ours.keras_model.test_on_batch(xo, yo, return_dict=True)
        # same keys (the metrics are rebuilt from public pieces under stock's names) and values
        assert set(ro) == set(rs) and {"prob_class_loss", "dist_relevant_mae", "prob_kld"} <= set(rs)
        for key in rs:
            assert ro[key] == pytest.approx(rs[key], rel=1e-5, abs=1e-7), key


def test_config_is_a_drop_in():
    c = HierConfig2D(hierarchy="default", n_rays=16)
    assert c.n_classes == 12 and len(c.train_class_weights) == 13 and c.train_tensorboard is False
    assert HierConfig2D("YX", 32, 1, (2, 2), 4).n_classes == 4  # stock positional order
    with pytest.raises(HierarchyError, match="n_classes=5 but the hierarchy"):
        HierConfig2D(n_classes=5, hierarchy="default")
    assert not HierConfig2D(n_classes=2, train_focal_tversky_mode="bogus").is_valid()
    m = HierStarDist2D(Config2D(**dict(TINY, n_classes=2)), basedir=None)  # a stock config is converted
    assert isinstance(m.config, HierConfig2D) and m.hierarchy.n_classes == 2
    # the drop-in rule: no hierarchy -> stock's class loss and class rule; a hierarchy -> the paper's
    flat, hier = HierConfig2D(n_classes=3), HierConfig2D(hierarchy="default")
    assert (flat.train_focal_tversky_weight, flat.predict_class_from) == (0.0, "center")
    assert (m.config.train_focal_tversky_weight, m.config.predict_class_from) == (0.0, "center")
    assert (hier.train_focal_tversky_weight, hier.predict_class_from) == (1.0, "instance")
    both = HierConfig2D(n_classes=3, train_focal_tversky_weight=0.5, predict_class_from="instance")
    assert (both.train_focal_tversky_weight, both.predict_class_from) == (0.5, "instance")
    # new keys: default label set, pixel size
    assert HierConfig2D(hierarchy="default", default_label_set="monusac", pixel_size_um=0.25).is_valid()
    assert HierConfig2D(n_classes=3, default_label_set="default").is_valid()
    for bad in (dict(default_label_set="monusak"), dict(pixel_size_um=0), dict(pixel_size_um="0.25"),
                dict(check_normalized_input="yes")):
        ok, invalid = HierConfig2D(hierarchy="default", **bad).is_valid(return_invalid=True)
        assert not ok and set(invalid) == set(bad), bad


def two_datasets():
    """A leaf-labelled (CoNSeP: only leaf ids) and a super-class-labelled (PanNuke) dataset."""
    Xa, Ya, Ca = make_images(6, size=64, seed=1, classes=(3, 4, 5, 6, 7), p_none=0.1)
    Xb, Yb, Cb = make_images(6, size=64, seed=2, classes=(2, 3), p_none=0.0)
    return (Xa, Ya, Ca), (Xb, Yb, Cb)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Pre-train on CoNSeP-like data, then fine-tune on PanNuke-like super-class data."""
    basedir = tmp_path_factory.mktemp("models")
    (Xa, Ya, Ca), (Xb, Yb, Cb) = two_datasets()
    model = HierStarDist2D(HierConfig2D(hierarchy="default", **TINY), name="hier", basedir=str(basedir))
    hist_a = model.train(Xa[:4], Ya[:4], validation_data=(Xa[4:], Ya[4:], Ca[4:]), classes=Ca[:4], dataset="consep",
                         epochs=1, steps_per_epoch=2, seed=0, verbose=0)
    hist_b = model.train(Xb[:4], Yb[:4], validation_data=(Xb[4:], Yb[4:], Cb[4:]), classes=Cb[:4],
                         dataset="pannuke", epochs=2, steps_per_epoch=2, seed=0, verbose=0)
    return dict(model=model, basedir=basedir, hist=(hist_a, hist_b))


def test_episode_training_logs_each_dataset(trained):
    hist_a, hist_b = trained["hist"]
    assert "val_loss_consep" in hist_a.history and "val_loss_pannuke" in hist_b.history
    assert len(hist_b.history["loss"]) == 2 and np.all(np.isfinite(hist_b.history["loss"]))
    assert trained["model"].config.default_label_set == "pannuke"  # the last training dataset


def test_super_class_labels_push_every_leaf_under_them(trained):
    """The compiled class loss's gradient at the class logits, against a plain-numpy reference.

    PanNuke labels say only "inflammatory" (id 2) or "connective" (id 3). At the logits the
    push on each leaf under the labelled class is proportional to that leaf's probability
    (the same at the summed probability): d loss / d z_k = w y_k (1 - 1 / Y_S) for k in S,
    w y_k for the other leaves (cross-entropy, Eq. 2).
    """
    import keras
    import tensorflow as tf

    model = trained["model"]
    h = model.hierarchy
    (Xb, Yb, Cb) = two_datasets()[1]
    data = HierStarDistData2D(Xb[:2], Yb[:2], hierarchy=h, label_sets="pannuke", classes=Cb[:2], batch_size=2,
                              n_rays=8, length=1, patch_size=(64, 64), grid=(2, 2))
    np.random.seed(3)
    (x,), (_, _, target) = data[0]
    head = model.keras_model.get_layer("prob_class")
    features = model.keras_model.get_layer("features_class").output
    feat = np.asarray(keras.Model(model.keras_model.inputs, features)([x]))
    kernel, bias = (np.asarray(w) for w in head.get_weights())
    logits = tf.Variable(np.einsum("bhwf,fk->bhwk", feat, kernel[0, 0]) + bias)
    ce_only = hierarchical_class_loss(model.config.train_class_weights, h.n_classes + 1, focal_tversky_weight=0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(ce_only(tf.constant(target), tf.nn.softmax(logits)))
    grad = tape.gradient(loss, logits).numpy()

    z = logits.numpy().astype(np.float64)
    y = np.exp(z - z.max(-1, keepdims=True))
    y /= y.sum(-1, keepdims=True)
    n_out = h.n_classes + 1
    pannuke = h.label_set("pannuke")
    ids = np.full(target.shape[:-1], -1)  # class id per pixel, read back from the admitted leaves
    for cid in (0,) + pannuke.ids:
        ids[(target[..., :n_out] == pannuke.membership[cid]).all(-1)] = cid
    ref = np.zeros_like(y)
    n_px = np.prod(ids.shape)
    for idx in zip(*np.nonzero(ids >= 0)):
        S = [0] if ids[idx] == 0 else list(h.leaf_channels(pannuke.nodes[ids[idx]]))
        Y_S = y[idx][S].sum()
        ref[idx] = y[idx] * (1 - np.isin(np.arange(n_out), S) / Y_S) / n_px  # weights are all 1
    np.testing.assert_allclose(grad, ref, rtol=2e-3, atol=1e-9)
    inflammatory = list(h.leaf_channels("inflammatory"))
    px = ids == 2
    assert px.sum() > 0
    g = grad[px][:, inflammatory]
    assert np.all(g < 0)  # every inflammatory leaf is pushed up ...
    per_prob = g / y[px][:, inflammatory]
    np.testing.assert_allclose(per_prob, np.broadcast_to(per_prob[:, :1], per_prob.shape), rtol=2e-3)
    # ... by the same amount per unit of its probability, not by the same amount


def test_compiled_class_loss_with_focal_tversky_matches_numpy(trained):
    """The compiled model's class loss (hierarchy: Eq. 2 + Eq. 4, weight 1 each) on one batch."""
    model = trained["model"]
    c = model.config
    assert (c.train_class_ce_weight, c.train_focal_tversky_weight, c.train_focal_tversky_mode) == (1.0, 1.0, "pixelwise")
    h = model.hierarchy
    (Xb, Yb, Cb) = two_datasets()[1]
    data = HierStarDistData2D(Xb[:2], Yb[:2], hierarchy=h, label_sets="pannuke", classes=Cb[:2], batch_size=2,
                              n_rays=8, length=1, patch_size=(64, 64), grid=(2, 2))
    np.random.seed(5)
    (x,), targets = data[0]
    got = model.keras_model.test_on_batch(x, targets, return_dict=True)["prob_class_loss"]
    y = model.keras_model.predict(x, verbose=0)[2].astype(np.float64)
    n_out = h.n_classes + 1
    pannuke = h.label_set("pannuke")
    # PanNuke's classes as sets of leaf channels (background: channel 0); leaves no class covers
    classes = [[0]] + [list(h.leaf_channels(pannuke.nodes[k])) for k in pannuke.ids]
    covered = sorted(ch for S in classes for ch in S)
    alpha, gamma, eps = c.train_focal_tversky_alpha, c.train_focal_tversky_gamma, 1e-6
    admitted = targets[2][..., :n_out]
    total = 0.0
    for idx in np.ndindex(admitted.shape[:-1]):
        t = admitted[idx]
        if t.min() < 0:
            continue  # ignored pixel: no class loss
        S = list(np.flatnonzero(t))
        p = y[idx] / np.sum(y[idx] + 1e-7)
        ce = -np.log(np.clip(p[S].sum(), 1e-7, 1 - 1e-7))  # class weights are all 1
        k = next(i for i, cls in enumerate(classes) if sorted(cls) == S)
        tp = y[idx][classes[k]].sum()
        ti = (tp + len(classes) * eps) / (alpha + (1 - alpha) * y[idx][covered].sum() + eps)
        total += ce + max(1 - ti, eps) ** gamma
    ref = total / np.prod(admitted.shape[:-1])
    assert got == pytest.approx(ref, rel=1e-4)


def test_batch_mixing_and_per_dataset_validation(tmp_path):
    (Xa, Ya, Ca), (Xb, Yb, Cb) = two_datasets()
    model = HierStarDist2D(HierConfig2D(hierarchy="default", train_early_stopping_patience=5, **TINY),
                           name="mixed", basedir=str(tmp_path))
    X, Y, C = Xa[:4] + Xb[:4], Ya[:4] + Yb[:4], Ca[:4] + Cb[:4]
    datasets = ["consep"] * 4 + ["pannuke"] * 4
    val = (Xa[4:] + Xb[4:], Ya[4:] + Yb[4:], Ca[4:] + Cb[4:], ["consep"] * 2 + ["pannuke"] * 2)
    hist = model.train(X, Y, validation_data=val, classes=C, dataset=datasets, epochs=2, steps_per_epoch=2,
                       verbose=0, early_stopping_monitor="val_loss_pannuke")
    for key in ("val_loss", "val_loss_consep", "val_loss_pannuke"):
        assert len(hist.history[key]) == 2 and np.all(np.isfinite(hist.history[key]))
    # the overall val_loss is the image-weighted mean of the per-dataset losses (same patches)
    mean = (np.array(hist.history["val_loss_consep"]) + np.array(hist.history["val_loss_pannuke"])) / 2
    np.testing.assert_allclose(hist.history["val_loss"], mean, rtol=2e-3)
    with pytest.raises(ValueError, match="early_stopping_monitor='val_loss_monusac'"):
        model.train(X, Y, validation_data=val, classes=C, dataset=datasets, epochs=1, steps_per_epoch=1,
                    early_stopping_monitor="val_loss_monusac")
    with pytest.raises(ValueError, match="4th entry"):
        model.train(X, Y, validation_data=val[:3], classes=C, dataset=datasets, epochs=1, steps_per_epoch=1)


def test_model_folder_loads_in_stock_stardist(trained):
    model, basedir = trained["model"], trained["basedir"]
    folder = basedir / "hier"
    config = json.loads((folder / "config.json").read_text())
    stock_keys = set(vars(Config2D(n_classes=12)))
    assert set(config) <= stock_keys
    assert (folder / "hierarchy.yaml").exists() and (folder / "hier_config.json").exists()
    stock = StarDist2D(None, name="hier", basedir=str(basedir))
    img = make_images(1, size=96, seed=5)[0][0]
    for a, b in zip(stock.predict(img), model.predict(img)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    reloaded = HierStarDist2D(None, name="hier", basedir=str(basedir))
    assert reloaded.hierarchy == model.hierarchy
    assert reloaded.config.train_focal_tversky_weight == model.config.train_focal_tversky_weight
    # center mode at the leaves is stock StarDist's rule, label for label
    ls, ds = stock.predict_instances(img, prob_thresh=0.3)
    lo, do = reloaded.predict_instances(img, prob_thresh=0.3, class_from="center", label_set="leaves")
    np.testing.assert_array_equal(lo, ls)
    np.testing.assert_array_equal(do["class_id"], ds["class_id"])
    # fine-tuning continues from the saved folder
    (Xb, Yb, Cb) = two_datasets()[1]
    before = reloaded.keras_model.get_layer("prob_class").get_weights()[0].copy()
    reloaded.train(Xb[:2], Yb[:2], validation_data=(Xb[4:], Yb[4:], Cb[4:]), classes=Cb[:2], dataset="pannuke",
                   epochs=1, steps_per_epoch=1, verbose=0)
    assert not np.allclose(before, reloaded.keras_model.get_layer("prob_class").get_weights()[0])


def test_predict_instances_per_instance_rule_and_label_set(trained):
    model = trained["model"]
    h = model.hierarchy
    img = make_images(1, size=96, seed=7)[0][0]
    prob, dist, prob_class = model.predict(img)  # the network's maps: the input of the class rule
    labels, det = model.predict_instances(img, label_set="pannuke", prob_thresh=0.3)
    n = len(det["prob"])
    assert n > 0 and labels.max() == n
    # reference: probability-weighted mean of the class map over each instance's grid cells
    g = model.config.grid
    ref = np.zeros((n, prob_class.shape[-1]))
    for r in range(prob.shape[0]):
        for c in range(prob.shape[1]):
            lab = labels[min(r * g[0], labels.shape[0] - 1), min(c * g[1], labels.shape[1] - 1)]
            if lab > 0:
                ref[lab - 1] += prob[r, c] * prob_class[r, c]
    have = ref.sum(1) > 0
    ref[have] /= ref[have].sum(1, keepdims=True)
    np.testing.assert_allclose(det["class_prob"][have], ref[have], rtol=1e-4, atol=1e-6)
    ref[~have] = det["class_prob"][~have]  # instances on no grid cell keep their centre probabilities
    # PanNuke's classes by name, their leaves read off the default hierarchy's YAML order
    leaves = list(h.leaves)
    under = {"malignant_epithelial": ["malignant_epithelial"],
             "inflammatory": ["lymphocyte", "macrophage", "neutrophil", "plasma_cell", "eosinophil"],
             "connective": ["fibroblast", "endothelial", "muscle"], "dead": ["dead"],
             "healthy_epithelial": ["healthy_epithelial"]}
    pannuke = h.label_set("pannuke")
    assert {pannuke.nodes[i] for i in pannuke.ids} == set(under)
    summed = np.zeros((n, max(pannuke.ids) + 1))
    summed[:, 0] = ref[:, 0]
    for cid in pannuke.ids:
        summed[:, cid] = sum(ref[:, 1 + leaves.index(leaf)] for leaf in under[pannuke.nodes[cid]])
    np.testing.assert_allclose(det["label_set_prob"], summed, rtol=1e-4, atol=1e-6)
    want = np.array([max(pannuke.ids, key=lambda k: (row[k], -k)) for row in summed])  # ties: smallest id
    np.testing.assert_array_equal(det["class_id"], want)
    np.testing.assert_array_equal(det["leaf_class_id"], 1 + np.argmax(ref[:, 1:], axis=1))
    # leaf level on request; the default is the training dataset's label set
    _, leaf = model.predict_instances(img, prob_thresh=0.3, label_set="leaves")
    np.testing.assert_array_equal(leaf["class_id"], 1 + np.argmax(ref[:, 1:], axis=1))
    _, default = model.predict_instances(img, prob_thresh=0.3)
    assert default["label_set"] == "pannuke"
    np.testing.assert_array_equal(default["class_id"], want)
    with pytest.raises(HierarchyError, match="unknown label set 'pannuk'"):
        model.predict_instances(img, label_set="pannuk")
    # no instance at all: empty, well-shaped details
    labels, none = model.predict_instances(img, label_set="pannuke", prob_thresh=0.99999)
    assert labels.max() == 0 and none["class_prob"].shape == (0, 13) and none["class_id"].shape == (0,)
    assert none["label_set_prob"].shape == (0, 6)


def test_center_rule_is_stock_and_the_only_one_that_gives_class_0(trained):
    model = trained["model"]
    img = make_images(1, size=96, seed=7)[0][0]
    _, center = model.predict_instances(img, label_set="pannuke", prob_thresh=0.3, class_from="center")
    _, inst = model.predict_instances(img, label_set="pannuke", prob_thresh=0.3, class_from="instance")
    assert np.all(inst["class_id"] > 0)
    # centre rule at a label set: arg-max over background and the summed classes, from the
    # centre-pixel probabilities (computed here)
    ls = model.hierarchy.label_set("pannuke")
    p = center["class_prob"]
    scores = {0: p[:, 0], **{cid: p[:, list(model.hierarchy.leaf_channels(ls.nodes[cid]))].sum(1) for cid in ls.ids}}
    keys = sorted(scores)
    want = np.array(keys)[np.argmax(np.stack([scores[k] for k in keys], 1), axis=1)]
    np.testing.assert_array_equal(center["class_id"], want)


def test_bad_training_input_gives_clear_errors(trained):
    model = trained["model"]
    X, Y, C = make_images(3, size=64, seed=3, classes=(1, 2))
    val = (X[2:], Y[2:], C[2:])
    kw = dict(validation_data=val, dataset="monusac", epochs=1, steps_per_epoch=1, verbose=0)
    cases = [
        (dict(X=X[:2], Y=Y[:1], classes=C[:2]), ValueError, "2 images but 1 masks"),
        (dict(X=[X[0], X[1][:32]], Y=Y[:2], classes=C[:2]), ValueError, r"image 1 has shape \(32, 64, 3\)"),
        (dict(X=X[:2], Y=[Y[0], Y[1].astype(float)], classes=C[:2]), ValueError, "mask 1 has dtype float64"),
        (dict(X=[X[0], np.where(Y[1][..., None] > 0, np.nan, X[1])], Y=Y[:2], classes=C[:2]), ValueError, "image 1 contains NaN"),
        (dict(X=X[:2], Y=Y[:2], classes=[C[0], {}]), ValueError, r"image 1 \(label set 'monusac'\): instance id"),
        (dict(X=X[:2], Y=Y[:2], classes=[C[0], {k: 7 for k in C[1]}]), HierarchyError, r"\[7\] not in label set 'monusac'"),
    ]
    for args, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            model.train(args["X"], args["Y"], classes=args["classes"], **kw)
    with pytest.raises(HierarchyError, match="unknown label set 'monusak'"):
        model.train(X[:2], Y[:2], classes=C[:2], **dict(kw, dataset="monusak"))


def test_hierarchy_that_does_not_fit_the_model(trained, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(trained["basedir"] / "hier", folder)
    small = ClassHierarchy.from_dict({"hierarchy": {"n": {"a": None, "b": None}}, "label_sets": {"s": {1: "a"}}})
    small.to_yaml(folder / "hierarchy.yaml")
    with pytest.raises(HierarchyError, match="has 2 leaves but the model .* n_classes=12"):
        HierStarDist2D(None, name="copy", basedir=str(tmp_path))
    # same network size, different weights file shape: a clear error from load_weights
    other = HierStarDist2D(HierConfig2D(n_classes=2, **TINY), name="other", basedir=str(tmp_path))
    shutil.copy(folder / "weights_best.h5", tmp_path / "other" / "weights_best.h5")
    with pytest.raises(ValueError, match="do not fit this model .*n_classes=2"):
        other.load_weights("weights_best.h5")


def test_reinitialize_class_head_changes_only_the_head(trained, tmp_path):
    model = HierStarDist2D(HierConfig2D(hierarchy="default", **TINY), basedir=None)
    before = {l.name: [w.copy() for w in l.get_weights()] for l in model.keras_model.layers}
    model.reinitialize_class_head(seed=3)
    for layer in model.keras_model.layers:
        changed = any(not np.array_equal(a, b) for a, b in zip(before[layer.name], layer.get_weights()))
        assert changed == (layer.name in ("features_class", "prob_class")) or not layer.get_weights()


def test_prediction_options_travel_per_call_not_through_nms_kwargs(trained):
    model = trained["model"]
    # stock's NMS step is used as it is: nothing is smuggled into it
    assert HierStarDist2D._instances_from_prediction is StarDist2D._instances_from_prediction
    img = make_images(1, size=96, seed=7)[0][0]
    nms_kwargs = dict(verbose=False)
    _, a = model.predict_instances(img, prob_thresh=0.3, label_set="monusac", nms_kwargs=nms_kwargs)
    assert nms_kwargs == dict(verbose=False)
    # the generator (napari's entry point) yields stock's progress steps, then the result
    steps = list(model._predict_instances_generator(img, prob_thresh=0.3, label_set="consep"))
    assert steps[:1] == ["predict"] and "nms" in steps
    labels, b = steps[-1]
    assert b["label_set"] == "consep" and a["label_set"] == "monusac"
    np.testing.assert_array_equal(b["class_prob"], a["class_prob"])
    # return_predict and return_labels=False keep stock's shapes of the result
    (none, c), predicted = model.predict_instances(img, prob_thresh=0.3, return_labels=False, return_predict=True)
    assert none is None and len(predicted) == 3 and len(c["class_id"]) == len(a["class_id"])
