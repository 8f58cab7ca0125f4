"""Flattening to the coarsest common level: the labels of the claim study's variant (e).

Every label of every label set is replaced by its ancestor at one depth of the hierarchy
(depth 1: the default hierarchy's epithelial, inflammatory, connective, other), so that a
plain multi-class model can train on datasets whose label sets differ. The flattened model
is scored at a target's own label set by
:class:`stardist_hier.experiments.claim.FlattenedModel`.

No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..hierarchy import ClassHierarchy

__all__ = ["FlatHierarchy", "coarse_node", "flatten_hierarchy", "flatten_classes", "flatten_mask"]


@dataclass
class FlatHierarchy:
    """A hierarchy cut at one depth, and how each original label set maps onto it.

    Attributes
    ----------
    hierarchy : ClassHierarchy
        The root and, as leaves, the nodes at ``depth`` (depth 1: the super-classes). It has
        one label set per original label set, same name, with the coarse nodes that label set
        reaches, numbered 1..k in leaf order (a label above ``depth`` keeps its node).
    lookup : dict
        Label-set name -> ``numpy.ndarray`` indexed by original class id, holding the coarse
        class id (0 stays 0).
    depth : int
    """

    hierarchy: ClassHierarchy
    lookup: dict
    depth: int = 1


def coarse_node(hierarchy, node, depth=1):
    """The ancestor of ``node`` at ``depth`` (``node`` itself when it is not deeper)."""
    return ClassHierarchy.resolve(hierarchy).ancestor_at(node, depth)


def flatten_hierarchy(hierarchy="default", depth=1):
    """Cut a hierarchy at ``depth`` and map every label set onto the cut.

    Parameters
    ----------
    hierarchy : ClassHierarchy, str or dict
    depth : int
        1 maps every label to its super-class (the default hierarchy's epithelial,
        inflammatory, connective, other).

    Returns
    -------
    FlatHierarchy
    """
    h = ClassHierarchy.resolve(hierarchy)
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")

    def cut(node, d):
        kids = h.children[node]
        return None if d == depth or not kids else {k: cut(k, d + 1) for k in kids}

    tree = {h.root: cut(h.root, 0)}
    order = {}
    for n in h.nodes:  # pre-order: the coarse leaves come in the original's order
        if h.depth(n) <= depth:
            order[n] = len(order)
    sets, lookup = {}, {}
    for name, ls in h.label_sets.items():
        coarse = {cid: coarse_node(h, node, depth) for cid, node in ls.nodes.items()}
        nodes = sorted(set(coarse.values()), key=order.__getitem__)
        ids = {n: i for i, n in enumerate(nodes, 1)}
        sets[name] = {i: n for n, i in ids.items()}
        table = np.zeros(ls.max_id + 1, np.int64)
        for cid, n in coarse.items():
            table[cid] = ids[n]
        lookup[name] = table
    flat = ClassHierarchy(tree, sets, source=f"{h.source} cut at depth {depth}")
    return FlatHierarchy(flat, lookup, depth)


def flatten_classes(classes, table):
    """Map per-image ``{instance id: class id or None}`` dicts through a lookup table."""
    return [{k: (None if v is None else int(table[v])) for k, v in c.items()} for c in classes]


def flatten_mask(mask, table):
    """A ``(H, W, 2)`` patch mask with its class channel mapped through ``table``."""
    out = np.array(mask, copy=True)
    cls = out[..., 1]
    out[..., 1] = np.where(cls > 0, table[np.clip(cls, 0, len(table) - 1)], cls)
    return out
