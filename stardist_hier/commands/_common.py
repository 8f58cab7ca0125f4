"""What every subcommand shares: one output-flag scheme, and one way to report user errors.

Output flags
------------
Every subcommand calls :func:`add_output_flags` in its ``add_arguments`` and reads the
result with :func:`show_progress` / :func:`verbosity`, never ``args.quiet`` directly::

    from ._common import add_output_flags, show_progress, verbosity

    def add_arguments(parser):
        ...
        add_output_flags(parser)

    def run(args):
        do_work(progress=show_progress(args), verbose=verbosity(args))

* ``-q/--quiet``: no progress bars and no chatter: the results, warnings and errors only
  (``verbosity(args) == -1``);
* ``-v/--verbose``, repeatable: more detail (``verbosity(args)`` is the count: 1, 2...); at
  any level an error also prints its traceback;
* ``--no-progress``: the old spelling of ``--quiet`` in ``prepare`` and ``evaluate``, kept
  (hidden from ``--help``) so existing scripts keep working.

``-q`` and ``-v`` together are a usage error.

Errors
------
A subcommand's ``run(args)`` needs no ``try``/``except`` of its own: it raises, and
:func:`run_command` (called by :func:`stardist_hier.cli.main` for every subcommand) turns

* a *user error* (bad input or a bad path: :func:`is_user_error`) into ``error: <message>``
  on stderr and exit status 1 (plus the traceback with ``-v``);
* ``KeyboardInterrupt`` (Ctrl-C) into ``interrupted`` on stderr and exit status 130, the
  shell's code for SIGINT (outputs are written atomically, so rerunning the command
  resumes where it stopped);
* warnings into one line each, ``warning: <message>`` (Python's format with ``-v``).

Anything else is a bug and keeps its traceback. Usage errors a command finds in its own
arguments (a value out of range) are printed by the command as ``error: ...`` with exit
status 2, as argparse does for its own.

A module that defines a new user-facing error class adds its dotted name to
:data:`USER_ERRORS`. Nothing here imports those modules: an exception can only be an
instance of a class whose module is already imported, so the check looks the classes up in
``sys.modules`` (``stardist-hier --help`` stays fast, and the core never imports this).
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from contextlib import contextmanager

__all__ = ["add_output_flags", "show_progress", "verbosity", "USER_ERRORS", "is_user_error", "run_command",
           "usage_error"]

#: exception classes that are the user's input at fault (``module:Class``), besides the
#: path errors of :data:`PATH_ERRORS`
USER_ERRORS = (
    "stardist_hier.hierarchy.labels:HierarchyError",
    "stardist_hier.readers.base:ReaderError",
    "stardist_hier.patches:PatchFormatError",
    "stardist_hier.metrics.matching:MetricsError",
    "stardist_hier.metrics.folder:EvaluationError",
    "stardist_hier.predict.slides:InputError",
    "stardist_hier.export.layout:ExportError",
    "stardist_hier.experiments.config_keys:RunConfigError",
)

#: a missing input (``FileNotFoundError`` and its subclasses, e.g. the experiments'
#: ``MissingDataError``), an output path that is a file, an existing output, ...
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)


def add_output_flags(parser):
    """Add ``-q/--quiet``, ``-v/--verbose`` (repeatable) and the hidden ``--no-progress``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true",
                       help="no progress bars: print the results, warnings and errors only")
    group.add_argument("-v", "--verbose", action="count", default=0,
                       help="more detail (repeat for more: -vv); an error also prints its traceback")
    # the old flag of prepare and evaluate, kept for existing scripts
    parser.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)
    return parser


def verbosity(args):
    """-1 with ``--quiet``, else the number of ``-v`` (0 by default)."""
    if getattr(args, "quiet", False):
        return -1
    return int(getattr(args, "verbose", 0) or 0)


def show_progress(args):
    """Whether to draw progress bars (not with ``--quiet``)."""
    return verbosity(args) >= 0


def usage_error(message):
    """Print ``error: <message>`` for a bad argument value and return the exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def is_user_error(exc):
    """True for an exception that reports bad input or a bad path rather than a bug."""
    if isinstance(exc, PATH_ERRORS):
        return True
    for name in USER_ERRORS:
        module, cls = name.split(":")
        mod = sys.modules.get(module)
        typ = getattr(mod, cls, None) if mod is not None else None
        if isinstance(typ, type) and isinstance(exc, typ):
            return True
    return False


@contextmanager
def _one_line_warnings(enabled=True):
    """Show each warning as ``warning: <message>`` on stderr while the command runs."""
    if not enabled:
        yield
        return
    saved = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


def run_command(run, args):
    """Call ``run(args)`` and turn user errors and Ctrl-C into one line and an exit status.

    Returns
    -------
    int
        ``run``'s status (``None`` counts as 0), 1 for a user error, 130 for Ctrl-C.
    """
    verbose = verbosity(args) > 0
    try:
        with _one_line_warnings(enabled=not verbose):
            return int(run(args) or 0)
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not is_user_error(e):
            raise
        sys.stdout.flush()
        if verbose:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 1
