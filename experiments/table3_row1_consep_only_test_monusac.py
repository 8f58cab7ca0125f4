"""Table III, row 1 (domain generalisation: the test dataset is unseen in training).

Pre-train consep 100 epochs, fine-tune - (none), test monusac; paper PQ 0.4333.

    python table3_row1_consep_only_test_monusac.py --data-root DATA --out results/paper --scale paper
    python table3_row1_consep_only_test_monusac.py --synthetic synthetic-data --out results/smoke --scale smoke
"""

import sys

from stardist_hier.commands.replay import row_main

ROW = dict(table=3, row=1,
           pretrain=("consep", 100),  # dataset, epochs
           finetune=None,
           test="monusac",
           pq=0.4333)  # published PQ

if __name__ == "__main__":
    sys.exit(row_main(**ROW))
