"""The rows of a run: ``summary.csv``, failed inputs, one line per finished input.

A row is a dict: ``input``, ``name``, ``kind`` (image/slide), ``status`` (``ok``, ``skipped``:
complete from an earlier run, ``failed``), ``nuclei``, ``label_set``, ``tta``, ``mpp``,
``tissue_area_px`` (level 0; an image counts whole), ``tissue_area_mm2``, ``seconds``, ``note``
(e.g. ``no tissue``), ``error`` (one line naming the file) and ``n_<class>`` per class.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..atomic import atomic_save
from .slides import InputError

__all__ = ["failed_row", "is_input_failure", "summary_table", "write_summary", "report_row"]


def failed_row(path, name, error):
    """The summary row of an input that failed, with its one-line error."""
    msg = " ".join(str(error).split()) or type(error).__name__
    if str(path) not in msg:
        msg = f"{path}: {msg}"
    return {"input": str(path), "name": name, "kind": "", "status": "failed", "nuclei": None, "error": msg}


def is_input_failure(e):
    """Errors that fail one input and let the others continue (not bugs, not Ctrl-C)."""
    from ..hierarchy import HierarchyError

    return isinstance(e, (InputError, HierarchyError, OSError, ValueError, MemoryError))


def summary_table(rows):
    """The rows of ``summary.csv`` as a DataFrame, class-count columns last."""
    import pandas as pd

    first = ["input", "name", "kind", "status", "nuclei", "label_set", "tta", "mpp", "tissue_area_px",
             "tissue_area_mm2", "seconds", "note", "error"]
    counts = list(dict.fromkeys(k for r in rows for k in r if k.startswith("n_")))
    df = pd.DataFrame(rows, columns=first + counts)
    for c in ["nuclei", *counts]:
        df[c] = df[c].astype("Int64")  # counts stay integers beside the empty cells of failed inputs
    return df


def write_summary(rows, out):
    """Write ``<out>/summary.csv`` atomically."""
    df = summary_table(rows)
    return atomic_save(Path(out) / "summary.csv", lambda tmp: df.to_csv(tmp, index=False))



def report_row(row, verbose):
    """Print one line about a finished input: failures always (unless quiet), others with ``-v``."""
    if row["status"] == "failed":
        if verbose >= 0:
            print(f"failed: {row['error']}", file=sys.stderr)
    elif row.get("note") and verbose >= 0:
        print(f"note: {row['input']}: {row['note']}", file=sys.stderr)
    elif verbose >= 1:
        note = f" ({row['note']})" if row.get("note") else ""
        print(f"{row['status']}: {row['input']}: {row['nuclei']} nuclei{note}", file=sys.stderr)

