"""``stardist-hier demo`` end to end on tiny sizes, and the claim benchmark's building blocks."""

import json

import numpy as np
import pandas as pd
import pytest

from stardist_hier.experiments.claim import VARIANTS, BenchSettings, FlattenedModel, load_split_data
from stardist_hier.experiments.claim_train import train_variants
from stardist_hier.experiments.flatten import coarse_node, flatten_classes, flatten_hierarchy, flatten_mask
from stardist_hier.cli import main
from stardist_hier.hierarchy import ClassHierarchy

#: every size as small as the runner accepts: 64 px tiles, 1 epoch of 2 steps per episode
TINY = ["--quick", "--size", "64", "--patch-size", "64", "--n-train", "3", "--n-val", "2", "--n-test", "2",
        "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--rays", "8", "--unet-filters", "8",
        "--overlay-images", "1", "--quiet"]

PNGS = ["fig3_loss_curves.png", "fig2_overlays_monusac.png", "fig4_overlays_unseen_monusac.png"]
ROWS = ["table2_row4_monusac_only", "table2_row6_pannuke_then_monusac", "table3_row1_consep_only_test_monusac",
        "table3_row2_consep_then_pannuke_test_monusac"]


def test_demo_quick_end_to_end_and_rerun_reuses(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "SYNTHETIC, MINIATURE" in text and "NOT comparable" in text
    for name in ROWS:
        assert (out / "runs" / name / "run.json").is_file()
    table = pd.read_csv(out / "demo_table.csv")
    assert list(table["table"]) == ["II", "II", "III", "III"]
    assert list(table["row"]) == [4, 6, 1, 2]
    assert list(table["test"]) == ["monusac"] * 4
    assert list(table["paper PQ"]) == [0.5789, 0.6018, 0.4333, 0.5631]
    for col in ("bPQ", "mPQ", "mPQ+", "PQ (CoNIC)"):
        assert table[col].between(0, 1).all()
    # each row's budget is on the table: epochs per episode and steps (2 per epoch)
    assert list(table["epochs run"]) == ["1", "1 + 1", "1", "1 + 1"]
    assert list(table["steps"]) == [2, 4, 2, 4]
    # thresholds tuned on the validation split of the row's last training dataset
    assert table["thresholds"].str.endswith(" tuned").all()
    for name, last in zip(ROWS, ["monusac", "monusac", "consep", "pannuke"]):
        info = json.loads((out / "runs" / name / "run.json").read_text())
        assert info["thresholds"]["tuned_on"] == f"{last}/val (2 images)"
        th = json.loads((out / "runs" / name / "model" / "thresholds.json").read_text())
        assert f"{th['prob']:.2f} / {th['nms']:.2f} tuned" == table.loc[ROWS.index(name), "thresholds"]
    assert "thresholds tuned on monusac/val (2 images)" not in text  # the runner is quiet at --verbose 0
    assert "Using optimized values" not in text  # nor is StarDist
    # the predicted nuclei are counted; a row without any says so
    assert (table["predicted nuclei"] >= 0).all()
    assert list(table["note"].fillna("") == "no nuclei detected") == list(table["predicted nuclei"] == 0)
    for name, note in zip(ROWS, table["note"].fillna("")):
        m = pd.read_csv(out / "runs" / name / "metrics.csv").iloc[0]
        assert (note != "") == (m["n_pred_nuclei"] == 0 or m["F1_det"] == 0)
    # "from the cache" only where an episode came from it (III-2 reuses III-1's CoNSeP)
    lines = {n: next(line for line in text.splitlines() if line.startswith(f"[{n}]")) for n in ROWS}
    assert lines[ROWS[0]].endswith("(1 epoch trained)")
    assert lines[ROWS[3]].endswith("(1 epoch trained, 1 from the cache)")
    assert "the rest from the cache" not in text
    # the printed table is the written one
    assert "pannuke 250 -> monusac 130" in text and "0.6018" in text
    md = (out / "demo_table.md").read_text()
    assert "SYNTHETIC" in md and "| II | 6 |" in md
    for png in PNGS:
        with Image.open(out / png) as im:
            im.verify()
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 100
    # III-1 and III-2 share the CoNSeP episode through the runner's cache
    info = json.loads((out / "runs" / ROWS[3] / "run.json").read_text())
    assert info["episodes"][0]["reused"] is True

    stamps = {n: (out / "runs" / n / "run.json").stat().st_mtime_ns for n in ROWS}
    assert main(["demo", "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "4 runs (4 reused)" in text
    assert {n: (out / "runs" / n / "run.json").stat().st_mtime_ns for n in ROWS} == stamps
    assert pd.read_csv(out / "demo_table.csv").equals(table)


def test_demo_rejects_bad_sizes(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--quick", "--size", "64", "--patch-size", "96"]) == 2
    assert "patch_size" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--quick", "--threshold-images", "-1"]) == 2
    assert "threshold_images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # one flag scheme: -q and -v exclude each other
        main(["demo", "--out", str(tmp_path), "--quick", "-q", "-v"])
    assert e.value.code == 2
    assert not (tmp_path / "runs").exists()


def test_demo_table_says_budget_thresholds_and_no_detections():
    """The table from run results made by hand: a row that predicted no nucleus is
    explained, budgets and thresholds are shown, untuned thresholds say 'default'."""
    from types import SimpleNamespace

    from stardist_hier.experiments.demo import demo_table, format_demo_table
    from stardist_hier.metrics.folder import HEADLINE_METRICS

    def run(table, row, n_pred, epochs_run, tuned, f1=0.5):
        metrics = pd.DataFrame([dict(dataset="monusac", n_pred_nuclei=n_pred, F1_det=0.0 if n_pred == 0 else f1,
                                     **{key: (0.0 if n_pred == 0 else 0.25) for _, key in HEADLINE_METRICS})])
        th = dict(prob=0.31, nms=0.3, tuned_on="monusac/val (8 images)") if tuned else dict(prob=0.5, nms=0.4,
                                                                                           tuned_on=None)
        info = dict(seconds=12.0, steps_per_epoch=25, thresholds=th,
                    episodes=[dict(epochs=7, epochs_run=e, reused=False, trained_epochs=e) for e in epochs_run])
        return SimpleNamespace(config=dict(paper_row=dict(table=table, row=row), steps_per_epoch=25), metrics=metrics,
                               info=info)

    t = demo_table({"a": run(2, 4, 0, [7], True), "b": run(2, 6, 40, [10, 6], False), "c": run(3, 1, 15, [4], True, 0)})
    assert list(t["note"]) == ["no nuclei detected", "", "no predicted nucleus matches an annotated one"]
    assert list(t["predicted nuclei"]) == [0, 40, 15]
    t = t.iloc[:2]
    assert list(t["epochs run"]) == ["7", "10 + 6"] and list(t["steps"]) == [175, 400]
    assert list(t["thresholds"]) == ["0.31 / 0.30 tuned", "0.50 / 0.40 default"]
    assert [c for c in t.columns if c in dict(HEADLINE_METRICS)] == [label for label, _ in HEADLINE_METRICS]
    text = format_demo_table(t)
    assert "no nuclei detected" in text and "budgets" in text and "NaN" not in text


def test_flatten_maps_labels_to_depth1_ancestors():
    flat = flatten_hierarchy("default", depth=1)
    fh = flat.hierarchy
    assert fh.root == "nucleus"
    assert fh.leaves == ["epithelial", "inflammatory", "connective", "other"]
    # hand-written from the default hierarchy and its label sets
    assert fh.label_set("pannuke").nodes == {1: "epithelial", 2: "inflammatory", 3: "connective", 4: "other"}
    assert flat.lookup["pannuke"].tolist() == [0, 1, 2, 3, 4, 1]  # neoplastic, inflamm., connective, dead, epith.
    assert fh.label_set("monusac").nodes == {1: "epithelial", 2: "inflammatory"}
    assert flat.lookup["monusac"].tolist() == [0, 1, 2, 2, 2]  # epithelial, lymphocyte, neutrophil, macrophage
    assert fh.label_set("consep").nodes == {1: "epithelial", 2: "inflammatory", 3: "connective", 4: "other"}
    assert flat.lookup["consep"].tolist() == [0, 4, 2, 1, 1, 3, 3, 3]  # other, inflamm., 2 epith., 3 connective
    # a label above the cut keeps its node (MoNuSeg's root label)
    assert fh.label_set("monuseg").nodes == {1: "nucleus"}
    assert flat.lookup["monuseg"].tolist() == [0, 1]

    h = ClassHierarchy.default()
    assert coarse_node(h, "macrophage") == "inflammatory"
    assert coarse_node(h, "inflammatory") == "inflammatory"
    assert coarse_node(h, "nucleus") == "nucleus"

    classes = [{1: 3, 2: None, 3: 7}, {}]
    assert flatten_classes(classes, flat.lookup["consep"]) == [{1: 1, 2: None, 3: 3}, {}]
    mask = np.zeros((4, 4, 2), np.int32)
    mask[0, :, 0], mask[0, :, 1] = 1, 5
    mask[1, :, 0], mask[1, :, 1] = 2, 1
    mask[2, :2, 0] = -1  # an ignore region keeps its ids
    out = flatten_mask(mask, flat.lookup["consep"])
    assert out[0, 0, 1] == 3 and out[1, 0, 1] == 4 and out[3, 0, 1] == 0
    assert np.array_equal(out[..., 0], mask[..., 0])


class _FakeCoarse:
    """Stands in for a model trained on the depth-1 hierarchy: fixed coarse probabilities."""

    def __init__(self, prob):
        self.prob = np.asarray(prob, float)

    def predict_instances(self, img, **kwargs):
        labels = np.zeros((4, 4), np.int32)
        for i in range(len(self.prob)):
            labels[i, 0] = i + 1
        return labels, {"class_prob": self.prob, "class_id": np.zeros(len(self.prob), int)}


def test_flattened_model_scores_at_the_target_label_set():
    flat = flatten_hierarchy()
    h = ClassHierarchy.default()
    # channels: background, epithelial, inflammatory, connective, other
    prob = [[0.1, 0.6, 0.2, 0.1, 0.0],   # epithelial -> PanNuke's more frequent epithelial class
            [0.1, 0.1, 0.2, 0.6, 0.0],   # connective
            [0.0, 0.1, 0.0, 0.2, 0.7]]   # other -> PanNuke's dead
    counts = {"pannuke": {1: 30, 5: 10, 2: 5}, "monusac": {1: 3, 2: 1, 3: 9, 4: 2}}
    m = FlattenedModel(_FakeCoarse(prob), flat, h, counts)
    _, d = m.predict_instances(None, label_set="pannuke")
    assert d["class_id"].tolist() == [1, 3, 4]  # malignant (30 > 10 healthy), connective, dead
    m.class_counts["pannuke"] = {1: 10, 5: 30}
    _, d = m.predict_instances(None, label_set="pannuke")
    assert d["class_id"].tolist()[0] == 5
    # MoNuSAC annotates neither connective nor other: their mass is dropped, as for the
    # hierarchical model, and the inflammatory tie goes to the most frequent (neutrophil, 3)
    _, d = m.predict_instances(None, label_set="monusac")
    assert d["class_id"].tolist() == [1, 3, 1]
    # MoNuSeg's root class collects every coarse class
    _, d = m.predict_instances(None, label_set="monuseg")
    assert d["class_id"].tolist() == [1, 1, 1]
    assert d["class_prob"] is None  # the evaluation then reads class_id


def test_every_variant_trains_on_tiny_data(tmp_path):
    from stardist_hier.synth import generate_all

    generate_all(tmp_path, ["pannuke", "monusac"], counts=dict(train=2, val=1, test=1), size=64, seed=0,
                 progress=False)
    data = {ds: load_split_data(tmp_path, ds, "train") + load_split_data(tmp_path, ds, "val")
            for ds in ("pannuke", "monusac")}
    s = BenchSettings(max_epochs=1, steps_per_epoch=1)
    s.model.update(n_rays=8, unet_n_filter_base=8, net_conv_after_unet=8, train_patch_size=(64, 64),
                   train_batch_size=1)
    seen = []

    def on_model(variant, model, history, seconds):
        labels, details = model.predict_instances(data["monusac"][0][0], label_set="monusac")
        assert labels.shape == (64, 64)
        hist = history if "loss" in history else history["finetune"]
        assert len(hist["loss"]) == 1
        if variant == "mixed":
            assert "val_loss_monusac" in history  # validated on the target alone
        if variant in ("finetune", "reinit_head", "flatten"):
            assert len(history["pretrain"]["loss"]) == 1
        if variant == "flatten":
            assert isinstance(model, FlattenedModel) and model.model.config.n_classes == 4
        else:
            assert model.config.n_classes == 12
        seen.append(variant)

    train_variants("monusac", "pannuke", data, s, seed=0, variants=list(VARIANTS), on_model=on_model)
    assert sorted(seen) == sorted(VARIANTS)
    with pytest.raises(ValueError, match="unknown variant"):
        train_variants("monusac", "pannuke", data, s, seed=0, variants=["nope"], on_model=on_model)


def test_demo_figures_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """An interrupted figure write leaves the previous PNG, never a half-written one."""
    from matplotlib.figure import Figure

    from stardist_hier.experiments.demo import write_figures

    first = write_figures(tmp_path / "no-runs", tmp_path, n_images=1)  # panels say 'not run'
    before = {p: p.read_bytes() for p in first}

    def interrupted(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_figures(tmp_path / "no-runs", tmp_path, n_images=1)
    assert {p: p.read_bytes() for p in first} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".png") == sorted(PNGS)
