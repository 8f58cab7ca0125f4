"""Train on any datasets and mixes of datasets from a run config YAML, then score the test sets.

    stardist-hier train CONFIG.yaml [--data-root DIR] [--out DIR] [--cache DIR] [--check]

CONFIG lists the episodes (one dataset, or a weighted mix of several inside every batch),
the test sets and the model (every key: stardist_hier.experiments.config). Paths in it
(hierarchy, data_root) are relative to its folder. Everything is checked before any
training (unknown keys, missing data with the `stardist-hier prepare` command that makes it,
label sets that do not cover a dataset's classes, test classes the training never labels,
mix weights, monitors, workers), all problems in one message. The run goes to
OUT/<name>/ (model, history.csv, metrics.csv, loss_curves.png, summary.md, summary.html,
run.json); every epoch is checkpointed, so rerunning the same command after an interruption
resumes where it stopped, and episodes shared with other runs come from OUT/cache.
"""

from pathlib import Path

from ._common import add_output_flags, verbosity


def add_arguments(p):
    p.add_argument("config", metavar="CONFIG", help="run config YAML (see stardist_hier.experiments.config)")
    p.add_argument("--data-root", help="root of the prepared datasets (overrides the config's data_root)")
    p.add_argument("--out", default="runs", help="parent of the run folder OUT/<name> (default: runs)")
    p.add_argument("--cache", default=None, help="episode cache shared by runs (default: OUT/cache)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run folder made with another config (else that is an error)")
    p.add_argument("--check", action="store_true", help="check the config and its data, train nothing")
    add_output_flags(p)  # -q: results only; default: a line per epoch; -v: also Keras' bars
    return p


def _data_root(args, cfg):
    if args.data_root:
        return Path(args.data_root)
    if cfg.get("data_root"):
        return Path(cfg["data_root"])
    from ..experiments.config import RunConfigError

    raise RunConfigError("no data root: set data_root in the config (relative to it) or pass --data-root",
                         source=args.config)


def run(args):
    """Check the config and its data, train, evaluate, print where the summary is."""
    from ..experiments.config import load_run_config
    from ..experiments.preflight import preflight

    cfg = load_run_config(args.config)
    root = _data_root(args, cfg)
    cfg["data_root"] = str(root.resolve())
    pre = preflight(cfg, root, source=args.config)
    if args.check:
        eps = "; ".join(f"{ep['epochs']} epoch{'s' * (ep['epochs'] != 1)} on " + (", ".join(f"{d} {w:g}" for d, w in ep["mix"].items())
                                                       if "mix" in ep else ep["dataset"])
                        for ep in pre.config["episodes"])
        print(f"{args.config}: OK: run '{pre.config['name']}': {eps}; test {', '.join(pre.config['test'])}; "
              f"data {root}", flush=True)
        for note in pre.notes:
            print(f"note: {note}", flush=True)
        return 0
    from ..experiments.runner import run_experiment
    from ..experiments.training_summary import SUMMARY_HTML, SUMMARY_MD, summary_tables

    res = run_experiment(cfg, root, args.out, cache_dir=args.cache, verbose=min(2, verbosity(args) + 1),
                         overwrite=args.overwrite)
    header, rows = summary_tables(res.config, res.metrics, res.info)["metrics"]
    widths = [max(len(str(v)) for v in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    print(f"summary: {res.run_dir / SUMMARY_MD} ({SUMMARY_HTML} beside it)", flush=True)
    return 0
