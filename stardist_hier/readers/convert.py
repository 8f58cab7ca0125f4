"""Conversion driver: a dataset download -> 256x256 TIFF patches + ``index.csv``.

Behaviour:

* A progress bar per dataset (tqdm) and a :class:`Summary` at the end: patches per split,
  nuclei per class, how often each reader rule fired, skipped files and why.
* Re-running skips patches whose two files exist, unless ``overwrite``. Every file is
  written to a temporary name and renamed, so an interrupted run leaves no half-written
  patch; temporary files left by a killed run are removed at the next start.
* ``workers > 1`` converts in a process pool (samples in chunks of the reader's ``CHUNK``).
  A re-run still reads and tiles every source (the index is rebuilt from it) but writes
  only missing patches.
* Bad input raises :class:`ReaderError` naming the file; with ``skip_bad`` it is a
  warning and a summary line instead, and every other file is still converted.
* Validation: a seeded fraction of the *groups* (patients or source images) of the
  reader's ``VAL_FROM`` split becomes ``val``; a group is never split across splits.
"""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..patches import (PATCH_SIZE, dense_ids, index_path, patch_exists, read_index, tile_sample, write_index,
                       write_patch)
from .registry import get_reader
from .base import ReaderError, SkipSample

__all__ = ["Summary", "convert", "assign_validation"]


@dataclass
class Summary:
    """What a conversion did."""

    dataset: str
    out: str
    label_set: str
    samples: int = 0
    written: int = 0
    existing: int = 0
    per_split: dict = field(default_factory=dict)
    nuclei_per_class: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)  # (file, reason) of valid inputs without labels
    bad: list = field(default_factory=list)      # (file, error) skipped with skip_bad

    @property
    def patches(self):
        return self.written + self.existing

    def format(self):
        """Human-readable multi-line summary."""
        lines = [f"{self.dataset}: {self.samples} source images -> {self.patches} patches "
                 f"({self.written} written, {self.existing} already there) in {Path(self.out) / self.dataset}"]
        if self.per_split:
            lines.append("  patches per split: " + ", ".join(f"{k} {v}" for k, v in sorted(self.per_split.items())))
        if self.nuclei_per_class:
            lines.append(f"  nuclei per class (label set '{self.label_set}'; a nucleus cut by a tile edge counts in each tile): "
                         + ", ".join(f"{'unknown' if k == 0 else k}: {v}" for k, v in sorted(self.nuclei_per_class.items())))
        notes = {k: v for k, v in self.notes.items() if v}
        if notes:
            lines.append("  rules applied: " + ", ".join(f"{k} {v}" for k, v in sorted(notes.items())))
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} input(s) without labels:")
            lines += [f"    {f}: {r}" for f, r in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"    ... and {len(self.skipped) - 20} more")
        if self.bad:
            lines.append(f"  skipped {len(self.bad)} bad file(s) (--skip-bad):")
            lines += [f"    {e}" for _, e in self.bad]
        return "\n".join(lines)


def assign_validation(samples, val_fraction, seed, from_split="train"):
    """Move a seeded fraction of the groups of ``from_split`` to the split ``val``.

    At least one group goes to ``val`` when ``val_fraction > 0`` and there are two or
    more groups; at least one group always stays in ``from_split``.
    """
    if not val_fraction or from_split is None:
        return list(samples)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups = sorted({s.group for s in samples if s.split == from_split})
    if len(groups) < 2:
        return list(samples)
    n_val = min(max(1, int(round(val_fraction * len(groups)))), len(groups) - 1)
    rng = np.random.default_rng(seed)
    val = set(rng.permutation(np.array(groups, dtype=object))[:n_val].tolist())
    return [replace(s, split="val") if s.split == from_split and s.group in val else s for s in samples]


