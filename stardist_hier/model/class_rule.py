"""How a predicted instance gets its class: the model's side of the one class rule.

:class:`~stardist_hier.model.HierStarDist2D` computes, per instance, leaf probabilities
``details['class_prob']`` (``n_classes + 1`` columns, column 0 background) by one of two rules
(``class_from``):

``'instance'``
    The object-probability-weighted mean of the class map over the instance's pixels
    (:func:`instance_class_prob`; StarDist's CoNIC 2022 rule). Background does not compete:
    a detected nucleus never gets class 0.
``'center'``
    Stock StarDist's rule: the class map at the polygon centre, background competing, so a
    detected nucleus can get class 0. Only this rule can return 0, and only because stock
    StarDist does.

Every class id the model reports is then :meth:`stardist_hier.hierarchy.LabelSet.classify`
of those probabilities (:func:`add_class_details`): the leaf probabilities are summed per
class of the label set asked for and the largest sum wins. The evaluation scores these ids
as returned.

Untrained classes
-----------------
A model has nothing to say below a node that its training never labelled below (a model
trained at the root only splits nuclei among PanNuke's classes arbitrarily).
:meth:`HierStarDist2D.train` records per node the nuclei labelled there
(:func:`record_training_labels`, config ``trained_label_counts``, saved in
``hier_config.json``); a class of the label set asked for with no labelled nucleus at or
below its node is *untrained* (:func:`untrained_classes`): ``details['untrained_classes']``
lists their ids and an :class:`UntrainedClassWarning` names their nodes. Without a record
(``None``: older model folders, stock models) nothing is marked.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["PER_INSTANCE_KEYS", "CLASS_FROM", "instance_class_prob", "add_class_details", "UntrainedClassWarning",
           "count_training_labels", "merge_label_counts", "record_training_labels", "untrained_classes"]


class UntrainedClassWarning(UserWarning):
    """Predicting in a label set with classes the model's recorded training never labelled."""

#: the per-instance arrays HierStarDist2D adds to StarDist's details (one row per instance)
PER_INSTANCE_KEYS = ("leaf_class_id", "label_set_prob")

CLASS_FROM = ("instance", "center")


def instance_class_prob(labels, prob, prob_class, center_prob, grid, scale_yx=(1.0, 1.0)):
    """Object-probability-weighted mean class probabilities over each instance's pixels.

    The label image is read at the centre of each output grid cell (cell ``(r, c)`` is pixel
    ``(round(r * grid_y / scale_y), round(c * grid_x / scale_x))``); instances that cover no
    grid cell (tiny or hidden) keep ``center_prob``, their class probabilities at the centre.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(H, W)`` instance labels, instance ``i + 1`` = row ``i`` (other values are ignored,
        e.g. an ``overlap_label``).
    prob : numpy.ndarray
        ``(h, w)`` object probabilities at the network's grid.
    prob_class : numpy.ndarray
        ``(h, w, n_classes + 1)`` class probabilities at the grid.
    center_prob : numpy.ndarray
        ``(n, n_classes + 1)`` class probabilities at each instance's centre.
    grid : tuple of int
        The network's ``(grid_y, grid_x)``.
    scale_yx : tuple of float
        ``scale`` of ``predict_instances`` along Y and X.

    Returns
    -------
    numpy.ndarray
        ``(n, n_classes + 1)`` float64.
    """
    n = len(center_prob)
    n_out = prob_class.shape[-1]
    if n == 0:
        return np.zeros((0, n_out), np.float64)
    out = np.array(center_prob, dtype=np.float64, copy=True).reshape(n, n_out)
    grid = np.asarray(grid, float)
    s = np.asarray(scale_yx, float)
    rows = np.minimum((np.arange(prob.shape[0]) * grid[0] / s[0]).round().astype(int), labels.shape[0] - 1)
    cols = np.minimum((np.arange(prob.shape[1]) * grid[1] / s[1]).round().astype(int), labels.shape[1] - 1)
    lab = labels[np.ix_(rows, cols)].ravel()
    weight = prob.reshape(-1).astype(np.float64)
    keep = (lab > 0) & (lab <= n)
    lab, weight = lab[keep] - 1, weight[keep]
    pc = prob_class.reshape(-1, n_out)[keep].astype(np.float64)
    sums = np.zeros((n, n_out))
    np.add.at(sums, lab, weight[:, None] * pc)
    total = sums.sum(axis=1)
    have = total > 0
    out[have] = sums[have] / total[have, None]
    return out


