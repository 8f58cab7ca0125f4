"""Drop-in fidelity: stock defaults without a hierarchy, stock folders, from_stardist/from_pretrained,
the ``classes`` argument, training without classes, raw-image checks, config keys."""

import json
import warnings

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from stardist.models import Config2D, StarDist2D  # noqa: E402

from stardist_hier import HierConfig2D, HierStarDist2D  # noqa: E402
from stardist_hier.model.inputs import (  # noqa: E402
    UnnormalizedInputError,
    UnnormalizedInputWarning,
    looks_unnormalized,
)

from test_targets import make_images  # noqa: E402

NET = dict(n_rays=8, n_channel_in=3, grid=(2, 2), unet_n_depth=2, unet_n_filter_base=8, net_conv_after_unet=16)
TRAIN = dict(train_patch_size=(64, 64), train_batch_size=2, train_reduce_lr=None)
FIT = dict(epochs=1, steps_per_epoch=1, verbose=0)


@pytest.fixture(scope="module")
def stock_folders(tmp_path_factory):
    """Stock StarDist2D model folders made here: without classes, with 2 classes."""
    base = tmp_path_factory.mktemp("stock")
    out = {}
    for name, n_classes in (("plain", None), ("two", 2)):
        m = StarDist2D(Config2D(n_classes=n_classes, **NET, **TRAIN), name=name, basedir=str(base))
        m.keras_model.save_weights(str(base / name / "weights_best.h5"))
        out[name] = m
    (base / "plain" / "thresholds.json").write_text(json.dumps({"prob": 0.61, "nms": 0.33}))
    return base, out


def test_flat_model_gives_stock_classes_on_the_same_weights():
    stock = StarDist2D(Config2D(n_classes=3, **NET), basedir=None)
    ours = HierStarDist2D(HierConfig2D(n_classes=3, **NET), basedir=None)
    ours.keras_model.set_weights(stock.keras_model.get_weights())
    img = make_images(1, size=96, seed=5)[0][0]
    ls, ds = stock.predict_instances(img, prob_thresh=0.3)
    lo, do = ours.predict_instances(img, prob_thresh=0.3)
    assert len(ds["prob"]) > 0
    np.testing.assert_array_equal(lo, ls)
    np.testing.assert_array_equal(do["class_id"], ds["class_id"])  # background (0) included, as stock
    np.testing.assert_allclose(do["class_prob"], ds["class_prob"])


