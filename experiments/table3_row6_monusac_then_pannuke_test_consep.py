"""Table III, row 6 (domain generalisation: the test dataset is unseen in training).

Pre-train monusac 175 epochs, fine-tune pannuke 62 epochs, test consep; paper PQ 0.4485.

    python table3_row6_monusac_then_pannuke_test_consep.py --data-root DATA --out results/paper --scale paper
    python table3_row6_monusac_then_pannuke_test_consep.py --synthetic synthetic-data --out results/smoke --scale smoke
"""

import sys

from stardist_hier.commands.replay import row_main

ROW = dict(table=3, row=6,
           pretrain=("monusac", 175),  # dataset, epochs
           finetune=("pannuke", 62),
           test="consep",
           pq=0.4485)  # published PQ

if __name__ == "__main__":
    sys.exit(row_main(**ROW))
