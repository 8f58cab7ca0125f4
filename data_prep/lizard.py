"""Convert the lizard download into 256x256 TIFF patches (see `stardist-hier prepare --help`).

Usage: python data_prep/lizard.py --src DIR --out DIR [--stride N] [--val-fraction F] [--seed S]
       [--overwrite] [--workers N] [--skip-bad]
"""

import sys

from stardist_hier.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", "lizard", *sys.argv[1:]]))
