"""The ``stardist-hier`` command line.

Each subcommand lives in its own module under :mod:`stardist_hier.commands` with two
functions, ``add_arguments(parser)`` and ``run(args) -> int``. Command modules import
heavy libraries (TensorFlow) inside ``run`` so that ``stardist-hier --help`` and the data
and metrics commands start fast.

Every subcommand takes the same output flags (``-q/--quiet``, ``-v/--verbose``) from
:func:`stardist_hier.commands._common.add_output_flags`, and :func:`main` is the one place
that reports errors: bad input or a bad path prints ``error: <message>`` and exits 1,
Ctrl-C prints ``interrupted`` and exits 130, a usage error exits 2 (see
:mod:`stardist_hier.commands._common`).
"""

import argparse
import importlib
import sys

from . import __version__

#: subcommand -> (module, one-line help)
COMMANDS = {
    "hierarchy": ("stardist_hier.commands.hierarchy", "validate a hierarchy YAML and print its tree and label sets"),
    "prepare": ("stardist_hier.commands.prepare", "convert a published dataset's download, or your own images with masks or QuPath "
                "GeoJSON (prepare folder / qupath), into 256x256 TIFF patches"),
    "evaluate": ("stardist_hier.commands.evaluate", "score a model or saved predictions: bPQ, mPQ, mPQ+, F1, R2"),
    "synth": ("stardist_hier.commands.synth", "generate the synthetic hierarchical H&E datasets"),
    "demo": ("stardist_hier.commands.demo", "run the miniature version of the paper's experiments end to end"),
    "replay": ("stardist_hier.commands.replay", "replay rows of the paper's Tables II and III (all 17 by default)"),
    "train": ("stardist_hier.commands.train", "train on any datasets and weighted mixes from a run config YAML, "
              "then score the test sets (resumable)"),
    "export": ("stardist_hier.commands.export", "export a model with its class head for QuPath (frozen .pb), "
               "ONNX or a TF SavedModel"),
    "predict": ("stardist_hier.commands.predict", "segment and classify your own images and whole slides: "
                "QuPath GeoJSON, tables, overlays"),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="stardist-hier",
        description="Hierarchy-aware StarDist: one nucleus segmentation + classification model "
                    "trained on datasets whose label sets are cuts of one class hierarchy.",
    )
    parser.add_argument("--version", action="version", version=f"stardist-hier {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # command not available in this build
        # the modules' docstrings are laid out by hand (usage lines, lists): keep their lines
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    0 success, 1 bad input (``error: <message>`` on stderr), 2 usage error, 130 interrupted.
    """
    from .commands._common import run_command

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    return run_command(args._run, args)


if __name__ == "__main__":
    sys.exit(main())
