"""Table III, row 3 (domain generalisation: the test dataset is unseen in training).

Pre-train consep 100 epochs, fine-tune - (none), test pannuke; paper PQ 0.4326.

    python table3_row3_consep_only_test_pannuke.py --data-root DATA --out results/paper --scale paper
    python table3_row3_consep_only_test_pannuke.py --synthetic synthetic-data --out results/smoke --scale smoke
"""

import sys

from stardist_hier.commands.replay import row_main

ROW = dict(table=3, row=3,
           pretrain=("consep", 100),  # dataset, epochs
           finetune=None,
           test="pannuke",
           pq=0.4326)  # published PQ

if __name__ == "__main__":
    sys.exit(row_main(**ROW))
