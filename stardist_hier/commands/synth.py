"""Generate the synthetic hierarchical H&E datasets in the project's patch format.

Four sets mimic the label cuts of real datasets: pannuke (5 classes, several organs and
stains), monusac (epithelial coarse, immune cells fine, other nuclei unannotated), consep
(7 classes) and monuseg (every nucleus labelled at the root). Each goes to
<out>/<dataset>/{train,val,test}/{images,masks}/*.tif with an index.csv. Finished sets made
with the same parameters are skipped; interrupted ones are completed.
"""

import sys


def _positive_int(text):
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def add_arguments(parser):
    from ..synth import DATASETS, DEFAULT_COUNTS

    parser.add_argument("--out", required=True, help="output root; each dataset goes to OUT/<dataset>/")
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help=f"comma-separated datasets to make (default: {','.join(DATASETS)})")
    for split, n in DEFAULT_COUNTS.items():
        parser.add_argument(f"--n-{split}", type=_positive_int, default=n, metavar="N",
                            help=f"tiles in the {split} split of each dataset (default: {n})")
    parser.add_argument("--size", type=int, default=256, help="tile size in pixels (default: 256, the patch format's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default: 0)")
    parser.add_argument("--unannotated", choices=("background", "ignore"), default="background",
                        help="mask over nuclei a dataset does not annotate (MoNuSAC's other nuclei): "
                             "background as in the real ground truth (default), or ignore regions")
    parser.add_argument("--overwrite", action="store_true", help="remake datasets that already exist")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="processes generating tiles in parallel (default: 1; the output does not depend on it)")
    parser.add_argument("--overlay", metavar="PNG",
                        help="also draw the first train tiles of each dataset with outlines coloured by leaf")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args):
    from ..synth import DATASETS, SPLITS, generate_all, generate_tile, save_overlay, tile_seed

    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in names if d not in DATASETS]
    if unknown or not names:
        print(f"error: unknown dataset(s) {unknown}; choose from {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    if args.size < 32:
        print(f"error: --size must be at least 32, got {args.size}", file=sys.stderr)
        return 2
    counts = {split: getattr(args, f"n_{split}") for split in SPLITS}
    try:
        results = generate_all(args.out, names, counts=counts, size=args.size, seed=args.seed,
                               unannotated=args.unannotated, overwrite=args.overwrite, progress=not args.quiet,
                               workers=max(1, args.workers))
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for r in results:
        what = "already complete, skipped" if r["skipped"] else f"{r['nuclei']} nuclei, {r['seconds']:.1f} s"
        print(f"{r['dataset']}: {r['patches']} patches in {r['path']} ({what})")
    if args.overlay:
        tiles = [generate_tile(name, tile_seed(args.seed, name, "train", i), size=args.size,
                               unannotated=args.unannotated) for name in names for i in range(2)]
        print(f"overlay: {save_overlay(tiles, args.overlay, ncols=2)}")
    return 0
