"""Table III, row 4 (domain generalisation: the test dataset is unseen in training).

Pre-train consep 100 epochs, fine-tune monusac 43 epochs, test pannuke; paper PQ 0.4342.

    python table3_row4_consep_then_monusac_test_pannuke.py --data-root DATA --out results/paper --scale paper
    python table3_row4_consep_then_monusac_test_pannuke.py --synthetic synthetic-data --out results/smoke --scale smoke
"""

import sys

from stardist_hier.commands.replay import row_main

ROW = dict(table=3, row=4,
           pretrain=("consep", 100),  # dataset, epochs
           finetune=("monusac", 43),
           test="pannuke",
           pq=0.4342)  # published PQ

if __name__ == "__main__":
    sys.exit(row_main(**ROW))
