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
"""

from __future__ import annotations

import numpy as np

__all__ = ["PER_INSTANCE_KEYS", "CLASS_FROM", "instance_class_prob", "add_class_details"]

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


def add_class_details(details, label_set, leaf_set, class_from):
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

    Returns
    -------
    dict
        ``details`` with ``class_id`` (``label_set``'s ids, :meth:`LabelSet.classify`),
        ``leaf_class_id``, ``label_set_prob`` (``(n, label_set.max_id + 1)`` summed
        probabilities, column = class id) and ``label_set`` (its name).
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
    return details
