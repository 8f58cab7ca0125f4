"""Instance masks: dense ids, per-instance majority classes, relabelling, class maps.

Plain numpy. :mod:`stardist_hier.patches` re-exports these, since they define how the patch
format's masks are written and read.
"""

from __future__ import annotations

import numpy as np

__all__ = ["IGNORE", "dense_ids", "instance_classes", "class_counts", "relabel_instances", "paint_classes"]

#: instance id written for ignore regions (padding, ambiguous or unlabelled pixels)
IGNORE = -1


def dense_ids(values):
    """Sorted distinct values of a non-negative int array and each element's rank in them.

    A lookup table replaces the sort of :func:`numpy.unique` when the values are small
    (they are: instance ids and class keys), which makes per-patch relabelling O(pixels).

    Returns
    -------
    uniq : numpy.ndarray
        Sorted distinct values.
    rank : numpy.ndarray
        Same shape as ``values``: index of each element's value in ``uniq``.
    """
    values = np.asarray(values)
    if values.size == 0:
        return np.zeros(0, np.int64), np.zeros(values.shape, np.int64)
    top = int(values.max())
    if top <= 4 * values.size + 65536:
        used = np.zeros(top + 1, bool)
        used[values] = True
        lut = np.cumsum(used) - 1
        return np.flatnonzero(used), lut[values]
    uniq, inv = np.unique(values, return_inverse=True)
    return uniq, inv.reshape(values.shape)


def instance_classes(mask):
    """Class of every instance of a mask.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(H, W, 2)`` mask (instance ids, class ids), or a pair ``(instances, classes)``.

    Returns
    -------
    dict
        ``{instance id: class id or None}`` for every positive instance id. The class is
        the most frequent non-zero class over the instance's pixels (ties: the smaller
        id); an instance whose pixels are all class 0 has class ``None`` (unknown class,
        StarDist's meaning).
    """
    if isinstance(mask, (tuple, list)):
        inst, cls = (np.asarray(a) for a in mask)
    else:
        mask = np.asarray(mask)
        inst, cls = mask[..., 0], mask[..., 1]
    inst = inst.ravel().astype(np.int64)
    cls = cls.ravel().astype(np.int64)
    ids, _ = dense_ids(inst[inst > 0])
    out = {int(i): None for i in ids.tolist()}
    sel = (inst > 0) & (cls > 0)
    if sel.any():
        # one 1-D key per (instance, class) pair, counted without sorting the pixels
        base = int(cls[sel].max()) + 1
        keys, rank = dense_ids(inst[sel] * base + cls[sel])
        counts = np.bincount(rank.ravel(), minlength=len(keys))
        pi, pc = keys // base, keys % base
        # per instance: highest count first, then the smaller class id
        order = np.lexsort((pc, -counts, pi))
        pi, pc = pi[order], pc[order]
        first = np.r_[True, pi[1:] != pi[:-1]]
        for i, c in zip(pi[first].tolist(), pc[first].tolist()):
            out[i] = c
    return out


def class_counts(classes):
    """``{class id: number of nuclei}`` from an :func:`instance_classes` dict (``None`` -> 0)."""
    counts = {}
    for c in classes.values():
        k = 0 if c is None else int(c)
        counts[k] = counts.get(k, 0) + 1
    return counts


def relabel_instances(inst):
    """Relabel positive ids to ``1..n`` (in order of the old ids); every negative id becomes ``IGNORE``.

    Returns
    -------
    numpy.ndarray
        int32 array of the same shape.
    """
    inst = np.asarray(inst)
    out = np.zeros(inst.shape, np.int32)
    pos = inst > 0
    if pos.any():
        _, rank = dense_ids(inst[pos])
        out[pos] = rank.astype(np.int32) + 1
    out[inst < 0] = IGNORE
    return out


def paint_classes(inst, classes):
    """Class map in which every pixel of a nucleus carries that nucleus's class.

    Parameters
    ----------
    inst : numpy.ndarray
        ``(H, W)`` instance ids (negative = ignore).
    classes : dict or numpy.ndarray
        ``{instance id: class id or None}``, or an ``(H, W)`` class map from which each
        instance's class is taken by :func:`instance_classes` (majority over the instance).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` int32; 0 on background, ignore regions and nuclei of unknown class.
    """
    inst = np.asarray(inst)
    if not isinstance(classes, dict):
        classes = instance_classes((inst, np.asarray(classes)))
    top = int(inst.max()) if inst.size else 0
    lut = np.zeros(max(top, 0) + 1, np.int32)
    for i, c in classes.items():
        if 0 < int(i) <= top and c is not None:
            lut[int(i)] = int(c)
    return np.where(inst > 0, lut[np.clip(inst, 0, None)], 0).astype(np.int32)
