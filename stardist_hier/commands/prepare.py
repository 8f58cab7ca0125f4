"""Convert a dataset's native download into 256x256 TIFF patches.

Writes <out>/<dataset>/<split>/images/<patch>.tif (RGB uint8), .../masks/<patch>.tif
(int32, channel 0 instance ids with -1 = ignore, channel 1 the dataset's class ids) and
<out>/<dataset>/index.csv. Re-running skips finished patches unless --overwrite. Every file
is tried: each bad one is named with what is wrong with it, and the run fails at the end
unless --skip-bad leaves them out.
"""

from ..readers import DATASETS
from ._common import add_output_flags, show_progress, usage_error, verbosity


def add_arguments(parser):
    parser.add_argument("dataset", choices=DATASETS, help="dataset to convert")
    parser.add_argument("--src", required=True, help="folder of the dataset as downloaded")
    parser.add_argument("--out", required=True, help="output root; patches go to OUT/<dataset>/<split>/")
    parser.add_argument("--stride", type=int, default=256,
                        help="tile step for images larger than 256 px (default 256; last tile aligned to the edge)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="fraction of training patients / source images moved to the 'val' split (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")
    parser.add_argument("--split", choices=("train", "test"), default=None,
                        help="official split of the images in --src, for a single folder whose split would "
                             "otherwise be read from its name (monuseg, monusac, consep: 'test' when a word of "
                             "the folder name starts with 'test', else 'train')")
    parser.add_argument("--overwrite", action="store_true", help="rewrite patches that already exist")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave corrupt or inconsistent files out (a warning each, listed in the summary) "
                             "instead of failing; the validation split is drawn without them")
    add_output_flags(parser)


def run(args):
    from ..atomic import check_output_dir
    from ..readers.convert import convert

    if not 1 <= args.stride <= 256:
        return usage_error("--stride must be in 1..256 (a larger step would leave gaps between tiles)")
    if not 0 <= args.val_fraction < 1:
        return usage_error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    check_output_dir(args.out, "--out")
    summary = convert(args.dataset, args.src, args.out, stride=args.stride, val_fraction=args.val_fraction,
                      seed=args.seed, overwrite=args.overwrite, workers=args.workers, skip_bad=args.skip_bad,
                      progress=show_progress(args), split=args.split)
    print(summary.format(limit=None if verbosity(args) > 0 else 20))
    return 0
