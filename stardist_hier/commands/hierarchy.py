"""Validate a class hierarchy YAML and print its tree, leaf channels and label sets."""

from ._common import add_output_flags


def add_arguments(parser):
    parser.add_argument("file", nargs="?", default="default",
                        help="hierarchy YAML file (default: the hierarchy shipped with the package)")
    parser.add_argument("--label-set", action="append", dest="label_sets", metavar="NAME",
                        help="only mark these label sets in the tree (repeatable)")
    add_output_flags(parser)


def run(args):
    from ..hierarchy import ClassHierarchy

    h = ClassHierarchy.resolve(args.file)
    # an unknown name is an error with a suggestion, before any output
    shown = [h.label_set(n) for n in args.label_sets] if args.label_sets else list(h.label_sets.values())
    print(h.render(args.label_sets))
    print(f"\n{h.n_classes} leaves (output channels 1..{h.n_classes}; channel 0 = background)")
    for ls in shown:
        extra = f"; unannotated: {', '.join(ls.unannotated)}" if ls.unannotated else ""
        print(f"  {ls.name}: " + ", ".join(f"{k}={v}" for k, v in ls.nodes.items()) + extra)
    return 0
