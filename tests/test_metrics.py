"""Metrics against an independent plain-loop reference, hand-made edge cases, StarDist and real masks."""

import math
import sys
from collections import Counter

import numpy as np
import pytest

from stardist_hier import metrics as M
from stardist_hier.hierarchy import ClassHierarchy


# ----------------------------------------------------------------------------------------
# the reference: instances as sets of pixel coordinates, pairs compared one by one


def ref_instances(inst, cls=None):
    """{id: (set of (y, x), class)}; class = most frequent non-zero class, smallest on ties."""
    out = {}
    for (y, x), i in np.ndenumerate(inst):
        if i > 0:
            out.setdefault(int(i), set()).add((y, x))
    res = {}
    for i, pix in out.items():
        c = 0
        if cls is not None:
            cnt = Counter(int(cls[y, x]) for y, x in pix if cls[y, x] > 0)
            if cnt:
                best = max(cnt.values())
                c = min(k for k, v in cnt.items() if v == best)
        res[i] = (pix, c)
    return res


def ref_match(gts, preds, strict, thresh=0.5):
    """Maximum matching of candidate pairs (Kuhn's augmenting paths); returns list of IoUs."""
    cand = {}
    for g, (gp, _) in gts.items():
        for p, (pp, _) in preds.items():
            inter = len(gp & pp)
            if inter == 0:
                continue
            iou = inter / len(gp | pp)
            if (iou > thresh) if strict else (iou >= thresh):
                cand.setdefault(g, []).append((p, iou))
    owner = {}

    def augment(g, seen):
        for p, _ in cand.get(g, []):
            if p in seen:
                continue
            seen.add(p)
            if p not in owner or augment(owner[p], seen):
                owner[p] = g
                return True
        return False

    for g in cand:
        augment(g, set())
    return [dict(cand[g])[p] for p, g in owner.items()]


def ref_image(gt, pred, gt_cls, pred_cls, class_ids, strict):
    """Per-image counts of the reference: class-agnostic and per class."""
    ignore = {(y, x) for (y, x), v in np.ndenumerate(gt) if v < 0}
    gts = ref_instances(np.where(gt > 0, gt, 0), gt_cls)
    preds = ref_instances(pred, pred_cls)
    dropped = [p for p, (pix, _) in preds.items() if len(pix & ignore) > len(pix) / 2]
    for p in dropped:
        del preds[p]
    ious = ref_match(gts, preds, strict)
    out = dict(n_gt=len(gts), n_pred=len(preds), tp=len(ious), s=sum(ious), dropped=len(dropped), c={})
    for c in class_ids:
        gc = {k: v for k, v in gts.items() if v[1] == c}
        pc = {k: v for k, v in preds.items() if v[1] == c}
        iu = ref_match(gc, pc, strict)
        out["c"][c] = dict(n_gt=len(gc), n_pred=len(pc), tp=len(iu), s=sum(iu))
    # classification pairs: class-agnostic matches by (gt class, pred class)
    out["pairs"] = Counter()
    cand = ref_match_pairs(gts, preds, strict)
    for g, p in cand:
        out["pairs"][(gts[g][1], preds[p][1])] += 1
    return out


def ref_match_pairs(gts, preds, strict):
    pairs = []
    for g, (gp, _) in gts.items():
        for p, (pp, _) in preds.items():
            inter = len(gp & pp)
            iou = inter / len(gp | pp) if inter else 0
            if (iou > 0.5) if strict else (iou >= 0.5):
                pairs.append((g, p))
    used_g, used_p, out = set(), set(), []
    for g, p in pairs:
        if g not in used_g and p not in used_p:
            used_g.add(g)
            used_p.add(p)
            out.append((g, p))
    return out


def ref_pq(s, tp, fp, fn):
    den = tp + fp / 2 + fn / 2
    return s / den if den else None


