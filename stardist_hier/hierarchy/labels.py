"""Label sets: one dataset's class ids on nodes of the hierarchy, and the one class rule.

:meth:`LabelSet.classify` is the only place that decides which class of a label set a
nucleus gets from its predicted leaf probabilities; the model, the evaluation, the
flattening baseline and the prediction outputs all call it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["HierarchyError", "LabelSet", "BACKGROUND", "UNANNOTATED_SHARE"]

BACKGROUND = "background"

#: A predicted nucleus at a non-exhaustive label set is *set aside* (neither a true nor a
#: false positive) when more than this share of its foreground probability lies on leaves
#: the label set declares unannotated (:meth:`LabelSet.is_unannotated`).
UNANNOTATED_SHARE = 0.5


class HierarchyError(ValueError):
    """An invalid hierarchy or label set. The message names the source and the key at fault."""


class LabelSet:
    """One dataset's class ids mapped onto nodes of a :class:`ClassHierarchy`.

    Parameters
    ----------
    name : str
        Name of the label set (usually the dataset's name, e.g. ``'monusac'``).
    nodes : dict
        Dataset class id (int >= 1) -> node name.
    hierarchy : ClassHierarchy
        The hierarchy the nodes belong to.
    unannotated : sequence of str, optional
        Nodes whose nuclei the dataset does not annotate (they are background in its masks,
        as MoNuSAC's fibroblasts). Disjoint from the labelled nodes.

    Attributes
    ----------
    ids : tuple of int
        The dataset's class ids, sorted.
    max_id : int
        Largest class id; arrays indexed by class id have ``max_id + 1`` rows.
    membership : numpy.ndarray
        ``(max_id + 1, n_classes + 1)`` array of 0/1: row ``k`` marks the leaf channels
        whose probabilities are summed for class id ``k`` (the set :math:`S_k` of the paper's
        Eq. 2); row 0 is background (channel 0 only); rows of unused ids are all zero.
    leaf_group : numpy.ndarray
        ``(n_classes + 1,)`` int: for each output channel, the dense index (0 = background,
        ``1..len(ids)`` = position in ``ids``) of the label-set class that contains it, or
        -1 for leaves no class of this label set covers.
    unannotated : tuple of str
        Declared unannotated nodes (empty for an exhaustive label set).
    unannotated_channels : tuple of int
        Leaf channels under the unannotated nodes.
    exhaustive : bool
        True when the label set declares no unannotated node.
    """

    def __init__(self, name, nodes, hierarchy, unannotated=()):
        self.name = str(name)
        self.hierarchy = hierarchy
        self.nodes = {int(k): v for k, v in sorted(nodes.items())}
        self.ids = tuple(self.nodes)
        self.max_id = max(self.ids) if self.ids else 0
        n_out = hierarchy.n_classes + 1
        self.membership = np.zeros((self.max_id + 1, n_out), np.uint8)
        self.membership[0, 0] = 1
        self.leaf_group = np.full(n_out, -1, np.int32)
        self.leaf_group[0] = 0
        for dense, (class_id, node) in enumerate(self.nodes.items(), start=1):
            channels = list(hierarchy.leaf_channels(node))
            self.membership[class_id, channels] = 1
            self.leaf_group[channels] = dense
        self.unannotated = tuple(unannotated)
        self.unannotated_channels = tuple(sorted({c for n in self.unannotated for c in hierarchy.leaf_channels(n)}))
        self.exhaustive = not self.unannotated

    @property
    def n_label_classes(self):
        """Number of classes of this label set, background included."""
        return len(self.ids) + 1

    @property
    def names(self):
        """Node names of the classes, in id order."""
        return [self.nodes[k] for k in self.ids]

    def node(self, class_id):
        """Node name of a dataset class id (0 is background)."""
        if class_id == 0:
            return BACKGROUND
        try:
            return self.nodes[int(class_id)]
        except (KeyError, ValueError, TypeError):
            raise HierarchyError(
                f"label set '{self.name}': class id {class_id!r} is not one of its ids {list(self.ids)}"
            ) from None

    def color(self, class_id):
        """``(r, g, b)`` display colour of a class id (its node's colour; background grey)."""
        if int(class_id) == 0:
            return (128, 128, 128)
        return self.hierarchy.color(self.node(class_id))

    def check_class_ids(self, class_ids, where=""):
        """Raise :class:`HierarchyError` if any id is neither 0 nor one of this label set's ids."""
        bad = sorted({int(c) for c in np.unique(np.asarray(class_ids, dtype=np.int64))} - set(self.ids) - {0})
        if bad:
            raise HierarchyError(
                f"{where + ': ' if where else ''}class id(s) {bad} not in label set '{self.name}' "
                f"(valid ids: 0 = background, {', '.join(f'{k} = {v}' for k, v in self.nodes.items())})"
            )

    def _check_channels(self, prob_leaf):
        prob_leaf = np.asarray(prob_leaf)
        if prob_leaf.shape[-1] != self.membership.shape[1]:
            raise HierarchyError(
                f"label set '{self.name}': probabilities have {prob_leaf.shape[-1]} channels, "
                f"the hierarchy has {self.membership.shape[1]} (n_classes + 1)"
            )
        return prob_leaf

    def collapse(self, prob_leaf):
        """Sum leaf probabilities into this label set's classes.

        Parameters
        ----------
        prob_leaf : array_like
            ``(..., n_classes + 1)`` probabilities at leaf level (channel 0 background).

        Returns
        -------
        numpy.ndarray
            ``(..., max_id + 1)``: channel ``k`` holds the summed probability of the leaves
            under the node of class id ``k`` (channel 0: background). Mass of leaves that no
            class of this label set covers is dropped.
        """
        prob_leaf = self._check_channels(prob_leaf)
        return prob_leaf @ self.membership.T.astype(prob_leaf.dtype if prob_leaf.dtype.kind == "f" else np.float64)

    def classify(self, prob_leaf, background=False):
        """The class of each nucleus at this label set: **the** class rule of the package.

        The leaf probabilities are summed into the label set's classes (:meth:`collapse`) and
        each nucleus takes the class of largest summed probability (ties: the smallest id).
        This is not the class of the arg-max leaf: two leaves of 0.3 under one class beat a
        single leaf of 0.4 under another.

        Parameters
        ----------
        prob_leaf : array_like
            ``(n, n_classes + 1)`` leaf probabilities per nucleus (column 0 background), e.g.
            ``details['class_prob']`` of ``predict_instances``.
        background : bool
            ``False`` (default): the arg-max is over the label set's classes, so a detected
            nucleus never gets class 0. ``True``: background competes too, which is stock
            StarDist's centre-pixel rule (``class_from='center'``) and can return 0.

        Returns
        -------
        numpy.ndarray
            ``(n,)`` int64 class ids of this label set.
        """
        prob = self._check_channels(np.asarray(prob_leaf, np.float64))
        if prob.ndim != 2:
            raise HierarchyError(f"label set '{self.name}': classify needs (n, n_classes + 1) probabilities, "
                                 f"got shape {prob.shape}")
        ids = np.asarray(((0,) if background else ()) + self.ids, np.int64)
        if prob.shape[0] == 0:
            return np.zeros(0, np.int64)
        return ids[self.collapse(prob)[:, ids].argmax(axis=1)]

    def unannotated_share(self, prob_leaf):
        """Share of each nucleus's foreground probability on leaves this label set does not annotate.

        Returns
        -------
        numpy.ndarray
            ``(n,)`` in ``[0, 1]``; all zeros for an exhaustive label set.
        """
        prob = self._check_channels(np.asarray(prob_leaf, np.float64))
        fg = prob[..., 1:].sum(axis=-1)
        if not self.unannotated_channels:
            return np.zeros(fg.shape)
        un = prob[..., list(self.unannotated_channels)].sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(fg > 0, un / np.where(fg > 0, fg, 1), 0.0)

    def is_unannotated(self, prob_leaf):
        """True for nuclei whose probability lies mostly on unannotated leaves (set aside in scoring)."""
        return self.unannotated_share(prob_leaf) > UNANNOTATED_SHARE

    def __repr__(self):
        extra = f", unannotated={list(self.unannotated)}" if self.unannotated else ""
        return f"LabelSet({self.name!r}, {self.nodes}{extra})"
