"""Table III, row 5 (domain generalisation: the test dataset is unseen in training).

Pre-train monusac 175 epochs, fine-tune - (none), test consep; paper PQ 0.3444.

    python table3_row5_monusac_only_test_consep.py --data-root DATA --out results/paper --scale paper
    python table3_row5_monusac_only_test_consep.py --synthetic synthetic-data --out results/smoke --scale smoke
"""

import sys

from stardist_hier.commands.replay import row_main

ROW = dict(table=3, row=5,
           pretrain=("monusac", 175),  # dataset, epochs
           finetune=None,
           test="consep",
           pq=0.3444)  # published PQ

if __name__ == "__main__":
    sys.exit(row_main(**ROW))