def test_stock_folder_loads_into_hierstardist(stock_folders):
    base, stock = stock_folders
    img = make_images(1, size=96, seed=2)[0][0]
    for name in ("plain", "two"):
        ours = HierStarDist2D.from_folder(base / name)
        same = HierStarDist2D(None, name=name, basedir=str(base))
        for a, b, c in zip(stock[name].predict(img), ours.predict(img), same.predict(img)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(c, b)
    assert ours.hierarchy.n_classes == 2 and ours.config.predict_class_from == "center"
    assert HierStarDist2D.from_folder(base / "plain").hierarchy is None
    assert HierStarDist2D.from_folder(base / "plain").thresholds.prob == 0.61


def test_folder_without_weights_is_an_error(stock_folders, tmp_path):
    base, _ = stock_folders
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((base / "plain" / "config.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Couldn't find any network weights" warning: an error
        with pytest.raises(FileNotFoundError, match=f"model folder {empty} has no network weights"):
            HierStarDist2D(None, name="empty", basedir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="has no network weights"):
        HierStarDist2D.from_stardist(empty, hierarchy="default")
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        HierStarDist2D.from_folder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        HierStarDist2D.from_stardist(tmp_path, hierarchy="default")


def test_from_stardist_keeps_backbone_and_heads(stock_folders):
    base, stock = stock_folders
    img = make_images(1, size=96, seed=3)[0][0]
    for source in (base / "plain", stock["plain"]):
        m = HierStarDist2D.from_stardist(source, hierarchy="default", pixel_size_um=0.5)
        prob, dist, prob_class = m.predict(img)
        ref_prob, ref_dist = stock["plain"].predict(img)
        np.testing.assert_allclose(prob, ref_prob, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-5)
        assert prob_class.shape[-1] == 13 and m.config.pixel_size_um == 0.5
        # the stock model's thresholds (its folder's thresholds.json; the instance made before it kept defaults)
        assert (m.thresholds.prob, m.thresholds.nms) == ((0.61, 0.33) if source == base / "plain" else (0.5, 0.4))
        assert (m.config.train_focal_tversky_weight, m.config.predict_class_from) == (1.0, "instance")
    # a multi-class stock model with a new hierarchy: a fresh class head, the rest copied
    m = HierStarDist2D.from_stardist(stock["two"], hierarchy="default")
    for layer in m.keras_model.layers:
        if layer.name in ("features", "prob", "dist"):
            for a, b in zip(layer.get_weights(), stock["two"].keras_model.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)
    # no hierarchy: converted as it is, class head included
    same = HierStarDist2D.from_stardist(stock["two"])
    for a, b in zip(same.predict(img), stock["two"].predict(img)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="layers with weights to copy|has weights of shapes"):
        HierStarDist2D.from_stardist(stock["plain"], hierarchy="default", unet_n_depth=3)


def test_from_pretrained_never_returns_none(stock_folders, monkeypatch):
    import csbdeep.models.pretrained as pretrained

    with pytest.raises(ValueError, match="2D_versatile_he"):
        HierStarDist2D.from_pretrained()
    with pytest.raises(ValueError, match="unknown pretrained StarDist2D model 'no_such_model'.*2D_versatile_he"):
        HierStarDist2D.from_pretrained("no_such_model")
    base, stock = stock_folders
    monkeypatch.setattr(pretrained, "get_model_folder", lambda cls, key: base / "plain")  # no download
    m = HierStarDist2D.from_pretrained("2D_versatile_he", hierarchy="default")
    assert isinstance(m, HierStarDist2D) and m.config.n_classes == 12


def test_classes_auto_and_a_single_id(tmp_path):
    X, Y, _ = make_images(3, size=64, seed=4, neg=False)
    m = HierStarDist2D(HierConfig2D(hierarchy="default", **NET, **TRAIN), basedir=None)
    # MoNuSeg has one class (the root): 'auto' and validation_data=(X, Y) work
    m.train(X[:2], Y[:2], validation_data=(X[2:], Y[2:]), dataset="monuseg", **FIT)
    assert m.config.default_label_set == "monuseg"
    m.train(X[:2], Y[:2], validation_data=(X[2:], Y[2:], 2), classes=2, dataset="pannuke", **FIT)
    assert m.config.default_label_set == "pannuke"
    with pytest.raises(ValueError, match=r"classes='auto'.*'pannuke' has ids \[1, 2, 3, 4, 5\]"):
        m.train(X[:2], Y[:2], validation_data=(X[2:], Y[2:]), dataset="pannuke", **FIT)
    with pytest.raises(ValueError, match="classes=0 gives every nucleus class 0"):
        m.train(X[:2], Y[:2], validation_data=(X[2:], Y[2:], 1), classes=0, dataset="pannuke", **FIT)


def test_training_without_classes_takes_every_option(tmp_path):
    import keras

    X, Y, _ = make_images(3, size=64, seed=6)
    m = HierStarDist2D(HierConfig2D(**NET, **TRAIN, train_early_stopping_patience=1), name="plain",
                       basedir=str(tmp_path))
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, sorted(logs)))

    hist = m.train(X[:2], Y[:2], validation_data=(X[2:], Y[2:]), epochs=3, steps_per_epoch=1, initial_epoch=1,
                   verbose=0, callbacks=[Record()])
    assert [e for e, _ in seen] == hist.epoch and hist.epoch[0] == 1 and 1 <= len(hist.epoch) <= 2
    assert "val_loss" in seen[0][1]
    assert (tmp_path / "plain" / "weights_best.h5").exists()
    with pytest.raises(ValueError, match="dataset given, but this model has no classes"):
        m.train(X[:2], Y[:2], validation_data=(X[2:], Y[2:]), dataset="monuseg", **FIT)
    with pytest.raises(ValueError, match="early_stopping_monitor='val_loss_monuseg'"):
        m.train(X[:2], Y[:2], validation_data=(X[2:], Y[2:]), early_stopping_monitor="val_loss_monuseg", **FIT)
    with pytest.raises(ValueError, match=r"validation_data must be \(X_val, Y_val\)"):
        m.train(X[:2], Y[:2], validation_data=(X[2:], Y[2:], None), **FIT)
    with pytest.raises(ValueError, match="label_set given, but this model has no classes"):
        m.predict_instances(X[0], label_set="monuseg")


@pytest.mark.parametrize("x,raw", [
    (np.zeros((8, 8, 3), np.uint8), True),
    (np.full((8, 8), 200, np.uint16), True),
    (np.linspace(0, 255, 300, dtype=np.float32), True),
    (np.linspace(-0.1, 1.2, 300, dtype=np.float32), False),
    (np.r_[np.zeros(999), 40.0].astype(np.float32), False),  # one bright pixel: a percentile, not the max
    (np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), False),
    (np.full((4, 4), np.nan, np.float32), False),
])
def test_the_raw_image_rule(x, raw):
    assert looks_unnormalized(x)[0] is raw


