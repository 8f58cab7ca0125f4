"""Class hierarchy and per-dataset label sets.

A :class:`ClassHierarchy` is a tree of named classes. The root means "a nucleus of any
class"; the leaves are the fine classes the network predicts. Each dataset labels its
nuclei with a :class:`LabelSet`: a map from the dataset's own class ids (``1, 2, ...``)
to nodes of the tree, at any depth, as long as no node of a label set is an ancestor of
another (the labels must be mutually exclusive). :meth:`LabelSet.classify` is the one rule
that gives a nucleus its class at a label set.

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
    colors:                     # optional display colours ("#rrggbb" or [r, g, b])
      epithelial: "#c80000"
    label_sets:
      my_dataset:               # dataset class id -> node name
        1: epithelial           # a super-class: the loss sums its leaves
        2: lymphocyte           # a leaf
        unannotated: [neutrophil]   # optional: nodes this dataset leaves unlabelled
                                    # (or `exhaustive: false`: every node it does not cover)

A file may instead start from another hierarchy (``extends: default``) and add nodes and
label sets (see :mod:`.files`).

Modules: :mod:`.labels` (:class:`LabelSet`, the class rule), :mod:`.tree`
(:class:`ClassHierarchy`), :mod:`.files` (YAML reading, ``extends``), :mod:`.colors`.
Plain Python + numpy: no TensorFlow.
"""

from .files import default_hierarchy_path
from .labels import BACKGROUND, UNANNOTATED_SHARE, HierarchyError, LabelSet
from .tree import ClassHierarchy

__all__ = ["HierarchyError", "ClassHierarchy", "LabelSet", "default_hierarchy_path", "BACKGROUND",
           "UNANNOTATED_SHARE"]
