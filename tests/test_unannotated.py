"""Non-exhaustive label sets (issue 12, section 3): the marginal class target and losses, and
the set-aside of nuclei predicted in classes a dataset does not annotate, against numpy."""

import numpy as np
import pytest

from stardist_hier import patches as P
from stardist_hier.hierarchy import ClassHierarchy
from stardist_hier.metrics import evaluate_image
from stardist_hier.metrics import folder as E

# a tree with a label set that annotates a1 and B, declares a2 and c unannotated and leaves a3
# uncovered (annotated: the dataset has none)
TREE = {
    "hierarchy": {"root": {"A": {"a1": None, "a2": None, "a3": None}, "B": {"b1": None, "b2": None}, "c": None}},
    "label_sets": {
        "partial": {1: "a1", 2: "B", "unannotated": ["a2", "c"]},
        "full": {1: "A", 2: "B", 3: "c"},
    },
}
H = ClassHierarchy.from_dict(TREE)
N_OUT = H.n_classes + 1
CH = {leaf: i + 1 for i, leaf in enumerate(["a1", "a2", "a3", "b1", "b2", "c"])}  # leaf channels, written out
#: per label set: class id -> leaf channels; 0 -> background class as the marginal form reads it
CLASSES = {"partial": {1: [CH["a1"]], 2: [CH["b1"], CH["b2"]]}, "full": {1: [1, 2, 3], 2: [4, 5], 3: [6]}}
UNANNOTATED = {"partial": [CH["a2"], CH["c"]], "full": []}


def label_image(rng, shape, n_ids=6):
    y = rng.integers(0, n_ids + 1, shape).astype(np.int32)
    y[0, 0] = -1  # an ignore pixel
    return y


def test_encoder_marginal_admits_background_or_an_unannotated_leaf():
    from stardist_hier.model.targets import ClassTargetEncoder

    rng = np.random.default_rng(0)
    y = label_image(rng, (6, 7))
    classes = {1: 1, 2: 2, 3: None, 4: 1, 5: 2, 6: 2}
    ls = H.label_set("partial")
    assert list(ls.unannotated_channels) == UNANNOTATED["partial"]
    neg = y < 0
    today = ClassTargetEncoder(N_OUT).encode(y, classes, ls, neg_mask=neg)
    marg = ClassTargetEncoder(N_OUT, unannotated_mode="marginal").encode(y, classes, ls, neg_mask=neg)
    for t, marginal in ((today, False), (marg, True)):
        for idx in np.ndindex(y.shape):
            k = y[idx]
            expect = np.zeros(N_OUT)
            if k < 0:
                expect[:] = -1
            elif k == 0:
                expect[0] = 1
                if marginal:
                    expect[UNANNOTATED["partial"]] = 1
            elif classes[k] is None:
                expect[1:] = -1
            else:
                expect[CLASSES["partial"][classes[k]]] = 1
            np.testing.assert_array_equal(t[idx][:N_OUT], expect, err_msg=str((idx, k, marginal)))
        groups = np.full(N_OUT, -1)
        groups[0] = 0
        groups[CH["a1"]] = 1
        groups[[CH["b1"], CH["b2"]]] = 2
        if marginal:
            groups[UNANNOTATED["partial"]] = 0  # background class of the marginal form; a3 stays uncovered
        np.testing.assert_array_equal(t[..., N_OUT:], np.broadcast_to(groups, y.shape + (N_OUT,)))
    # an exhaustive label set is encoded the same in both modes
    full = H.label_set("full")
    cf = {i: 1 + i % 3 for i in range(1, 7)}
    np.testing.assert_array_equal(ClassTargetEncoder(N_OUT).encode(y, cf, full, neg_mask=neg),
                                  ClassTargetEncoder(N_OUT, unannotated_mode="marginal").encode(y, cf, full, neg_mask=neg))
    with pytest.raises(ValueError, match="unannotated_mode"):
        ClassTargetEncoder(N_OUT, unannotated_mode="ignore")


def test_generator_passes_the_mode():
    from stardist_hier.model.targets import HierStarDistData2D

    y = np.zeros((32, 32), np.int32)
    y[4:12, 4:12], y[20:28, 18:26] = 1, 2
    x = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    data = HierStarDistData2D([x], [y], hierarchy=H, label_sets="partial", classes=[{1: 1, 2: 2}], batch_size=1,
                              n_rays=8, length=1, patch_size=(32, 32), grid=(2, 2), unannotated_mode="marginal")
    _, (_, _, target) = data[0]
    bg = target[0][..., 0] == 1
    assert bg.any() and np.all(target[0][bg][:, UNANNOTATED["partial"]] == 1)


# ---------------------------------------------------------------------------------------
# the losses on marginal targets