def _process(task):
    """Worker: load, tile and write a chunk of samples; returns one result per sample."""
    dataset, samples, out, size, stride, overwrite, class_ids, label_set = task
    reader = get_reader(dataset)
    cache = {}  # memory maps live for this chunk only, so their pages are released after it
    results = []
    try:
        for s in samples:
            try:
                lab = reader.load_sample(s, cache)
            except SkipSample as e:
                results.append(("skip", s.source, str(e)))
                continue
            except ReaderError as e:
                results.append(("bad", e.path, e.problem))
                continue
            except Exception as e:  # anything else from a broken file: report it with the file's name
                results.append(("bad", s.source, f"cannot convert ({type(e).__name__}: {e})"))
                continue
            rows, written, existing = [], 0, 0
            for oy, ox, image, mask in tile_sample(lab.image, lab.inst, lab.classes, size, stride):
                pid = s.patch_id if s.pretiled else f"{s.patch_id}_y{oy:04d}_x{ox:04d}"
                if not overwrite and patch_exists(out, dataset, s.split, pid):
                    existing += 1
                else:
                    write_patch(out, dataset, s.split, pid, image, mask)
                    written += 1
                # the class channel is uniform per nucleus: count (instance, class) pairs once
                inst, cls = mask[..., 0].ravel(), mask[..., 1].ravel()
                pos = inst > 0
                pairs, _ = dense_ids(inst[pos].astype(np.int64) * 65536 + cls[pos])
                counts = np.bincount(pairs % 65536, minlength=max(class_ids, default=0) + 1)
                row = dict(patch_id=pid, split=s.split, source=s.source, offset_y=oy, offset_x=ox,
                           tissue=s.tissue, label_set=label_set, n_nuclei=len(pairs), n_unknown=int(counts[0]))
                row.update({f"n_class_{k}": int(counts[k]) if k < len(counts) else 0 for k in class_ids})
                rows.append(row)
            results.append(("ok", s.source, rows, written, existing, lab.notes))
    finally:
        cache.clear()
    return results


def _clean_temp_files(out, dataset):
    d = Path(out) / dataset
    if d.is_dir():
        for tmp in d.glob("*/*/.*.tmp"):
            tmp.unlink(missing_ok=True)


