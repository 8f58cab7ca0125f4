"""Generate the synthetic hierarchical H&E datasets in the project's patch format.

Four sets mimic the label cuts of real datasets: pannuke (5 classes, several organs and
stains), monusac (epithelial coarse, immune cells fine, other nuclei unannotated), consep
(7 classes) and monuseg (every nucleus labelled at the root). Each goes to
<out>/<dataset>/{train,val,test}/{images,masks}/*.tif with an index.csv. Finished sets made
with the same parameters are skipped; interrupted ones are completed.
"""

from ._common import add_output_flags, show_progress, usage_error


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
    add_output_flags(parser)


def run(args):
    from ..synth import DATASETS, SPLITS, generate_all, generate_tile, save_overlay, tile_seed

    from pathlib import Path

    from ..atomic import check_output_dir

    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in names if d not in DATASETS]
    if unknown or not names:
        return usage_error(f"unknown dataset(s) {unknown}; choose from {', '.join(DATASETS)}")
    if args.size < 32:
        return usage_error(f"--size must be at least 32, got {args.size}")
    check_output_dir(args.out, "--out")
    if args.overlay:
        if Path(args.overlay).is_dir():
            raise IsADirectoryError(f"--overlay {args.overlay} is a folder; give the path of a PNG file")
        check_output_dir(Path(args.overlay).parent, "--overlay")
    counts = {split: getattr(args, f"n_{split}") for split in SPLITS}
    results = generate_all(args.out, names, counts=counts, size=args.size, seed=args.seed,
                           unannotated=args.unannotated, overwrite=args.overwrite, progress=show_progress(args),
                           workers=max(1, args.workers))
    for r in results:
        what = "already complete, skipped" if r["skipped"] else f"{r['nuclei']} nuclei, {r['seconds']:.1f} s"
        print(f"{r['dataset']}: {r['patches']} patches in {r['path']} ({what})")
    if args.overlay:
        tiles = [generate_tile(name, tile_seed(args.seed, name, "train", i), size=args.size,
                               unannotated=args.unannotated) for name in names for i in range(2)]
        print(f"overlay: {save_overlay(tiles, args.overlay, ncols=2)}")
    return 0
