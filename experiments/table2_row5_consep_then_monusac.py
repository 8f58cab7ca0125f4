"""Table II, row 5 (test split of the target dataset).

Pre-train consep 100 epochs, fine-tune monusac 130 epochs, test monusac; paper PQ 0.5871.

    python table2_row5_consep_then_monusac.py --data-root DATA --out results/paper --scale paper
    python table2_row5_consep_then_monusac.py --synthetic synthetic-data --out results/smoke --scale smoke
"""

import sys

from stardist_hier.commands.replay import row_main

ROW = dict(table=2, row=5,
           pretrain=("consep", 100),  # dataset, epochs
           finetune=("monusac", 130),
           test="monusac",
           pq=0.5871)  # published PQ

if __name__ == "__main__":
    sys.exit(row_main(**ROW))
