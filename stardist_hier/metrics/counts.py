"""Counts of one image from which every convention is computed.

Plain numpy/scipy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .classes import _class_index, _instance_modes, _lookup_classes
from .matching import RULES, MetricsError, _check_int, _match_core, _one_to_one, _where

__all__ = ["ImageCounts", "evaluate_image"]


@dataclass
class ImageCounts:
    """Counts of one image from which every convention is computed.

    Arrays with a leading axis of length 2 hold one row per rule of :data:`RULES`
    (``'>'`` then ``'>='``); class axes follow ``class_ids``.

    Attributes
    ----------
    name : str
        Image name.
    class_ids : tuple of int
        Label-set class ids, in the order of the class axes.
    n_gt, n_pred, n_pred_ignored : int
        GT instances, predicted instances (after dropping those in ignore regions and those
        set aside), dropped predictions.
    tp : numpy.ndarray
        ``(2,)`` class-agnostic matches.
    sum_iou : numpy.ndarray
        ``(2,)`` summed IoU of the matches.
    n_gt_c, n_pred_c : numpy.ndarray
        ``(K,)`` instances per class (unlabelled instances are in no class).
    tp_c, sum_iou_c : numpy.ndarray
        ``(2, K)`` per-class matches and their summed IoU.
    pairs : numpy.ndarray
        ``(2, K + 1, K + 1)`` class-agnostic matches by (GT class, predicted class); index 0
        is "unlabelled" (class 0), index ``k + 1`` is ``class_ids[k]``.
    pairs_centroid : numpy.ndarray or None
        ``(K + 1, K + 1)`` like ``pairs``, for HoVer-Net's centroid pairing (when a
        ``centroid_radius`` was given).
    n_pred_unannotated : int
        Predicted instances set aside (``set_aside`` of :func:`evaluate_image`): neither true
        nor false positives.
    """

    name: str
    class_ids: tuple
    n_gt: int
    n_pred: int
    n_pred_ignored: int
    tp: np.ndarray
    sum_iou: np.ndarray
    n_gt_c: np.ndarray
    n_pred_c: np.ndarray
    tp_c: np.ndarray
    sum_iou_c: np.ndarray
    pairs: np.ndarray
    tissue: object = field(default=None)
    pairs_centroid: np.ndarray = field(default=None)
    n_pred_unannotated: int = field(default=0)

    @property
    def fp(self):
        """``(2,)`` class-agnostic false positives."""
        return self.n_pred - self.tp

    @property
    def fn(self):
        """``(2,)`` class-agnostic false negatives."""
        return self.n_gt - self.tp


def _split_channels(a, what, name):
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] == 2:
        return a[..., 0], a[..., 1]
    if a.ndim != 2:
        raise MetricsError(f"{_where(name)}{what} must be (H, W) instance ids or (H, W, 2) ids + classes, got shape {a.shape}")
    return a, None


def _set_aside(gt, pred, set_aside, thresh, name):
    """``pred`` without the ``set_aside`` instances that have no GT candidate; how many went."""
    ids = np.unique(np.asarray(list(set_aside) if isinstance(set_aside, (set, frozenset)) else set_aside,
                               np.int64).ravel())
    ids = ids[ids > 0]
    if ids.size == 0:
        return pred, 0
    m = _match_core(gt, pred, thresh, name)
    with_gt = m["p_ids"][m["pj"][m["cand"][RULES.index(">=")]]]  # the looser rule: a candidate under either
    drop = ids[np.isin(ids, m["p_ids"]) & ~np.isin(ids, with_gt)]  # present (not in an ignore region), no GT
    if drop.size == 0:
        return pred, 0
    return np.where(np.isin(pred, drop), 0, pred), int(drop.size)


def evaluate_image(gt, pred, gt_class=None, pred_class=None, class_ids=None, thresh=0.5, name="", tissue=None,
                   centroid_radius=None, set_aside=None):
    """Counts of one image for every convention.

    Parameters
    ----------
    gt : numpy.ndarray
        ``(H, W)`` GT instance ids (0 background, negative = ignore region), or ``(H, W, 2)``
        instance ids and per-pixel class ids (the patch mask layout).
    pred : numpy.ndarray
        Predicted instance ids, ``(H, W)`` or ``(H, W, 2)`` like ``gt``; ids >= 0.
    gt_class, pred_class : array_like or dict, optional
        Classes when not given as a second channel: a per-pixel class map, a 1-D table
        indexed by instance id, or a dict id -> class (see :func:`instance_classes`).
    class_ids : sequence of int or LabelSet, optional
        The label set's class ids. Default: the non-zero ids found in this image (give them
        explicitly when scoring a data set, so that every image has the same classes).
    thresh : float
        IoU threshold of the matching.
    name : str
        Image name, used in error messages and outputs.
    tissue : object, optional
        Tissue label, for PanNuke's tissue averaging.
    centroid_radius : float, optional
        Also pair nuclei as HoVer-Net's ``compute_stats.py`` does for its detection and
        classification F1: an optimal assignment of GT to predicted centroids by Euclidean
        distance, keeping pairs at most this many pixels apart (HoVer-Net: 12 at 40x).
    set_aside : sequence of int, optional
        Predicted instance ids that may be *set aside*: those of them with no GT candidate
        (IoU at or above ``thresh`` with some GT instance) are removed before the matching,
        as predictions in ignore regions are, and counted in ``n_pred_unannotated`` instead
        of as false positives (e.g. nuclei predicted mostly in classes the dataset does not
        annotate, :meth:`stardist_hier.hierarchy.LabelSet.is_unannotated`). One that
        matches a GT nucleus is kept: it was annotated, so it is scored.

    Returns
    -------
    ImageCounts

    Raises
    ------
    MetricsError
        Different shapes, non-integer arrays, negative predicted ids, class ids outside
        ``class_ids``.
    """
    gt, gcls_map = _split_channels(gt, "ground truth", name)
    pred, pcls_map = _split_channels(pred, "prediction", name)
    gt_class = gcls_map if gt_class is None else gt_class
    pred_class = pcls_map if pred_class is None else pred_class
    n_unannotated = 0
    if set_aside is not None:
        pred, n_unannotated = _set_aside(gt, pred, set_aside, thresh, name)
    m = _match_core(gt, pred, thresh, name)
    ng, np_ = m["ng"], m["np"]

    if hasattr(class_ids, "ids"):
        class_ids = class_ids.ids
    if class_ids is not None:
        class_ids = tuple(int(c) for c in class_ids)  # any sequence, a numpy array included

    def classes_of(cls, pix, rows, ids, n, what):
        # -> (class per instance, every class id that must belong to the label set)
        if cls is None:
            return np.zeros(n, np.int64), np.zeros(0, np.int64)
        if isinstance(cls, dict) or np.ndim(cls) == 1:
            per = _lookup_classes(cls, ids, name)
            return per, per
        cls = _check_int(cls, f"{what} class ids", name)
        if cls.shape != np.shape(gt):
            raise MetricsError(f"{_where(name)}{what} class map shape {cls.shape} differs from instance map "
                               f"shape {np.shape(gt)}")
        flat = cls.ravel()
        lo, hi = (int(flat.min()), int(flat.max())) if flat.size else (0, 0)
        if lo < 0 or (class_ids is not None and hi > max(class_ids, default=0)):
            # report before a histogram over a stray huge id is allocated
            _class_index(class_ids or (), np.unique(flat), f"{what} classes", name)
        return _instance_modes(pix, rows, flat)

    gcls, g_present = classes_of(gt_class, m["gpix"], m["g_rows"], m["g_ids"], ng, "ground-truth")
    pcls, p_present = classes_of(pred_class, m["ppix"], m["p_rows"], m["p_ids"], np_, "prediction")
    if class_ids is None:
        class_ids = tuple(sorted((set(g_present.tolist()) | set(p_present.tolist())) - {0}))
    K = len(class_ids)
    if gt_class is None and pred_class is None:
        gk, pk = np.full(ng, -1, np.intp), np.full(np_, -1, np.intp)
    else:
        # the present ids include every instance's class: checking them checks all
        _class_index(class_ids, g_present, "ground-truth classes", name)
        _class_index(class_ids, p_present, "predicted classes", name)
        gk = _class_index(class_ids, gcls, "ground truth", name)
        pk = _class_index(class_ids, pcls, "prediction", name)

    gi, pj, iou = m["gi"], m["pj"], m["iou"]
    tp = np.zeros(2, np.int64)
    s = np.zeros(2)
    tp_c = np.zeros((2, K), np.int64)
    s_c = np.zeros((2, K))
    pairs = np.zeros((2, K + 1, K + 1), np.int64)
    for r, rule in enumerate(RULES):
        sel = m["sel"][r]
        tp[r] = sel.size
        s[r] = iou[sel].sum()
        pairs[r] = np.bincount((gk[gi[sel]] + 1) * (K + 1) + pk[pj[sel]] + 1, minlength=(K + 1) ** 2).reshape(K + 1, K + 1)
        if K == 0:
            continue
        c = m["cand"][r]
        same = c[(gk[gi[c]] == pk[pj[c]]) & (gk[gi[c]] >= 0)]
        if thresh < 0.5:
            # the per-class matchings are separate problems when pairs are not unique
            chosen = [same[cl][_one_to_one(gi[same[cl]], pj[same[cl]], iou[same[cl]], thresh, rule)]
                      for cl in (gk[gi[same]] == k for k in range(K))]
            same = np.concatenate(chosen) if chosen else same[:0]
        else:
            same = same[_one_to_one(gi[same], pj[same], iou[same], thresh, rule)]
        tp_c[r] = np.bincount(gk[gi[same]], minlength=K)
        s_c[r] = np.bincount(gk[gi[same]], weights=iou[same], minlength=K)
    return ImageCounts(
        name=str(name), class_ids=class_ids, n_gt=ng, n_pred=np_, n_pred_ignored=m["n_ignored"],
        tp=tp, sum_iou=s, n_gt_c=np.bincount(gk[gk >= 0], minlength=K), n_pred_c=np.bincount(pk[pk >= 0], minlength=K),
        tp_c=tp_c, sum_iou_c=s_c, pairs=pairs, tissue=tissue, n_pred_unannotated=n_unannotated,
        pairs_centroid=None if centroid_radius is None else _centroid_pairs(m, gk, pk, K, centroid_radius, gt.shape),
    )


def _centroids(pix, rows, shape):
    """Mean (y, x) of each instance ``rows[i]`` of a flat label array."""
    inside = pix.astype(bool)
    yx = np.divmod(np.flatnonzero(inside), shape[1])  # np.flatnonzero of a bool mask is fast
    lab = pix[inside]
    n = int(rows.max()) + 1 if len(rows) else 1
    area = np.bincount(lab, minlength=n)[rows]
    return np.stack([np.bincount(lab, weights=c, minlength=n)[rows] / area for c in yx], -1)


def _centroid_pairs(m, gk, pk, K, radius, shape):
    """(K + 1, K + 1) centroid pairs by (GT class, predicted class), HoVer-Net's way."""
    out = np.zeros((K + 1, K + 1), np.int64)
    if m["ng"] == 0 or m["np"] == 0:
        return out
    from scipy.optimize import linear_sum_assignment

    cg = _centroids(m["gpix"], m["g_rows"], shape)
    cp = _centroids(m["ppix"], m["p_rows"], shape)
    dist = np.sqrt(((cg[:, None, :] - cp[None, :, :]) ** 2).sum(-1))
    r, c = linear_sum_assignment(dist)
    keep = dist[r, c] <= radius
    r, c = r[keep], c[keep]
    np.add.at(out, (gk[r] + 1, pk[c] + 1), 1)
    return out
