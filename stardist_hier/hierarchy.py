"""Class hierarchy and per-dataset label sets.

A :class:`ClassHierarchy` is a tree of named classes. The root means "a nucleus of any
class"; the leaves are the fine classes the network predicts. Each dataset labels its
nuclei with a :class:`LabelSet`: a map from the dataset's own class ids (``1, 2, ...``)
to nodes of the tree, at any depth, as long as no node of a label set is an ancestor of
another (the labels must be mutually exclusive).

Channel order
-------------
The network's class output has ``n_classes + 1`` channels: channel 0 is background and
channels ``1..n_classes`` are the leaves in depth-first (pre-order) order of the tree as
written in the YAML file. The order is part of a trained model and is stored with it.

YAML format
-----------
.. code-block:: yaml

    hierarchy:
      nucleus:                  # the root: exactly one top-level key
        epithelial:
          healthy_epithelial:   # a leaf: empty value
          malignant_epithelial:
        inflammatory:
          lymphocyte:
          neutrophil:
    label_sets:
      my_dataset:               # dataset class id -> node name
        1: epithelial           # a super-class: the loss sums its leaves
        2: lymphocyte           # a leaf
        3: neutrophil

This module is plain Python + numpy: preparing data or scoring predictions never pays
TensorFlow's import time.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import numpy as np
import yaml

from .atomic import atomic_write_text

__all__ = ["HierarchyError", "ClassHierarchy", "LabelSet", "default_hierarchy_path"]

BACKGROUND = "background"


class HierarchyError(ValueError):
    """An invalid hierarchy or label set. The message names the source and the key at fault."""


def default_hierarchy_path():
    """Path of the hierarchy shipped with the package (PanNuke, MoNuSAC, CoNSeP, Lizard, CoNIC, MoNuSeg)."""
    return Path(__file__).parent / "data" / "default_hierarchy.yaml"


# ----------------------------------------------------------------------------------------
# YAML loading: duplicate keys are errors (PyYAML silently keeps the last one) and every
# mapping remembers the line of each key so that later validation can point at it.


class _LineDict(dict):
    """A dict that remembers the (1-based) source line of each key."""

    key_lines: dict


class _StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    mapping = _LineDict()
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise HierarchyError(f"{loader.name}, line {line}: unhashable mapping key {key!r}") from None
        if key in mapping:
            raise HierarchyError(
                f"{loader.name}, line {line}: duplicate key {key!r} "
                f"(first used on line {mapping.key_lines[key]})"
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
        mapping.key_lines[key] = line
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml(path):
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise HierarchyError(f"hierarchy file not found: {path}") from None
    loader = _StrictLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise HierarchyError(f"{path}{where}: malformed YAML: {problem}") from None
    finally:
        loader.dispose()


def _where(source, mapping, key, path):
    line = getattr(mapping, "key_lines", {}).get(key)
    return f"{source}{f', line {line}' if line else ''}: '{path}'"


# ----------------------------------------------------------------------------------------


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
    """

    def __init__(self, name, nodes, hierarchy):
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

    @property
    def n_label_classes(self):
        """Number of classes of this label set, background included."""
        return len(self.ids) + 1

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

    def check_class_ids(self, class_ids, where=""):
        """Raise :class:`HierarchyError` if any id is neither 0 nor one of this label set's ids."""
        bad = sorted({int(c) for c in np.unique(np.asarray(class_ids, dtype=np.int64))} - set(self.ids) - {0})
        if bad:
            raise HierarchyError(
                f"{where + ': ' if where else ''}class id(s) {bad} not in label set '{self.name}' "
                f"(valid ids: 0 = background, {', '.join(f'{k} = {v}' for k, v in self.nodes.items())})"
            )

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
        prob_leaf = np.asarray(prob_leaf)
        if prob_leaf.shape[-1] != self.membership.shape[1]:
            raise HierarchyError(
                f"label set '{self.name}': probabilities have {prob_leaf.shape[-1]} channels, "
                f"the hierarchy has {self.membership.shape[1]} (n_classes + 1)"
            )
        return prob_leaf @ self.membership.T.astype(prob_leaf.dtype if prob_leaf.dtype.kind == "f" else np.float64)

    def __repr__(self):
        return f"LabelSet({self.name!r}, {self.nodes})"


