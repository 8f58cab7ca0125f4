"""The README's path on a tiny synthetic set: synth -> load_split -> train -> evaluate --model.

One module-scoped model trained for real (a few seconds) on synthetic MoNuSeg-like tiles
(one class: every nucleus at the root) also serves the tests of ``predict_instances_big``,
``optimize_thresholds`` on a hierarchical model and the default label set.
"""

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from stardist_hier import patches as P  # noqa: E402
from stardist_hier.cli import main  # noqa: E402

NET = dict(n_rays=16, n_channel_in=3, grid=(2, 2), unet_n_depth=2, unet_n_filter_base=16, net_conv_after_unet=32,
           train_patch_size=(64, 64), train_batch_size=8, train_reduce_lr=None, train_learning_rate=3e-3)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    from stardist_hier import HierConfig2D, HierStarDist2D
    from stardist_hier.model.build import seed_everything
    from stardist_hier.synth import generate_all

    tmp = tmp_path_factory.mktemp("e2e")
    data = tmp / "data"
    generate_all(data, datasets=["monuseg"], counts={"train": 8, "val": 2, "test": 2}, size=128, seed=0,
                 progress=False)
    X, Y, C = P.load_split(data, "monuseg", "train")  # normalised by default
    Xv, Yv, _ = P.load_split(data, "monuseg", "val")
    seed_everything(0)
    model = HierStarDist2D(HierConfig2D(hierarchy="default", **NET), name="m", basedir=str(tmp / "models"))
    # classes='auto' and validation_data=(X, Y): MoNuSeg's label set has one class
    hist = model.train(X, Y, validation_data=(Xv, Yv), dataset="monuseg", epochs=4, steps_per_epoch=20, seed=0,
                       verbose=0)
    return dict(tmp=tmp, data=data, model=model, hist=hist, val=(Xv, Yv), classes=C)


def test_readme_path_scores_above_zero(e2e):
    tmp, data = e2e["tmp"], e2e["data"]
    assert np.all(np.isfinite(e2e["hist"].history["val_loss"]))
    rc = main(["evaluate", "--model", str(tmp / "models" / "m"), "--data", str(data), "--split", "test", "-q"])
    assert rc == 0
    summary = json.loads((tmp / "models" / "m" / "evaluation" / "monuseg_test_summary.json").read_text())
    assert summary["n_gt_nuclei"] > 0
    assert summary["bPQ_pannuke_tissue"] > 0


def test_default_label_set_is_the_training_dataset(e2e):
    from stardist_hier import HierStarDist2D

    model, tmp = e2e["model"], e2e["tmp"]
    assert model.config.default_label_set == "monuseg"
    assert json.loads((tmp / "models" / "m" / "hier_config.json").read_text())["default_label_set"] == "monuseg"
    img = e2e["val"][0][0]
    _, det = model.predict_instances(img, prob_thresh=0.3)
    n = len(det["prob"])
    assert n > 0 and det["label_set"] == "monuseg"
    np.testing.assert_array_equal(det["class_id"], np.ones(n, int))  # monuseg's one class id
    _, leaf = model.predict_instances(img, prob_thresh=0.3, label_set="leaves")
    assert leaf["label_set"] == "leaves"
    # leaf ids: arg-max over the 12 leaf channels, computed here from class_prob
    np.testing.assert_array_equal(leaf["class_id"], 1 + np.argmax(leaf["class_prob"][:, 1:], axis=1))
    reloaded = HierStarDist2D.from_folder(tmp / "models" / "m")
    assert reloaded.config.default_label_set == "monuseg"


def _order(det):
    return np.lexsort(det["points"].T[::-1])


def _sorted_rows(det):
    order = _order(det)
    return {k: np.asarray(v)[order] for k, v in det.items() if np.ndim(v) >= 1 and len(v) == len(det["prob"])}


@pytest.mark.parametrize("label_set,class_from", [("leaves", "instance"), ("pannuke", "center")])
def test_predict_instances_big_has_one_row_per_instance(e2e, label_set, class_from, monkeypatch):
    model = e2e["model"]
    (t0, t1), (v0, v1) = (P.load_split(e2e["data"], "monuseg", s)[0] for s in ("test", "val"))
    img = np.concatenate([np.concatenate([t0, t1], axis=1), np.concatenate([v0, v1], axis=1)], axis=0)
    assert img.shape == (256, 256, 3)
    kw = dict(prob_thresh=0.4, label_set=label_set, class_from=class_from)
    labels, whole = model.predict_instances(img, **kw)
    calls = []
    predict = model.predict_instances
    monkeypatch.setattr(model, "predict_instances", lambda *a, **k: calls.append(1) or predict(*a, **k))
    big_labels, big = model.predict_instances_big(img, axes="YXC", block_size=192, min_overlap=32, context=48,
                                                  show_progress=False, **kw)
    monkeypatch.undo()
    assert len(calls) >= 4  # at least 2 x 2 blocks
    n = len(big["prob"])
    assert n > 10
    for key in ("prob", "points", "coord", "class_prob", "class_id", "leaf_class_id", "label_set_prob"):
        assert len(big[key]) == n, key
    assert big["label_set"] == whole["label_set"]
    a, b = _sorted_rows(whole), _sorted_rows(big)
    np.testing.assert_array_equal(b["points"], a["points"])
    for key in ("class_id", "leaf_class_id"):
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    np.testing.assert_allclose(b["class_prob"], a["class_prob"], atol=1e-5)
    np.testing.assert_allclose(b["label_set_prob"], a["label_set_prob"], atol=1e-5)
    # the rows belong to the instances of the label image (instance i + 1 = row i): the same
    # label image as predict_instances', up to the order of the instances
    to_big = np.zeros(n + 1, int)
    to_big[1 + _order(whole)] = 1 + _order(big)
    np.testing.assert_array_equal(big_labels, to_big[labels])


def test_optimize_thresholds_on_a_hierarchical_model(e2e):
    model = e2e["model"]
    Xv, Yv = e2e["val"]
    out = model.optimize_thresholds(Xv, Yv, nms_threshs=[0.3, 0.5], iou_threshs=[0.5],
                                    optimize_kwargs=dict(tol=1e-2, maxiter=6))
    assert set(out) == {"prob", "nms"} and 0 < out["prob"] < 1 and out["nms"] in (0.3, 0.5)
    assert (model.thresholds.prob, model.thresholds.nms) == (out["prob"], out["nms"])
    saved = json.loads((e2e["tmp"] / "models" / "m" / "thresholds.json").read_text())
    assert saved == pytest.approx(out)
    # predictions use them, with the hierarchical class details intact
    labels, det = model.predict_instances(Xv[0])
    ref, _ = model.predict_instances(Xv[0], prob_thresh=out["prob"], nms_thresh=out["nms"])
    np.testing.assert_array_equal(labels, ref)
    assert det["label_set"] == "monuseg" and len(det["class_id"]) == len(det["prob"])