def count_training_labels(Y, classes, label_sets):
    """Nuclei labelled at each node in training images.

    Parameters
    ----------
    Y : sequence of numpy.ndarray
        Instance label images (ids > 0 are nuclei).
    classes : sequence
        Per image: dict ``{instance id: class id or None}``, one class id for every nucleus,
        or ``None`` (no class: nothing counted), as ``HierStarDist2D.train`` takes them.
    label_sets : sequence of LabelSet
        The label set of each image.

    Returns
    -------
    dict
        ``{node name: number of nuclei}`` for the nodes with at least one.
    """
    counts = {}
    for y, cls, ls in zip(Y, classes, label_sets):
        if cls is None:
            continue
        if isinstance(cls, dict):
            ids = np.asarray([v for v in cls.values() if v is not None], np.int64)
        else:
            n = np.unique(np.asarray(y))
            ids = np.full(int(np.count_nonzero(n > 0)), int(cls), np.int64)
        values, n_each = np.unique(ids, return_counts=True)
        for v, n in zip(values, n_each):
            node = ls.node(int(v))
            counts[node] = counts.get(node, 0) + int(n)
    return counts


def merge_label_counts(old, new):
    """Sum two ``{node: count}`` records (``old`` may be ``None``: no record yet)."""
    out = dict(old or {})
    for k, v in new.items():
        out[k] = int(out.get(k, 0)) + int(v)
    return dict(sorted(out.items()))


def record_training_labels(model, Y, classes, label_sets):
    """Add the nuclei labelled in one ``train`` call to ``model.config.trained_label_counts``.

    Saves the config files of the model folder (a model in memory only keeps them).
    """
    counts = count_training_labels(Y, classes, label_sets)
    model.config.trained_label_counts = merge_label_counts(model.config.trained_label_counts, counts)
    model.save_config()


def untrained_classes(label_set, counts):
    """Class ids of ``label_set`` with no labelled nucleus at or below their node.

    Parameters
    ----------
    label_set : LabelSet
    counts : dict or None
        ``{node name: nuclei}`` (config ``trained_label_counts``); ``None``: no record.

    Returns
    -------
    tuple of int or None
        ``None`` without a record. A class is trained when some node with a count lies in
        its subtree (its leaves are a subset of the class's leaves): a label above the class
        (e.g. at the root) says nothing about it.
    """
    if counts is None:
        return None
    h = label_set.hierarchy
    seen = [frozenset(h.leaf_channels(node)) for node, n in counts.items() if n > 0 and node in h.parent]
    out = []
    for class_id, node in label_set.nodes.items():
        leaves = frozenset(h.leaf_channels(node))
        if not any(s <= leaves for s in seen):
            out.append(int(class_id))
    return tuple(out)


def _warn_untrained(label_set, untrained, stacklevel=3):
    names = ", ".join(f"{k} = {label_set.nodes[k]}" for k in untrained)
    warnings.warn(f"label set '{label_set.name}': the model's training never labelled a nucleus at or below "
                  f"class(es) {names} (config trained_label_counts); its split of nuclei into these classes is "
                  f"arbitrary. details['untrained_classes'] lists their ids.", UntrainedClassWarning,
                  stacklevel=stacklevel)


def add_class_details(details, label_set, leaf_set, class_from, label_counts=None):
    """Fill in the class entries of a ``details`` dict from its ``class_prob``, in place.

    Parameters
    ----------
    details : dict
        StarDist's details with ``class_prob`` ``(n, n_classes + 1)`` at leaf level.
    label_set : stardist_hier.hierarchy.LabelSet
        The label set to answer in.
    leaf_set : stardist_hier.hierarchy.LabelSet
        The hierarchy's leaf label set (class id i = leaf channel i).
    class_from : {'instance', 'center'}
        ``'center'`` lets background compete (stock StarDist's rule, can give 0).
    label_counts : dict or None
        The model's ``trained_label_counts``; ``None``: no record, nothing marked.

    Returns
    -------
    dict
        ``details`` with ``class_id`` (``label_set``'s ids, :meth:`LabelSet.classify`),
        ``leaf_class_id``, ``label_set_prob`` (``(n, label_set.max_id + 1)`` summed
        probabilities, column = class id), ``label_set`` (its name) and
        ``untrained_classes`` (:func:`untrained_classes`: a tuple of class ids, ``None``
        without a record). Untrained classes also give an :class:`UntrainedClassWarning`.
    """
    n_out = leaf_set.membership.shape[1]
    prob = np.asarray(details["class_prob"])
    if prob.size == 0:
        prob = prob.reshape(0, n_out)
    details["class_prob"] = prob
    background = class_from == "center"
    details["leaf_class_id"] = leaf_set.classify(prob, background=background)
    details["class_id"] = label_set.classify(prob, background=background)
    details["label_set_prob"] = label_set.collapse(prob)
    details["label_set"] = label_set.name
    untrained = untrained_classes(label_set, label_counts)
    details["untrained_classes"] = untrained
    if untrained:
        _warn_untrained(label_set, untrained)
    return details
