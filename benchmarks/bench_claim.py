"""Does pre-training on another dataset, then fine-tuning, beat the alternatives? (issue 5)

Over the synthetic PanNuke-, MoNuSAC- and CoNSeP-like sets, for each target dataset and 3
training seeds: (a) target only, (b) the paper's pre-train then fine-tune, (c) batch-level
mixing, (d) transfer learning with a re-initialised class head, (e) both datasets flattened
to their depth-1 super-classes. The variants and the flattening are defined in
:mod:`stardist_hier.experiments.claim`; this script only sizes, runs and prints them.

Usage::

    python benchmarks/bench_claim.py --out /tmp/claim            # ~35 minutes on 2 CPU cores
    python benchmarks/bench_claim.py --out /tmp/claim-q --quick  # ~2 minutes, 1 target, 1 seed

Resumable: finished (target, seed) groups in ``OUT/results.jsonl`` are kept.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="results folder (results.jsonl, summary.csv, summary.md)")
    p.add_argument("--data", default=None, help="synthetic data root, made if absent (default OUT/data)")
    p.add_argument("--targets", default="pannuke,monusac,consep")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-val", type=int, default=12)
    p.add_argument("--n-test", type=int, default=32)
    p.add_argument("--size", type=int, default=128, help="tile size (default 128 = the training patch size)")
    p.add_argument("--epochs-pretrain", type=int, default=5)
    p.add_argument("--epochs-finetune", type=int, default=5)
    p.add_argument("--steps-per-epoch", type=int, default=25)
    p.add_argument("--quick", action="store_true", help="1 target, 1 seed, 1+1 epochs of 5 steps, 16/4/8 tiles")
    args = p.parse_args(argv)

    from stardist_hier.atomic import atomic_write_text
    from stardist_hier.experiments.claim import (BenchSettings, format_claim_table, run_claim_benchmark,
                                         summarize_claim)
    from stardist_hier.synth import generate_all

    targets = [t for t in args.targets.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.quick:
        targets, seeds = targets[:1], seeds[:1]
        args.n_train, args.n_val, args.n_test = 16, 4, 8
        args.epochs_pretrain = args.epochs_finetune = 1
        args.steps_per_epoch = 5
    data = args.data or os.path.join(args.out, "data")
    t0 = time.perf_counter()
    generate_all(data, ["pannuke", "monusac", "consep"], counts=dict(train=args.n_train, val=args.n_val,
                                                                     test=args.n_test), size=args.size, seed=0)
    settings = BenchSettings(epochs_pretrain=args.epochs_pretrain, epochs_finetune=args.epochs_finetune,
                             steps_per_epoch=args.steps_per_epoch)
    settings.model["train_patch_size"] = (min(128, args.size),) * 2
    print(f"settings: {settings.to_dict()}", flush=True)
    df = run_claim_benchmark(data, args.out, targets=targets, seeds=seeds, settings=settings,
                             log=lambda m: print(m, flush=True))
    summary = summarize_claim(df)
    atomic_write_text(os.path.join(args.out, "summary.csv"), summary.to_csv(index=False))
    md = format_claim_table(summary)
    atomic_write_text(os.path.join(args.out, "summary.md"), md + "\n")
    print("\n" + md)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s (this invocation; finished groups are reused)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
