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
* Bad input: every file is tried, and each bad one is named with what is wrong with
  it. Without ``skip_bad`` the run ends with one :class:`BadFilesError` listing them all
  (the good files' patches are written, the index is not); with ``skip_bad`` each is a
  warning and a summary line, and the index holds the rest.
* Validation: a seeded fraction of the *groups* (patients or source images) of the
  reader's ``VAL_FROM`` split becomes ``val``; a group is never split across splits. The
  draw is made over the files that convert: when ``skip_bad`` leaves files out, the groups
  are drawn again without them and the patches moved, so bad files never empty the
  training split. A source with one group only gets no validation split, with a warning.
* The output folder is checked before anything is read (a file there is an error).
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
from ..atomic import check_output_dir
from .registry import get_reader
from .base import BadFilesError, ReaderError, SkipSample

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
    split_folders: dict = field(default_factory=dict)  # folder -> split it was given from its name
    warnings: list = field(default_factory=list)  # what was also issued as a UserWarning

    @property
    def patches(self):
        return self.written + self.existing

    def format(self, limit=20):
        """Human-readable multi-line summary; ``limit``: skipped inputs listed (``None``: all)."""
        lines = [f"{self.dataset}: {self.samples} source images -> {self.patches} patches "
                 f"({self.written} written, {self.existing} already there) in {Path(self.out) / self.dataset}"]
        if self.per_split:
            lines.append("  patches per split: " + ", ".join(f"{k} {v}" for k, v in sorted(self.per_split.items())))
        if self.split_folders:
            lines.append("  split from the folder name (set it with --split): "
                         + ", ".join(f"'{k}' -> {v}" for k, v in sorted(self.split_folders.items())))
        if self.nuclei_per_class:
            lines.append(f"  nuclei per class (label set '{self.label_set}'; a nucleus cut by a tile edge counts in each tile): "
                         + ", ".join(f"{'unknown' if k == 0 else k}: {v}" for k, v in sorted(self.nuclei_per_class.items())))
        notes = {k: v for k, v in self.notes.items() if v}
        if notes:
            lines.append("  rules applied: " + ", ".join(f"{k} {v}" for k, v in sorted(notes.items())))
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} input(s) without labels:")
            lines += [f"    {f}: {r}" for f, r in self.skipped[:limit]]
            if limit is not None and len(self.skipped) > limit:
                lines.append(f"    ... and {len(self.skipped) - limit} more (-v lists them all)")
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
    ref, dataset, samples, out, size, stride, overwrite, class_ids, label_set, val_from = task
    reader = get_reader(ref)  # a name, or the reader object itself (parametric readers: folder, qupath)
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
                results.append(("bad", s.source, e.path, e.problem))
                continue
            except Exception as e:  # anything else from a broken file: report it with the file's name
                results.append(("bad", s.source, s.source, f"cannot convert ({type(e).__name__}: {e})"))
                continue
            # a patch a redraw of the validation split moved (see convert) is found in the other split
            other = {val_from: "val", "val": val_from}.get(s.split) if val_from else None
            rows, written, existing = [], 0, 0
            for oy, ox, image, mask in tile_sample(lab.image, lab.inst, lab.classes, size, stride):
                pid = s.patch_id if s.pretiled else f"{s.patch_id}_y{oy:04d}_x{ox:04d}"
                if not overwrite and patch_exists(out, dataset, s.split, pid):
                    existing += 1
                elif not overwrite and other and patch_exists(out, dataset, other, pid):
                    _move_patch(out, dataset, pid, other, s.split)
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


def _ignore_sigint():
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _clean_temp_files(out, dataset):
    d = Path(out) / dataset
    if d.is_dir():
        for tmp in d.glob("*/*/.*.tmp*"):  # atomic.atomic_save keeps the suffix after ".tmp"
            tmp.unlink(missing_ok=True)


