"""Score a model (--model DIR) or saved prediction TIFFs (--predictions DIR) on one split of
the patch folders, at a dataset's label set. Reports side by side: PanNuke's bPQ and mPQ
(tissue- and image-averaged), CoNIC's PQ, mPQ+ and R2, StarDist's PQ (per image and summed,
IoU >= 0.5), detection F1 and HoVer-Net's classification F1 per class. Writes
<stem>_per_image.csv, <stem>_summary.csv and <stem>_summary.json into --out and prints a
table. A saved prediction is <patch_id>.tif, an integer (H, W, 2) array in the layout of the
ground-truth masks: instance ids, then class ids in the ids of the label set being scored.
"""

from pathlib import Path

from ._common import add_output_flags, show_progress


def add_arguments(parser):
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, metavar="DIR", help="trained HierStarDist2D model folder")
    src.add_argument("--predictions", type=Path, metavar="DIR", help="folder of saved prediction TIFFs <patch_id>.tif")
    parser.add_argument("--data", type=Path, required=True, metavar="DIR",
                        help="root of the converted datasets (the --out of `stardist-hier prepare`), or one dataset folder")
    parser.add_argument("--split", default="test", help="split folder to score (default: test)")
    parser.add_argument("--dataset", metavar="NAME",
                        help="dataset folder under --data (required with --predictions when there are several; "
                             "with --model, default: every dataset that has the split)")
    parser.add_argument("--label-set", metavar="NAME",
                        help="label set to score at (default: each dataset's own)")
    parser.add_argument("--hierarchy", default=None, metavar="YAML",
                        help="hierarchy of the label sets (default: the model's, else the shipped one)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder (default: <model>/evaluation or <predictions>/evaluation)")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU threshold of the matching (default: 0.5)")
    parser.add_argument("--centroid-radius", type=float, default=12.0, metavar="PX",
                        help="radius of HoVer-Net's centroid pairing for its F1 (default: 12, HoVer-Net's at 40x; "
                             "6 suits 20x data; 0 turns it off)")
    parser.add_argument("--save-predictions", type=Path, metavar="DIR",
                        help="with --model: also write the predictions as TIFFs (DIR/<patch_id>.tif; "
                             "DIR/<dataset>/<patch_id>.tif when several datasets are scored)")
    add_output_flags(parser)


def run(args):
    from ..atomic import check_output_dir
    from ..metrics.folder import EvaluationError, evaluate_folder, find_datasets, format_summary, write_results

    root, names = find_datasets(args.data, args.split, args.dataset)
    if args.predictions is not None and len(names) > 1:
        raise EvaluationError(f"{root} holds several datasets with a split '{args.split}' ({', '.join(names)}): "
                              f"name the one the predictions belong to with --dataset")
    if args.model is not None and not args.model.is_dir():
        raise EvaluationError(f"model folder not found: {args.model}")
    if args.predictions is not None and not args.predictions.is_dir():
        raise EvaluationError(f"predictions folder not found: {args.predictions}")
    # output paths are checked before the (long) evaluation, not when the results are written
    out = check_output_dir(args.out or ((args.model or args.predictions) / "evaluation"), "--out")
    if args.save_predictions is not None:
        check_output_dir(args.save_predictions, "--save-predictions")
    model = None
    if args.model is not None:
        from ..model import HierStarDist2D

        model = HierStarDist2D(None, name=args.model.name, basedir=str(args.model.parent))
    for name in names:
        save = None
        if args.save_predictions is not None:
            save = args.save_predictions / name if len(names) > 1 else args.save_predictions
        result = evaluate_folder(root, args.split, name, predictions=args.predictions, model=model,
                                 label_set=args.label_set, hierarchy=args.hierarchy, thresh=args.iou,
                                 centroid_radius=args.centroid_radius or None,
                                 progress=show_progress(args), save_predictions=save)
        paths = write_results(result, out)
        print(format_summary(result))
        print(f"\nwrote {paths['per_image']}, {paths['summary_csv'].name}, {paths['summary_json'].name}\n")
    return 0
