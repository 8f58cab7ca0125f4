"""Score a model or saved predictions on a split of the patch folders, at a label set.

Two sources of predictions:

* a model: every image is normalised by :func:`stardist_hier.patches.normalize_image`
  (percentiles 1 and 99.8 per channel, as in StarDist's examples) and passed to
  ``HierStarDist2D.predict_instances(img, label_set=NAME)``; each instance is scored with the
  class the model returns, ``details['class_id']`` (row ``i`` = instance ``i + 1``), which
  :class:`~stardist_hier.model.HierStarDist2D` computes with the one class rule,
  :meth:`stardist_hier.hierarchy.LabelSet.classify` (leaf probabilities summed per label-set
  class, then arg-max); nothing is recomputed here;
* saved prediction TIFFs, one per patch: ``<pred_dir>/<patch_id>.tif``, an integer
  ``(H, W, 2)`` array in the layout of the GT masks: channel 0 instance ids (0 background,
  ids >= 0), channel 1 class ids in the ids of the label set being scored (0 = unlabelled),
  every pixel of an instance carrying its class. :func:`write_prediction` writes them.

Ground truth is the ``masks`` of ``<data>/<dataset>/<split>``, in the ids of the dataset's
own label set (the ``label_set`` column of ``index.csv``, else the dataset's folder name).
Scoring at another label set maps GT ids up the hierarchy
(:func:`stardist_hier.metrics.class_id_map`); it fails if that label set is finer than the
dataset's. Tissue labels for PanNuke's tissue averages come from ``index.csv``.

Nuclei the dataset does not annotate
------------------------------------
A label set may declare nodes it does not annotate (``exhaustive: false`` or
``unannotated:``, e.g. MoNuSAC): such nuclei are background in its masks, so a correctly found
fibroblast would count as a false positive. In model mode, a predicted nucleus whose
foreground probability lies mostly on those leaves
(:meth:`stardist_hier.hierarchy.LabelSet.is_unannotated` of ``details['class_prob']``, the
dataset's own label set) and that matches no GT nucleus is *set aside*: removed before the
matching, as predictions in ignore regions are, and counted in ``n_pred_unannotated``. Both
scores are reported: the summary's metrics are with the set-aside, and every key of
:data:`CONVENTIONS` (plus ``n_pred_nuclei``, ``precision_det``, ``recall_det``) again with
the suffix ``_no_set_aside``, scored as if nothing were set aside. ``unannotated_set_aside``
says which case applied: ``'applied'``, ``'exhaustive'`` (the label set annotates every
nucleus: nothing to set aside), ``'off'`` (``set_aside_unannotated=False``) or
``'unavailable'``: saved prediction TIFFs hold class ids only (the unannotated classes have
none), and a model without ``details['class_prob']`` gives no probabilities, so nothing is
set aside there (both scores are the same).

Outputs (each written to a temporary name, then renamed): ``<stem>_per_image.csv``,
``<stem>_summary.csv`` (one row, every convention side by side) and ``<stem>_summary.json``
(the same values, nan as ``null``, plus the settings), with ``stem = <dataset>_<split>`` and
``_at_<label set>`` when the label set is not the dataset's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import patches as P
from ..atomic import atomic_save
from ..hierarchy import ClassHierarchy, HierarchyError
from ..patches import normalize_image
from .classes import class_id_map, instance_classes
from .conventions import per_image_frame, summarize
from .counts import evaluate_image
from .report import CONVENTIONS, HEADLINE_METRICS, NO_SET_ASIDE, format_summary, write_results

__all__ = ["EvaluationError", "EvaluationResult", "read_prediction", "write_prediction",
           "find_datasets", "evaluate_folder", "write_results", "format_summary", "CONVENTIONS", "HEADLINE_METRICS",
           "NO_SET_ASIDE"]


class EvaluationError(ValueError):
    """Inconsistent inputs to an evaluation; the message names the file or folder at fault."""


def read_prediction(path):
    """Read one saved prediction TIFF (see the module docstring for the layout).

    Returns
    -------
    numpy.ndarray
        ``(H, W, 2)`` int64 (instance ids, class ids).

    Raises
    ------
    EvaluationError
        Unreadable file, wrong shape, non-integer values or negative ids; the message names
        the file.
    """
    import tifffile

    path = Path(path)
    try:
        a = tifffile.imread(path)
    except Exception as e:  # tifffile raises several types for damaged files
        raise EvaluationError(f"{path}: cannot read prediction TIFF: {e}") from e
    if a.ndim == 3 and a.shape[0] == 2 and a.shape[-1] != 2:
        a = np.moveaxis(a, 0, -1)  # planar layout written by other tools
    if a.ndim != 3 or a.shape[-1] != 2:
        raise EvaluationError(f"{path}: prediction must be (H, W, 2) instance ids + class ids, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise EvaluationError(f"{path}: prediction must hold integers, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if a.size and a.min() < 0:
        ch = "instance" if a[..., 0].min() < 0 else "class"
        raise EvaluationError(f"{path}: negative {ch} ids in the prediction ({int(a.min())}); ids must be >= 0")
    return a


def write_prediction(path, labels, class_ids=None):
    """Write a prediction TIFF (atomically) that :func:`read_prediction` reads back.

    Parameters
    ----------
    path : str or path-like
        Destination ``.tif``.
    labels : numpy.ndarray
        ``(H, W)`` instance ids (0 background).
    class_ids : array_like or dict, optional
        Class per instance: a table indexed by instance id, a dict id -> class, or an
        ``(H, W)`` class map. ``None``: all instances class 0 (unlabelled).
    """
    import tifffile

    labels = np.asarray(labels)
    if class_ids is None:
        cmap = np.zeros(labels.shape, np.int32)
    elif not isinstance(class_ids, dict) and np.ndim(class_ids) == 2:
        cmap = np.asarray(class_ids)
    else:
        ids = np.unique(labels[labels > 0])
        table = np.zeros(int(labels.max(initial=0)) + 1, np.int64)
        table[ids] = instance_classes(labels, class_ids, ids)
        cmap = table[np.maximum(labels, 0)]
    arr = np.stack([labels, cmap], -1).astype(np.int32)
    return atomic_save(path, lambda tmp: tifffile.imwrite(tmp, arr, photometric="minisblack", planarconfig="contig",
                                                          compression="zlib"))


def find_datasets(data, split, dataset=None):
    """Resolve ``--data``/``--dataset`` into ``(root, [dataset names])``.

    ``data`` is either the root of the converted datasets or one dataset's folder (it holds
    ``<split>/masks``). Without ``dataset``, every dataset under the root with that split is
    returned.

    Raises
    ------
    EvaluationError
        No such folder, dataset or split; the message lists the datasets and the splits
        that do exist.
    """
    data = Path(data)
    if not data.is_dir():
        raise EvaluationError(f"data folder not found: {data}")

    def no_split(root, name):
        have = P.list_splits(root, name)
        return EvaluationError(f"dataset '{name}' under {root} has no split '{split}' "
                               f"(its splits: {', '.join(have) if have else 'none: no <split>/masks folder'})")

    is_dataset = bool(P.list_splits(data.parent, data.name))  # data is one dataset's folder
    if dataset is not None:
        if data.name == dataset and is_dataset:
            if not (data / split / "masks").is_dir():
                raise no_split(data.parent, dataset)
            return data.parent, [dataset]
        if not (data / dataset).is_dir():
            have = sorted(p.name for p in data.iterdir() if p.is_dir())
            raise EvaluationError(f"dataset '{dataset}' not found under {data} (found: {have})")
        if not (data / dataset / split / "masks").is_dir():
            raise no_split(data, dataset)
        return data, [dataset]
    if (data / split / "masks").is_dir():
        return data.parent, [data.name]
    if is_dataset:
        raise no_split(data.parent, data.name)
    names = sorted(p.name for p in data.iterdir() if (p / split / "masks").is_dir())
    if not names:
        have = {p.name: P.list_splits(data, p.name) for p in sorted(data.iterdir()) if p.is_dir()}
        have = {k: v for k, v in have.items() if v}
        listing = "; ".join(f"{k}: {', '.join(v)}" for k, v in have.items()) or "none"
        raise EvaluationError(f"no dataset under {data} has a split '{split}' (expected {data}/<dataset>/{split}/masks; "
                              f"splits present: {listing})")
    return data, names


def _index_info(root, dataset):
    """(patch_id -> tissue, label-set name from the index or None); empty without an index."""
    try:
        idx = P.read_index(root, dataset)
    except FileNotFoundError:
        return {}, None
    tissue = {}
    if "tissue" in idx.columns:
        for pid, t in zip(idx["patch_id"], idx["tissue"]):
            tissue[str(pid)] = None if (t is None or (isinstance(t, float) and math.isnan(t))) else str(t)
    ls = None
    if "label_set" in idx.columns:
        vals = sorted({str(v) for v in idx["label_set"].dropna()})
        if len(vals) > 1:
            raise EvaluationError(f"{P.index_path(root, dataset)}: several label sets in one dataset: {vals}")
        ls = vals[0] if vals else None
    return tissue, ls


def _present_ids(a):
    """Distinct values of an integer array, cheaply (a histogram instead of a sort)."""
    a = np.asarray(a)
    if a.size == 0:
        return a.ravel()
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi > 4 * a.size + 65536:
        return np.unique(a)
    return np.flatnonzero(np.bincount(a.ravel()))


def _missing_message(what, names, folder):
    shown = ", ".join(sorted(names)[:10]) + (", ..." if len(names) > 10 else "")
    return f"{len(names)} {what} in {folder}: {shown}"


@dataclass
class EvaluationResult:
    """The outcome of :func:`evaluate_folder`.

    Attributes
    ----------
    summary : dict
        Settings (``dataset``, ``split``, ``label_set``, ...) and every metric.
    per_image : pandas.DataFrame
        One row per image (:func:`stardist_hier.metrics.per_image_frame`).
    counts : list of stardist_hier.metrics.ImageCounts
        The per-image counts the numbers come from.
    class_names : list of str
        Node names of the label set's classes.
    """

    summary: dict
    per_image: object
    counts: list
    class_names: list

    @property
    def stem(self):
        """File stem of the outputs: ``<dataset>_<split>[_at_<label set>]``."""
        s = f"{self.summary['dataset']}_{self.summary['split']}"
        if self.summary["label_set"] and self.summary["label_set"] != self.summary["gt_label_set"]:
            s += f"_at_{self.summary['label_set']}"
        return s


def evaluate_folder(data, split="test", dataset=None, predictions=None, model=None, label_set=None,
                    hierarchy=None, thresh=0.5, progress=True, save_predictions=None, predict_kwargs=None,
                    centroid_radius=12.0, set_aside_unannotated=True):
    """Score one dataset split against a model or saved predictions.

    Parameters
    ----------
    data : str or path-like
        Root of the converted datasets, or one dataset's folder.
    split : str
        Split folder (``'test'``, ``'val'``, ``'fold3'``, ...).
    dataset : str, optional
        Dataset folder name; required when ``data`` holds several.
    predictions : str or path-like, optional
        Folder of saved prediction TIFFs ``<patch_id>.tif``. Exactly one of ``predictions``
        and ``model`` is given.
    model : object, optional
        Anything with ``predict_instances(img, label_set=NAME) -> (labels, details)`` and a
        ``hierarchy`` attribute, e.g. :class:`stardist_hier.model.HierStarDist2D`;
        ``details['class_id']`` (ids of that label set, row ``i`` = instance ``i + 1``) is
        scored as returned.
    label_set : str, optional
        Label set to score at; default the dataset's own.
    hierarchy : ClassHierarchy, str or None
        Hierarchy of the label sets; default the model's, else the shipped one.
    thresh : float
        IoU threshold of the matching.
    centroid_radius : float or None
        Radius (pixels) of HoVer-Net's centroid pairing for ``F1_class_centroid_*``
        (HoVer-Net: 12 at 40x); ``None`` skips it.
    progress : bool
        Show a progress bar over the images.
    save_predictions : str or path-like, optional
        Model mode: also write each prediction as a TIFF here (the saved-prediction layout).
    predict_kwargs : dict, optional
        Extra keyword arguments of ``predict_instances``.
    set_aside_unannotated : bool
        Model mode at a non-exhaustive label set: set aside predicted nuclei mostly in the
        classes it does not annotate (module docstring, "Nuclei the dataset does not
        annotate"); both scores are reported either way.

    Returns
    -------
    EvaluationResult

    Raises
    ------
    EvaluationError, stardist_hier.metrics.MetricsError, stardist_hier.hierarchy.HierarchyError
        Missing or extra prediction files, shape mismatches, class ids outside the label
        set, non-integer masks, an unknown label set: never a partial score.
    """
    from tqdm import tqdm

    if (predictions is None) == (model is None):
        raise EvaluationError("give exactly one of predictions (a folder of TIFFs) and model")
    root, names = find_datasets(data, split, dataset)
    if len(names) > 1:
        raise EvaluationError(f"{root} holds several datasets with a split '{split}' ({names}): choose one with dataset=")
    dataset = names[0]
    if hierarchy is None:
        hierarchy = getattr(model, "hierarchy", None) if model is not None else None
    h = ClassHierarchy.resolve(hierarchy if hierarchy is not None else "default") if (
        hierarchy is not None or model is None) else None

    ids = P.list_patches(root, dataset, split)
    folder = root / dataset / split
    if not ids:
        raise EvaluationError(f"no patches in {folder} (expected masks/<patch>.tif with images/<patch>.tif)")
    tissues, index_ls = _index_info(root, dataset)

    # label sets: GT in the dataset's own ids, scored at `label_set` (default the same)
    if h is None:
        gt_ls = eval_ls = None  # a model without classes: class-agnostic metrics only
    else:
        gt_name = index_ls or dataset
        if gt_name in h.label_sets:
            gt_ls = h.label_set(gt_name)
        elif label_set is not None:
            gt_ls = None  # a dataset the hierarchy does not name: GT must be in label_set's ids
        else:
            raise HierarchyError(f"dataset '{dataset}' has no label set in {h.source} ({sorted(h.label_sets)}); "
                                 f"name one with label_set=")
        eval_ls = h.label_set(label_set) if label_set is not None else gt_ls
        if gt_ls is None:
            gt_ls = eval_ls
    gt_table = class_id_map(gt_ls, eval_ls) if eval_ls is not None else None

    if predictions is not None:
        pdir = Path(predictions)
        if not pdir.is_dir():
            raise EvaluationError(f"prediction folder not found: {pdir}")
        have = {p.stem for p in pdir.glob("*.tif") if not p.name.startswith(".")}
        missing, extra = set(ids) - have, have - set(ids)
        if missing or extra:
            msg = []
            if missing:
                msg.append(_missing_message(f"patches of {folder} have no prediction", missing, pdir))
            if extra:
                msg.append(_missing_message(f"predictions have no ground truth in {folder}/masks", extra, pdir))
            raise EvaluationError("; ".join(msg) + " (refusing to score a partial set)")

    class_ids = eval_ls.ids if eval_ls is not None else ()
    class_names = [eval_ls.nodes[c] for c in class_ids] if eval_ls is not None else []
    # what the dataset does not annotate: its own label set's declaration
    unannotated_ls = gt_ls if gt_ls is not None else eval_ls
    if unannotated_ls is None or unannotated_ls.exhaustive:
        set_aside_state = "exhaustive"
    elif not set_aside_unannotated:
        set_aside_state = "off"
    elif predictions is not None:
        set_aside_state = "unavailable"
    else:
        set_aside_state = "applied"
    counts, counts_all = [], []
    for pid in tqdm(ids, desc=f"evaluate {dataset}/{split}", unit="img", disable=not progress):
        mpath = P.patch_path(root, dataset, split, "masks", pid)
        image, mask = P.read_patch(root, dataset, split, pid)
        gt_inst, gt_cls = mask[..., 0], mask[..., 1]
        if gt_ls is not None:
            gt_ls.check_class_ids(_present_ids(gt_cls), where=str(mpath))
            gt_cls = gt_table[gt_cls]
        else:
            gt_cls = None
        if predictions is not None:
            ppath = Path(predictions) / f"{pid}.tif"
            pred = read_prediction(ppath)
            where = str(ppath)
            if pred.shape[:2] != gt_inst.shape:
                raise EvaluationError(f"{ppath}: prediction shape {pred.shape[:2]} differs from ground truth "
                                      f"{gt_inst.shape} ({mpath})")
            if eval_ls is not None:
                eval_ls.check_class_ids(_present_ids(pred[..., 1]), where=where)
            pred_inst, pred_cls = pred[..., 0], (pred[..., 1] if eval_ls is not None else None)
        else:
            where = f"{mpath} (model prediction)"
            kw = dict(predict_kwargs or {})
            if eval_ls is not None:
                kw["label_set"] = eval_ls.name
            pred_inst, details = model.predict_instances(normalize_image(image), **kw)
            pred_inst = np.asarray(pred_inst)
            pred_cls = None
            if eval_ls is not None:
                n = int(pred_inst.max(initial=0))
                if details.get("class_id") is None:
                    raise EvaluationError(f"{where}: the model returned no details['class_id'] at label set "
                                          f"'{eval_ls.name}' (a model without classes? score it without a label set)")
                per = np.asarray(details["class_id"], np.int64)  # the model's own class rule, as returned
                eval_ls.check_class_ids(per, where=where)
                pred_cls = np.zeros(max(n, len(per)) + 1, np.int64)
                pred_cls[1:len(per) + 1] = per  # instance i + 1 is row i of details
            if save_predictions is not None:
                write_prediction(Path(save_predictions) / f"{pid}.tif", pred_inst, pred_cls)
        set_aside = None
        if set_aside_state == "applied":
            prob = details.get("class_prob")
            if prob is None:
                set_aside_state = "unavailable"
            else:
                set_aside = np.flatnonzero(unannotated_ls.is_unannotated(np.asarray(prob, np.float64))) + 1
        ekw = dict(name=where, tissue=tissues.get(pid), centroid_radius=centroid_radius)
        counts_all.append(evaluate_image(gt_inst, pred_inst, gt_cls, pred_cls, class_ids, thresh, **ekw))
        counts.append(evaluate_image(gt_inst, pred_inst, gt_cls, pred_cls, class_ids, thresh, set_aside=set_aside, **ekw)
                      if set_aside is not None and set_aside.size else counts_all[-1])
        counts_all[-1].name = counts[-1].name = pid

    summary = dict(
        dataset=dataset, split=split, label_set=eval_ls.name if eval_ls is not None else None,
        gt_label_set=gt_ls.name if gt_ls is not None else None, thresh=float(thresh),
        centroid_radius=None if centroid_radius is None else float(centroid_radius),
        source=str(predictions) if predictions is not None else f"model {getattr(model, 'name', type(model).__name__)}",
        classes=", ".join(f"{c}={n}" for c, n in zip(class_ids, class_names)),
        unannotated_set_aside=set_aside_state,
    )
    summary.update(summarize(counts, class_names))
    everything = summarize(counts_all, class_names)
    for key in (*CONVENTIONS, "n_pred_nuclei", "precision_det", "recall_det"):
        if key in everything:
            summary[f"{key}{NO_SET_ASIDE}"] = everything[key]
    return EvaluationResult(summary, per_image_frame(counts, class_names), counts, class_names)
