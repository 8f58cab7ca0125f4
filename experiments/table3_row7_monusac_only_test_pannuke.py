"""Table III, row 7 (domain generalisation: the test dataset is unseen in training).

Pre-train monusac 175 epochs, fine-tune - (none), test pannuke; paper PQ 0.3955.

    python table3_row7_monusac_only_test_pannuke.py --data-root DATA --out results/paper --scale paper
    python table3_row7_monusac_only_test_pannuke.py --synthetic synthetic-data --out results/smoke --scale smoke
"""

import sys

from stardist_hier.commands.replay import row_main

ROW = dict(table=3, row=7,
           pretrain=("monusac", 175),  # dataset, epochs
           finetune=None,
           test="pannuke",
           pq=0.3955)  # published PQ

if __name__ == "__main__":
    sys.exit(row_main(**ROW))
