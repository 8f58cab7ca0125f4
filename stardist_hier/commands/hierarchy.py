"""Validate a class hierarchy YAML and print its tree, leaf channels and label sets."""

import sys


def add_arguments(parser):
    parser.add_argument("file", nargs="?", default="default",
                        help="hierarchy YAML file (default: the hierarchy shipped with the package)")
    parser.add_argument("--label-set", action="append", dest="label_sets", metavar="NAME",
                        help="only mark these label sets in the tree (repeatable)")


def run(args):
    from ..hierarchy import ClassHierarchy, HierarchyError

    try:
        h = ClassHierarchy.resolve(args.file)
        print(h.render(args.label_sets))
    except HierarchyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"\n{h.n_classes} leaves (output channels 1..{h.n_classes}; channel 0 = background)")
    for name, ls in h.label_sets.items():
        print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in ls.nodes.items()))
    return 0