def test_raw_images_refused_in_training_and_warned_in_prediction():
    X, Y, C = make_images(3, size=64, seed=8, classes=(1,), p_none=0)
    raw = [np.clip(x * 200, 0, 255).astype(np.uint8) for x in X]
    m = HierStarDist2D(HierConfig2D(hierarchy="default", **NET, **TRAIN), basedir=None)
    with pytest.raises(UnnormalizedInputError, match=r"training data: image 0 \(dtype uint8\).*normalize_image"):
        m.train(raw[:2], Y[:2], validation_data=(X[2:], Y[2:]), dataset="monuseg", **FIT)
    with pytest.raises(UnnormalizedInputError, match="validation data: image 0 .*load_split"):
        m.train(X[:2], Y[:2], validation_data=(raw[2:], Y[2:]), dataset="monuseg", **FIT)
    with pytest.warns(UnnormalizedInputWarning, match="normalize_image"):
        m.predict_instances(raw[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnormalizedInputWarning)
        m.predict_instances(X[0])  # normalised: no warning
        from csbdeep.data import PercentileNormalizer
        m.predict_instances(raw[0], normalizer=PercentileNormalizer())  # the model normalises: no warning
        off = HierStarDist2D(HierConfig2D(hierarchy="default", check_normalized_input=False, **NET, **TRAIN),
                             basedir=None)
        off.predict_instances(raw[0])
        off.train(raw[:2], Y[:2], validation_data=(raw[2:], Y[2:]), dataset="monuseg", **FIT)


def test_config_keys_are_stored_and_loaded(tmp_path):
    m = HierStarDist2D(HierConfig2D(hierarchy="default", pixel_size_um=0.25, **NET), name="m", basedir=str(tmp_path))
    m.keras_model.save_weights(str(tmp_path / "m" / "weights_best.h5"))
    saved = json.loads((tmp_path / "m" / "hier_config.json").read_text())
    assert saved["pixel_size_um"] == 0.25 and saved["default_label_set"] is None
    assert saved["train_focal_tversky_weight"] == 1.0 and saved["predict_class_from"] == "instance"
    m.config.default_label_set = "consep"
    m.save_config()
    back = HierStarDist2D.from_folder(tmp_path / "m")
    assert back.config.pixel_size_um == 0.25 and back.config.default_label_set == "consep"
    img = make_images(1, size=64, seed=1)[0][0]
    _, det = back.predict_instances(img, prob_thresh=0.3)
    assert det["label_set"] == "consep"
