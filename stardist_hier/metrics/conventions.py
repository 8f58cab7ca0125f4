"""The conventions over a set of images: PanNuke, CoNIC, StarDist and HoVer-Net aggregates.

Each convention, its matching rule and its empty-case rule are listed in
:mod:`stardist_hier.metrics` (section "Conventions and their empty-case rules"). Plain
numpy (pandas for :func:`per_image_frame`).
"""

from __future__ import annotations

import numpy as np

from .counts import evaluate_image
from .matching import MetricsError, _pq, _ratio, _where

__all__ = ["r2_score", "summarize", "per_image_frame", "evaluate_arrays"]


def r2_score(y_true, y_pred):
    """Coefficient of determination, per column, as scikit-learn's ``r2_score``.

    Parameters
    ----------
    y_true, y_pred : array_like
        ``(n_samples,)`` or ``(n_samples, n_outputs)``.

    Returns
    -------
    numpy.ndarray or float
        ``1 - SS_res / SS_tot`` per output; where ``SS_tot = 0`` (constant truth): 1 if the
        prediction is exact, else 0; nan with fewer than 2 samples.
    """
    yt, yp = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    one = yt.ndim == 1
    yt, yp = yt.reshape(len(yt), -1), yp.reshape(len(yp), -1)
    if yt.shape[0] < 2:
        out = np.full(yt.shape[1], np.nan)
    else:
        ss_res = ((yt - yp) ** 2).sum(0)
        ss_tot = ((yt - yt.mean(0)) ** 2).sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.where(ss_res == 0, 1.0, 0.0))
    return float(out[0]) if one else out


