"""The outputs of an evaluation: the summary files, the text summary and the names of the conventions.

:func:`write_results` and :func:`format_summary` take an
:class:`~stardist_hier.metrics.folder.EvaluationResult`; :data:`CONVENTIONS` and
:data:`HEADLINE_METRICS` name what every table of the package reports. Re-exported by
:mod:`stardist_hier.metrics.folder`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json, atomic_write_text

__all__ = ["write_results", "format_summary", "CONVENTIONS", "HEADLINE_METRICS", "NO_SET_ASIDE"]


def _json_value(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else float(v)
    return v


def write_results(result, out):
    """Write the per-image CSV and the summary CSV and JSON of a result into ``out``.

    Returns
    -------
    dict
        ``{'per_image': path, 'summary_csv': path, 'summary_json': path}``.
    """
    import pandas as pd

    out = Path(out)
    stem = result.stem
    paths = dict(per_image=out / f"{stem}_per_image.csv", summary_csv=out / f"{stem}_summary.csv",
                 summary_json=out / f"{stem}_summary.json")
    atomic_write_text(paths["per_image"], result.per_image.to_csv(index=False))
    atomic_write_text(paths["summary_csv"], pd.DataFrame([result.summary]).to_csv(index=False))
    doc = {k: _json_value(v) for k, v in result.summary.items()}  # nan -> null: NaN is not JSON
    doc["conventions"] = CONVENTIONS
    atomic_write_json(paths["summary_json"], doc)
    return paths


#: one line per reported convention: (key, matching rule, how it is aggregated)
CONVENTIONS = {
    "bPQ_pannuke_tissue": "IoU>0.5; per-image class-agnostic PQ (nan without GT), nanmean per tissue, then over tissues (PanNuke)",
    "bPQ_pannuke_image": "IoU>0.5; same per-image values, nanmean over images",
    "mPQ_pannuke_tissue": "IoU>0.5; per image nanmean over classes with GT, nanmean per tissue, then over tissues (PanNuke)",
    "mPQ_pannuke_image": "IoU>0.5; same per-image mPQ, nanmean over images",
    "PQ_conic": "IoU>0.5; per-image class-agnostic PQ (0 when empty), mean over images (CoNIC 'PQ')",
    "mPQ+_conic": "IoU>0.5; per-class TP/FP/FN/IoU summed over the set, mean over all classes (CoNIC)",
    "R2_conic": "R^2 of per-image class counts, mean over classes (CoNIC)",
    "PQ_stardist_image": "IoU>=0.5; per-image PQ (0 when empty), mean (stardist matching_dataset by_image=True)",
    "PQ_stardist_summed": "IoU>=0.5; counts summed over the set (stardist matching_dataset by_image=False)",
    "DQ_summed": "IoU>0.5; class-agnostic counts summed over the set",
    "SQ_summed": "IoU>0.5; class-agnostic counts summed over the set",
    "F1_det": "IoU>0.5; detection F1 from summed counts",
    "acc_class": "IoU>0.5; share of matched pairs with the right class",
    "F1_class_mean": "IoU>0.5; HoVer-Net classification F1 per class (weights 2,2,1,1), mean over classes",
    "F1_det_centroid": "HoVer-Net detection F1: centroids paired within centroid_radius px",
    "acc_class_centroid": "HoVer-Net accuracy over the centroid pairs",
    "F1_class_centroid_mean": "HoVer-Net classification F1 on the centroid pairs, mean over classes",
}

#: suffix of the summary keys scored without setting unannotated nuclei aside
NO_SET_ASIDE = "_no_set_aside"

#: the headline numbers every table, log line and benchmark of the package reports, in this
#: order: ``(column label, summary key of CONVENTIONS)``. The one list of metric names: the
#: runner's log line, the demo table, the claim benchmark and the paper tables read it.
HEADLINE_METRICS = (
    ("bPQ", "bPQ_pannuke_tissue"),
    ("mPQ", "mPQ_pannuke_tissue"),
    ("mPQ+", "mPQ+_conic"),
    ("PQ (CoNIC)", "PQ_conic"),
)


def format_summary(result):
    """The summary as text: one table of conventions, one of per-class values."""
    import pandas as pd

    s = result.summary
    head = (f"{s['dataset']} / {s['split']} at label set {s['label_set']}: {s['n_images']} images, "
            f"{s['n_gt_nuclei']} GT nuclei, {s['n_pred_nuclei']} predicted"
            + (f" ({s['n_pred_ignored']} more dropped in ignore regions)" if s["n_pred_ignored"] else "")
            + (f" ({s['n_pred_unannotated']} more set aside: mostly in classes the dataset does not annotate)"
               if s.get("n_pred_unannotated") else "")
            + f", {s['n_tissues']} tissue(s)")
    if s.get("n_pred_unannotated"):
        head += "\nwithout the set-aside: " + "  ".join(
            f"{label} {s[key + NO_SET_ASIDE]:.4f}" for label, key in HEADLINE_METRICS if key + NO_SET_ASIDE in s)
    rows = [(k, s[k], v) for k, v in CONVENTIONS.items() if k in s]
    conv = pd.DataFrame(rows, columns=["metric", "value", "convention"])
    width = max(len(v) for v in CONVENTIONS.values())
    lines = [head, "", conv.to_string(index=False, float_format=lambda x: f"{x:.4f}", justify="left",
                                      formatters={"metric": lambda x: f"{x:<18}",
                                                  "convention": lambda x: f" {x:<{width}}"})]
    if result.class_names:
        per = pd.DataFrame({
            "class": result.class_names,
            "PQ+ (CoNIC)": [s[f"PQ+_{n}"] for n in result.class_names],
            "PQ (PanNuke)": [s[f"PQ_pannuke_{n}"] for n in result.class_names],
            "F1 class": [s[f"F1_class_{n}"] for n in result.class_names],
            **({"F1 class (centroid)": [s[f"F1_class_centroid_{n}"] for n in result.class_names]}
               if f"F1_class_centroid_{result.class_names[0]}" in s else {}),
            "R2": [s[f"R2_{n}"] for n in result.class_names],
            "n_gt": [s[f"n_gt_{n}"] for n in result.class_names],
            "n_pred": [s[f"n_pred_{n}"] for n in result.class_names],
        })
        lines += ["", per.to_string(index=False, float_format=lambda x: f"{x:.4f}")]
    return "\n".join(lines)
