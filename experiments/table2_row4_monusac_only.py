"""Table II, row 4 (test split of the target dataset).

Pre-train monusac 175 epochs, fine-tune - (none), test monusac; paper PQ 0.5789.

    python table2_row4_monusac_only.py --data-root DATA --out results/paper --scale paper
    python table2_row4_monusac_only.py --synthetic synthetic-data --out results/smoke --scale smoke
"""

import sys

from stardist_hier.commands.replay import row_main

ROW = dict(table=2, row=4,
           pretrain=("monusac", 175),  # dataset, epochs
           finetune=None,
           test="monusac",
           pq=0.5789)  # published PQ

if __name__ == "__main__":
    sys.exit(row_main(**ROW))
