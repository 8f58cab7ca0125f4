"""Segment and classify nuclei in your own images and whole-slide images.

INPUT is image files (TIFF, PNG, JPEG), folders of them, or whole-slide images (.svs, .ndpi,
.mrxs, pyramidal TIFF, ...). Each input's outputs go to OUT/<name>/: a QuPath GeoJSON
(<name>.geojson.gz: File > Import objects from file, or drag it onto the image), the
per-nucleus table (<name>_nuclei.parquet and .csv), for images the label image
(<name>_labels.tif: instance ids, class ids) and an outline overlay (<name>_overlay.png), for
slides a thumbnail overlay and the tissue mask (<name>_tissue.png). OUT/summary.csv has one
row per input: nuclei per class, tissue area, time taken, the error of a failed input.
Outputs are written atomically and an input whose outputs are complete is skipped, so
rerunning an interrupted command finishes the rest. Inputs that fail are reported at the end
(exit status 1); the others are still predicted.
"""

import sys
from pathlib import Path

from ._common import add_output_flags, usage_error, verbosity, show_progress


def add_arguments(parser):
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                        help="image or whole-slide image files, or folders of them")
    parser.add_argument("--model", type=Path, required=True, metavar="DIR", help="trained model folder")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--label-set", metavar="NAME",
                        help="classes of this label set (default: the model's default label set)")
    parser.add_argument("--levels", action="store_true",
                        help="also classify at every hierarchy level above the label set (table columns)")
    parser.add_argument("--tta", action="store_true",
                        help="8-fold test-time augmentation (4 rotations x 2 flips; about 8x slower)")
    parser.add_argument("--mpp", type=float, metavar="X",
                        help="slides: micrometres per pixel of level 0, overriding the file's metadata "
                             "(images: recorded for area_um2)")
    parser.add_argument("--mask", type=Path, metavar="FILE",
                        help="slides: tissue mask image (white = tissue) instead of the automatic one; "
                             "a folder of masks named <name>.png for several slides")
    parser.add_argument("--block-size", type=int, default=4096, metavar="PX",
                        help="slides: block size of tiled prediction (default: 4096)")
    parser.add_argument("--geojson", choices=["gz", "plain"], default="gz",
                        help="GeoJSON gzip-compressed (.geojson.gz, default; QuPath reads it) or plain (.geojson)")
    parser.add_argument("--tables", default="parquet,csv", metavar="FORMATS",
                        help="per-nucleus table formats, comma-separated: parquet, csv (default: both)")
    parser.add_argument("--no-overlay", action="store_true", help="no overlay PNGs")
    parser.add_argument("--overwrite", action="store_true", help="predict inputs again even when complete")
    parser.add_argument("--scheduler", choices=["local", "dask"], default="local",
                        help="local: one input after the other (default); dask: one task per input on a "
                             "dask.distributed cluster")
    parser.add_argument("--address", metavar="HOST:PORT",
                        help="with --scheduler dask: the scheduler of a running cluster (default: start a "
                             "LocalCluster on this machine)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="with --scheduler dask and no --address: LocalCluster workers (default: cores / 4)")
    add_output_flags(parser)


def run(args):
    if args.address and args.scheduler != "dask":
        return usage_error("--address needs --scheduler dask")
    if args.workers is not None and (args.scheduler != "dask" or args.address):
        return usage_error("--workers needs --scheduler dask without --address")
    if args.workers is not None and args.workers < 1:
        return usage_error(f"--workers must be >= 1, got {args.workers}")
    if args.mpp is not None and not args.mpp > 0:
        return usage_error(f"--mpp must be > 0, got {args.mpp}")
    if args.block_size < 64:
        return usage_error(f"--block-size must be >= 64, got {args.block_size}")
    tables = tuple(t.strip() for t in args.tables.split(",") if t.strip())
    bad = [t for t in tables if t not in ("parquet", "csv")]
    if bad or not tables:
        return usage_error(f"--tables: formats are parquet and csv, got {args.tables!r}")

    from ..atomic import check_output_dir
    from ..predict.run import PredictSettings, load_model, predict_inputs, resolve_label_set

    check_output_dir(args.out)
    settings = PredictSettings(label_set=args.label_set, levels=args.levels, tta=args.tta, mpp=args.mpp,
                               mask=args.mask, block_size=args.block_size,
                               geojson="geojson.gz" if args.geojson == "gz" else "geojson", tables=tables,
                               overlay=not args.no_overlay)
    verbose = verbosity(args)
    model = load_model(args.model, quiet=verbose < 0)  # bad folder, no weights: an error before any input
    resolve_label_set(model, args.label_set)  # unknown label set, or one on a model without classes
    if args.scheduler == "dask":
        model = args.model  # each worker loads it
    rows = predict_inputs(model, args.inputs, args.out, settings, scheduler="dask" if args.scheduler == "dask" else None,
                          address=args.address, n_workers=args.workers, progress=show_progress(args),
                          verbose=verbose, overwrite=args.overwrite)
    failed = [r for r in rows if r["status"] == "failed"]
    done = [r for r in rows if r["status"] == "ok"]
    skipped = [r for r in rows if r["status"] == "skipped"]
    print(f"{len(rows)} input(s): {len(done)} predicted, {len(skipped)} already complete, {len(failed)} failed; "
          f"{sum(int(r['nuclei'] or 0) for r in rows if r['status'] != 'failed')} nuclei; "
          f"summary: {Path(args.out) / 'summary.csv'}")
    if failed:
        print(f"error: {len(failed)} of {len(rows)} input(s) failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r['error']}", file=sys.stderr)
        return 1
    return 0
