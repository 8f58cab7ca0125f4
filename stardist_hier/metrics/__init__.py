"""Instance segmentation and classification metrics for nucleus images.

Plain numpy/scipy: scoring predictions never imports TensorFlow.

Matching
--------
A ground-truth (GT) and a predicted instance are a candidate pair when their IoU exceeds the
threshold (0.5). Two rules are in use and both are computed for every image:

* ``">"`` (``RULE_HOVERNET``): IoU strictly above 0.5, as HoVer-Net's ``get_fast_pq``, the
  PanNuke and CoNIC challenge code.
* ``">="`` (``RULE_STARDIST``): IoU at or above 0.5, as ``stardist.matching.matching``.

Above 0.5 each instance has at most one candidate, so the matching is the set of candidates.
At exactly 0.5 an instance can have two candidates, its two exact halves; any one of them is a
maximum matching and all give the same counts and summed IoU, so one is kept. Below 0.5 the
matching maximises the number of pairs, then the summed IoU (Hungarian algorithm, as
StarDist). Pairwise overlaps come from one ``np.bincount`` over paired labels per image.

Per-class matching matches GT instances of class ``c`` with predicted instances of class ``c``
only (CoNIC's and PanNuke's per-class instance maps): a nucleus with the wrong class is a false
negative of its true class and a false positive of its predicted class.

Classes and ignore regions
--------------------------
An instance's class is the most frequent non-zero class id among its pixels (ties: the smallest
id); an instance whose pixels all have class 0 is *unlabelled*: it counts in class-agnostic
metrics and in no class. Negative GT instance ids mark ignore regions (MoNuSAC "Ambiguous"):
they are not GT instances, and a predicted instance with more than half of its pixels on
negative-id pixels is dropped (counted in ``n_pred_ignored``) before matching.

Conventions and their empty-case rules
--------------------------------------
With ``den = TP + FP/2 + FN/2``: ``DQ = TP/den``, ``SQ = sum_IoU/TP``, ``PQ = DQ*SQ =
sum_IoU/den``. Values are exact (the reference codes' ``1e-6`` epsilons change them by
less than 1e-6 and are not reproduced).

Each entry: name (matching rule) -- aggregation; empty-case rule.

* ``bPQ_pannuke_tissue`` (``>``) -- class-agnostic PQ per image, nanmean per tissue, nanmean
  over tissues (PanNuke). An image without GT gives nan and is skipped, so its false
  positives are ignored.
* ``bPQ_pannuke_image`` (``>``) -- the same per-image values, nanmean over images.
* ``mPQ_pannuke_tissue`` (``>``) -- per image, nanmean of the per-class PQ over the classes
  with GT in that image; nanmean per tissue; nanmean over tissues (PanNuke). A class without
  GT in an image gives nan there (its false positives in that image are ignored).
* ``mPQ_pannuke_image`` (``>``) -- the same per-image mPQ, nanmean over images.
* ``PQ_pannuke_<class>`` (``>``) -- per-class per-image PQ, nanmean over images; nan where an
  image has no GT of the class.
* ``PQ_conic`` (``>``) -- class-agnostic PQ per image, mean over images (CoNIC's "PQ"); 0 when
  ``den = 0`` (no GT and no prediction).
* ``mPQ+_conic`` (``>``) -- per class, TP/FP/FN/sum_IoU summed over all images, PQ per class,
  mean over *all* classes of the label set; a class absent from the whole set (GT and
  prediction) scores 0. ``PQ+_<class>``: that class's value.
* ``PQ_stardist_image`` (``>=``) -- class-agnostic PQ per image, mean over images
  (``matching_dataset(by_image=True)``); 0 when ``den = 0``.
* ``PQ_stardist_summed`` (``>=``) -- from TP/FP/FN/sum_IoU summed over the set
  (``matching_dataset(by_image=False)``); 0 when ``den = 0``.
* ``DQ_summed``, ``SQ_summed`` (``>``) -- from the summed class-agnostic counts; 0 when the
  denominator is 0.
* ``F1_det``, ``precision_det``, ``recall_det`` (``>``) -- detection from the summed
  class-agnostic counts, ``F1 = 2TP/(2TP+FP+FN)``; nan when the denominator is 0.
* ``F1_class_<class>`` (``>``) -- HoVer-Net's classification F1 over the set,
  ``2TPc/(2TPc + 2FPc + 2FNc + FPd + FNd)``; nan when the class appears nowhere.
  ``F1_class_mean``: nanmean over classes.
* ``acc_class`` (``>``) -- share of matched pairs with a labelled GT nucleus whose classes
  agree; nan without such pairs.
* ``F1_det_centroid``, ``F1_class_centroid_<class>``, ``acc_class_centroid`` -- the same with
  HoVer-Net's own pairing (optimal assignment of centroids, pairs at most ``centroid_radius``
  pixels apart), reported when a radius is given.
* ``R2_<class>`` -- coefficient of determination of the per-image counts of the class (CoNIC);
  constant GT counts give 1 if predicted exactly, else 0 (scikit-learn's rule); nan with fewer
  than 2 images. ``R2_conic``: mean over classes. Counts are over the whole image (CoNIC
  counted the central 224x224 of its 256x256 patches).

In ``F1_class``: ``TPc`` matched pairs with GT and prediction of class ``c``; ``FPc`` matched
pairs predicted ``c`` with another GT class; ``FNc`` matched pairs of GT class ``c`` predicted
otherwise; ``FPd``/``FNd`` unmatched predictions/GT of class ``c`` (weights 2, 2, 1, 1 of
HoVer-Net's ``compute_stats.py``). ``F1_class`` pairs nuclei by the IoU matching that the PQ
counts use; ``F1_class_centroid`` by centroid distance as HoVer-Net does (12 px at 40x).

Without tissue labels, all images form one tissue and the tissue-averaged values equal the
image-averaged ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "MetricsError", "RULES", "RULE_HOVERNET", "RULE_STARDIST",
    "match_instances", "image_pq", "ImageCounts", "evaluate_image", "evaluate_arrays",
    "summarize", "per_image_frame", "instance_classes", "label_set_class_ids", "class_id_map",
    "r2_score",
]

RULE_HOVERNET = ">"
RULE_STARDIST = ">="
#: the matching rules computed for every image, in the order of the rule axis of ImageCounts
RULES = (RULE_HOVERNET, RULE_STARDIST)


class MetricsError(ValueError):
    """Invalid input to a metric; the message names the image (when known) and the problem."""


def _where(name):
    return f"{name}: " if name else ""


# ----------------------------------------------------------------------------------------
# low-level helpers


def _check_int(a, what, name):
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise MetricsError(f"{_where(name)}{what} must be an integer array, got dtype {a.dtype}")
    if a.dtype == np.uint64:
        # np.bincount refuses uint64; ids beyond 2**63 do not occur in label images
        a = a.astype(np.int64)
    return a


def _relabel(flat):
    """Dense ids for a flat non-negative label array.

    Returns ``(dense, ids, areas)``: ``dense`` has 0 for background and ``1..n`` for the
    instances in increasing order of original id; ``ids`` and ``areas`` are per instance.
    """
    if flat.size == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.int64), np.zeros(0, np.int64)
    mx = int(flat.max())
    if mx <= max(4 * flat.size, 1 << 20):
        counts = np.bincount(flat)
        ids = np.flatnonzero(counts[1:]) + 1
        fwd = np.zeros(mx + 1, np.intp)
        fwd[ids] = np.arange(1, ids.size + 1)
        return fwd[flat], ids, counts[ids]
    # huge ids (e.g. hashed labels): sort-based relabelling instead of a huge lookup table
    uniq, inv, counts = np.unique(flat, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1).astype(np.intp)
    if uniq[0] == 0:
        return inv, uniq[1:].astype(np.int64), counts[1:]
    return inv + 1, uniq.astype(np.int64), counts


def _overlaps(dg, ng, dp, np_):
    """Sparse contingency table of two dense label arrays: (gt index, pred index, pixels)."""
    size = (ng + 1) * (np_ + 1)
    if size <= max(4 * dg.size, 1 << 16):
        table = np.bincount(dg * (np_ + 1) + dp, minlength=size).reshape(ng + 1, np_ + 1)[1:, 1:]
        gi, pj = np.nonzero(table)
        return gi, pj, table[gi, pj]
    # many instances: a dense table would be larger than the image, so count only the
    # pixels where both label images have an instance
    both = (dg > 0) & (dp > 0)
    keys, inter = np.unique(dg[both].astype(np.int64) * (np_ + 1) + dp[both], return_counts=True)
    return (keys // (np_ + 1) - 1).astype(np.intp), (keys % (np_ + 1) - 1).astype(np.intp), inter


def _candidates(inter, union, thresh, rule):
    # thresh * union is exact for thresh = 0.5, so IoU = 0.5 is decided without rounding
    return inter > thresh * union if rule == RULE_HOVERNET else inter >= thresh * union


def _one_to_one(gi, pj, iou, thresh, rule):
    """Indices (into the candidate arrays) of a maximum matching of the candidate pairs."""
    n = gi.size
    if n <= 1 or (thresh >= 0.5 and rule == RULE_HOVERNET) or thresh > 0.5:
        return np.arange(n)  # unique by construction: IoU > 0.5 admits one partner at most
    if thresh >= 0.5:
        # ">= 0.5": a second candidate exists only as an exact half (IoU = 0.5 for both) of a
        # node whose other partner has no further candidate; dropping duplicates on one side
        # then the other leaves a maximum matching with the same summed IoU
        keep = np.zeros(n, bool)
        keep[np.unique(gi, return_index=True)[1]] = True
        idx = np.flatnonzero(keep)
        return idx[np.unique(pj[idx], return_index=True)[1]]
    from scipy.optimize import linear_sum_assignment

    rows, r_inv = np.unique(gi, return_inverse=True)
    cols, c_inv = np.unique(pj, return_inverse=True)
    k = min(rows.size, cols.size)
    # one unit per pair dominates the IoU tie-break (which sums to < 1): most pairs first
    cost = np.zeros((rows.size, cols.size))
    cost[r_inv, c_inv] = -1.0 - iou / (2 * k)
    pos = np.full((rows.size, cols.size), -1, np.intp)
    pos[r_inv, c_inv] = np.arange(n)
    r, c = linear_sum_assignment(cost)
    sel = pos[r, c]
    return np.sort(sel[sel >= 0])


def _pq(sum_iou, tp, fp, fn, empty):
    sum_iou, tp, fp, fn = (np.asarray(x, np.float64) for x in (sum_iou, tp, fp, fn))
    den = tp + 0.5 * fp + 0.5 * fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, sum_iou / np.where(den > 0, den, 1), empty)


def _ratio(num, den, empty=np.nan):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), empty)


# ----------------------------------------------------------------------------------------
# classes


def instance_classes(inst, classes, ids=None, name=None):
    """Class id of each instance.

    Parameters
    ----------
    inst : numpy.ndarray
        Instance label image (0 background; negative values are ignored).
    classes : array_like or dict
        Either a per-pixel class map of the same shape as ``inst`` (an instance takes the most
        frequent non-zero class among its pixels, the smallest id on ties, 0 if all are 0), or
        a per-instance table: a 1-D array indexed by instance id, or a dict id -> class id.
    ids : array_like of int, optional
        Instance ids to report, default: the positive ids present in ``inst``, sorted.
    name : str, optional
        Image name for error messages.

    Returns
    -------
    numpy.ndarray
        ``int64`` class ids, one per entry of ``ids``.
    """
    inst = _check_int(inst, "instance ids", name)
    flat = np.where(inst > 0, inst, 0).ravel()
    dense, all_ids, _ = _relabel(flat)
    ids = all_ids if ids is None else np.asarray(ids, np.int64)
    if isinstance(classes, dict) or np.ndim(classes) == 1:
        return _lookup_classes(classes, ids, name)
    classes = _check_pixel_classes(classes, inst.shape, "", name)
    per, _ = _instance_modes(dense, np.arange(1, all_ids.size + 1), classes.ravel())
    pos = np.minimum(np.searchsorted(all_ids, ids), max(all_ids.size - 1, 0))
    out = np.zeros(ids.size, np.int64)
    if all_ids.size:
        ok = all_ids[pos] == ids
        out[ok] = per[pos[ok]]
    return out


def _lookup_classes(classes, ids, name):
    """Classes of instance ``ids`` from a dict or a 1-D table indexed by instance id."""
    ids = np.asarray(ids, np.int64)
    if isinstance(classes, dict):
        missing = [int(i) for i in ids if int(i) not in classes]
        if missing:
            raise MetricsError(f"{_where(name)}no class given for instance id(s) {missing[:10]}")
        return np.array([int(classes[int(i)]) for i in ids], np.int64)
    classes = _check_int(classes, "class table", name)
    if ids.size and ids.max() >= classes.size:
        raise MetricsError(f"{_where(name)}class table has {classes.size} entries; instance id {ids.max()} needs more")
    return classes[ids].astype(np.int64)


def _check_pixel_classes(cls, shape, what, name):
    cls = _check_int(cls, f"{what}class ids".lstrip(), name)
    if cls.shape != tuple(shape):
        raise MetricsError(f"{_where(name)}{what}class map shape {cls.shape} differs from instance map shape {tuple(shape)}")
    if cls.size and cls.min() < 0:
        raise MetricsError(f"{_where(name)}{what}class ids must be >= 0, found {int(cls.min())}")
    return cls


def _instance_modes(pix, rows, cls_flat):
    """Per-instance majority class and the class ids present anywhere in the map.

    ``pix`` are per-pixel labels (0 background) and ``rows`` the label of each instance.
    Returns ``(modes, present)``: ``modes[i]`` is the most frequent non-zero class of
    instance ``rows[i]`` (0 when none; the smallest id on ties); ``present`` the sorted class
    ids with at least one pixel, background pixels included, so that stray ids are reported.
    """
    mc = int(cls_flat.max()) + 1 if cls_flat.size else 1
    n_rows = int(rows.max()) + 1 if len(rows) else 1
    kt = np.int32 if n_rows * mc < 2**31 else np.int64
    key = pix.astype(kt) * kt(mc)
    key += cls_flat
    # key 0 (background pixel of class 0) is the only cell not needed; class ids on
    # background pixels land in row 0 and so are reported in `present` too
    key = key[key.astype(bool)]
    table = np.bincount(key, minlength=n_rows * mc)
    if table.size % mc:
        # labels above rows.max() (dropped predictions) can end the histogram mid-row
        table = np.concatenate([table, np.zeros(mc - table.size % mc, table.dtype)])
    table = table.reshape(-1, mc)
    present = np.flatnonzero(table.sum(0))
    fg = table[rows, 1:]
    if len(rows) == 0 or fg.shape[1] == 0:
        return np.zeros(len(rows), np.int64), present
    best = fg.argmax(axis=1) + 1
    best[fg.max(axis=1) == 0] = 0
    return best.astype(np.int64), present


def label_set_class_ids(class_prob, label_set):
    """Label-set class ids of instances from their leaf-level class probabilities.

    The leaf probabilities are summed into the label set's classes
    (:meth:`stardist_hier.hierarchy.LabelSet.collapse`) and each instance takes the class of
    largest summed probability, background excluded. This is not the class of the arg-max
    leaf: two leaves of 0.3 under one class beat a single leaf of 0.4 under another.

    Parameters
    ----------
    class_prob : array_like
        ``(n_instances, n_classes + 1)`` probabilities at leaf level (channel 0 background),
        e.g. ``details['class_prob']`` of ``predict_instances``.
    label_set : stardist_hier.hierarchy.LabelSet
        The label set to score at.

    Returns
    -------
    numpy.ndarray
        ``(n_instances,)`` int64 class ids of the label set (ties: the smallest id).
    """
    prob = np.asarray(class_prob, np.float64)
    if prob.ndim != 2:
        raise MetricsError(f"class_prob must be (n_instances, n_classes + 1), got shape {prob.shape}")
    ids = np.asarray(label_set.ids, np.int64)
    if prob.shape[0] == 0:
        return np.zeros(0, np.int64)
    collapsed = label_set.collapse(prob)[:, ids]
    return ids[collapsed.argmax(axis=1)]


def class_id_map(source, target):
    """Lookup table taking class ids of one label set to another, coarser or equal one.

    A source class maps to the target class whose node is the same node or an ancestor.

    Parameters
    ----------
    source, target : stardist_hier.hierarchy.LabelSet
        Label sets of the same hierarchy.

    Returns
    -------
    numpy.ndarray
        ``int64`` array of length ``source.max_id + 1``: ``table[source_id] = target_id``
        (0 -> 0; ids unused by ``source`` -> 0).

    Raises
    ------
    MetricsError
        When a source class has no target class at or above it (the target is finer there).
    """
    if source is target or source.nodes == target.nodes:
        table = np.zeros(source.max_id + 1, np.int64)
        table[list(source.ids)] = list(source.ids)
        return table
    h = target.hierarchy
    by_node = {node: cid for cid, node in target.nodes.items()}
    table = np.zeros(source.max_id + 1, np.int64)
    for cid, node in source.nodes.items():
        hit = next((by_node[n] for n in [node, *h.ancestors(node)] if n in by_node), None)
        if hit is None:
            raise MetricsError(
                f"class {cid} ('{node}') of label set '{source.name}' has no class at or above it in label set "
                f"'{target.name}' ({', '.join(f'{k}={v}' for k, v in target.nodes.items())}): "
                f"ground truth cannot be scored at a finer label set"
            )
        table[cid] = hit
    return table


# ----------------------------------------------------------------------------------------
# one image


def match_instances(gt, pred, thresh=0.5, rule=RULE_HOVERNET):
    """Match the instances of two label images.

    Parameters
    ----------
    gt, pred : numpy.ndarray
        Integer label images of one shape (0 background). Negative ids in ``gt`` are ignore
        regions (predictions mostly inside them are dropped); ``pred`` must be >= 0.
    thresh : float
        IoU threshold.
    rule : {'>', '>='}
        ``'>'`` as HoVer-Net, PanNuke and CoNIC; ``'>='`` as StarDist.

    Returns
    -------
    dict
        ``gt_ids``, ``pred_ids``, ``iou``: matched pairs (original ids, sorted by GT id);
        ``tp``, ``fp``, ``fn``, ``sum_iou``, ``n_true``, ``n_pred``, ``n_pred_ignored``.
    """
    m = _match_core(gt, pred, thresh)
    k = RULES.index(_check_rule(rule))
    sel = m["sel"][k]
    gt_ids = m["g_ids"][m["gi"][sel]]
    order = np.argsort(gt_ids, kind="stable")
    tp = int(sel.size)
    return dict(gt_ids=gt_ids[order], pred_ids=m["p_ids"][m["pj"][sel]][order], iou=m["iou"][sel][order],
                tp=tp, fp=m["np"] - tp, fn=m["ng"] - tp, sum_iou=float(m["iou"][sel].sum()),
                n_true=m["ng"], n_pred=m["np"], n_pred_ignored=m["n_ignored"])


def image_pq(gt, pred, thresh=0.5, rule=RULE_HOVERNET, empty=np.nan):
    """DQ, SQ and PQ of one image, class-agnostic.

    ``empty`` is returned for all three when the image has neither GT nor prediction
    (HoVer-Net's ``get_fast_pq`` gives nan there, StarDist 0). SQ is 0 when TP = 0.

    Returns
    -------
    dict
        ``dq``, ``sq``, ``pq``, ``tp``, ``fp``, ``fn``, ``sum_iou``.
    """
    m = match_instances(gt, pred, thresh, rule)
    tp, fp, fn, s = m["tp"], m["fp"], m["fn"], m["sum_iou"]
    if tp + fp + fn == 0:
        return dict(dq=empty, sq=empty, pq=empty, tp=0, fp=0, fn=0, sum_iou=0.0)
    den = tp + 0.5 * fp + 0.5 * fn
    return dict(dq=tp / den, sq=s / tp if tp else 0.0, pq=s / den, tp=tp, fp=fp, fn=fn, sum_iou=s)


def _check_rule(rule):
    if rule not in RULES:
        raise MetricsError(f"rule must be one of {RULES}, got {rule!r}")
    return rule


def _split_channels(a, what, name):
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] == 2:
        return a[..., 0], a[..., 1]
    if a.ndim != 2:
        raise MetricsError(f"{_where(name)}{what} must be (H, W) instance ids or (H, W, 2) ids + classes, got shape {a.shape}")
    return a, None


def _match_core(gt, pred, thresh, name=None):
    """Candidate pairs and matchings of one image (both rules).

    Instances are addressed by their index in ``g_ids``/``p_ids``; ``gpix``/``ppix`` are the
    per-pixel labels and ``g_rows``/``p_rows`` the row of each instance in a table built by
    ``np.bincount`` over those labels (for the class modes).
    """
    gt = _check_int(gt, "ground-truth instance ids", name)
    pred = _check_int(pred, "predicted instance ids", name)
    if gt.shape != pred.shape:
        raise MetricsError(f"{_where(name)}prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    gflat, pflat = gt.ravel(), pred.ravel()
    n = gflat.size
    gmin, gmax = (int(gflat.min()), int(gflat.max())) if n else (0, 0)
    pmin, pmax = (int(pflat.min()), int(pflat.max())) if n else (0, 0)
    if pmin < 0:
        raise MetricsError(f"{_where(name)}predicted instance ids must be >= 0, found {pmin}")
    ignore = None
    if gmin < 0:
        ignore = gflat < 0
        gflat = np.where(ignore, 0, gflat)
        gmax = max(gmax, 0)
    if (gmax + 1) * (pmax + 1) <= max(4 * n, 1 << 16):
        # small ids (the usual 1..n per tile): they index the contingency table directly,
        # whose margins are the areas; no relabelling pass over the pixels
        gpix, ppix = gflat, pflat
        kt = np.int32 if (gmax + 1) * (pmax + 1) < 2**31 else np.int64
        key = gflat.astype(kt) * kt(pmax + 1)
        key += pflat
        # key 0 = background in both images, the one unused cell: histogram the rest only
        # (a boolean mask; np.flatnonzero on integers is slow)
        key = key[key.astype(bool)]
        table = np.bincount(key, minlength=(gmax + 1) * (pmax + 1)).reshape(gmax + 1, pmax + 1)
        g_all, p_all = table.sum(1), table.sum(0)
        g_ids = np.flatnonzero(g_all[1:]) + 1
        p_ids = np.flatnonzero(p_all[1:]) + 1
        g_area, p_area = g_all[g_ids], p_all[p_ids]
        sub = table[g_ids[:, None], p_ids]  # present ids only: unused ids make sparse rows
        flat = np.flatnonzero(sub)
        gi, pj = np.divmod(flat, p_ids.size) if p_ids.size else (flat, flat)
        inter = sub.ravel()[flat]
        g_rows, p_rows = g_ids, p_ids
    else:
        gpix, g_ids, g_area = _relabel(gflat)
        ppix, p_ids, p_area = _relabel(pflat)
        gi, pj, inter = _overlaps(gpix, g_ids.size, ppix, p_ids.size)
        g_rows, p_rows = np.arange(1, g_ids.size + 1), np.arange(1, p_ids.size + 1)
    n_ignored = 0
    if ignore is not None and p_ids.size:
        on_ignore = np.bincount(ppix[ignore], minlength=int(p_rows[-1]) + 1)[p_rows]
        drop = 2 * on_ignore > p_area
        n_ignored = int(drop.sum())
        if n_ignored:
            # a dropped prediction leaves the table; its pixels touch no other instance
            keep = np.flatnonzero(~drop)
            fwd = np.full(p_ids.size, -1, np.intp)
            fwd[keep] = np.arange(keep.size)
            pj = fwd[pj]
            ok = pj >= 0
            gi, pj, inter = gi[ok], pj[ok], inter[ok]
            p_ids, p_area, p_rows = p_ids[keep], p_area[keep], p_rows[keep]
    union = g_area[gi] + p_area[pj] - inter
    iou = inter / union
    sel, cand = [], []
    for rule in RULES:
        c = np.flatnonzero(_candidates(inter, union, thresh, rule))
        cand.append(c)
        sel.append(c[_one_to_one(gi[c], pj[c], iou[c], thresh, rule)])
    return dict(ng=int(g_ids.size), np=int(p_ids.size), g_ids=g_ids, p_ids=p_ids, n_ignored=n_ignored,
                gpix=gpix, ppix=ppix, g_rows=g_rows, p_rows=p_rows, gi=gi, pj=pj, iou=iou, sel=sel, cand=cand)


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
        GT instances, predicted instances (after dropping those in ignore regions), dropped
        predictions.
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

    @property
    def fp(self):
        """``(2,)`` class-agnostic false positives."""
        return self.n_pred - self.tp

    @property
    def fn(self):
        """``(2,)`` class-agnostic false negatives."""
        return self.n_gt - self.tp


def _class_index(class_ids, values, what, name):
    """Map class ids to positions in ``class_ids`` (0 -> -1); error on ids outside it."""
    class_ids = np.asarray(class_ids, np.int64)
    values = np.asarray(values, np.int64)
    if values.size == 0:
        return np.zeros(0, np.intp)
    mx = max(int(values.max()), int(class_ids.max()) if class_ids.size else 0)
    table = np.full(mx + 1, -2, np.intp)
    table[0] = -1
    table[class_ids] = np.arange(class_ids.size)
    bad = (values < 0) | (table[np.clip(values, 0, mx)] == -2)
    if bad.any():
        raise MetricsError(
            f"{_where(name)}{what}: class id(s) {sorted(set(values[bad].tolist()))} are not in the label set's ids "
            f"{class_ids.tolist()} (0 = unlabelled)"
        )
    return table[values]


def evaluate_image(gt, pred, gt_class=None, pred_class=None, class_ids=None, thresh=0.5, name="", tissue=None,
                   centroid_radius=None):
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
        tp_c=tp_c, sum_iou_c=s_c, pairs=pairs, tissue=tissue,
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


# ----------------------------------------------------------------------------------------
# a data set


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
    return class_ids, {a: get(a) for a in ("n_gt", "n_pred", "n_pred_ignored", "tp", "sum_iou", "n_gt_c",
                                           "n_pred_c", "tp_c", "sum_iou_c", "pairs")}


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
        Flat mapping of metric name to value (see the module docstring for the names and
        their empty-case rules), plus ``n_images``, ``n_gt_nuclei``, ``n_pred_nuclei``,
        ``n_pred_ignored``, ``n_tissues``, per-class ``n_gt_<class>`` and ``n_pred_<class>``.
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
        n_tissues=len(set(tissues)),
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

    Columns: ``image``, ``tissue``, ``n_gt``, ``n_pred``, ``n_pred_ignored``, ``tp``, ``fp``,
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
        tp=a["tp"][:, 0], fp=a["n_pred"] - a["tp"][:, 0], fn=a["n_gt"] - a["tp"][:, 0], sum_iou=a["sum_iou"][:, 0],
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
        Class ids of the label set; default: all non-zero ids found in the set.
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
