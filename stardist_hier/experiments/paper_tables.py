"""The rows of the paper's Tables II and III (Parulekar, Kanwat et al., BIOIMAGING 2024).

Table II: results on the test split of the fine-tuning (target) dataset; Table III: domain
generalisation to a third dataset that did not contribute to training. A row with ``-`` /
0 epochs in the fine-tune columns trains on the pre-training dataset only.

The published PQ is the paper's only metric (Eq. 5, class-agnostic panoptic quality; the
paper does not say how it is averaged), so reproduced numbers are shown in every
convention of :mod:`stardist_hier.metrics` beside it.

This list is the single source of the rows: the scripts in ``experiments/`` state their
row and check it against this table (:func:`check_row`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PaperRow", "TABLE2", "TABLE3", "ROWS", "get_row", "check_row", "row_by_name"]


@dataclass(frozen=True)
class PaperRow:
    """One row of Table II or III.

    Attributes
    ----------
    table : int
        2 or 3.
    row : int
        1-based row number within the table, in the paper's order.
    pretrain, pretrain_epochs : str, int
        First episode: dataset (label-set name) and epochs.
    finetune, finetune_epochs : str or None, int
        Second episode, or ``None`` and 0 (no fine-tuning).
    test : str
        Test dataset, scored at its own label set.
    pq : float
        Published PQ.
    """

    table: int
    row: int
    pretrain: str
    pretrain_epochs: int
    finetune: str | None
    finetune_epochs: int
    test: str
    pq: float

    @property
    def name(self):
        """File and folder name, e.g. ``table2_row1_consep_only``,
        ``table3_row2_consep_then_pannuke_test_monusac``."""
        train = f"{self.pretrain}_then_{self.finetune}" if self.finetune else f"{self.pretrain}_only"
        test = "" if self.table == 2 else f"_test_{self.test}"
        return f"table{self.table}_row{self.row}_{train}{test}"

    @property
    def episodes(self):
        """``[(dataset, paper epochs), ...]`` in training order."""
        eps = [(self.pretrain, self.pretrain_epochs)]
        if self.finetune:
            eps.append((self.finetune, self.finetune_epochs))
        return eps

    @property
    def datasets(self):
        """Every dataset the row needs (training and test), in order, without repeats."""
        return list(dict.fromkeys([d for d, _ in self.episodes] + [self.test]))

    def describe(self):
        """One line: ``Table II row 1: CoNSeP 100 ep -> (none) | test CoNSeP | paper PQ 0.5404``."""
        roman = {2: "II", 3: "III"}[self.table]
        ft = f"{self.finetune} {self.finetune_epochs} ep" if self.finetune else "(no fine-tuning)"
        return (f"Table {roman} row {self.row}: pre-train {self.pretrain} {self.pretrain_epochs} ep -> fine-tune {ft}"
                f" | test {self.test} | paper PQ {self.pq:.4f}")


def _rows(table, rows):
    return tuple(PaperRow(table, i, *r) for i, r in enumerate(rows, 1))


#: Table II: quantitative results on test splits
TABLE2 = _rows(2, [
    ("consep", 100, None, 0, "consep", 0.5404),
    ("monusac", 175, "consep", 75, "consep", 0.555),
    ("pannuke", 250, "consep", 75, "consep", 0.5707),
    ("monusac", 175, None, 0, "monusac", 0.5789),
    ("consep", 100, "monusac", 130, "monusac", 0.5871),
    ("pannuke", 250, "monusac", 130, "monusac", 0.6018),
    ("pannuke", 250, None, 0, "pannuke", 0.6095),
    ("consep", 100, "pannuke", 187, "pannuke", 0.6056),
    ("monusac", 175, "pannuke", 187, "pannuke", 0.6102),
])

#: Table III: quantitative results for domain generalisation (test dataset unseen)
TABLE3 = _rows(3, [
    ("consep", 100, None, 0, "monusac", 0.4333),
    ("consep", 100, "pannuke", 62, "monusac", 0.5631),
    ("consep", 100, None, 0, "pannuke", 0.4326),
    ("consep", 100, "monusac", 43, "pannuke", 0.4342),
    ("monusac", 175, None, 0, "consep", 0.3444),
    ("monusac", 175, "pannuke", 62, "consep", 0.4485),
    ("monusac", 175, None, 0, "pannuke", 0.3955),
    ("monusac", 175, "consep", 25, "pannuke", 0.4048),
])

#: all 17 rows, Table II first
ROWS = TABLE2 + TABLE3


def get_row(table, row):
    """The row ``row`` (1-based) of Table ``table`` (2 or 3)."""
    rows = {2: TABLE2, 3: TABLE3}.get(int(table))
    if rows is None:
        raise ValueError(f"the paper has Tables II and III (2 or 3), not {table}")
    if not 1 <= int(row) <= len(rows):
        raise ValueError(f"Table {table} has rows 1..{len(rows)}, not {row}")
    return rows[int(row) - 1]


def row_by_name(name):
    """The row whose :attr:`PaperRow.name` is ``name``."""
    for r in ROWS:
        if r.name == name:
            return r
    raise KeyError(f"no paper row named {name!r}")


def check_row(table, row, pretrain, finetune, test, pq):
    """Check a script's statement of its row against the table; return the row.

    Parameters
    ----------
    pretrain, finetune : tuple
        ``(dataset, epochs)``; ``finetune`` may be ``None``.
    test : str
    pq : float
    """
    r = get_row(table, row)
    ft = (None, 0) if finetune is None else tuple(finetune)
    stated = (tuple(pretrain), ft, test, float(pq))
    actual = ((r.pretrain, r.pretrain_epochs), (r.finetune, r.finetune_epochs), r.test, r.pq)
    if stated != actual:
        raise ValueError(f"script states {stated} but Table {table} row {row} is {actual}")
    return r
