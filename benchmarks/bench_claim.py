"""Does combining datasets beat target-only training, and at which target sizes? (issue 12, section 4)

On the synthetic MoNuSAC- and PanNuke-like sets: for each target, training size (the first
8, 16, 32, 64 tiles of its train split; the source always full), seed (0-4) and variant (target
only, pre-train then fine-tune, batch mixing, re-initialised head, flattening, and the options
of issue 12 sections 1-3 where they can change anything), a tiny StarDist trained to
convergence (early stopping on the target's validation loss, best epoch restored) and scored
on the target's test split at its own label set. The study is defined in
:mod:`stardist_hier.experiments.claim` (variants, settings), :mod:`~stardist_hier.experiments.claim_train`
(training), :mod:`~stardist_hier.experiments.claim_study` (runs, resume) and
:mod:`~stardist_hier.experiments.claim_report` (summary, intervals, answer, plots); this
script makes the data and runs it.

Usage (the full default study, on one core, in the background)::

    TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1 \\
        nohup .venv/bin/python benchmarks/bench_claim.py --out benchmarks/results/claim > claim.log 2>&1 &
    python benchmarks/bench_claim.py --out /tmp/claim-q --quick   # 1 target, 1 size, 1 seed, a few steps

Defaults: target MoNuSAC-like (source PanNuke-like), sizes 8, 16, 32, 64, seeds 0-4, the 9
variants that apply there (``mixed_per_sample`` cannot differ from ``mixed`` on these sets):
180 runs and 10 pre-trainings. Synthetic sets of 64 train / 16 val / 16 test tiles of 64 px per
dataset; StarDist of 16 rays, grid 2, U-Net depth 2 x 16 filters, 32 class features, 48 px
patches with random flips / rotations, batch 4, Adam 3e-3; every phase at most 24 epochs of 25
steps, stopped after 3 epochs without a lower validation loss, best epoch restored.

Time (2026-12-01, this machine, one TF thread, the 2 cores shared with other jobs, load ~4):
2 of the 20 (size, seed) groups (sizes 8 and 32, seed 2; 18 runs, 2 pre-trainings) took 387 s
wall / 314 s CPU, about 19 s per run including its evaluation and report; the default study is
then about 61 minutes wall (about 50 minutes of CPU). ``--targets pannuke`` (7 variants apply)
adds about 50 minutes and can be run later into the same ``--out``. ``--quick``: about 20 s.

Resumable: finished (target, size, variant, seed) runs of the same settings in
``OUT/results.jsonl`` are skipped, pre-trainings are cached in ``OUT/pretrain/``. Outputs:
``results.jsonl``, ``summary.md``, ``summary.csv``, ``learning_curve_<target>.png``,
``settings.json`` (rewritten after every run).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

QUICK_VARIANTS = "target_only,finetune,mixed_marginal"


def _ints(text, what):
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"bench_claim.py: --{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise SystemExit(f"bench_claim.py: --{what} is empty")
    return values


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--data", default=None, help="synthetic data root, made if absent (default OUT/data)")
    p.add_argument("--targets", default="monusac", help="comma-separated targets (monusac, pannuke, consep)")
    p.add_argument("--sizes", default="8,16,32,64", help="target training tiles (first N of its train split)")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--variants", default=None, help="comma-separated variant names (default: every one that applies)")
    p.add_argument("--n-train", type=int, default=64,
                   help="train tiles per dataset: the source's training set, and at least the largest size")
    p.add_argument("--n-val", type=int, default=16)
    p.add_argument("--n-test", type=int, default=16)
    p.add_argument("--tile", type=int, default=64, help="tile size in pixels")
    p.add_argument("--patch", type=int, default=48, help="training patch size in pixels (<= --tile)")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--no-augment", action="store_true", help="no random flips / 90 degree rotations")
    p.add_argument("--quick", action="store_true",
                   help=f"first target, first size, first seed, variants {QUICK_VARIANTS}, 2 epochs of 3 steps")
    args = p.parse_args(argv)

    from stardist_hier.experiments.claim import BenchSettings
    from stardist_hier.experiments.claim_study import run_claim_study
    from stardist_hier.synth import generate_all

    targets = [t for t in args.targets.split(",") if t.strip()]
    sizes, seeds = _ints(args.sizes, "sizes"), _ints(args.seeds, "seeds")
    variants = [v for v in args.variants.split(",") if v.strip()] if args.variants else None
    settings = BenchSettings()
    if args.quick:
        targets, sizes, seeds = targets[:1], sizes[:1], seeds[:1]
        variants = variants or QUICK_VARIANTS.split(",")
        settings.max_epochs, settings.steps_per_epoch, settings.patience = 2, 3, 1
        args.n_val, args.n_test = min(args.n_val, 4), min(args.n_test, 4)
    for key in ("max_epochs", "patience", "steps_per_epoch"):
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    settings.augment = not args.no_augment
    if args.patch > args.tile:
        raise SystemExit(f"bench_claim.py: --patch {args.patch} is larger than --tile {args.tile}")
    settings.model["train_patch_size"] = (args.patch, args.patch)
    settings.__post_init__()  # checks the values set here
    n_train = args.n_train
    if n_train < max(sizes):
        raise SystemExit(f"bench_claim.py: --n-train {n_train} is smaller than the largest size {max(sizes)}")
    from stardist_hier.experiments.claim import SOURCES, VARIANTS

    unknown = [t for t in targets if t not in SOURCES]
    if unknown:
        raise SystemExit(f"bench_claim.py: no source dataset for target(s) {unknown}; targets: {sorted(SOURCES)}")
    unknown = [v for v in variants or () if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"bench_claim.py: unknown variant(s) {unknown}; variants: {', '.join(VARIANTS)}")
    datasets = sorted({*targets, *(SOURCES[t] for t in targets)})
    data = args.data or os.path.join(args.out, "data")
    t0 = time.perf_counter()
    generate_all(data, datasets, counts=dict(train=n_train, val=args.n_val, test=args.n_test), size=args.tile, seed=0,
                 progress=False)
    print(f"data: {data} ({', '.join(datasets)}: {n_train}/{args.n_val}/{args.n_test} tiles of {args.tile} px); "
          f"settings: {settings.to_dict()}", flush=True)
    records = run_claim_study(data, args.out, targets=targets, sizes=sizes, seeds=seeds, variants=variants,
                              settings=settings)
    from stardist_hier.experiments.claim_report import answer

    print()
    for t in targets:
        print(answer(records, t))
    print(f"\n{len(records)} runs in {args.out}/results.jsonl; summary.md, summary.csv, learning_curve_*.png; "
          f"wall time {time.perf_counter() - t0:.0f} s (this invocation; finished runs are reused)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