def _nanmean(a, axis=None):
    a = np.asarray(a, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cnt = np.sum(~np.isnan(a), axis=axis)
        tot = np.nansum(a, axis=axis)
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def _stack(counts):
    if not counts:
        raise MetricsError("no images to summarize")
    class_ids = counts[0].class_ids
    for c in counts:
        if c.class_ids != class_ids:
            raise MetricsError(f"{_where(c.name)}class ids {c.class_ids} differ from {class_ids} of the first image {counts[0].name!r}")
    get = lambda a: np.array([getattr(c, a) for c in counts])  # noqa: E731
    return class_ids, {a: get(a) for a in ("n_gt", "n_pred", "n_pred_ignored", "n_pred_unannotated", "tp", "sum_iou",
                                           "n_gt_c", "n_pred_c", "tp_c", "sum_iou_c", "pairs")}


def _per_image_values(a):
    """Per-image PQ values of each convention from stacked counts."""
    H, S = 0, 1
    n_gt, n_pred = a["n_gt"], a["n_pred"]
    out = {}
    out["bpq_pannuke"] = np.where(n_gt > 0, _pq(a["sum_iou"][:, H], a["tp"][:, H], n_pred - a["tp"][:, H],
                                                n_gt - a["tp"][:, H], 0.0), np.nan)
    out["pq_conic"] = _pq(a["sum_iou"][:, H], a["tp"][:, H], n_pred - a["tp"][:, H], n_gt - a["tp"][:, H], 0.0)
    out["pq_stardist"] = _pq(a["sum_iou"][:, S], a["tp"][:, S], n_pred - a["tp"][:, S], n_gt - a["tp"][:, S], 0.0)
    tp_c, s_c = a["tp_c"][:, H], a["sum_iou_c"][:, H]
    pq_c = _pq(s_c, tp_c, a["n_pred_c"] - tp_c, a["n_gt_c"] - tp_c, 0.0)
    out["pq_c"] = np.where(a["n_gt_c"] > 0, pq_c, np.nan)  # PanNuke: a class without GT is skipped
    out["mpq_pannuke"] = _nanmean(out["pq_c"], axis=1) if pq_c.shape[1] else np.full(len(n_gt), np.nan)
    return out


def _tissue_mean(values, tissues):
    groups = {}
    for v, t in zip(values, tissues):
        groups.setdefault(t, []).append(v)
    return float(_nanmean([_nanmean(g) for g in groups.values()]))


def _classification(P, ngc, npc):
    """Accuracy over pairs with a labelled GT, and HoVer-Net's classification F1 per class.

    ``P`` holds pairs by (GT class, predicted class), index 0 unlabelled; ``ngc``/``npc`` the
    number of GT/predicted instances per class.
    """
    acc = float(_ratio(np.trace(P[1:, 1:]), P[1:, :].sum()))
    f1 = []
    for k in range(len(ngc)):
        i = k + 1
        tp_dt = P[i, i]
        fp_dt = P[:, i].sum() - tp_dt
        fn_dt = P[i, :].sum() - tp_dt
        fp_d = npc[k] - P[:, i].sum()
        fn_d = ngc[k] - P[i, :].sum()
        f1.append(float(_ratio(2 * tp_dt, 2 * tp_dt + 2 * fp_dt + 2 * fn_dt + fp_d + fn_d)))
    return acc, f1


def summarize(counts, class_names=None):
    """Every convention over a set of images.

    Parameters
    ----------
    counts : list of ImageCounts
        One per image, all with the same ``class_ids``; their ``tissue`` groups PanNuke's
        tissue averages (``None`` everywhere: one group).
    class_names : sequence of str, optional
        Names of the classes in ``class_ids`` order (default ``class_<id>``).

    Returns
    -------
    dict
        Flat mapping of metric name to value (see :mod:`stardist_hier.metrics` for the
        names and their empty-case rules), plus ``n_images``, ``n_gt_nuclei``, ``n_pred_nuclei``,
        ``n_pred_ignored``, ``n_pred_unannotated`` (predictions set aside, see
        :func:`evaluate_image`), ``n_tissues``, per-class ``n_gt_<class>`` and ``n_pred_<class>``.
    """
    class_ids, a = _stack(counts)
    names = list(class_names) if class_names is not None else [f"class_{c}" for c in class_ids]
    if len(names) != len(class_ids):
        raise MetricsError(f"{len(names)} class names for {len(class_ids)} classes")
    tissues = [c.tissue for c in counts]
    v = _per_image_values(a)
    H, S = 0, 1
    TP, N_GT, N_PRED = a["tp"].sum(0), int(a["n_gt"].sum()), int(a["n_pred"].sum())
    SUM = a["sum_iou"].sum(0)
    FP, FN = N_PRED - TP, N_GT - TP
    out = dict(
        n_images=len(counts), n_gt_nuclei=N_GT, n_pred_nuclei=N_PRED, n_pred_ignored=int(a["n_pred_ignored"].sum()),
        n_pred_unannotated=int(a["n_pred_unannotated"].sum()), n_tissues=len(set(tissues)),
        bPQ_pannuke_tissue=_tissue_mean(v["bpq_pannuke"], tissues),
        bPQ_pannuke_image=float(_nanmean(v["bpq_pannuke"])),
        mPQ_pannuke_tissue=_tissue_mean(v["mpq_pannuke"], tissues),
        mPQ_pannuke_image=float(_nanmean(v["mpq_pannuke"])),
        PQ_conic=float(v["pq_conic"].mean()),
    )
    tp_c, s_c = a["tp_c"][:, H].sum(0), a["sum_iou_c"][:, H].sum(0)
    ngc, npc = a["n_gt_c"].sum(0), a["n_pred_c"].sum(0)
    pq_plus = _pq(s_c, tp_c, npc - tp_c, ngc - tp_c, 0.0)
    out["mPQ+_conic"] = float(pq_plus.mean()) if len(class_ids) else np.nan
    r2 = r2_score(a["n_gt_c"], a["n_pred_c"]) if len(class_ids) else np.zeros(0)
    out["R2_conic"] = float(np.mean(r2)) if len(class_ids) else np.nan
    out["PQ_stardist_image"] = float(v["pq_stardist"].mean())
    out["PQ_stardist_summed"] = float(_pq(SUM[S], TP[S], FP[S], FN[S], 0.0))
    den = TP[H] + 0.5 * FP[H] + 0.5 * FN[H]
    out["DQ_summed"] = float(TP[H] / den) if den else 0.0
    out["SQ_summed"] = float(SUM[H] / TP[H]) if TP[H] else 0.0
    out["F1_det"] = float(_ratio(2 * TP[H], 2 * TP[H] + FP[H] + FN[H]))
    out["precision_det"] = float(_ratio(TP[H], N_PRED))
    out["recall_det"] = float(_ratio(TP[H], N_GT))
    P = a["pairs"][:, H].sum(0)  # (K+1, K+1) matched pairs by (GT class, predicted class)
    out["acc_class"], f1c = _classification(P, ngc, npc)
    out["F1_class_mean"] = float(_nanmean(f1c)) if f1c else np.nan
    centroid = [c.pairs_centroid for c in counts]
    if all(pc is not None for pc in centroid):
        Pc = np.sum(centroid, axis=0)
        tp = int(Pc.sum())
        out["F1_det_centroid"] = float(_ratio(2 * tp, N_GT + N_PRED))
        out["acc_class_centroid"], f1cc = _classification(Pc, ngc, npc)
        out["F1_class_centroid_mean"] = float(_nanmean(f1cc)) if f1cc else np.nan
        for k, nm in enumerate(names):
            out[f"F1_class_centroid_{nm}"] = f1cc[k]
    pq_img_c = _nanmean(v["pq_c"], axis=0) if len(class_ids) else []
    for k, nm in enumerate(names):
        out[f"PQ+_{nm}"] = float(pq_plus[k])
        out[f"PQ_pannuke_{nm}"] = float(pq_img_c[k])
        out[f"F1_class_{nm}"] = f1c[k]
        out[f"R2_{nm}"] = float(r2[k])
        out[f"n_gt_{nm}"] = int(ngc[k])
        out[f"n_pred_{nm}"] = int(npc[k])
    return out


def per_image_frame(counts, class_names=None):
    """One row per image: counts and per-image values of each convention.

    Columns: ``image``, ``tissue``, ``n_gt``, ``n_pred``, ``n_pred_ignored``, ``n_pred_unannotated``, ``tp``, ``fp``,
    ``fn``, ``sum_iou`` (rule ``'>'``), ``tp_ge``, ``sum_iou_ge`` (rule ``'>='``),
    ``bPQ_pannuke`` (nan without GT), ``PQ_conic``, ``PQ_stardist``, ``mPQ_pannuke``, and per
    class ``n_gt_<class>``, ``n_pred_<class>``, ``tp_<class>``, ``PQ_<class>`` (nan without GT
    of the class).

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd

    class_ids, a = _stack(counts)
    names = list(class_names) if class_names is not None else [f"class_{c}" for c in class_ids]
    v = _per_image_values(a)
    cols = dict(
        image=[c.name for c in counts], tissue=[c.tissue for c in counts],
        n_gt=a["n_gt"], n_pred=a["n_pred"], n_pred_ignored=a["n_pred_ignored"],
        n_pred_unannotated=a["n_pred_unannotated"], tp=a["tp"][:, 0], fp=a["n_pred"] - a["tp"][:, 0], fn=a["n_gt"] - a["tp"][:, 0], sum_iou=a["sum_iou"][:, 0],
        tp_ge=a["tp"][:, 1], sum_iou_ge=a["sum_iou"][:, 1],
        bPQ_pannuke=v["bpq_pannuke"], PQ_conic=v["pq_conic"], PQ_stardist=v["pq_stardist"], mPQ_pannuke=v["mpq_pannuke"],
    )
    for k, nm in enumerate(names):
        cols[f"n_gt_{nm}"] = a["n_gt_c"][:, k]
        cols[f"n_pred_{nm}"] = a["n_pred_c"][:, k]
        cols[f"tp_{nm}"] = a["tp_c"][:, 0, k]
        cols[f"PQ_{nm}"] = v["pq_c"][:, k]
    return pd.DataFrame(cols)


def evaluate_arrays(gts, preds, gt_classes=None, pred_classes=None, class_ids=None, tissues=None, names=None,
                    class_names=None, thresh=0.5, centroid_radius=None):
    """Score a list of in-memory images.

    Parameters
    ----------
    gts, preds : sequence of numpy.ndarray
        GT and predictions as for :func:`evaluate_image` (``(H, W)`` or ``(H, W, 2)``).
    gt_classes, pred_classes : sequence, optional
        Per-image class maps or tables when not given as a second channel.
    class_ids : sequence of int or LabelSet, optional
        Class ids of the label set; default: all non-zero ids found in the set. Pass them to
        score every class of the label set: with the default, a class absent from GT and
        predictions is not in the result at all (so it does not score 0 in ``mPQ+_conic``).
    tissues, names : sequence, optional
        Per-image tissue labels and names.
    class_names : sequence of str, optional
        Class names in ``class_ids`` order; taken from the label set when one is given.
    thresh : float
        IoU threshold.
    centroid_radius : float, optional
        Add HoVer-Net's centroid-paired F1 (see :func:`evaluate_image`).

    Returns
    -------
    tuple
        ``(summary dict, list of ImageCounts)``.
    """
    if len(gts) != len(preds):
        raise MetricsError(f"{len(gts)} ground-truth images but {len(preds)} predictions")
    n = len(gts)
    names = [f"image_{i}" for i in range(n)] if names is None else list(names)
    tissues = [None] * n if tissues is None else list(tissues)
    gcs = [None] * n if gt_classes is None else list(gt_classes)
    pcs = [None] * n if pred_classes is None else list(pred_classes)
    if hasattr(class_ids, "ids"):
        class_names = [class_ids.nodes[c] for c in class_ids.ids] if class_names is None else class_names
        class_ids = class_ids.ids
    if class_ids is None:
        found = set()
        for i in range(n):
            found |= set(evaluate_image(gts[i], preds[i], gcs[i], pcs[i], None, thresh, names[i]).class_ids)
        class_ids = sorted(found)
    counts = [evaluate_image(gts[i], preds[i], gcs[i], pcs[i], class_ids, thresh, names[i], tissues[i], centroid_radius)
              for i in range(n)]
    return summarize(counts, class_names), counts