def ref_marginal(labels, probs, name, w, alpha=0.7, gamma=0.75, uncovered_fp=False, eps=1e-6):
    """Per pixel Eq. 2 + Eq. 4 with the background class {0} + unannotated leaves (float64)."""
    classes = [[0] + UNANNOTATED[name]] + [CLASSES[name][k] for k in sorted(CLASSES[name])]
    covered = sorted(c for S in classes for c in S)
    out = np.zeros(labels.shape)
    for idx in np.ndindex(labels.shape):
        k = labels[idx]
        if k < 0:
            continue
        y = probs[idx].astype(np.float64)
        S = classes[k]
        p = y / np.sum(y + 1e-7)
        wS = w[0] if k == 0 else np.mean(w[S])
        ce = -wS * np.log(np.clip(p[S].sum(), 1e-7, 1 - 1e-7))
        den = y.sum() if uncovered_fp else y[covered].sum()
        ti = (y[S].sum() + len(classes) * eps) / (alpha + (1 - alpha) * den + eps)
        out[idx] = ce + max(1 - ti, eps) ** gamma
    return out


def ref_marginal_classwise(labels, probs, name, alpha=0.7, gamma=0.75, eps=1e-6):
    classes = [[0] + UNANNOTATED[name]] + [CLASSES[name][k] for k in sorted(CLASSES[name])]
    valid = labels >= 0
    terms = []
    for d, S in enumerate(classes):
        Y = probs[..., S].astype(np.float64).sum(-1)
        t = (labels == d).astype(np.float64)
        tp, fn, fp = (t * Y)[valid].sum(), (t * (1 - Y))[valid].sum(), ((1 - t) * Y)[valid].sum()
        terms.append(max(1 - (tp + eps) / (tp + alpha * fn + (1 - alpha) * fp + eps), eps) ** gamma)
    return np.mean(terms)


def marginal_batch(rng, shape=(2, 5, 6)):
    from stardist_hier.model.targets import ClassTargetEncoder

    labels = rng.integers(-1, 3, shape)  # per pixel: a class id of 'partial' (0 background), -1 ignore
    enc = ClassTargetEncoder(N_OUT, unannotated_mode="marginal")
    ls = H.label_set("partial")
    y = np.stack([enc.encode(np.where(lab > 0, np.arange(lab.size).reshape(lab.shape) + 1, 0),
                             {int(i) + 1: int(c) for i, c in enumerate(lab.ravel()) if c > 0}, ls, neg_mask=lab < 0)
                  for lab in labels])
    probs = rng.dirichlet(np.full(N_OUT, 0.6), size=shape).astype(np.float32)
    probs[0, 0, 1] = np.eye(N_OUT)[CH["c"]]  # certain of an unannotated leaf
    return labels, y, probs


def test_marginal_losses_against_numpy():
    tf = pytest.importorskip("tensorflow")
    from stardist_hier.model.losses import hierarchical_class_loss, modified_focal_tversky

    rng = np.random.default_rng(1)
    labels, y, probs = marginal_batch(rng)
    w = rng.uniform(0.5, 2, N_OUT)
    for fp in (False, True):
        ours = np.asarray(hierarchical_class_loss(w, N_OUT, uncovered_fp=fp)(tf.constant(y), tf.constant(probs)))
        np.testing.assert_allclose(ours, ref_marginal(labels, probs, "partial", w, uncovered_fp=fp), rtol=1e-5,
                                   atol=1e-6)
    cw = np.asarray(modified_focal_tversky(N_OUT, mode="classwise")(tf.constant(y), tf.constant(probs)))
    for b in range(labels.shape[0]):
        np.testing.assert_allclose(cw[b], ref_marginal_classwise(labels[b], probs[b], "partial"), rtol=1e-5)
    # at a background pixel certain of an unannotated leaf the cross-entropy is ~0: it is no error
    lab0 = labels.copy()
    lab0[0, 0, 1] = 0
    assert ref_marginal(lab0, probs, "partial", np.ones(N_OUT))[0, 0, 1] < 0.05


# ---------------------------------------------------------------------------------------
# evaluation: set aside predictions mostly in unannotated classes


def disc(img, cy, cx, r, value):
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value


def ref_counts(gt, pred, set_aside=()):
    """Class-agnostic TP/FP/FN by brute-force IoU (> 0.5), with set-aside ids removed when unmatched."""
    def ious(p):
        return [np.sum((gt == g) & (pred == p)) / np.sum((gt == g) | (pred == p)) for g in np.unique(gt[gt > 0])]
    pids = [int(p) for p in np.unique(pred[pred > 0])]
    aside = [p for p in pids if p in set_aside and max(ious(p), default=0) < 0.5]
    kept = [p for p in pids if p not in aside]
    tp = sum(max(ious(p), default=0) > 0.5 for p in kept)
    n_gt = len(np.unique(gt[gt > 0]))
    return dict(tp=tp, fp=len(kept) - tp, fn=n_gt - tp, aside=len(aside))


