"""Table III, row 8 (domain generalisation: the test dataset is unseen in training).

Pre-train monusac 175 epochs, fine-tune consep 25 epochs, test pannuke; paper PQ 0.4048.

    python table3_row8_monusac_then_consep_test_pannuke.py --data-root DATA --out results/paper --scale paper
    python table3_row8_monusac_then_consep_test_pannuke.py --synthetic synthetic-data --out results/smoke --scale smoke
"""

import sys

from stardist_hier.commands.replay import row_main

ROW = dict(table=3, row=8,
           pretrain=("monusac", 175),  # dataset, epochs
           finetune=("consep", 25),
           test="pannuke",
           pq=0.4048)  # published PQ

if __name__ == "__main__":
    sys.exit(row_main(**ROW))