def nanmean(xs):
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def ref_summary(imgs, class_ids, tissues):
    """Every convention, from reference per-image counts (``imgs`` = list of (strict, nonstrict))."""
    out = {}
    bpq, pqc, pqs, mpq = [], [], [], []
    for hv, sd in imgs:
        p = ref_pq(hv["s"], hv["tp"], hv["n_pred"] - hv["tp"], hv["n_gt"] - hv["tp"])
        bpq.append(p if hv["n_gt"] > 0 else math.nan)
        pqc.append(p if p is not None else 0.0)
        q = ref_pq(sd["s"], sd["tp"], sd["n_pred"] - sd["tp"], sd["n_gt"] - sd["tp"])
        pqs.append(q if q is not None else 0.0)
        per = []
        for c in class_ids:
            d = hv["c"][c]
            if d["n_gt"] > 0:
                per.append(ref_pq(d["s"], d["tp"], d["n_pred"] - d["tp"], d["n_gt"] - d["tp"]))
        mpq.append(nanmean(per))

    def by_tissue(vals):
        groups = {}
        for v, t in zip(vals, tissues):
            groups.setdefault(t, []).append(v)
        return nanmean([nanmean(g) for g in groups.values()])

    out["bPQ_pannuke_tissue"] = by_tissue(bpq)
    out["bPQ_pannuke_image"] = nanmean(bpq)
    out["mPQ_pannuke_tissue"] = by_tissue(mpq)
    out["mPQ_pannuke_image"] = nanmean(mpq)
    out["PQ_conic"] = sum(pqc) / len(pqc)
    out["PQ_stardist_image"] = sum(pqs) / len(pqs)
    T = {k: sum(sd[k] for _, sd in imgs) for k in ("s", "tp", "n_gt", "n_pred")}
    out["PQ_stardist_summed"] = ref_pq(T["s"], T["tp"], T["n_pred"] - T["tp"], T["n_gt"] - T["tp"]) or 0.0
    H = {k: sum(hv[k] for hv, _ in imgs) for k in ("s", "tp", "n_gt", "n_pred")}
    tp, fp, fn = H["tp"], H["n_pred"] - H["tp"], H["n_gt"] - H["tp"]
    out["F1_det"] = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else math.nan
    plus = []
    for c in class_ids:
        C = {k: sum(hv["c"][c][k] for hv, _ in imgs) for k in ("s", "tp", "n_gt", "n_pred")}
        v = ref_pq(C["s"], C["tp"], C["n_pred"] - C["tp"], C["n_gt"] - C["tp"]) or 0.0
        plus.append(v)
        out[f"PQ+_class_{c}"] = v
        out[f"PQ_pannuke_class_{c}"] = nanmean(
            [ref_pq(hv["c"][c]["s"], hv["c"][c]["tp"], hv["c"][c]["n_pred"] - hv["c"][c]["tp"], 0 + hv["c"][c]["n_gt"] - hv["c"][c]["tp"])
             if hv["c"][c]["n_gt"] else math.nan for hv, _ in imgs])
        # HoVer-Net classification F1 from the class-agnostic pairs
        pairs = Counter()
        for hv, _ in imgs:
            pairs.update(hv["pairs"])
        tp_dt = pairs[(c, c)]
        fp_dt = sum(v for (g, p), v in pairs.items() if p == c and g != c)
        fn_dt = sum(v for (g, p), v in pairs.items() if g == c and p != c)
        paired_gt = sum(v for (g, p), v in pairs.items() if g == c)
        paired_pred = sum(v for (g, p), v in pairs.items() if p == c)
        fn_d = C["n_gt"] - paired_gt
        fp_d = C["n_pred"] - paired_pred
        den = 2 * tp_dt + 2 * fp_dt + 2 * fn_dt + fp_d + fn_d
        out[f"F1_class_class_{c}"] = 2 * tp_dt / den if den else math.nan
        # R2 of per-image counts, written out
        yt = [hv["c"][c]["n_gt"] for hv, _ in imgs]
        yp = [hv["c"][c]["n_pred"] for hv, _ in imgs]
        mean = sum(yt) / len(yt)
        ss_tot = sum((y - mean) ** 2 for y in yt)
        ss_res = sum((a - b) ** 2 for a, b in zip(yt, yp))
        out[f"R2_class_{c}"] = (1 - ss_res / ss_tot) if ss_tot else (1.0 if ss_res == 0 else 0.0)
    out["mPQ+_conic"] = sum(plus) / len(plus) if plus else math.nan
    return out


def assert_close(got, want, keys=None, tol=1e-9):
    for k in keys or want:
        a, b = got[k], want[k]
        if b is None or (isinstance(b, float) and math.isnan(b)):
            assert a is None or math.isnan(a), (k, a, b)
        else:
            assert a == pytest.approx(b, abs=tol), (k, a, b)


# ----------------------------------------------------------------------------------------
# random images


def random_labels(rng, shape=(40, 40), n=12, max_id=500):
    lab = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ids = rng.choice(np.arange(1, max_id), n, replace=False)  # ids not contiguous unless max_id = n + 2
    for i in ids:
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        if rng.random() < 0.5:
            r = rng.uniform(2, 6)
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
        else:
            h, w = rng.integers(2, 8, 2)
            lab[cy:cy + h, cx:cx + w] = i
    return lab


