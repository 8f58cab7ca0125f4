"""Table II, row 9 (test split of the target dataset).

Pre-train monusac 175 epochs, fine-tune pannuke 187 epochs, test pannuke; paper PQ 0.6102.

    python table2_row9_monusac_then_pannuke.py --data-root DATA --out results/paper --scale paper
    python table2_row9_monusac_then_pannuke.py --synthetic synthetic-data --out results/smoke --scale smoke
"""

import sys

from stardist_hier.commands.replay import row_main

ROW = dict(table=2, row=9,
           pretrain=("monusac", 175),  # dataset, epochs
           finetune=("pannuke", 187),
           test="pannuke",
           pq=0.6102)  # published PQ

if __name__ == "__main__":
    sys.exit(row_main(**ROW))
