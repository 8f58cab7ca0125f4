"""Table II, row 3 (test split of the target dataset).

Pre-train pannuke 250 epochs, fine-tune consep 75 epochs, test consep; paper PQ 0.5707.

    python table2_row3_pannuke_then_consep.py --data-root DATA --out results/paper --scale paper
    python table2_row3_pannuke_then_consep.py --synthetic synthetic-data --out results/smoke --scale smoke
"""

import sys

from stardist_hier.commands.replay import row_main

ROW = dict(table=2, row=3,
           pretrain=("pannuke", 250),  # dataset, epochs
           finetune=("consep", 75),
           test="consep",
           pq=0.5707)  # published PQ

if __name__ == "__main__":
    sys.exit(row_main(**ROW))