class ClassHierarchy:
    """A tree of classes and the label sets of the datasets that use it.

    Parameters
    ----------
    tree : dict
        Nested mapping with exactly one top-level key, the root. A node's value is a mapping
        of its children, or ``None`` / ``{}`` for a leaf.
    label_sets : dict, optional
        Label-set name -> {dataset class id: node name}.
    source : str
        Where the definition came from, used in error messages.

    Attributes
    ----------
    root : str
        Name of the root node.
    nodes : list of str
        All nodes in depth-first pre-order.
    leaves : list of str
        Leaf nodes in depth-first order: leaf ``leaves[i]`` is output channel ``i + 1``.
    n_classes : int
        Number of leaves (the ``n_classes`` of the StarDist model).
    parent : dict
        Node -> parent node (``None`` for the root).
    children : dict
        Node -> list of child nodes.
    label_sets : dict
        Name -> :class:`LabelSet`.
    """

    def __init__(self, tree, label_sets=None, source="<dict>"):
        self.source = str(source)
        self.parent, self.children, self.nodes = {}, {}, []
        self._tree = self._parse_tree(tree)
        self.leaves = [n for n in self.nodes if not self.children[n]]
        self.n_classes = len(self.leaves)
        self.leaf_index = {leaf: i + 1 for i, leaf in enumerate(self.leaves)}
        self._leaf_channels = {}
        for node in reversed(self.nodes):
            kids = self.children[node]
            self._leaf_channels[node] = (
                (self.leaf_index[node],) if not kids else tuple(c for k in kids for c in self._leaf_channels[k])
            )
        self.label_sets = {}
        label_sets = {} if label_sets is None else label_sets
        if not isinstance(label_sets, dict):
            raise HierarchyError(f"{self.source}: 'label_sets' must be a mapping of name -> {{class id: node}}")
        for name, mapping in label_sets.items():
            self.label_sets[str(name)] = self._parse_label_set(name, mapping, label_sets)

    # -- construction ---------------------------------------------------------------------

    def _parse_tree(self, tree):
        src = self.source
        if not tree:
            raise HierarchyError(f"{src}: 'hierarchy' is empty: it needs one root node with at least one child")
        if not isinstance(tree, dict):
            raise HierarchyError(f"{src}: 'hierarchy' must be a mapping with one root node, got {type(tree).__name__}")
        if len(tree) != 1:
            raise HierarchyError(f"{src}: 'hierarchy' must have exactly one root node, found {list(tree)}")
        paths = {}

        def visit(name, value, parent, mapping, path):
            if not isinstance(name, str) or not name.strip():
                raise HierarchyError(f"{_where(src, mapping, name, path)}: node names must be non-empty strings, got {name!r}")
            if name == BACKGROUND:
                raise HierarchyError(f"{_where(src, mapping, name, path)}: '{BACKGROUND}' is reserved for class 0")
            if name in paths:
                raise HierarchyError(
                    f"{_where(src, mapping, name, path)}: duplicate node name '{name}' (also at '{paths[name]}')"
                )
            paths[name] = path
            self.nodes.append(name)
            self.parent[name] = parent
            self.children[name] = []
            if value is None or (isinstance(value, dict) and len(value) == 0):
                return
            if not isinstance(value, dict):
                raise HierarchyError(
                    f"{_where(src, mapping, name, path)}: a node's value must be a mapping of children "
                    f"or empty for a leaf, got {type(value).__name__} {value!r}"
                )
            for child, sub in value.items():
                self.children[name].append(child)
                visit(child, sub, name, value, f"{path}.{child}")

        (root, sub), = tree.items()
        visit(root, sub, None, tree, f"hierarchy.{root}")
        self.root = root
        if not self.children[root]:
            raise HierarchyError(f"{src}: the root '{root}' has no children: a hierarchy needs at least one class")
        return tree

    def _parse_label_set(self, name, mapping, parent_mapping):
        src = self.source
        key = f"label_sets.{name}"
        if not isinstance(name, str) or not name:
            raise HierarchyError(f"{_where(src, parent_mapping, name, key)}: label-set names must be non-empty strings")
        if not isinstance(mapping, dict) or not mapping:
            raise HierarchyError(
                f"{_where(src, parent_mapping, name, key)}: a label set must be a non-empty mapping class id -> node"
            )
        seen_nodes = {}
        for class_id, node in mapping.items():
            where = _where(src, mapping, class_id, f"{key}.{class_id}")
            if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)):
                raise HierarchyError(f"{where}: class ids must be integers >= 1, got {class_id!r}")
            if class_id < 1:
                raise HierarchyError(f"{where}: class ids must be >= 1 (0 is background), got {class_id}")
            if not isinstance(node, str) or node not in self.parent:
                close = difflib.get_close_matches(str(node), self.nodes, n=3)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise HierarchyError(f"{where}: unknown node {node!r}{hint}")
            if node in seen_nodes:
                raise HierarchyError(f"{where}: node '{node}' is already used by class id {seen_nodes[node]}")
            seen_nodes[node] = class_id
        for class_id, node in mapping.items():
            for anc in self.ancestors(node):
                if anc in seen_nodes:
                    raise HierarchyError(
                        f"{_where(src, mapping, class_id, f'{key}.{class_id}')}: '{node}' is under '{anc}' "
                        f"(class id {seen_nodes[anc]}): the classes of a label set must be mutually exclusive"
                    )
        return LabelSet(name, dict(mapping), self)

    @classmethod
    def from_dict(cls, d, source="<dict>"):
        """Build from a mapping with keys ``hierarchy`` and (optionally) ``label_sets``."""
        if not isinstance(d, dict):
            raise HierarchyError(f"{source}: expected a mapping with keys 'hierarchy' and 'label_sets'")
        unknown = set(d) - {"hierarchy", "label_sets"}
        if unknown:
            raise HierarchyError(f"{source}: unknown top-level key(s) {sorted(map(str, unknown))}; expected 'hierarchy', 'label_sets'")
        if "hierarchy" not in d:
            raise HierarchyError(f"{source}: missing top-level key 'hierarchy'")
        return cls(d["hierarchy"], d.get("label_sets"), source=source)

    @classmethod
    def from_yaml(cls, path):
        """Load a hierarchy from a YAML file (see the module docstring for the format)."""
        data = _load_yaml(path)
        if data is None:
            raise HierarchyError(f"{path}: the file is empty")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def default(cls):
        """The hierarchy shipped with the package (see ``data/default_hierarchy.yaml``)."""
        return cls.from_yaml(default_hierarchy_path())

    @classmethod
    def flat(cls, n_classes, label_set="default"):
        """A one-level hierarchy with leaves ``class_1..class_n``, for models without a hierarchy.

        Its single label set maps ids ``1..n`` onto the leaves, so every label is a leaf and
        the hierarchical losses reduce to the stock ones.
        """
        n_classes = int(n_classes)
        if n_classes < 1:
            raise HierarchyError(f"n_classes must be >= 1, got {n_classes}")
        leaves = {f"class_{i}": None for i in range(1, n_classes + 1)}
        return cls({"object": leaves}, {label_set: {i: f"class_{i}" for i in range(1, n_classes + 1)}},
                   source=f"<flat hierarchy, {n_classes} classes>")

    @classmethod
    def resolve(cls, spec):
        """Return a :class:`ClassHierarchy` from a hierarchy, a dict, a YAML path or ``'default'``."""
        if isinstance(spec, ClassHierarchy):
            return spec
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        if isinstance(spec, (str, os.PathLike)):
            if str(spec) == "default":
                return cls.default()
            return cls.from_yaml(spec)
        raise HierarchyError(f"cannot make a hierarchy from {type(spec).__name__}: give a YAML path, a dict or 'default'")

    # -- queries --------------------------------------------------------------------------

    def ancestors(self, node):
        """Ancestors of ``node``, nearest first (the root last)."""
        out, p = [], self.parent[node]
        while p is not None:
            out.append(p)
            p = self.parent[p]
        return out

    def leaf_channels(self, node):
        """Output channels (1-based) of the leaves under ``node``; the root covers all of them."""
        try:
            return self._leaf_channels[node]
        except KeyError:
            raise HierarchyError(f"{self.source}: unknown node {node!r}") from None

    def label_set(self, name):
        """The :class:`LabelSet` called ``name``, with an error listing the known ones."""
        if isinstance(name, LabelSet):
            return name
        try:
            return self.label_sets[name]
        except KeyError:
            raise HierarchyError(
                f"unknown label set {name!r}; this hierarchy ({self.source}) has {sorted(self.label_sets)}"
            ) from None

    def depth(self, node):
        """Depth of ``node`` (the root has depth 0)."""
        return len(self.ancestors(node))

    # -- output ---------------------------------------------------------------------------

    def to_dict(self):
        """A plain-dict form that :meth:`from_dict` turns back into an equal hierarchy."""
        def sub(node):
            kids = self.children[node]
            return None if not kids else {k: sub(k) for k in kids}

        return {
            "hierarchy": {self.root: sub(self.root)},
            "label_sets": {name: dict(ls.nodes) for name, ls in self.label_sets.items()},
        }

    def to_yaml(self, path):
        """Write to ``path`` (atomically: a temporary file renamed into place)."""
        text = ("# stardist-hier class hierarchy; leaf order = output channel order 1..n\n"
                + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False))
        return atomic_write_text(path, text)

    def __eq__(self, other):
        return isinstance(other, ClassHierarchy) and self.to_dict() == other.to_dict()

    def render(self, label_sets=None):
        """Text picture of the tree, marking which node each label set labels (``[pannuke:2]``)."""
        names = list(self.label_sets) if label_sets is None else list(label_sets)
        marks = {n: [] for n in self.nodes}
        for name in names:
            for cid, node in self.label_set(name).nodes.items():
                marks[node].append(f"{name}:{cid}")
        lines = []

        def visit(node, prefix, last, top):
            branch = "" if top else ("`-- " if last else "|-- ")
            ch = f"  (channel {self.leaf_index[node]})" if node in self.leaf_index else ""
            tag = f"  [{', '.join(marks[node])}]" if marks[node] else ""
            lines.append(f"{prefix}{branch}{node}{ch}{tag}")
            kids = self.children[node]
            for i, k in enumerate(kids):
                visit(k, prefix + ("" if top else ("    " if last else "|   ")), i == len(kids) - 1, False)

        visit(self.root, "", True, True)
        return "\n".join(lines)

    def __repr__(self):
        return (f"ClassHierarchy(root={self.root!r}, n_classes={self.n_classes}, "
                f"label_sets={sorted(self.label_sets)}, source={self.source!r})")
