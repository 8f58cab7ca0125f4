"""Table II, row 1 (test split of the target dataset).

Pre-train consep 100 epochs, fine-tune - (none), test consep; paper PQ 0.5404.

    python table2_row1_consep_only.py --data-root DATA --out results/paper --scale paper
    python table2_row1_consep_only.py --synthetic synthetic-data --out results/smoke --scale smoke
"""

import sys

from stardist_hier.commands.replay import row_main

ROW = dict(table=2, row=1,
           pretrain=("consep", 100),  # dataset, epochs
           finetune=None,
           test="consep",
           pq=0.5404)  # published PQ

if __name__ == "__main__":
    sys.exit(row_main(**ROW))