def perturb(rng, gt):
    """A prediction: shifted, eroded, dropped, merged and spurious instances."""
    pred = np.roll(gt, rng.integers(-1, 2), axis=int(rng.integers(0, 2))).copy()
    ids = np.unique(pred[pred > 0])
    for i in ids:
        r = rng.random()
        if r < 0.15:
            pred[pred == i] = 0  # dropped
        elif r < 0.3:
            m = pred == i  # eroded by one pixel from the left
            pred[m & ~np.roll(m, 1, 1)] = 0
        elif r < 0.4 and len(ids) > 1:
            pred[pred == i] = rng.choice(ids)  # merged into another
    y, x = rng.integers(0, gt.shape[0] - 4), rng.integers(0, gt.shape[1] - 4)
    pred[y:y + 3, x:x + 4] = 999  # spurious
    return pred


def random_classes(rng, lab, ids_pool, p_zero=0.05):
    cls = np.zeros(lab.shape, np.int32)
    for i in np.unique(lab[lab > 0]):
        m = lab == i
        cls[m] = 0 if rng.random() < p_zero else rng.choice(ids_pool)
        if rng.random() < 0.2:  # a few mixed-class pixels: the majority must win
            ys, xs = np.nonzero(m)
            cls[ys[0], xs[0]] = rng.choice(ids_pool)
    return cls


@pytest.mark.parametrize("sparse_ids", [True, False], ids=["relabelled-ids", "raw-ids"])
def test_random_images_match_reference(sparse_ids):
    # sparse ids (up to 500 in a 40x40 image) take the relabelling path, small ids index
    # the contingency table directly
    rng = np.random.default_rng(1 if sparse_ids else 11)
    class_ids = (1, 2, 4, 7)  # 7 never appears: a class absent from the whole set
    gts, preds, tissues, ref = [], [], [], []
    for k in range(24):
        gt = random_labels(rng, max_id=500 if sparse_ids else 14)
        if k == 3:
            gt[:] = 0  # an image without GT
        if k % 5 == 0:
            gt[rng.integers(0, 30):, :4] = -1  # an ignore band (always covering rows 30-39)
        pred = perturb(rng, np.maximum(gt, 0))
        if k % 5 == 0:
            pred[34:38, 0:3] = 1500 if sparse_ids else 20  # inside the ignore band: dropped
        if k == 7:
            pred[:] = 0  # an empty prediction
        gc = random_classes(rng, np.maximum(gt, 0), [1, 2, 4])
        pc = random_classes(rng, pred, [1, 2, 4])
        gts.append(np.stack([gt, gc], -1))
        preds.append(np.stack([pred, pc], -1))
        tissues.append(["a", "b", "c"][k % 3])
        ref.append(tuple(ref_image(gt, pred, gc, pc, class_ids, strict) for strict in (True, False)))
    summary, counts = M.evaluate_arrays(gts, preds, class_ids=class_ids, tissues=tissues)
    for (hv, sd), c in zip(ref, counts):
        assert (c.n_gt, c.n_pred, c.n_pred_ignored) == (hv["n_gt"], hv["n_pred"], hv["dropped"])
        assert list(c.tp) == [hv["tp"], sd["tp"]]
        assert c.sum_iou == pytest.approx([hv["s"], sd["s"]], abs=1e-12)
        for k, cid in enumerate(class_ids):
            assert c.n_gt_c[k] == hv["c"][cid]["n_gt"] and c.n_pred_c[k] == hv["c"][cid]["n_pred"]
            assert c.tp_c[0, k] == hv["c"][cid]["tp"] and c.tp_c[1, k] == sd["c"][cid]["tp"]
            assert c.sum_iou_c[0, k] == pytest.approx(hv["c"][cid]["s"], abs=1e-12)
    want = ref_summary(ref, class_ids, tissues)
    assert_close(summary, want)
    assert summary["PQ+_class_7"] == 0.0 and math.isnan(summary["PQ_pannuke_class_7"])
    assert math.isnan(summary["F1_class_class_7"]) and summary["R2_class_7"] == 1.0
    assert summary["n_images"] == 24 and summary["n_gt_nuclei"] == sum(h["n_gt"] for h, _ in ref)
    assert summary["n_pred_ignored"] >= 5


