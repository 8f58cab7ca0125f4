"""Reading hierarchy YAML files: strict keys, line numbers in errors, and ``extends``.

Duplicate keys are errors (PyYAML silently keeps the last one) and every mapping remembers
the line of each key, so that validation can point at it.

A file may extend another hierarchy instead of repeating it::

    extends: default            # the shipped hierarchy, or a path (relative to this file)
    add_nodes:                  # optional: new nodes under existing ones
      inflammatory:
        mast_cell:
    colors:                     # optional: display colours of nodes
      mast_cell: "#d08030"
    label_sets:                 # its own label sets, beside the extended file's
      my_lab:
        1: epithelial
        2: lymphocyte
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import yaml

from .labels import HierarchyError

__all__ = ["load_yaml", "where", "resolve_extends", "default_hierarchy_path", "TOP_LEVEL_KEYS"]

#: keys a hierarchy file may have at its top level
TOP_LEVEL_KEYS = ("hierarchy", "label_sets", "colors", "extends", "add_nodes")


def default_hierarchy_path():
    """Path of the hierarchy shipped with the package (PanNuke, MoNuSAC, CoNSeP, Lizard, CoNIC, MoNuSeg)."""
    return Path(__file__).resolve().parent.parent / "data" / "default_hierarchy.yaml"


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


def load_yaml(path):
    """Parse a YAML file strictly (see the module docstring); errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise HierarchyError(f"hierarchy file not found: {path}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise HierarchyError(f"{path}: cannot read the hierarchy file ({type(e).__name__})") from None
    loader = _StrictLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where_ = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise HierarchyError(f"{path}{where_}: malformed YAML: {problem}") from None
    finally:
        loader.dispose()


def where(source, mapping, key, path):
    """``"<file>, line N: '<key path>'"`` for error messages."""
    line = getattr(mapping, "key_lines", {}).get(key)
    return f"{source}{f', line {line}' if line else ''}: '{path}'"


def _add_nodes(tree, additions, source):
    """Graft ``additions`` (parent -> {child: subtree}) onto a copy of ``tree``."""
    tree = deepcopy(tree)
    index = {}

    def visit(name, value, holder):
        index[name] = (holder, value)
        if isinstance(value, dict):
            for child, sub in value.items():
                visit(child, sub, value)

    (root, sub), = tree.items()
    visit(root, sub, tree)
    if not isinstance(additions, dict):
        raise HierarchyError(f"{source}: 'add_nodes' must map existing nodes to their new children")
    for parent, children in additions.items():
        if parent not in index:
            import difflib

            close = difflib.get_close_matches(str(parent), list(index), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise HierarchyError(f"{where(source, additions, parent, f'add_nodes.{parent}')}: "
                                 f"no node {parent!r} to add children to{hint}")
        if not isinstance(children, dict) or not children:
            raise HierarchyError(f"{where(source, additions, parent, f'add_nodes.{parent}')}: "
                                 f"give the new children as a mapping")
        holder, value = index[parent]
        merged = dict(value) if isinstance(value, dict) else {}
        for child, grand in children.items():
            if child in index or child in merged:
                raise HierarchyError(f"{where(source, children, child, f'add_nodes.{parent}.{child}')}: "
                                     f"node '{child}' already exists")
            merged[child] = grand
        holder[parent] = merged
        index[parent] = (holder, merged)
    return tree


def resolve_extends(data, source, base_dir=None, _seen=()):
    """Turn a file's mapping with ``extends`` into a plain ``hierarchy``/``label_sets``/``colors`` mapping.

    Parameters
    ----------
    data : dict
        Parsed file.
    source : str
        Name of the file (errors).
    base_dir : path-like, optional
        Folder that a relative ``extends`` path is relative to.
    """
    if not isinstance(data, dict) or "extends" not in data:
        return data
    parent_spec = data["extends"]
    if "hierarchy" in data:
        raise HierarchyError(f"{where(source, data, 'hierarchy', 'hierarchy')}: a file that 'extends' another "
                             f"cannot redefine 'hierarchy'; add nodes with 'add_nodes'")
    if not isinstance(parent_spec, str) or not parent_spec:
        raise HierarchyError(f"{where(source, data, 'extends', 'extends')}: 'extends' is 'default' or the path "
                             f"of another hierarchy YAML")
    parent_path = default_hierarchy_path() if parent_spec == "default" else Path(parent_spec)
    if not parent_path.is_absolute() and base_dir is not None and parent_spec != "default":
        parent_path = Path(base_dir) / parent_path
    key = str(parent_path.resolve())
    if key in _seen:
        raise HierarchyError(f"{source}: 'extends' makes a loop through {parent_path}")
    parent = load_yaml(parent_path)
    if not isinstance(parent, dict):
        raise HierarchyError(f"{parent_path}: expected a mapping with keys 'hierarchy' and 'label_sets'")
    parent = resolve_extends(parent, str(parent_path), parent_path.parent, _seen + (key,))
    out = {"hierarchy": parent.get("hierarchy")}
    if "add_nodes" in data:
        out["hierarchy"] = _add_nodes(parent.get("hierarchy"), data["add_nodes"], source)
    label_sets = dict(parent.get("label_sets") or {})
    own = data.get("label_sets") or {}
    if not isinstance(own, dict):
        raise HierarchyError(f"{source}: 'label_sets' must be a mapping of name -> {{class id: node}}")
    for name in own:
        if name in label_sets:
            raise HierarchyError(f"{where(source, own, name, f'label_sets.{name}')}: label set '{name}' is already "
                                 f"defined in {parent_path}; choose another name")
    label_sets.update(own)
    out["label_sets"] = label_sets
    colors = dict(parent.get("colors") or {})
    colors.update(data.get("colors") or {})
    if colors:
        out["colors"] = colors
    return out