def convert(dataset, src, out, stride=PATCH_SIZE, val_fraction=0.1, seed=0, overwrite=False, workers=1,
            skip_bad=False, progress=True, limit=None):
    """Convert one dataset download into the patch format.

    Parameters
    ----------
    dataset : str
        One of :data:`stardist_hier.readers.DATASETS`.
    src : str or path-like
        The download folder (see the reader module of the dataset for the layouts).
    out : str or path-like
        Output root; patches go to ``<out>/<dataset>/<split>/``.
    stride : int
        Tile step (1..256) for images larger than 256 px (last tile aligned to the edge).
    val_fraction : float
        Fraction of the groups (patients / source images) of the training split moved to
        ``val`` (ignored for datasets with official folds only: PanNuke, Lizard).
    seed : int
        Seed of the validation draw.
    overwrite : bool
        Rewrite patches that already exist.
    workers : int
        Processes (1: convert in this process).
    skip_bad : bool
        Skip bad files with a warning instead of stopping at the first.
    progress : bool
        Show a tqdm progress bar.
    limit : int, optional
        Convert only the first ``limit`` source samples (for trials and benchmarks).

    Returns
    -------
    Summary

    Raises
    ------
    ReaderError
        Bad input (without ``skip_bad``), or a missing or misspelled source folder.
    """
    from tqdm.auto import tqdm

    from ..hierarchy import ClassHierarchy

    reader = get_reader(dataset)
    dataset = reader.NAME
    label_set = reader.LABEL_SET
    class_ids = list(ClassHierarchy.default().label_set(label_set).ids)
    summary = Summary(dataset, str(out), label_set)

    def on_bad(path, message):
        if not skip_bad:
            raise ReaderError(path, message)
        warnings.warn(f"skipping {path}: {message}", stacklevel=3)
        summary.bad.append((str(path), f"{path}: {message}"))

    if "on_bad" in inspect.signature(reader.find_samples).parameters:
        samples = reader.find_samples(src, on_bad=on_bad)
    else:
        samples = reader.find_samples(src)
    if limit is not None:
        samples = samples[: int(limit)]
    vf = reader.val_from(samples) if hasattr(reader, "val_from") else reader.VAL_FROM
    samples = assign_validation(samples, val_fraction, seed, vf)
    summary.samples = len(samples)
    _clean_temp_files(out, dataset)

    chunk = max(1, int(getattr(reader, "CHUNK", 1)))
    tasks = [(dataset, samples[i:i + chunk], str(out), PATCH_SIZE, stride, overwrite, class_ids, label_set)
             for i in range(0, len(samples), chunk)]
    rows = []
    bar = tqdm(total=len(samples), desc=dataset, unit="img", disable=not progress)
    pool = None
    try:
        if workers and workers > 1 and len(tasks) > 1:
            import multiprocessing as mp

            # fork starts workers without re-importing the package; spawn where there is no fork
            pool = mp.get_context("fork" if hasattr(os, "fork") else "spawn").Pool(int(workers))
            results_iter = pool.imap_unordered(_process, tasks)
        else:
            results_iter = map(_process, tasks)
        for results in results_iter:
            for res in results:
                bar.update(1)
                if res[0] == "skip":
                    summary.skipped.append((res[1], res[2]))
                elif res[0] == "bad":
                    if not skip_bad:
                        raise ReaderError(res[1], res[2])
                    warnings.warn(f"skipping bad input {res[1]}: {res[2]}", stacklevel=2)
                    summary.bad.append((res[1], f"{res[1]}: {res[2]}"))
                else:
                    _, source, prow, written, existing, notes = res
                    rows += prow
                    summary.written += written
                    summary.existing += existing
                    for k, v in notes.items():
                        summary.notes[k] = summary.notes.get(k, 0) + int(v)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()

    for r in rows:
        summary.per_split[r["split"]] = summary.per_split.get(r["split"], 0) + 1
        summary.nuclei_per_class[0] = summary.nuclei_per_class.get(0, 0) + r["n_unknown"]
        for k in class_ids:
            summary.nuclei_per_class[k] = summary.nuclei_per_class.get(k, 0) + r[f"n_class_{k}"]
    if not summary.nuclei_per_class.get(0):
        summary.nuclei_per_class.pop(0, None)
    moved = _remove_moved_patches(out, dataset, rows)
    if moved:
        summary.notes["stale_patches_removed"] = moved
    _write_merged_index(out, dataset, rows)
    return summary


def _remove_moved_patches(out, dataset, rows):
    """Delete copies of this run's patches left in *other* splits by an earlier run.

    A different ``--seed`` or ``--val-fraction`` moves source images between ``train`` and
    ``val``; their old copies would otherwise leak the same image into two splits. One patch
    id may be in several splits of this run (MoNuSAC patients in both official splits with
    the same sub-image names): only a copy in a split this run did not write it to is stale.
    """
    from ..patches import list_patches, list_splits, patch_path

    splits_of = {}
    for r in rows:
        splits_of.setdefault(r["patch_id"], set()).add(r["split"])
    removed = 0
    for split in list_splits(out, dataset):
        for pid in list_patches(out, dataset, split):
            if pid in splits_of and split not in splits_of[pid]:
                for kind in ("masks", "images"):
                    patch_path(out, dataset, split, kind, pid).unlink(missing_ok=True)
                removed += 1
    return removed


def _write_merged_index(out, dataset, rows):
    """Write ``index.csv``: this run's rows, plus earlier rows of patches this run did not
    touch that are still on disk (e.g. a fold converted by an earlier run)."""
    import pandas as pd

    new = pd.DataFrame(rows)
    if index_path(out, dataset).is_file():
        try:
            old = read_index(out, dataset)
        except Exception:  # an unreadable old index is rebuilt from this run
            old = None
        if old is not None and len(old):
            seen = set(zip(new["split"], new["patch_id"])) if len(new) else set()
            keep = [i for i, r in enumerate(old.itertuples()) if (r.split, r.patch_id) not in seen
                    and patch_exists(out, dataset, r.split, r.patch_id)]
            new = pd.concat([old.iloc[keep], new], ignore_index=True) if keep else new
    write_index(out, dataset, new)
