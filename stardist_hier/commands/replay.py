"""Replay rows of the paper's Tables II and III through the experiment runner.

Runs all 17 rows (or those named with --rows) in order, sharing pre-trainings through the
episode cache, and prints both tables beside the published PQ. Every epoch is checkpointed:
rerun the same command after an interruption and it resumes; finished rows are skipped. The
scripts experiments/table*_row*.py (one row each) and experiments/run_all.py (all rows) run
the same code (row_main and run_all_main of this module).
"""

import time
from pathlib import Path

from ..experiments.config import SCALES
from ._common import add_output_flags, run_command, show_progress, verbosity


def add_arguments(p):
    """Options shared by ``replay``, ``run_all.py`` and the row scripts."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-root", help="root of the prepared datasets (`stardist-hier prepare ... --out DIR`)")
    src.add_argument("--synthetic", metavar="DIR",
                     help="no real data: make (or reuse) the synthetic stand-ins in DIR and run on them")
    p.add_argument("--out", default=None, help="results folder (default: results/<scale>)")
    p.add_argument("--scale", choices=sorted(SCALES), default="paper",
                   help="paper: published epochs, GPU-sized model; smoke: minutes on a CPU (default: paper)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, patches and augmentation (default 0)")
    p.add_argument("--cache", default=None, help="episode cache shared by runs (default: OUT/cache)")
    p.add_argument("--rows", default=None,
                   help="comma-separated row names or table:row pairs (e.g. 2:1,3:4) to run only some")
    add_output_flags(p)  # -q: results only; default: a line per epoch; -v: also Keras' bars
    return p


def _runner_verbose(args):
    """The runner's verbosity: 0 with -q, 1 by default (a line per epoch), 2 with -v."""
    return min(2, verbosity(args) + 1)


def _parser(description):
    import argparse

    return add_arguments(argparse.ArgumentParser(description=description))


def _resolve_args(args):
    from ..experiments.data import ensure_synthetic

    if args.synthetic:
        print(f"no real data: using synthetic stand-ins in {args.synthetic} (numbers are NOT comparable to the paper)",
              flush=True)
        root = ensure_synthetic(args.synthetic, progress=show_progress(args))
    else:
        root = Path(args.data_root)
    out = Path(args.out) if args.out else Path("results") / args.scale
    return root, out


def row_main(table, row, pretrain, finetune, test, pq, argv=None):
    """Command line of one row script (``experiments/table*_row*.py``).

    The script states its row; it is checked against
    :mod:`stardist_hier.experiments.paper_tables`.
    """
    from ..experiments.config import make_row_config
    from ..experiments.paper_tables import check_row
    from ..experiments.runner import run_experiment

    prow = check_row(table, row, pretrain, finetune, test, pq)
    p = _parser(prow.describe())
    args = p.parse_args(argv)
    if args.rows:
        p.error("--rows is for run_all.py / `stardist-hier replay`; a row script runs its own row")

    def one_row(args):
        root, out = _resolve_args(args)
        run_experiment(make_row_config(prow, args.scale, args.seed), root, out, cache_dir=args.cache,
                       verbose=_runner_verbose(args))

    # as for every subcommand: a missing dataset is one line and status 1, Ctrl-C status 130
    return run_command(one_row, args)


def _selected_rows(args, parser):
    from ..experiments.paper_tables import ROWS, get_row, row_by_name

    if not args.rows:
        return list(ROWS)
    rows = []
    for w in (w.strip() for w in args.rows.split(",")):
        if not w:
            continue
        try:
            rows.append(get_row(*map(int, w.split(":", 1))) if ":" in w else row_by_name(w))
        except (ValueError, KeyError) as e:
            parser.error(f"--rows: {w!r}: {e.args[0] if e.args else e}")
    return rows


def run(args, parser=None):
    """Run the selected rows, then print Tables II and III (user errors: see :func:`run_command`)."""
    from ..experiments.report import collect_table, format_table
    from ..experiments.runner import run_rows

    rows = _selected_rows(args, parser or _parser("replay"))
    t0 = time.perf_counter()
    root, out = _resolve_args(args)
    run_rows(rows, root, out, scale=args.scale, seed=args.seed, cache_dir=args.cache, verbose=_runner_verbose(args))
    print(f"replay: {len(rows)} rows in {time.perf_counter() - t0:.1f} s", flush=True)
    for t in (2, 3):
        print(f"\nTable {'II' if t == 2 else 'III'}:\n" + format_table(collect_table(out, t), as_text=True))
    return 0


def run_all_main(argv=None):
    """Command line of ``experiments/run_all.py``: every row of Tables II and III, in order."""
    p = _parser("Run all 17 rows of the paper's Tables II and III in order, sharing pre-trainings.")
    args = p.parse_args(argv)
    return run_command(lambda a: run(a, p), args)
