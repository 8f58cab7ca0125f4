"""Classes of instances, and class ids of label sets.

How an instance's class is decided is described in :mod:`stardist_hier.metrics` (section
"Classes and ignore regions"). Plain numpy.
"""

from __future__ import annotations

import numpy as np

from .matching import MetricsError, _check_int, _relabel, _where

__all__ = ["instance_classes", "label_set_class_ids", "class_id_map"]


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
    """Label-set class ids of instances from their leaf probabilities: :meth:`LabelSet.classify`.

    A thin wrapper kept for existing callers: the class rule itself lives in
    :meth:`stardist_hier.hierarchy.LabelSet.classify` (leaf probabilities summed per class of
    the label set, arg-max, background excluded, ties to the smallest id). The evaluation of a
    model does not call this: it scores ``details['class_id']`` as the model returns it.

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
        ``(n_instances,)`` int64 class ids of the label set.
    """
    prob = np.asarray(class_prob, np.float64)
    if prob.ndim != 2:
        raise MetricsError(f"class_prob must be (n_instances, n_classes + 1), got shape {prob.shape}")
    return label_set.classify(prob)


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
