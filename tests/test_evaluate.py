"""Folder-level evaluation, its outputs, the CLI, the model mode and bad inputs."""

import json
import math
import sys
import types

import numpy as np
import pandas as pd
import pytest
import tifffile

from stardist_hier import metrics as M
from stardist_hier import patches as P
from stardist_hier.metrics import folder as E
from stardist_hier.cli import main
from stardist_hier.hierarchy import ClassHierarchy, HierarchyError


def _blobs(rng, n=30, size=256):
    inst = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    for k in range(1, n + 1):
        cy, cx = rng.integers(0, size, 2)
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(2, 6) ** 2] = k
    return P.relabel_instances(inst)


@pytest.fixture
def folder(tmp_path):
    """A pannuke-like test split of 5 patches, with predictions saved as TIFFs."""
    rng = np.random.default_rng(0)
    root, pdir = tmp_path / "data", tmp_path / "preds"
    gts, preds, rows = [], [], []
    for i in range(5):
        inst = _blobs(rng)
        if i == 4:
            inst[:, :10] = -1  # an ignore band
        table = rng.integers(1, 6, max(int(inst.max()), 0) + 1)
        table[0] = 0
        mask = np.stack([inst, table[np.maximum(inst, 0)]], -1)
        P.write_patch(root, "pannuke", "test", f"p{i}", rng.integers(0, 255, (256, 256, 3)).astype(np.uint8), mask)
        pred = np.roll(np.maximum(inst, 0), 1, 0)
        ptable = table.copy()
        ptable[1::3] = 1
        E.write_prediction(pdir / f"p{i}.tif", pred, ptable)
        gts.append(mask)
        preds.append(np.stack([pred, ptable[pred]], -1))
        rows.append(dict(patch_id=f"p{i}", split="test", tissue=["Breast", "Colon"][i % 2], label_set="pannuke"))
    P.write_index(root, "pannuke", rows)
    return dict(root=root, pdir=pdir, gts=gts, preds=preds, tissues=[r["tissue"] for r in rows], tmp=tmp_path)


def test_folder_equals_in_memory_and_writes_outputs(folder):
    ls = ClassHierarchy.default().label_set("pannuke")
    res = E.evaluate_folder(folder["root"], "test", "pannuke", predictions=folder["pdir"], progress=False)
    want, _ = M.evaluate_arrays(folder["gts"], folder["preds"], class_ids=ls, tissues=folder["tissues"])
    for k, v in want.items():
        assert (math.isnan(v) and math.isnan(res.summary[k])) if isinstance(v, float) and math.isnan(v) \
            else res.summary[k] == pytest.approx(v, abs=1e-12), k
    assert res.summary["n_tissues"] == 2 and res.summary["label_set"] == "pannuke"
    assert "PQ+_malignant_epithelial" in res.summary
    paths = E.write_results(res, folder["tmp"] / "out")
    per = pd.read_csv(paths["per_image"])
    assert per["image"].tolist() == [f"p{i}" for i in range(5)] and per["tissue"].tolist()[:2] == ["Breast", "Colon"]
    summ = pd.read_csv(paths["summary_csv"])
    assert len(summ) == 1 and summ["bPQ_pannuke_tissue"][0] == pytest.approx(res.summary["bPQ_pannuke_tissue"])
    doc = json.loads(paths["summary_json"].read_text())
    assert doc["n_images"] == 5 and "conventions" in doc
    assert not list((folder["tmp"] / "out").glob(".*"))  # no temporary files left
    assert "bPQ_pannuke_tissue" in E.format_summary(res)


def test_nan_is_null_in_json(folder, tmp_path):
    res = E.evaluate_folder(folder["root"], "test", "pannuke", predictions=folder["pdir"], progress=False)
    res.summary["PQ_pannuke_dead"] = float("nan")
    doc = json.loads(E.write_results(res, tmp_path)["summary_json"].read_text())
    assert doc["PQ_pannuke_dead"] is None


def test_coarser_label_set(folder):
    # GT in PanNuke ids scored at MoNuSeg's single class: predictions carry id 1
    pdir = folder["tmp"] / "preds_monuseg"
    for i, p in enumerate(folder["preds"]):
        E.write_prediction(pdir / f"p{i}.tif", p[..., 0], np.where(p[..., 0] > 0, 1, 0))
    res = E.evaluate_folder(folder["root"], "test", "pannuke", predictions=pdir, label_set="monuseg", progress=False)
    assert res.summary["gt_label_set"] == "pannuke" and res.stem == "pannuke_test_at_monuseg"
    assert res.summary["mPQ+_conic"] == pytest.approx(res.summary["PQ+_nucleus"])
    # every nucleus is in the one class: its PQ+ is the class-agnostic summed PQ
    assert res.summary["PQ+_nucleus"] == pytest.approx(res.summary["DQ_summed"] * res.summary["SQ_summed"])


