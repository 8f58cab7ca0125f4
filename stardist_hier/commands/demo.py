"""Run a miniature of the paper's experiments end to end on synthetic data.

Makes the synthetic PanNuke-, MoNuSAC- and CoNSeP-like sets if absent, trains four rows of the
paper's protocol (Table II: MoNuSAC only vs PanNuke then MoNuSAC; Table III: CoNSeP only vs
CoNSeP then PanNuke, both tested on the unseen MoNuSAC), tunes each row's detection thresholds
on a few validation tiles, scores each test set at its own label set (bPQ, mPQ, mPQ+, PQ),
prints the table beside the paper's rows (with the epochs and steps each row trained, its
thresholds and how many nuclei it predicted) and writes the loss curves (Fig. 3) and
prediction overlays (Figs. 2 and 4) as PNGs into --out. The numbers are synthetic and
miniature, not comparable to the paper's. A rerun with the same settings reuses the finished
runs. Defaults take about 6 minutes on 2 CPU cores; --quick about 1.

Output: -q no progress bars (the table, the figures and a line per run); by default progress
bars; -v a line per epoch; -vv also Keras' progress bars.
"""

from ._common import add_output_flags, show_progress, usage_error, verbosity


def add_arguments(parser):
    from ..experiments.demo import DEFAULT, QUICK

    def opt(flag, typ, field, help_text):
        parser.add_argument(flag, type=typ, default=None, dest=field,
                            help=f"{help_text} (default {getattr(DEFAULT, field)}; --quick {getattr(QUICK, field)})")

    parser.add_argument("--out", required=True, help="output folder: runs/, demo_table.csv/.md and the PNGs")
    parser.add_argument("--data", default=None,
                        help="synthetic data root, made if absent (default: OUT/synthetic-data)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: about 1 minute on 2 CPU cores")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training (default 0)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    opt("--size", int, "size", "tile size of the synthetic data in pixels")
    opt("--n-train", int, "n_train", "train tiles per dataset")
    opt("--n-val", int, "n_val", "validation tiles per dataset")
    opt("--n-test", int, "n_test", "test tiles per dataset")
    opt("--epoch-factor", float, "epoch_factor", "each episode trains ceil(paper epochs x this) epochs")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train every episode exactly this many epochs (overrides --epoch-factor)")
    opt("--steps-per-epoch", int, "steps_per_epoch", "training steps per epoch")
    opt("--batch-size", int, "batch_size", "patches per batch")
    opt("--patch-size", int, "patch_size", "training patch size in pixels")
    opt("--rays", int, "n_rays", "StarDist rays")
    opt("--unet-depth", int, "unet_depth", "U-Net depth")
    opt("--unet-filters", int, "unet_filters", "U-Net filters of the first level")
    opt("--overlay-images", int, "overlay_images", "test images per overlay panel")
    opt("--threshold-images", int, "threshold_images",
        "validation tiles to tune each row's detection thresholds on (0: StarDist's defaults 0.5/0.4)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace runs in OUT that were made with other settings")
    add_output_flags(parser)  # -q: no bars; -v: a line per epoch; -vv: also Keras' bars


def run(args):
    from ..experiments.demo import run_demo, settings_from_args

    try:
        settings = settings_from_args(args, quick=args.quick).check()
    except ValueError as e:
        return usage_error(e)
    # missing data and runs made with other settings are user errors: cli.run_command says so
    run_demo(args.out, data=args.data, settings=settings, seed=args.seed, data_seed=args.data_seed,
             progress=show_progress(args), verbose=min(2, max(0, verbosity(args))), overwrite=args.overwrite)
    return 0
