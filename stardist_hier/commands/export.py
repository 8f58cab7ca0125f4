"""Export a trained model with its class head, in the layout QuPath's StarDist extension reads:
one output holding the object probability, the rays, then the class probabilities
(background first) at the model's leaves or, with --label-set, at a label set (leaf
probabilities summed inside the network). Formats: pb (a frozen TensorFlow graph, what QuPath
loads through OpenCV on every OS), onnx (tf2onnx; NCHW in and out) and savedmodel (TensorFlow
SavedModel folder). Writes into --out: the model, <stem>.classes.txt (one class name per
line, background first: the names for QuPath's classificationNames), <stem>.classes.json
(channels, ids, colours, grid, thresholds) and, for pb, <stem>.groovy, a QuPath script using
them. The export is run once after writing and compared with the Keras network.
Inputs must be multiples of unet_pool**unet_n_depth * grid pixels (16 for a depth-3 U-Net at
grid 2); QuPath pads its tiles to multiples of 64.
"""

import warnings
from pathlib import Path

from ._common import add_output_flags, verbosity

#: the formats of :data:`stardist_hier.export.FORMATS` (listed here so --help needs no TensorFlow)
FORMAT_CHOICES = ("pb", "onnx", "savedmodel")


def add_arguments(parser):
    parser.add_argument("--model", type=Path, required=True, metavar="DIR", help="trained model folder")
    parser.add_argument("--label-set", metavar="NAME",
                        help="label set of the class channels (default: the model's leaves)")
    parser.add_argument("--format", required=True, choices=FORMAT_CHOICES,
                        help="pb (QuPath, OpenCV), onnx or savedmodel")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                        help="pixel size (µm) of the training images, written into the QuPath script "
                             "(default: the model's pixel_size_um, else 0.5)")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not run the written export to compare it with the Keras network")
    add_output_flags(parser)


def run(args):
    from ..atomic import check_output_dir

    folder = args.model
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    check_output_dir(args.out)

    from ..model.folder import WEIGHTS_FILES, read_config, weights_files

    read_config(folder)  # a folder without config.json, or with a bad one, fails here with its name
    if not weights_files(folder):
        raise FileNotFoundError(f"{folder} has no weights ({', '.join(WEIGHTS_FILES)}): train the model first")

    from ..export import export_model
    from ..model import HierStarDist2D

    model = HierStarDist2D(None, name=folder.name, basedir=str(folder.parent))
    result = export_model(model, args.out, format=args.format, label_set=args.label_set,
                          verify=not args.no_verify, pixel_size=args.pixel_size)
    layout = result.layout
    classes = f" + {layout.n_classes} classes" if layout.n_classes else ""
    at = f"label set '{layout.label_set}'" if layout.label_set else "leaves"
    print(f"wrote {result.model}: 1 probability + {layout.n_rays} rays{classes} = {layout.n_channels} channels"
          + (f" ({at})" if layout.n_classes else "")
          + f" at grid {tuple(layout.grid)}; inputs must be multiples of {tuple(layout.divisor)} pixels")
    others = [p.name for role, p in result.files.items() if role != "model"]
    if others:
        print(f"      {', '.join(others)}")
    if result.max_abs_diff is not None and verbosity(args) >= 0:
        print(f"checked: the export differs from the Keras network by at most {result.max_abs_diff:.2g}")
    if not layout.qupath_compatible:
        warnings.warn(f"QuPath pads tiles to multiples of 64 pixels, but this network needs multiples of "
                      f"{tuple(layout.divisor)}: QuPath cannot run it")
    return 0