def test_match_instances_pairs_and_image_pq():
    rng = np.random.default_rng(2)
    for _ in range(10):
        gt = random_labels(rng)
        pred = perturb(rng, gt)
        for rule, strict in ((">", True), (">=", False)):
            m = M.match_instances(gt, pred, rule=rule)
            ious = ref_match(ref_instances(gt), ref_instances(pred), strict)
            assert m["tp"] == len(ious) and m["sum_iou"] == pytest.approx(sum(ious))
            assert list(m["gt_ids"]) == sorted(m["gt_ids"])
            for g, p, iou in zip(m["gt_ids"], m["pred_ids"], m["iou"]):
                a, b = gt == g, pred == p
                assert iou == pytest.approx((a & b).sum() / (a | b).sum())
            q = M.image_pq(gt, pred, rule=rule)
            den = m["tp"] + m["fp"] / 2 + m["fn"] / 2
            assert q["pq"] == pytest.approx(m["sum_iou"] / den) and q["dq"] * q["sq"] == pytest.approx(q["pq"])


def test_id_values_do_not_matter():
    # huge ids take the sort-based relabelling; results equal those of small ids
    rng = np.random.default_rng(8)
    gt = random_labels(rng, (48, 48), 14, max_id=16)
    pred = perturb(rng, gt)
    gc, pc = random_classes(rng, gt, [1, 2]), random_classes(rng, pred, [1, 2])
    a = M.evaluate_image(np.stack([gt, gc], -1), np.stack([pred, pc], -1), class_ids=[1, 2])
    big = M.evaluate_image(np.stack([gt.astype(np.int64) * 10_000_019, gc], -1),
                           np.stack([pred.astype(np.int64) * 9_999_991, pc], -1), class_ids=[1, 2])
    for f in ("tp", "sum_iou", "n_gt_c", "n_pred_c", "tp_c", "sum_iou_c", "pairs"):
        np.testing.assert_allclose(getattr(a, f), getattr(big, f), atol=1e-12)


def test_many_instances_sparse_table(stardist_float64):
    # 1024 instances in 64x64: a dense (n+1)^2 table would exceed the image, so pairs are
    # counted with np.unique over the overlapping pixels
    gt = (np.arange(64)[:, None] // 2) * 32 + np.arange(64)[None, :] // 2 + 1
    pred = np.roll(gt, 1, axis=1)
    pred[:, ::8] = 0
    m = M.match_instances(gt, pred, rule=">=")
    st = stardist_float64.matching(gt, pred)
    assert (m["tp"], m["fp"], m["fn"]) == (st.tp, st.fp, st.fn)
    assert abs(m["sum_iou"] / (m["tp"] + m["fp"] / 2 + m["fn"] / 2) - st.panoptic_quality) < 1e-12


# ----------------------------------------------------------------------------------------
# hand-made edge cases


def test_iou_exactly_half():
    gt = np.zeros((10, 10), np.int32)
    gt[0:4, 0:4] = 1
    half = np.zeros_like(gt)
    half[0:4, 0:2] = 5  # IoU = 8 / 16
    assert M.image_pq(gt, half, rule=">")["tp"] == 0
    q = M.image_pq(gt, half, rule=">=")
    assert (q["tp"], q["fp"], q["fn"], q["sum_iou"]) == (1, 0, 0, 0.5)
    both = half.copy()
    both[0:4, 2:4] = 6  # two exact halves: one match, one false positive
    for rule, want in ((">", (0, 2, 1)), (">=", (1, 1, 0))):
        q = M.image_pq(gt, both, rule=rule)
        assert (q["tp"], q["fp"], q["fn"]) == want
    q = M.image_pq(both, gt, rule=">=")  # the same with GT and prediction swapped
    assert (q["tp"], q["fp"], q["fn"], q["sum_iou"]) == (1, 0, 1, 0.5)


def test_empty_cases_follow_each_convention():
    z = np.zeros((8, 8), np.int32)
    one = z.copy()
    one[2:5, 2:5] = 1
    assert math.isnan(M.image_pq(z, z)["pq"]) and M.image_pq(z, z, empty=0.0)["pq"] == 0.0
    s, c = M.evaluate_arrays([z, z, one], [z, one, z])  # empty/empty, FP only, FN only
    f = M.per_image_frame(c)
    assert f["bPQ_pannuke"].isna().tolist() == [True, True, False]  # no GT: skipped (FP ignored)
    assert f["PQ_conic"].tolist() == [0.0, 0.0, 0.0] and f["PQ_stardist"].tolist() == [0.0, 0.0, 0.0]
    assert s["bPQ_pannuke_image"] == 0.0 and s["PQ_conic"] == 0.0 and s["PQ_stardist_summed"] == 0.0
    s, _ = M.evaluate_arrays([z], [z], class_ids=[1, 2])
    assert math.isnan(s["bPQ_pannuke_tissue"]) and math.isnan(s["mPQ_pannuke_image"])
    assert s["PQ_conic"] == 0.0 and s["PQ_stardist_image"] == 0.0 and s["mPQ+_conic"] == 0.0
    assert math.isnan(s["F1_det"]) and math.isnan(s["acc_class"]) and math.isnan(s["R2_conic"])  # one image


def test_class_absent_from_an_image_pannuke_versus_conic():
    gt = np.zeros((20, 20), np.int32)
    gt[0:5, 0:5] = 1
    gcls = np.where(gt > 0, 1, 0)
    pred = gt.copy()
    pred[10:15, 10:15] = 2  # a false positive of class 2, absent from the GT of this image
    pcls = np.where(pred == 1, 1, np.where(pred == 2, 2, 0))
    s, c = M.evaluate_arrays([np.stack([gt, gcls], -1)], [np.stack([pred, pcls], -1)], class_ids=[1, 2])
    assert s["mPQ_pannuke_image"] == 1.0  # class 2 has no GT: nan, skipped with its FP
    assert s["PQ+_class_1"] == 1.0 and s["PQ+_class_2"] == 0.0 and s["mPQ+_conic"] == 0.5
    assert s["bPQ_pannuke_image"] == pytest.approx(1 / 1.5)  # class-agnostic: the FP counts


def test_wrong_class_is_fn_and_fp():
    gt = np.zeros((10, 10), np.int32)
    gt[0:4, 0:4] = 1
    s, c = M.evaluate_arrays([np.stack([gt, gt * 1], -1)], [np.stack([gt, gt * 2], -1)], class_ids=[1, 2])
    assert s["bPQ_pannuke_image"] == 1.0 and s["mPQ+_conic"] == 0.0 and s["acc_class"] == 0.0
    assert s["F1_class_class_1"] == 0.0 and s["F1_class_class_2"] == 0.0
    assert c[0].pairs[0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 0]]


