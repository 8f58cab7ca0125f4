"""Table II, row 7 (test split of the target dataset).

Pre-train pannuke 250 epochs, fine-tune - (none), test pannuke; paper PQ 0.6095.

    python table2_row7_pannuke_only.py --data-root DATA --out results/paper --scale paper
    python table2_row7_pannuke_only.py --synthetic synthetic-data --out results/smoke --scale smoke
"""

import sys

from stardist_hier.commands.replay import row_main

ROW = dict(table=2, row=7,
           pretrain=("pannuke", 250),  # dataset, epochs
           finetune=None,
           test="pannuke",
           pq=0.6095)  # published PQ

if __name__ == "__main__":
    sys.exit(row_main(**ROW))
