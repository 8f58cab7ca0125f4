"""Convert a dataset's native download, or your own data, into 256x256 TIFF patches.

Writes <out>/<dataset>/<split>/images/<patch>.tif (RGB uint8), .../masks/<patch>.tif
(int32, channel 0 instance ids with -1 = ignore, channel 1 the dataset's class ids) and
<out>/<dataset>/index.csv. Re-running skips finished patches unless --overwrite. Every file
is tried: each bad one is named with what is wrong with it, and the run fails at the end
unless --skip-bad leaves them out.

Your own data:
  prepare folder --images DIR --masks DIR [--classes CSV | --class-maps DIR] --dataset NAME
                 --label-set NAME [--hierarchy YAML] --out DIR
  prepare qupath --src DIR --dataset NAME --label-set NAME [--hierarchy YAML] --out DIR
(formats: stardist_hier.readers.folder and stardist_hier.readers.qupath).
"""

import argparse

from ..readers import DATASETS
from ..readers.registry import USER_FORMATS
from ._common import add_output_flags, show_progress, usage_error, verbosity

#: options of your own data, by the formats that take them
_USER_OPTIONS = {"name": ("--dataset", USER_FORMATS), "label_set": ("--label-set", USER_FORMATS),
                 "hierarchy": ("--hierarchy", USER_FORMATS), "test_images": ("--test-images", USER_FORMATS),
                 "class_name": ("--class-name", USER_FORMATS), "images": ("--images", ("folder",)),
                 "masks": ("--masks", ("folder",)), "classes": ("--classes", ("folder",)),
                 "class_maps": ("--class-maps", ("folder",)), "allow_unclassified": ("--allow-unclassified", ("folder",)),
                 "object_types": ("--object-types", ("qupath",))}


def add_arguments(parser):
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("dataset", choices=DATASETS + tuple(USER_FORMATS),
                        help="dataset to convert, or the format of your own data (folder, qupath)")
    parser.add_argument("--src", help="folder of the dataset as downloaded (qupath: images + GeoJSON)")
    parser.add_argument("--out", required=True, help="output root; patches go to OUT/<dataset>/<split>/")
    parser.add_argument("--stride", type=int, default=256,
                        help="tile step for images larger than 256 px (default 256; last tile aligned to the edge)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="fraction of training patients / source images moved to the 'val' split (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")
    parser.add_argument("--split", choices=("train", "test"), default=None,
                        help="official split of the images in --src, for a single folder whose split would "
                             "otherwise be read from its name (monuseg, monusac, consep: 'test' when a word of "
                             "the folder name starts with 'test', else 'train'); folder, qupath: the split of "
                             "every image (default train)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite patches that already exist")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave corrupt or inconsistent files out (a warning each, listed in the summary) "
                             "instead of failing; the validation split is drawn without them")
    own = parser.add_argument_group("your own data (prepare folder, prepare qupath)")
    own.add_argument("--dataset", dest="name", metavar="NAME", help="name of the prepared dataset (its folder under --out)")
    own.add_argument("--label-set", help="label set of the hierarchy the class ids or names belong to "
                                         "(e.g. a label set {1: nucleus} labels every nucleus at the root)")
    own.add_argument("--hierarchy", default="default", metavar="YAML",
                     help="hierarchy YAML holding --label-set (may 'extends: default'; default: the shipped one)")
    own.add_argument("--test-images", metavar="FILE",
                     help="text file of image names (file name or stem, one a line) that form the 'test' split; "
                          "the rest is 'train', and 'val' is drawn from it by image")
    own.add_argument("--class-name", action="append", default=[], metavar="NAME=NODE",
                     help="read the class name NAME as the hierarchy node NODE (repeatable; QuPath "
                          "classifications, names in --classes)")
    folder = parser.add_argument_group("prepare folder")
    folder.add_argument("--images", metavar="DIR", help="folder of the images (.tif, .png, .jpg)")
    folder.add_argument("--masks", metavar="DIR", help="folder of the instance masks (.tif, .png), matched to the "
                                                       "images by file stem (or stem + _mask/_label/_inst); a second "
                                                       "channel, if any, holds the class ids")
    folder.add_argument("--classes", metavar="CSV", help="class table with the columns image,instance,class")
    folder.add_argument("--class-maps", metavar="DIR", help="folder of class maps (class id per pixel), matched by stem")
    folder.add_argument("--allow-unclassified", action="store_true",
                        help="keep nuclei without a class (class 0, no row in --classes) as nuclei of unknown "
                             "class instead of failing")
    qupath = parser.add_argument_group("prepare qupath")
    qupath.add_argument("--object-types", default="annotation,detection,cell", metavar="LIST",
                        help="QuPath object types read as nuclei (default annotation,detection,cell)")
    add_output_flags(parser)


def _user_reader(args):
    """The reader of a `prepare folder` / `prepare qupath` command line, or a usage error message."""
    from ..readers.registry import user_reader

    fmt = args.dataset
    missing = [flag for key, flag in (("name", "--dataset"), ("label_set", "--label-set")) if not getattr(args, key)]
    if fmt == "folder":
        missing += [flag for key, flag in (("images", "--images"), ("masks", "--masks")) if not getattr(args, key)]
        if args.src:
            return None, "prepare folder reads --images and --masks, not --src"
    elif not args.src:
        missing.append("--src")
    if missing:
        return None, f"prepare {fmt} needs {', '.join(missing)}"
    aliases = {}
    for item in args.class_name:
        name, sep, node = item.partition("=")
        if not sep or not name.strip() or not node.strip():
            return None, f"--class-name {item!r}: write NAME=NODE (a class name and a node of the hierarchy)"
        aliases[name.strip()] = node.strip()
    common = dict(dataset=args.name, label_set=args.label_set, hierarchy=args.hierarchy,
                  test_images=args.test_images, aliases=aliases)
    if fmt == "folder":
        return (user_reader("folder", masks=args.masks, classes=args.classes, class_maps=args.class_maps,
                            allow_unclassified=args.allow_unclassified, **common), args.images), None
    types = [t for t in args.object_types.split(",") if t.strip()]
    return (user_reader("qupath", object_types=types, **common), args.src), None


def run(args):
    from ..atomic import check_output_dir
    from ..readers.convert import convert

    if not 1 <= args.stride <= 256:
        return usage_error("--stride must be in 1..256 (a larger step would leave gaps between tiles)")
    if not 0 <= args.val_fraction < 1:
        return usage_error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    defaults = {"hierarchy": "default", "class_name": [], "allow_unclassified": False,
                "object_types": "annotation,detection,cell"}
    wrong = [flag for key, (flag, formats) in _USER_OPTIONS.items()
             if args.dataset not in formats and getattr(args, key) not in (None, defaults.get(key))]
    if wrong:
        return usage_error(f"{', '.join(wrong)}: not an option of `prepare {args.dataset}`")
    check_output_dir(args.out, "--out")
    if args.dataset in USER_FORMATS:
        made, problem = _user_reader(args)
        if problem:
            return usage_error(problem)
        dataset, src = made
    else:
        if not args.src:
            return usage_error(f"prepare {args.dataset} needs --src (the folder of the download)")
        dataset, src = args.dataset, args.src
    summary = convert(dataset, src, args.out, stride=args.stride, val_fraction=args.val_fraction,
                      seed=args.seed, overwrite=args.overwrite, workers=args.workers, skip_bad=args.skip_bad,
                      progress=show_progress(args), split=args.split)
    print(summary.format(limit=None if verbosity(args) > 0 else 20))
    return 0
