"""Convert a dataset's native download into 256x256 TIFF patches.

Writes <out>/<dataset>/<split>/images/<patch>.tif (RGB uint8), .../masks/<patch>.tif
(int32, channel 0 instance ids with -1 = ignore, channel 1 the dataset's class ids) and
<out>/<dataset>/index.csv. Re-running skips finished patches unless --overwrite.
"""

import sys
from pathlib import Path

from ..readers import DATASETS


def add_arguments(parser):
    parser.add_argument("dataset", choices=DATASETS, help="dataset to convert")
    parser.add_argument("--src", required=True, help="folder of the dataset as downloaded")
    parser.add_argument("--out", required=True, help="output root; patches go to OUT/<dataset>/<split>/")
    parser.add_argument("--stride", type=int, default=256,
                        help="tile step for images larger than 256 px (default 256; last tile aligned to the edge)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="fraction of training patients / source images moved to the 'val' split (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite patches that already exist")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip corrupt or inconsistent files with a warning instead of stopping")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    from ..readers import ReaderError
    from ..readers.convert import convert

    if not 1 <= args.stride <= 256:
        print("error: --stride must be in 1..256 (a larger step would leave gaps between tiles)", file=sys.stderr)
        return 2
    try:
        summary = convert(args.dataset, args.src, args.out, stride=args.stride, val_fraction=args.val_fraction,
                          seed=args.seed, overwrite=args.overwrite, workers=args.workers,
                          skip_bad=args.skip_bad, progress=not args.no_progress)
    except (ReaderError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        # the hint helps with one bad file among many, not with a wrong --src
        if not args.skip_bad and isinstance(e, ReaderError) and not Path(e.path).is_dir() and Path(args.src).is_dir():
            print("(use --skip-bad to skip bad files and convert the rest)", file=sys.stderr)
        return 1
    print(summary.format())
    return 0
