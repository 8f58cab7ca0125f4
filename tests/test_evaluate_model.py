"""`stardist-hier evaluate --model` with a real (untrained, tiny) HierStarDist2D."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from stardist_hier import metrics as M  # noqa: E402
from stardist_hier import patches as P  # noqa: E402
from stardist_hier.metrics import folder as E  # noqa: E402
from stardist_hier.cli import main  # noqa: E402

TINY = dict(n_rays=8, n_channel_in=3, grid=(2, 2), unet_n_depth=2, unet_n_filter_base=8, net_conv_after_unet=16)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from stardist_hier.model import HierConfig2D, HierStarDist2D

    tmp = tmp_path_factory.mktemp("evalmodel")
    model = HierStarDist2D(HierConfig2D(hierarchy="default", **TINY), name="tiny", basedir=str(tmp / "models"))
    model.keras_model.save_weights(str(tmp / "models" / "tiny" / "weights_best.weights.h5"))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    for i in range(2):
        inst = np.zeros((256, 256), np.int32)
        img = np.full((256, 256, 3), 220, np.uint8)
        for k in range(1, 15):
            cy, cx = rng.integers(10, 246, 2)
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= 49
            inst[m], img[m] = k, (90, 40, 140)
        inst = P.relabel_instances(inst)
        cls = np.where(inst > 0, 1 + inst % 5, 0)
        P.write_patch(tmp / "data", "pannuke", "test", f"t{i}", img, np.stack([inst, cls], -1))
    return dict(tmp=tmp, model=model)


def test_cli_model_mode_with_real_model(setup, capsys):
    tmp = setup["tmp"]
    rc = main(["evaluate", "--model", str(tmp / "models" / "tiny"), "--data", str(tmp / "data"), "--split", "test",
               "--no-progress", "--save-predictions", str(tmp / "saved")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp / "models" / "tiny" / "evaluation" / "pannuke_test_summary.json").is_file()
    assert sorted(p.name for p in (tmp / "saved").glob("*.tif")) == ["t0.tif", "t1.tif"]


# PanNuke's classes and the leaves under them, written out from the default hierarchy's YAML
# (leaf channel = position in this list + 1)
LEAVES = ["healthy_epithelial", "malignant_epithelial", "lymphocyte", "plasma_cell", "neutrophil", "eosinophil",
          "macrophage", "fibroblast", "muscle", "endothelial", "dead", "miscellaneous"]
PANNUKE = {1: ["malignant_epithelial"], 2: ["lymphocyte", "plasma_cell", "neutrophil", "eosinophil", "macrophage"],
           3: ["fibroblast", "muscle", "endothelial"], 4: ["dead"], 5: ["healthy_epithelial"]}


def reference_classes(class_prob):
    """PanNuke class ids from leaf probabilities: sum the leaves of each class, arg-max (ties: smaller id)."""
    sums = np.stack([class_prob[:, [1 + LEAVES.index(l) for l in PANNUKE[c]]].sum(1) for c in sorted(PANNUKE)], 1)
    return 1 + np.argmax(sums, axis=1)


def test_model_classes_are_scored_as_the_model_returns_them(setup):
    tmp, model = setup["tmp"], setup["model"]
    assert list(model.hierarchy.leaves) == LEAVES
    res = E.evaluate_folder(tmp / "data", "test", "pannuke", model=model, progress=False,
                            predict_kwargs=dict(prob_thresh=0.05), save_predictions=tmp / "low")
    assert res.summary["n_images"] == 2
    img, _ = P.read_patch(tmp / "data", "pannuke", "test", "t0")
    labels, details = model.predict_instances(P.normalize_image(img), label_set="pannuke", prob_thresh=0.05)
    saved = E.read_prediction(tmp / "low" / "t0.tif")
    np.testing.assert_array_equal(saved[..., 0], labels)
    ids = np.unique(labels[labels > 0])
    assert ids.size > 0  # a low threshold: the untrained net still yields instances
    got = M.instance_classes(saved[..., 0], saved[..., 1], ids)
    np.testing.assert_array_equal(got, details["class_id"][ids - 1])
    # the model's class rule, against a reference written here
    np.testing.assert_array_equal(details["class_id"], reference_classes(details["class_prob"]))


class _RelabelledModel:
    """The real model with ``class_id`` replaced by other valid ids: the evaluation must use them."""

    def __init__(self, model):
        self.model, self.hierarchy, self.name = model, model.hierarchy, "relabelled"

    def predict_instances(self, img, **kw):
        labels, details = self.model.predict_instances(img, **kw)
        details = dict(details, class_id=1 + (np.arange(len(details["prob"])) % 5))
        return labels, details


def test_evaluation_does_not_recompute_the_class(setup):
    tmp = setup["tmp"]
    fake = _RelabelledModel(setup["model"])
    E.evaluate_folder(tmp / "data", "test", "pannuke", model=fake, progress=False,
                      predict_kwargs=dict(prob_thresh=0.05), save_predictions=tmp / "fake")
    saved = E.read_prediction(tmp / "fake" / "t1.tif")
    ids = np.unique(saved[..., 0][saved[..., 0] > 0])
    assert ids.size > 5
    got = M.instance_classes(saved[..., 0], saved[..., 1], ids)
    np.testing.assert_array_equal(got, 1 + ((ids - 1) % 5))


def test_model_class_ids_outside_the_label_set_are_an_error(setup):
    tmp = setup["tmp"]

    class Bad(_RelabelledModel):
        def predict_instances(self, img, **kw):
            labels, details = self.model.predict_instances(img, **kw)
            return labels, dict(details, class_id=np.full(len(details["prob"]), 9))

    with pytest.raises(Exception, match=r"\[9\] not in label set 'pannuke'"):
        E.evaluate_folder(tmp / "data", "test", "pannuke", model=Bad(setup["model"]), progress=False,
                          predict_kwargs=dict(prob_thresh=0.05))
