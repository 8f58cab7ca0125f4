"""Matching the instances of a ground-truth and a predicted label image.

The matching rules and their tie handling are described in :mod:`stardist_hier.metrics`
(section "Matching"). Plain numpy/scipy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MetricsError", "RULES", "RULE_HOVERNET", "RULE_STARDIST", "match_instances", "image_pq"]

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
    (default nan, the value PanNuke's nan-skipping averages need; StarDist gives 0; HoVer-Net's
    ``get_fast_pq`` gives no value at all there: it crashes on two empty maps, so its callers
    skip such images). SQ is 0 when TP = 0.

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
