"""Table II, row 2 (test split of the target dataset).

Pre-train monusac 175 epochs, fine-tune consep 75 epochs, test consep; paper PQ 0.555.

    python table2_row2_monusac_then_consep.py --data-root DATA --out results/paper --scale paper
    python table2_row2_monusac_then_consep.py --synthetic synthetic-data --out results/smoke --scale smoke
"""

import sys

from stardist_hier.commands.replay import row_main

ROW = dict(table=2, row=2,
           pretrain=("monusac", 175),  # dataset, epochs
           finetune=("consep", 75),
           test="consep",
           pq=0.555)  # published PQ

if __name__ == "__main__":
    sys.exit(row_main(**ROW))