def test_evaluate_image_sets_aside_only_unmatched_predictions():
    rng = np.random.default_rng(2)
    for trial in range(4):
        gt = np.zeros((64, 64), np.int32)
        pred = np.zeros((64, 64), np.int32)
        centres = rng.permutation(np.array([(y, x) for y in range(8, 64, 16) for x in range(8, 64, 16)]))
        n_gt = 6
        for i, (cy, cx) in enumerate(centres[:n_gt]):
            disc(gt, cy, cx, 5, i + 1)
            disc(pred, cy + rng.integers(-1, 2), cx, 5, i + 1)  # matched
        for j, (cy, cx) in enumerate(centres[n_gt:n_gt + 5]):
            disc(pred, cy, cx, 4, n_gt + j + 1)  # no GT: false positives unless set aside
        if trial == 3:
            gt[:, :6] = -1  # an ignore band: predictions in it are dropped first
        aside = [int(v) for v in rng.choice(np.arange(1, n_gt + 6), size=5, replace=False)]
        c_all = evaluate_image(gt, pred)
        c = evaluate_image(gt, pred, set_aside=aside)
        g = np.where(gt < 0, 0, gt)
        kept = pred.copy()
        if trial == 3:  # predictions mostly on the band
            for p in np.unique(pred[pred > 0]):
                if 2 * np.sum((pred == p) & (gt < 0)) > np.sum(pred == p):
                    kept[pred == p] = 0
        ref_all, ref = ref_counts(g, kept), ref_counts(g, kept, set(aside))
        assert (c_all.tp[0], c_all.fp[0], c_all.fn[0], c_all.n_pred_unannotated) == (
            ref_all["tp"], ref_all["fp"], ref_all["fn"], 0)
        assert (c.tp[0], c.fp[0], c.fn[0], c.n_pred_unannotated) == (ref["tp"], ref["fp"], ref["fn"], ref["aside"])
        assert c.n_pred_ignored == c_all.n_pred_ignored
        assert ref["aside"] > 0 or trial == 3
    assert evaluate_image(gt, pred, set_aside=[]).n_pred_unannotated == 0


class FakeModel:
    """Predicts the GT nuclei (shifted by a pixel) plus one extra nucleus per image; leaf probabilities
    given per instance: the extra one and GT nucleus 1 lie mostly on fibroblast (unannotated in MoNuSAC)."""

    name = "fake"

    def __init__(self, gts, extra):
        self.hierarchy = ClassHierarchy.default()
        self.gts, self.extra, self.calls = list(gts), list(extra), 0

    def predict_instances(self, img, label_set=None):
        gt = np.maximum(self.gts[self.calls][..., 0], 0)
        lab = np.roll(gt, 1, 0)
        n = int(lab.max())
        cy, cx = self.extra[self.calls]
        disc(lab, cy, cx, 6, n + 1)
        self.calls += 1
        h = self.hierarchy
        prob = np.zeros((n + 1, h.n_classes + 1))
        prob[:, h.leaf_index["lymphocyte"]] = 0.8
        prob[:, h.leaf_index["fibroblast"]] = 0.2
        for i in (0, n):  # GT nucleus 1 and the extra one: mostly fibroblast
            prob[i] = 0
            prob[i, h.leaf_index["fibroblast"]], prob[i, h.leaf_index["lymphocyte"]] = 0.7, 0.3
        return lab, dict(class_prob=prob, class_id=h.label_set(label_set).classify(prob))


