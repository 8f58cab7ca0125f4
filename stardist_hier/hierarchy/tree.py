"""The class tree: :class:`ClassHierarchy`, its label sets, cuts and colours.

Plain Python + numpy: preparing data or scoring predictions never pays TensorFlow's import
time. The YAML format is described in :mod:`stardist_hier.hierarchy`.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import yaml

from ..atomic import atomic_write_text
from .colors import default_colors, parse_color, to_hex
from .files import TOP_LEVEL_KEYS, default_hierarchy_path, load_yaml, resolve_extends, where
from .labels import BACKGROUND, HierarchyError, LabelSet

__all__ = ["ClassHierarchy"]

#: keys of a label set that are not class ids
LABEL_SET_OPTIONS = ("unannotated", "exhaustive")


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

    def __init__(self, tree, label_sets=None, source="<dict>", colors=None):
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
        self._explicit_colors = self._parse_colors(colors)
        self.colors = default_colors(self.root, self.children, self._explicit_colors)
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
                raise HierarchyError(f"{where(src, mapping, name, path)}: node names must be non-empty strings, got {name!r}")
            if name == BACKGROUND:
                raise HierarchyError(f"{where(src, mapping, name, path)}: '{BACKGROUND}' is reserved for class 0")
            if name in paths:
                raise HierarchyError(
                    f"{where(src, mapping, name, path)}: duplicate node name '{name}' (also at '{paths[name]}')"
                )
            paths[name] = path
            self.nodes.append(name)
            self.parent[name] = parent
            self.children[name] = []
            if value is None or (isinstance(value, dict) and len(value) == 0):
                return
            if not isinstance(value, dict):
                raise HierarchyError(
                    f"{where(src, mapping, name, path)}: a node's value must be a mapping of children "
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

    def _parse_colors(self, colors):
        if colors is None:
            return {}
        if not isinstance(colors, dict):
            raise HierarchyError(f"{self.source}: 'colors' must map node names to colours")
        out = {}
        for node, value in colors.items():
            w = where(self.source, colors, node, f"colors.{node}")
            if node not in self.parent:
                raise HierarchyError(f"{w}: unknown node {node!r}{self._suggest(node, self.nodes)}")
            out[node] = parse_color(value, w)
        return out

    @staticmethod
    def _suggest(name, choices):
        close = difflib.get_close_matches(str(name), list(choices), n=3)
        return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""

    def _parse_label_set(self, name, mapping, parent_mapping):
        src = self.source
        key = f"label_sets.{name}"
        if not isinstance(name, str) or not name:
            raise HierarchyError(f"{where(src, parent_mapping, name, key)}: label-set names must be non-empty strings")
        if not isinstance(mapping, dict) or not [k for k in mapping if k not in LABEL_SET_OPTIONS]:
            raise HierarchyError(
                f"{where(src, parent_mapping, name, key)}: a label set must be a non-empty mapping class id -> node"
            )
        seen_nodes = {}
        for class_id, node in mapping.items():
            if class_id in LABEL_SET_OPTIONS:
                continue
            w = where(src, mapping, class_id, f"{key}.{class_id}")
            if isinstance(class_id, bool) or not isinstance(class_id, int):
                raise HierarchyError(f"{w}: class ids must be integers >= 1 (or one of the options "
                                     f"{', '.join(LABEL_SET_OPTIONS)}), got {class_id!r}")
            if class_id < 1:
                raise HierarchyError(f"{w}: class ids must be >= 1 (0 is background), got {class_id}")
            if not isinstance(node, str) or node not in self.parent:
                raise HierarchyError(f"{w}: unknown node {node!r}{self._suggest(node, self.nodes)}")
            if node in seen_nodes:
                raise HierarchyError(f"{w}: node '{node}' is already used by class id {seen_nodes[node]}")
            seen_nodes[node] = class_id
        for node, class_id in seen_nodes.items():
            for anc in self.ancestors(node):
                if anc in seen_nodes:
                    raise HierarchyError(
                        f"{where(src, mapping, class_id, f'{key}.{class_id}')}: '{node}' is under '{anc}' "
                        f"(class id {seen_nodes[anc]}): the classes of a label set must be mutually exclusive"
                    )
        unannotated = self._parse_unannotated(name, mapping, seen_nodes)
        return LabelSet(name, {c: n for n, c in seen_nodes.items()}, self, unannotated=unannotated)

    def _parse_unannotated(self, name, mapping, labelled):
        """Unannotated nodes of a label set from its ``unannotated`` / ``exhaustive`` options."""
        src, key = self.source, f"label_sets.{name}"
        covered = {n for node in labelled for n in (node, *self.ancestors(node), *self.descendants(node))}
        if "exhaustive" in mapping:
            w = where(src, mapping, "exhaustive", f"{key}.exhaustive")
            if not isinstance(mapping["exhaustive"], bool):
                raise HierarchyError(f"{w}: 'exhaustive' is true or false, got {mapping['exhaustive']!r}")
            if "unannotated" in mapping:
                raise HierarchyError(f"{w}: give either 'exhaustive: false' or a list 'unannotated', not both")
            if mapping["exhaustive"]:
                return ()
            # every maximal node outside the labelled subtrees
            out = []
            for node in self.nodes:
                if node not in covered and not any(a in out for a in self.ancestors(node)):
                    out.append(node)
            return tuple(out)
        if "unannotated" not in mapping:
            return ()
        w = where(src, mapping, "unannotated", f"{key}.unannotated")
        nodes = mapping["unannotated"]
        if isinstance(nodes, str):
            nodes = [nodes]
        if not isinstance(nodes, list) or not nodes:
            raise HierarchyError(f"{w}: 'unannotated' is a list of node names")
        for node in nodes:
            if not isinstance(node, str) or node not in self.parent:
                raise HierarchyError(f"{w}: unknown node {node!r}{self._suggest(node, self.nodes)}")
            if node in covered:
                clash = next(n for n in labelled if node in (n, *self.ancestors(n), *self.descendants(n)))
                raise HierarchyError(f"{w}: '{node}' overlaps the labelled node '{clash}' (class id {labelled[clash]}); "
                                     f"unannotated nodes must lie outside the labelled ones")
        if len(set(nodes)) != len(nodes):
            raise HierarchyError(f"{w}: a node is listed twice")
        for node in nodes:
            if any(a in nodes for a in self.ancestors(node)):
                raise HierarchyError(f"{w}: '{node}' is under another listed node; list the higher one only")
        return tuple(nodes)

    @classmethod
    def from_dict(cls, d, source="<dict>", base_dir=None):
        """Build from a mapping with keys ``hierarchy``, ``label_sets`` and ``colors`` (or ``extends``)."""
        if not isinstance(d, dict):
            raise HierarchyError(f"{source}: expected a mapping with keys 'hierarchy' and 'label_sets'")
        unknown = set(d) - set(TOP_LEVEL_KEYS)
        if unknown:
            raise HierarchyError(f"{source}: unknown top-level key(s) {sorted(map(str, unknown))}; "
                                 f"expected {', '.join(repr(k) for k in TOP_LEVEL_KEYS)}")
        if "add_nodes" in d and "extends" not in d:
            raise HierarchyError(f"{source}: 'add_nodes' needs 'extends' (the hierarchy to add them to)")
        d = resolve_extends(d, source, base_dir)
        if "hierarchy" not in d:
            raise HierarchyError(f"{source}: missing top-level key 'hierarchy' (or 'extends: default')")
        return cls(d["hierarchy"], d.get("label_sets"), source=source, colors=d.get("colors"))

    @classmethod
    def from_yaml(cls, path):
        """Load a hierarchy from a YAML file (see :mod:`stardist_hier.hierarchy` for the format)."""
        data = load_yaml(path)
        if data is None:
            raise HierarchyError(f"{path}: the file is empty")
        return cls.from_dict(data, source=str(path), base_dir=Path(path).parent)

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

    def descendants(self, node):
        """Every node under ``node`` (pre-order), not ``node`` itself."""
        out = []
        for child in self.children[node]:
            out += [child, *self.descendants(child)]
        return out

    def ancestor_at(self, node, depth):
        """The ancestor of ``node`` at ``depth`` (``node`` itself if it is not deeper)."""
        chain = [node, *self.ancestors(node)][::-1]  # root first
        return chain[min(depth, len(chain) - 1)]

    @property
    def max_depth(self):
        """Depth of the deepest leaf."""
        return max(self.depth(leaf) for leaf in self.leaves)

    def cut(self, depth, name=None):
        """The label set of every node at ``depth`` (leaves above that depth keep their own node).

        ``cut(0)`` labels every nucleus at the root, ``cut(max_depth)`` is the leaves. Ids are
        ``1..k`` in depth-first order.

        Parameters
        ----------
        depth : int
        name : str, optional
            Name of the label set (default ``'depth<depth>'``).

        Returns
        -------
        LabelSet
        """
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= self.max_depth:
            raise HierarchyError(f"{self.source}: cut depth must be an integer in 0..{self.max_depth}, got {depth!r}")
        nodes = list(dict.fromkeys(self.ancestor_at(leaf, depth) for leaf in self.leaves))
        return LabelSet(name or f"depth{depth}", {k: n for k, n in enumerate(nodes, 1)}, self)

    def leaf_label_set(self):
        """The label set of the leaves: class id ``i`` is output channel ``i`` (the model's leaf ids)."""
        return LabelSet("leaves", {i: leaf for leaf, i in self.leaf_index.items()}, self)

    def color(self, node):
        """``(r, g, b)`` display colour of a node (see :mod:`stardist_hier.hierarchy.colors`)."""
        try:
            return self.colors[node]
        except KeyError:
            raise HierarchyError(f"{self.source}: unknown node {node!r}{self._suggest(node, self.nodes)}") from None

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
                f"unknown label set {name!r}{self._suggest(name, self.label_sets)} "
                f"(this hierarchy, {self.source}, has {', '.join(sorted(self.label_sets)) or 'none'})"
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

        def label_set(ls):
            out = dict(ls.nodes)
            if ls.unannotated:
                out["unannotated"] = list(ls.unannotated)
            return out

        out = {
            "hierarchy": {self.root: sub(self.root)},
            "label_sets": {name: label_set(ls) for name, ls in self.label_sets.items()},
        }
        if self._explicit_colors:
            out["colors"] = {n: to_hex(c) for n, c in self._explicit_colors.items()}
        return out

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
