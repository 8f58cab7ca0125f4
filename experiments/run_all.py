"""Run all 17 rows of the paper's Tables II and III in order, sharing pre-trainings.

    python experiments/run_all.py --data-root DATA --out results/paper --scale paper
    python experiments/run_all.py --synthetic synthetic-data --out results/smoke --scale smoke

Every row's data is checked before the first one trains; a pre-training used by several
rows (e.g. PanNuke for 250 epochs) is trained once and reused from OUT/cache.
"""

import sys

from stardist_hier.commands.replay import run_all_main

if __name__ == "__main__":
    sys.exit(run_all_main())