def convert(dataset, src, out, stride=PATCH_SIZE, val_fraction=0.1, seed=0, overwrite=False, workers=1,
            skip_bad=False, progress=True, limit=None, split=None):
    """Convert one dataset download into the patch format.

    Parameters
    ----------
    dataset : str or reader
        One of :data:`stardist_hier.readers.DATASETS`, or a reader object (your own data:
        :class:`stardist_hier.readers.folder.FolderReader`,
        :class:`stardist_hier.readers.qupath.QuPathReader`). The object is sent to the worker
        processes, so it must pickle; its ``NAME`` is the dataset folder, its ``HIERARCHY``
        (if any) the hierarchy its ``LABEL_SET`` belongs to.
    src : str or path-like
        The download folder (see the reader module of the dataset for the layouts; the
        images folder of a :class:`~stardist_hier.readers.folder.FolderReader`).
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
        Leave bad files out with a warning each (and draw the validation split without
        them) instead of failing once every file has been tried.
    progress : bool
        Show a tqdm progress bar.
    limit : int, optional
        Convert only the first ``limit`` source samples (for trials and benchmarks).
    split : {'train', 'test'}, optional
        Official split of every image of ``src``, for the readers that otherwise read it
        from a folder name (MoNuSeg, MoNuSAC, CoNSeP: see
        :func:`stardist_hier.readers.base.split_of_folder`); an error for the others.

    Returns
    -------
    Summary

    Raises
    ------
    BadFilesError
        Without ``skip_bad``, when any file is bad: it lists each with its problem.
    ReaderError
        A missing or misspelled source folder, or a download of the wrong layout.
    NotADirectoryError
        ``out`` is a file.
    """
    from tqdm.auto import tqdm

    from ..hierarchy import ClassHierarchy

    reader = get_reader(dataset)
    ref = dataset if isinstance(dataset, str) else reader  # what the workers look the reader up by
    dataset = reader.NAME
    label_set = reader.LABEL_SET
    hierarchy = getattr(reader, "HIERARCHY", None) or "default"
    class_ids = list(ClassHierarchy.resolve(hierarchy).label_set(label_set).ids)
    check_output_dir(out, "output folder")
    summary = Summary(dataset, str(out), label_set)
    bad, bad_sources = [], set()

    def found_bad(path, message, source=None):
        bad.append((str(path), str(message)))
        bad_sources.add(source)
        if skip_bad:
            warnings.warn(f"skipping bad input {path}: {message}", stacklevel=3)
            summary.bad.append((str(path), f"{path}: {message}"))

    params = inspect.signature(reader.find_samples).parameters
    kwargs = {"on_bad": found_bad} if "on_bad" in params else {}
    if split is not None:
        if "split" not in params:
            raise ReaderError(src, f"{dataset} takes its splits from the download (it has no --split)")
        kwargs["split"] = split
    samples = reader.find_samples(src, **kwargs)
    if limit is not None:
        samples = samples[: int(limit)]
    found = samples
    vf = reader.val_from(samples) if hasattr(reader, "val_from") else reader.VAL_FROM
    samples = assign_validation(samples, val_fraction, seed, vf)
    summary.samples = len(samples)
    summary.split_folders = {s.split_folder: s.split for s in found if s.split_folder}
    _clean_temp_files(out, dataset)

    chunk = max(1, int(getattr(reader, "CHUNK", 1)))
    tasks = [(ref, dataset, samples[i:i + chunk], str(out), PATCH_SIZE, stride, overwrite, class_ids, label_set, vf)
             for i in range(0, len(samples), chunk)]
    rows = []
    bar = tqdm(total=len(samples), desc=dataset, unit="img", disable=not progress)
    pool = None
    try:
        if workers and workers > 1 and len(tasks) > 1:
            import multiprocessing as mp

            # fork starts workers without re-importing the package; spawn where there is no fork
            # workers ignore Ctrl-C: the parent gets the KeyboardInterrupt and terminates them,
            # so an interrupted run prints one line, not a traceback per worker
            pool = mp.get_context("fork" if hasattr(os, "fork") else "spawn").Pool(int(workers),
                                                                                 initializer=_ignore_sigint)
            results_iter = pool.imap_unordered(_process, tasks)
        else:
            results_iter = map(_process, tasks)
        for results in results_iter:
            for res in results:
                bar.update(1)
                if res[0] == "skip":
                    summary.skipped.append((res[1], res[2]))
                elif res[0] == "bad":
                    found_bad(res[2], res[3], source=res[1])
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

    if bad and not skip_bad:
        raise BadFilesError(bad, converted=len({r["source"] for r in rows}))
    good = [s for s in found if s.source not in bad_sources]
    if bad_sources and vf is not None and val_fraction:
        # draw the validation split again over the files that converted: the first draw
        # counted the bad ones, and could leave the training split empty
        redrawn = {s.source: s.split for s in assign_validation(good, val_fraction, seed, vf)}
        for r in rows:
            new = redrawn.get(r["source"], r["split"])
            if new != r["split"]:
                _move_patch(out, dataset, r["patch_id"], r["split"], new)
                r["split"] = new
    for message in _split_warnings(found, good, rows, vf, val_fraction):
        warnings.warn(message, stacklevel=2)
        summary.warnings.append(message)
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


def _split_warnings(found, good, rows, vf, val_fraction):
    """What is wrong with the splits a conversion made: an empty training split, no validation."""
    if vf is None:
        return []
    out = []
    n_found = sum(1 for s in found if s.split == vf)
    groups = sorted({s.group for s in good if s.split == vf})
    if n_found and not groups:
        out.append(f"the '{vf}' split is empty: all {n_found} of its source images are bad files")
    elif n_found and not any(r["split"] == vf for r in rows):
        out.append(f"the '{vf}' split is empty: none of its {n_found} source images gave a patch")
    elif val_fraction and len(groups) == 1:
        out.append(f"no validation split: the '{vf}' split comes from one {'source image' if n_found == 1 else 'group'} "
                   f"only ({groups[0]}), which stays in '{vf}'; validate on another dataset or split, or convert "
                   f"more {vf} images")
    return out


def _move_patch(out, dataset, patch_id, from_split, to_split):
    """Move both files of a patch to another split (the mask last: it marks the patch finished)."""
    from ..patches import patch_path

    for kind in ("images", "masks"):
        a, b = (patch_path(out, dataset, sp, kind, patch_id) for sp in (from_split, to_split))
        b.parent.mkdir(parents=True, exist_ok=True)
        os.replace(a, b)


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