def test_cli_predictions(folder, capsys):
    out = folder["tmp"] / "cli_out"
    rc = main(["evaluate", "--predictions", str(folder["pdir"]), "--data", str(folder["root"]), "--split", "test",
               "--dataset", "pannuke", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mPQ+_conic" in text and "healthy_epithelial" in text
    assert (out / "pannuke_test_summary.json").is_file()


def _run_cli(args, capsys):
    rc = main(["evaluate", *map(str, args), "--no-progress"])
    return rc, capsys.readouterr().err


def test_bad_inputs_name_file_and_problem(folder, capsys):
    root, pdir = folder["root"], folder["pdir"]
    base = ["--predictions", pdir, "--data", root, "--dataset", "pannuke"]
    # a missing prediction
    (pdir / "p3.tif").rename(folder["tmp"] / "p3.tif")
    rc, err = _run_cli(base, capsys)
    assert rc == 1 and "have no prediction" in err and "p3" in err
    (folder["tmp"] / "p3.tif").rename(pdir / "p3.tif")
    # a prediction without ground truth
    E.write_prediction(pdir / "zzz.tif", np.zeros((256, 256), np.int32))
    rc, err = _run_cli(base, capsys)
    assert rc == 1 and "no ground truth" in err and "zzz" in err
    (pdir / "zzz.tif").unlink()
    # wrong shape
    good = tifffile.imread(pdir / "p1.tif")
    tifffile.imwrite(pdir / "p1.tif", good[:32])
    rc, err = _run_cli(base, capsys)
    assert rc == 1 and "p1.tif" in err and "shape" in err
    # non-integer prediction
    tifffile.imwrite(pdir / "p1.tif", good.astype(np.float32))
    rc, err = _run_cli(base, capsys)
    assert rc == 1 and "p1.tif" in err and "integer" in err
    # class id outside the label set
    bad = good.copy()
    bad[..., 1][bad[..., 0] > 0] = 9
    tifffile.imwrite(pdir / "p1.tif", bad)
    rc, err = _run_cli(base, capsys)
    assert rc == 1 and "p1.tif" in err and "[9]" in err and "pannuke" in err
    tifffile.imwrite(pdir / "p1.tif", good)
    # unknown label set
    rc, err = _run_cli(base + ["--label-set", "nosuch"], capsys)
    assert rc == 1 and "unknown label set 'nosuch'" in err
    # non-integer GT mask
    mpath = P.patch_path(root, "pannuke", "test", "masks", "p2")
    gmask = tifffile.imread(mpath)
    tifffile.imwrite(mpath, gmask.astype(np.float32))
    rc, err = _run_cli(base, capsys)
    assert rc == 1 and "p2" in err and "integer" in err
    # GT class id outside the dataset's label set
    gbad = gmask.copy()
    gbad[..., 1][gbad[..., 0] > 0] = 8
    tifffile.imwrite(mpath, gbad)
    rc, err = _run_cli(base, capsys)
    assert rc == 1 and "p2.tif" in err and "[8]" in err
    tifffile.imwrite(mpath, gmask)
    assert _run_cli(base, capsys)[0] == 0


def test_several_datasets_need_dataset_for_predictions(folder, capsys):
    img = np.zeros((256, 256, 3), np.uint8)
    P.write_patch(folder["root"], "monusac", "test", "m0", img, np.zeros((256, 256, 2), np.int32))
    rc, err = _run_cli(["--predictions", folder["pdir"], "--data", folder["root"]], capsys)
    assert rc == 1 and "--dataset" in err
    with pytest.raises(E.EvaluationError, match="not found"):
        E.find_datasets(folder["root"], "test", "lizard")
    assert E.find_datasets(folder["root"] / "pannuke", "test") == (folder["root"], ["pannuke"])


class FakeModel:
    """predict_instances returning the GT shifted by one pixel, with leaf probabilities
    whose arg-max leaf (healthy_epithelial) differs from the largest summed class (inflammatory)."""

    name = "fake"

    def __init__(self, gts):
        self.hierarchy = ClassHierarchy.default()
        self.gts = list(gts)
        self.calls = []

    def predict_instances(self, img, label_set=None):
        assert img.dtype.kind == "f" and img.max() <= 1.5  # normalised
        self.calls.append(label_set)
        gt = self.gts[len(self.calls) - 1][..., 0]
        lab = np.roll(np.maximum(gt, 0), 1, 0)
        lab = P.relabel_instances(lab)
        n = int(lab.max())
        h = self.hierarchy
        prob = np.zeros((n, h.n_classes + 1))
        infl = list(h.leaf_channels("inflammatory"))
        prob[:, infl[0]] = prob[:, infl[1]] = 0.3
        prob[:, h.leaf_index["healthy_epithelial"]] = 0.4
        # a model answers in the label set asked for, with the one class rule (HierStarDist2D
        # does); the evaluation scores class_id as returned
        return lab, dict(class_prob=prob, class_id=h.label_set(label_set).classify(prob))


def test_model_mode_collapses_leaf_probabilities(folder, tmp_path):
    model = FakeModel(folder["gts"])
    res = E.evaluate_folder(folder["root"], "test", "pannuke", model=model, progress=False,
                            save_predictions=tmp_path / "saved")
    assert model.calls == ["pannuke"] * 5
    assert res.summary["n_pred_inflammatory"] == res.summary["n_pred_nuclei"] > 0
    assert res.summary["n_pred_healthy_epithelial"] == 0
    # the saved predictions score the same without the model
    again = E.evaluate_folder(folder["root"], "test", "pannuke", predictions=tmp_path / "saved", progress=False)
    assert again.summary["mPQ+_conic"] == res.summary["mPQ+_conic"]


def test_cli_model_mode(folder, monkeypatch, capsys):
    made = {}

    class Loader(FakeModel):
        def __init__(self, config, name, basedir):
            made.update(config=config, name=name, basedir=basedir)
            super().__init__(folder["gts"])

    fake = types.ModuleType("stardist_hier.model")
    fake.HierStarDist2D = Loader
    monkeypatch.setitem(sys.modules, "stardist_hier.model", fake)
    mdir = folder["tmp"] / "models" / "m1"
    mdir.mkdir(parents=True)
    rc = main(["evaluate", "--model", str(mdir), "--data", str(folder["root"]), "--split", "test", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert made == dict(config=None, name="m1", basedir=str(mdir.parent))
    assert (mdir / "evaluation" / "pannuke_test_summary.csv").is_file()


def test_normalize_image_is_stardist_examples():
    from csbdeep.utils import normalize

    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8)
    np.testing.assert_array_equal(P.normalize_image(img), normalize(img, 1, 99.8, axis=(0, 1)))


def test_read_prediction_planar_and_negative(tmp_path):
    a = np.zeros((2, 8, 8), np.int32)
    a[0, 2:4, 2:4] = 1
    tifffile.imwrite(tmp_path / "a.tif", a)
    assert E.read_prediction(tmp_path / "a.tif").shape == (8, 8, 2)
    a[0, 0, 0] = -1
    tifffile.imwrite(tmp_path / "b.tif", a)
    with pytest.raises(E.EvaluationError, match="b.tif: negative instance ids"):
        E.read_prediction(tmp_path / "b.tif")


def test_unknown_dataset_label_set(tmp_path):
    P.write_patch(tmp_path, "mine", "test", "x", np.zeros((256, 256, 3), np.uint8), np.zeros((256, 256, 2), np.int32))
    E.write_prediction(tmp_path / "p" / "x.tif", np.zeros((256, 256), np.int32))
    with pytest.raises(HierarchyError, match="no label set"):
        E.evaluate_folder(tmp_path, "test", "mine", predictions=tmp_path / "p", progress=False)
    res = E.evaluate_folder(tmp_path, "test", "mine", predictions=tmp_path / "p", label_set="monuseg", progress=False)
    assert res.summary["n_images"] == 1 and math.isnan(res.summary["bPQ_pannuke_tissue"])


def test_missing_split_lists_the_splits_that_exist(folder, capsys):
    root = folder["root"]
    P.write_patch(root, "pannuke", "fold1", "f0", np.zeros((256, 256, 3), np.uint8), np.zeros((256, 256, 2), np.int32))
    for data, dataset in [(root, "pannuke"), (root / "pannuke", None), (root / "pannuke", "pannuke")]:
        with pytest.raises(E.EvaluationError) as e:
            E.find_datasets(data, "val", dataset)
        assert "no split 'val'" in str(e.value) and "its splits: fold1, test" in str(e.value)
    with pytest.raises(E.EvaluationError, match=r"splits present: pannuke: fold1, test"):
        E.find_datasets(root, "val")
    rc, err = _run_cli(["--predictions", folder["pdir"], "--data", root, "--dataset", "pannuke", "--split", "val"], capsys)
    assert rc == 1 and err.startswith("error: ") and "its splits: fold1, test" in err and len(err.splitlines()) == 1
