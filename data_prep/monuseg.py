"""Convert the monuseg download into 256x256 TIFF patches (see `stardist-hier prepare --help`).

Usage: python data_prep/monuseg.py --src DIR --out DIR [--stride N] [--val-fraction F] [--seed S]
       [--overwrite] [--workers N] [--skip-bad]
"""

import sys

from stardist_hier.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", "monuseg", *sys.argv[1:]]))