def test_tissue_average_differs_from_image_average():
    gt = np.zeros((10, 10), np.int32)
    gt[0:4, 0:4] = 1
    gt[6:9, 6:9] = 2
    miss = np.where(gt == 2, 0, gt)  # one of two nuclei missed: PQ = 1 / 1.5
    s, _ = M.evaluate_arrays([gt, gt, gt], [gt, gt, miss], tissues=["x", "x", "y"])
    assert s["bPQ_pannuke_image"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert s["bPQ_pannuke_tissue"] == pytest.approx((1 + 2 / 3) / 2)
    assert s["n_tissues"] == 2


def test_ignore_regions():
    gt = np.zeros((12, 12), np.int32)
    gt[0:4, 0:4] = 1
    gt[6:12, 6:12] = -1  # ambiguous region
    pred = np.zeros_like(gt)
    pred[0:4, 0:4] = 1
    pred[6:10, 6:10] = 2  # entirely inside: dropped
    pred[4:8, 0:4] = 3  # outside: a false positive
    pred[10:12, 2:8] = 4  # 6 of 12 pixels inside: exactly half is not "mostly", kept
    m = M.match_instances(gt, pred)
    assert (m["n_true"], m["n_pred"], m["n_pred_ignored"], m["tp"]) == (1, 3, 1, 1)
    # with classes, the dropped prediction (here the largest id, class 1) is in no class
    gcls = np.where(gt > 0, 2, 0)
    pcls = np.where(pred == 2, 1, np.where(pred > 0, 2, 0))
    c = M.evaluate_image(np.stack([gt, gcls], -1), np.stack([np.where(pred == 2, 9, pred), pcls], -1), class_ids=[1, 2])
    assert c.n_pred_ignored == 1 and c.n_pred_c.tolist() == [0, 3] and c.tp_c[0].tolist() == [0, 1]
    with pytest.raises(M.MetricsError, match="predicted instance ids must be >= 0"):
        M.match_instances(pred, gt)


def test_ties_in_instance_class_and_unlabelled():
    inst = np.zeros((4, 4), np.int32)
    inst[0, :] = 3
    inst[1, :] = 4
    cls = np.zeros_like(inst)
    cls[0, :2], cls[0, 2:] = 5, 2  # tie: smallest id wins
    assert M.instance_classes(inst, cls).tolist() == [2, 0]  # instance 4: all class 0, unlabelled
    assert M.instance_classes(inst, {3: 1, 4: 2}).tolist() == [1, 2]
    assert M.instance_classes(inst, np.array([0, 0, 0, 6, 7])).tolist() == [6, 7]


def test_label_set_class_ids_sums_leaves():
    h = ClassHierarchy.default()
    ls = h.label_set("pannuke")
    prob = np.zeros((2, h.n_classes + 1))
    infl = list(h.leaf_channels("inflammatory"))
    prob[0, infl[0]] = prob[0, infl[1]] = 0.3  # inflammatory sums to 0.6 ...
    prob[0, h.leaf_index["healthy_epithelial"]] = 0.4  # ... beats the arg-max leaf
    prob[1, 0] = 0.9  # background excluded
    prob[1, h.leaf_index["dead"]] = 0.1
    assert M.label_set_class_ids(prob, ls).tolist() == [2, 4]
    assert M.label_set_class_ids(np.zeros((0, h.n_classes + 1)), ls).shape == (0,)


def test_class_id_map():
    h = ClassHierarchy.default()
    t = M.class_id_map(h.label_set("consep"), h.label_set("monuseg"))
    assert t.tolist() == [0] + [1] * 7
    h2 = ClassHierarchy.from_dict({"hierarchy": {"n": {"epi": {"a": None, "b": None}, "imm": {"c": None}}},
                                   "label_sets": {"fine": {1: "a", 2: "b", 3: "c"}, "coarse": {4: "epi", 7: "imm"}}})
    assert M.class_id_map(h2.label_set("fine"), h2.label_set("coarse")).tolist() == [0, 4, 4, 7]
    with pytest.raises(M.MetricsError, match="finer"):
        M.class_id_map(h.label_set("monusac"), h.label_set("pannuke"))


def test_bad_inputs():
    a = np.zeros((5, 5), np.int32)
    with pytest.raises(M.MetricsError, match="img7: prediction shape"):
        M.evaluate_image(a, np.zeros((5, 6), np.int32), name="img7")
    with pytest.raises(M.MetricsError, match="integer"):
        M.evaluate_image(a, a.astype(float))
    cls = a.copy()
    cls[0, 0] = 9
    for ids in ([1, 2], np.array([1, 2])):  # a numpy array of ids is a sequence too
        with pytest.raises(M.MetricsError, match=r"img: .*class id\(s\) \[9\]"):
            M.evaluate_image(np.stack([a, a], -1), np.stack([a, cls], -1), class_ids=ids, name="img")
    with pytest.raises(M.MetricsError, match="differ from"):
        M.summarize([M.evaluate_image(a, a, class_ids=[1]), M.evaluate_image(a, a, class_ids=[2])])


def test_r2_score_rules():
    assert M.r2_score([1, 2, 3], [1, 2, 3]) == 1.0
    assert M.r2_score([2, 2], [2, 2]) == 1.0 and M.r2_score([2, 2], [2, 3]) == 0.0
    assert math.isnan(M.r2_score([1], [1]))
    assert M.r2_score([1, 2, 3, 4], [2, 2, 3, 5]) == pytest.approx(1 - 2 / 5)


def test_no_tensorflow_import():
    import subprocess

    code = "import stardist_hier.metrics, sys; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------
# against stardist.matching


@pytest.fixture
def stardist_float64(monkeypatch):
    """stock matching with its float32 IoU division done in float64 (the only float32 step)."""
    import stardist.matching as sm

    def safe_divide(x, y, eps=1e-10):
        if np.isscalar(x) and np.isscalar(y):
            return x / y if np.abs(y) > eps else 0.0
        out = np.zeros(np.broadcast(x, y).shape, np.float64)
        np.divide(x, y, out=out, where=np.abs(y) > eps)
        return out

    monkeypatch.setattr(sm, "_safe_divide", safe_divide)
    return sm


def _stardist_pairs(rng, n=30):
    gts = [random_labels(rng, (48, 48), 14) for _ in range(n)]
    preds = [perturb(rng, g) for g in gts]
    gts[0][:] = 0  # an empty GT image
    preds[1][:] = 0
    gts[2][:] = 0
    preds[2][:] = 0
    # exact halves: IoU = 0.5 where '>=' and '>' differ
    gts[3][:] = 0
    gts[3][0:4, 0:4] = 1
    preds[3][:] = 0
    preds[3][0:4, 0:2], preds[3][0:4, 2:4] = 1, 2
    return gts, preds


def test_bpq_equals_stardist_matching_dataset(stardist_float64):
    gts, preds = _stardist_pairs(np.random.default_rng(3))
    s, _ = M.evaluate_arrays(gts, preds)
    by_image = stardist_float64.matching_dataset(gts, preds, by_image=True, show_progress=False)
    summed = stardist_float64.matching_dataset(gts, preds, by_image=False, show_progress=False)
    assert abs(s["PQ_stardist_image"] - by_image.panoptic_quality) < 1e-9
    assert abs(s["PQ_stardist_summed"] - summed.panoptic_quality) < 1e-9


def test_counts_equal_stock_stardist_and_pq_to_float32():
    from stardist.matching import matching, matching_dataset

    gts, preds = _stardist_pairs(np.random.default_rng(4))
    s, counts = M.evaluate_arrays(gts, preds)
    for g, p, c in zip(gts, preds, counts):
        st = matching(g, p)
        assert (st.tp, st.fp, st.fn) == (c.tp[1], c.fp[1], c.fn[1])
    summed = matching_dataset(gts, preds, by_image=False, show_progress=False)
    assert abs(s["PQ_stardist_summed"] - summed.panoptic_quality) < 1e-6  # stock divides in float32
    assert summed.tp == sum(c.tp[1] for c in counts)


def test_threshold_below_half_matches_stardist_counts(stardist_float64):
    rng = np.random.default_rng(5)
    for _ in range(8):
        g = random_labels(rng, (40, 40), 14)
        p = perturb(rng, g)
        st = stardist_float64.matching(g, p, thresh=0.3)
        m = M.match_instances(g, p, thresh=0.3, rule=">=")
        assert m["tp"] == st.tp
        # both maximise the number of pairs; ours then maximises the candidates' summed IoU
        assert m["sum_iou"] >= st.mean_matched_score * st.tp - 1e-9


# ----------------------------------------------------------------------------------------
# real masks


def _consep(realdata, k):
    from scipy.io import loadmat

    m = loadmat(realdata / "consep_format_tiles" / f"patch{k}.mat")
    return m["inst_map"].astype(np.int32), m["type_map"].astype(np.int32)


def _erode(lab):
    keep = np.ones(lab.shape, bool)
    for ax in (0, 1):
        for sh in (1, -1):
            keep &= np.roll(lab, sh, ax) == lab
    return np.where(keep, lab, 0)


def _real_prediction(rng, inst, cls, ids_pool):
    pred = np.roll(inst, 1, axis=1)
    ids = np.unique(pred[pred > 0])
    er = _erode(pred)
    for i in ids:
        r = rng.random()
        if r < 0.1:
            pred[pred == i] = 0
        elif r < 0.4:
            pred = np.where(pred == i, er, pred)
        elif r < 0.5:
            pred[pred == i] = rng.choice(ids)
    pcls = cls.copy()
    pcls = np.roll(pcls, 1, axis=1)
    for i in np.unique(pred[pred > 0]):
        if rng.random() < 0.25:
            pcls[pred == i] = rng.choice(ids_pool)
    return pred, np.where(pred > 0, pcls, 0)


def test_real_consep_tiles_match_reference_and_stardist(realdata, stardist_float64):
    rng = np.random.default_rng(6)
    h = ClassHierarchy.default()
    ls = h.label_set("consep")
    gts, preds, ref = [], [], []
    for k in (1, 2, 3):
        inst, cls = _consep(realdata, k)
        pred, pcls = _real_prediction(rng, inst, cls, [1, 2, 3, 5])
        gts.append(np.stack([inst, cls], -1))
        preds.append(np.stack([pred, pcls], -1))
        if k == 1:  # the plain-loop reference is slow on the larger tiles
            ref.append(tuple(ref_image(inst, pred, cls, pcls, ls.ids, s) for s in (True, False)))
    s, counts = M.evaluate_arrays(gts, preds, class_ids=ls.ids)
    c = counts[0]
    hv, sd = ref[0]
    assert list(c.tp) == [hv["tp"], sd["tp"]] and c.sum_iou[0] == pytest.approx(hv["s"])
    for j, cid in enumerate(ls.ids):
        assert c.tp_c[0, j] == hv["c"][cid]["tp"] and c.n_gt_c[j] == hv["c"][cid]["n_gt"]
    sd_img = stardist_float64.matching_dataset([g[..., 0] for g in gts], [p[..., 0] for p in preds],
                                               by_image=True, show_progress=False)
    assert abs(s["PQ_stardist_image"] - sd_img.panoptic_quality) < 1e-9
    assert s["n_gt_nuclei"] == 20 + 47 + 58
    assert 0 < s["mPQ+_conic"] < s["PQ_conic"] < 1


def test_real_hgsc_raster_against_stardist(realdata, stardist_float64):
    inst = np.load(realdata / "hgsc_rasters" / "hgsc_nest_inst_mask.npz")["nuc_raster"].astype(np.int32)
    cls = np.load(realdata / "hgsc_rasters" / "hgsc_nest_type_mask.npz")["nuc_raster"].astype(np.int32)
    rng = np.random.default_rng(7)
    pred, pcls = _real_prediction(rng, inst, cls, [1, 2, 3])
    tiles = [(slice(y, y + 500), slice(x, x + 500)) for y in (0, 500, 1000) for x in (0, 500, 1000)]
    gts = [np.stack([inst[t], cls[t]], -1) for t in tiles]
    preds = [np.stack([pred[t], pcls[t]], -1) for t in tiles]
    s, counts = M.evaluate_arrays(gts, preds, class_ids=[1, 2, 3])
    for by_image, key in ((True, "PQ_stardist_image"), (False, "PQ_stardist_summed")):
        st = stardist_float64.matching_dataset([g[..., 0] for g in gts], [p[..., 0] for p in preds],
                                               by_image=by_image, show_progress=False)
        assert abs(s[key] - st.panoptic_quality) < 1e-9
    # a crop against the plain-loop reference, per class
    t = (slice(0, 120), slice(0, 120))
    c = M.evaluate_image(inst[t], pred[t], cls[t], pcls[t], class_ids=[1, 2, 3])
    hv = ref_image(inst[t], pred[t], cls[t], pcls[t], (1, 2, 3), True)
    assert c.tp[0] == hv["tp"] and c.sum_iou[0] == pytest.approx(hv["s"])
    assert c.tp_c[0].tolist() == [hv["c"][k]["tp"] for k in (1, 2, 3)]
    assert c.n_gt_c.tolist() == [hv["c"][k]["n_gt"] for k in (1, 2, 3)]


def test_centroid_pairing_matches_brute_force():
    from itertools import permutations

    rng = np.random.default_rng(9)
    gts, preds = [], []
    want_pairs = Counter()
    n_gt, n_pred = Counter(), Counter()
    for _ in range(4):
        gt = random_labels(rng, (40, 40), 5, max_id=50)
        pred = perturb(rng, gt)
        gc, pc = random_classes(rng, gt, [1, 2], 0), random_classes(rng, pred, [1, 2], 0)
        gts.append(np.stack([gt, gc], -1))
        preds.append(np.stack([pred, pc], -1))
        G, Pr = ref_instances(gt, gc), ref_instances(pred, pc)
        for d, cnt in ((G, n_gt), (Pr, n_pred)):
            for _, c in d.values():
                cnt[c] += 1
        cen = lambda d: {k: (sum(y for y, _ in v[0]) / len(v[0]), sum(x for _, x in v[0]) / len(v[0]))  # noqa: E731
                         for k, v in d.items()}
        cg, cp = cen(G), cen(Pr)
        gk, pk = list(cg), list(cp)
        dist = lambda a, b: math.dist(cg[a], cp[b])  # noqa: E731
        best, best_cost = None, math.inf
        if len(gk) <= len(pk):
            options = (list(zip(gk, perm)) for perm in permutations(pk, len(gk)))
        else:
            options = (list(zip(perm, pk)) for perm in permutations(gk, len(pk)))
        for pairs in options:
            cost = sum(dist(a, b) for a, b in pairs)
            if cost < best_cost - 1e-12:
                best, best_cost = pairs, cost
        for a, b in best or []:
            if dist(a, b) <= 6:
                want_pairs[(G[a][1], Pr[b][1])] += 1
    s, counts = M.evaluate_arrays(gts, preds, class_ids=[1, 2], centroid_radius=6)
    got = np.sum([c.pairs_centroid for c in counts], axis=0)
    assert {(g, p): int(got[g, p]) for g in (1, 2) for p in (1, 2)} == {(g, p): want_pairs[(g, p)] for g in (1, 2) for p in (1, 2)}
    tp = sum(want_pairs.values())
    assert s["F1_det_centroid"] == pytest.approx(2 * tp / (sum(n_gt.values()) + sum(n_pred.values())))
    for c in (1, 2):
        tp_dt = want_pairs[(c, c)]
        fp_dt = sum(v for (g, p), v in want_pairs.items() if p == c and g != c)
        fn_dt = sum(v for (g, p), v in want_pairs.items() if g == c and p != c)
        fp_d = n_pred[c] - sum(v for (g, p), v in want_pairs.items() if p == c)
        fn_d = n_gt[c] - sum(v for (g, p), v in want_pairs.items() if g == c)
        assert s[f"F1_class_centroid_class_{c}"] == pytest.approx(
            2 * tp_dt / (2 * tp_dt + 2 * fp_dt + 2 * fn_dt + fp_d + fn_d))
    assert "F1_det_centroid" not in M.evaluate_arrays(gts, preds, class_ids=[1, 2])[0]