@pytest.fixture
def monusac_folder(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "data"
    gts, extra = [], []
    for i in range(3):
        inst = np.zeros((256, 256), np.int32)
        for k, (cy, cx) in enumerate([(40, 40), (40, 120), (120, 40), (120, 120)], 1):
            disc(inst, cy, cx, 6, k)
        cls = np.where(inst > 0, 2, 0)  # lymphocytes
        mask = np.stack([inst, cls], -1)
        P.write_patch(root, "monusac", "test", f"m{i}", rng.integers(0, 255, (256, 256, 3)).astype(np.uint8), mask)
        gts.append(mask)
        extra.append((200, 200))
    return dict(root=root, gts=gts, extra=extra, tmp=tmp_path)


def test_evaluation_sets_aside_unannotated_nuclei_and_shows_both_scores(monusac_folder):
    f = monusac_folder
    res = E.evaluate_folder(f["root"], "test", "monusac", model=FakeModel(f["gts"], f["extra"]), progress=False,
                            save_predictions=f["tmp"] / "saved")
    s = res.summary
    # per image: 4 GT, 5 predicted; GT 1 (mostly fibroblast) is matched, so it is scored; the extra one is set aside
    assert s["unannotated_set_aside"] == "applied"
    assert s["n_pred_unannotated"] == 3 and s["n_pred_nuclei"] == 12 and s["n_pred_nuclei_no_set_aside"] == 15
    assert s["precision_det"] == pytest.approx(1.0) and s["precision_det_no_set_aside"] == pytest.approx(12 / 15)
    assert s["F1_det"] == pytest.approx(1.0) and s["F1_det_no_set_aside"] == pytest.approx(2 * 12 / (24 + 3))
    assert s["bPQ_pannuke_tissue"] > s["bPQ_pannuke_tissue_no_set_aside"]
    assert list(res.per_image["n_pred_unannotated"]) == [1, 1, 1]
    assert "3 more set aside" in E.format_summary(res) and "without the set-aside" in E.format_summary(res)
    # switched off: the same numbers twice
    off = E.evaluate_folder(f["root"], "test", "monusac", model=FakeModel(f["gts"], f["extra"]), progress=False,
                            set_aside_unannotated=False)
    assert off.summary["unannotated_set_aside"] == "off" and off.summary["n_pred_unannotated"] == 0
    assert off.summary["F1_det"] == off.summary["F1_det_no_set_aside"] == s["F1_det_no_set_aside"]
    # saved predictions hold class ids only: nothing can be set aside, and the summary says so
    saved = E.evaluate_folder(f["root"], "test", "monusac", predictions=f["tmp"] / "saved", progress=False)
    assert saved.summary["unannotated_set_aside"] == "unavailable" and saved.summary["n_pred_unannotated"] == 0
    assert saved.summary["F1_det"] == s["F1_det_no_set_aside"]


def test_the_datasets_own_label_set_decides(monusac_folder):
    f = monusac_folder
    # the same patches scored as a root-labelled dataset (exhaustive): every prediction is scored
    res = E.evaluate_folder(f["root"], "test", "monusac", label_set="monuseg",
                            model=FakeModel(f["gts"], f["extra"]), progress=False)
    assert res.summary["unannotated_set_aside"] == "applied"  # the GT's own label set (monusac) decides
    h = ClassHierarchy.default()
    assert h.label_set("monuseg").exhaustive and not h.label_set("monusac").exhaustive
    pan = E.evaluate_folder(f["root"], "test", "monusac", label_set="monusac", set_aside_unannotated=True,
                            hierarchy=ClassHierarchy.from_dict(_exhaustive_monusac()),
                            model=FakeModel(f["gts"], f["extra"]), progress=False)
    assert pan.summary["unannotated_set_aside"] == "exhaustive" and pan.summary["n_pred_unannotated"] == 0


def _exhaustive_monusac():
    d = ClassHierarchy.default().to_dict()
    d["label_sets"]["monusac"] = {k: v for k, v in d["label_sets"]["monusac"].items() if k != "unannotated"}
    return d


def test_marginal_training_runs_end_to_end(tmp_path):
    pytest.importorskip("tensorflow")
    from stardist_hier import HierConfig2D, HierStarDist2D

    from test_targets import make_images

    tiny = dict(n_rays=8, n_channel_in=3, grid=(2, 2), unet_n_depth=1, unet_n_filter_base=4, net_conv_after_unet=8,
                train_patch_size=(32, 32), train_batch_size=2, train_reduce_lr=None, train_unannotated_mode="marginal",
                train_coarse_label_mode="equal_logit", train_class_loss_normalization="per_sample",
                train_focal_tversky_uncovered_fp=True)
    X, Y, C = make_images(3, size=32, classes=(1, 2, 3, 4))
    model = HierStarDist2D(HierConfig2D(hierarchy="default", **tiny), basedir=None)
    hist = model.train(X[:2], Y[:2], validation_data=(X[2:], Y[2:], C[2:]), classes=C[:2], dataset="monusac",
                       epochs=1, steps_per_epoch=1, seed=0, verbose=0)
    assert np.isfinite(hist.history["loss"][0]) and np.isfinite(hist.history["val_loss"][0])
    assert model.data_train.encoder.unannotated_mode == "marginal"
    monusac = model.hierarchy.label_set("monusac")
    _, (_, _, target) = model.data_train[0]
    n_out = model.hierarchy.n_classes + 1
    bg = target[..., 0] == 1
    assert bg.any() and np.all(target[bg][:, list(monusac.unannotated_channels)] == 1)
    assert np.all(target[..., n_out:][..., list(monusac.unannotated_channels)] == 0)
