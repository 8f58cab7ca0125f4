"""Table III, row 2 (domain generalisation: the test dataset is unseen in training).

Pre-train consep 100 epochs, fine-tune pannuke 62 epochs, test monusac; paper PQ 0.5631.

    python table3_row2_consep_then_pannuke_test_monusac.py --data-root DATA --out results/paper --scale paper
    python table3_row2_consep_then_pannuke_test_monusac.py --synthetic synthetic-data --out results/smoke --scale smoke
"""

import sys

from stardist_hier.commands.replay import row_main

ROW = dict(table=3, row=2,
           pretrain=("consep", 100),  # dataset, epochs
           finetune=("pannuke", 62),
           test="monusac",
           pq=0.5631)  # published PQ

if __name__ == "__main__":
    sys.exit(row_main(**ROW))
