"""Data checks of the experiment runner: splits, completeness, label sets, before any training.

Prepared data is read with :func:`stardist_hier.patches.load_split` (the one loader); this
module decides which split folders a run uses and refuses to start, listing every problem
with the command that fixes it, when something is missing.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import numpy as np

from .. import patches as P
from ..hierarchy import ClassHierarchy
from ..readers import download_url
from .config import SYNTHETIC_SMOKE

__all__ = ["MissingDataError", "SPLIT_CHOICES", "PAPER_DATASETS", "resolve_splits", "check_data",
           "data_fingerprint", "select_ids", "ensure_synthetic"]

#: Split folders tried for each role, in order: the first complete set wins. PanNuke's
#: prepared data has the official folds only (fold 1 trains, fold 2 validates, fold 3
#: tests, the PanNuke protocol); the synthetic sets and the other datasets have
#: train/val/test.
SPLIT_CHOICES = {
    "pannuke": [dict(train="train", val="val", test="test"), dict(train="fold1", val="fold2", test="fold3")],
}
DEFAULT_SPLIT_CHOICES = [dict(train="train", val="val", test="test")]

#: The datasets of the paper's Tables II and III.
PAPER_DATASETS = ("pannuke", "monusac", "consep")


class MissingDataError(FileNotFoundError):
    """Prepared data missing or incomplete; the message says what and how to make it."""


def _split_complete(root, dataset, split, index):
    """(number of finished patches, list of problems) of one split."""
    have = P.list_patches(root, dataset, split)
    problems = []
    if index is not None and "split" in index.columns:
        listed = set(index.loc[index["split"].astype(str) == split, "patch_id"].astype(str))
        missing = sorted(listed - set(have))
        if missing:
            problems.append(f"split '{split}' of '{dataset}' is incomplete: {len(missing)} of {len(listed)} patches "
                            f"listed in index.csv are missing (e.g. {missing[0]}); an interrupted preparation? "
                            f"rerun: {P.prepare_command(dataset, root)}")
    return len(have), problems


def resolve_splits(data_root, dataset, roles=("train", "val", "test"), splits="auto"):
    """Split folders of ``dataset`` for each role, or raise :class:`MissingDataError`.

    ``splits='auto'`` tries :data:`SPLIT_CHOICES` (``train/val/test``, for PanNuke also the
    folds); a dict ``{dataset: {role: folder}}`` names them.
    """
    root = Path(data_root)
    if isinstance(splits, dict) and dataset in splits:
        choices = [dict(splits[dataset])]
    else:
        choices = SPLIT_CHOICES.get(dataset, DEFAULT_SPLIT_CHOICES)
    present = P.list_splits(root, dataset)
    for choice in choices:
        if all(choice.get(r) in present for r in roles):
            return {r: choice[r] for r in roles}
    want = " or ".join("/".join(c[r] for r in roles) for c in choices)
    raise MissingDataError(f"dataset '{dataset}' under {root} lacks split(s) for {'/'.join(roles)} "
                           f"(expected {want}; found {present or 'none'}); make it with: "
                           f"{P.prepare_command(dataset, root)}")


def check_data(data_root, cfg, hierarchy=None):
    """Check, before any training, that every split a run needs is prepared and complete.

    Parameters
    ----------
    data_root : str or path-like
        The ``--out`` of ``stardist-hier prepare`` (or of ``stardist-hier synth``).
    cfg : dict or list of dict
        Run config(s).
    hierarchy : ClassHierarchy, optional
        Default: the config's.

    Returns
    -------
    dict
        ``{dataset: {role: split folder}}``.

    Raises
    ------
    MissingDataError
        Listing every missing dataset, split or label set with the command that makes it.
    """
    cfgs = [cfg] if isinstance(cfg, dict) else list(cfg)
    root = Path(data_root)
    needs = {}
    for c in cfgs:
        for ep in c["episodes"]:
            needs.setdefault(ep["dataset"], set()).update(("train", "val"))
        for t in c["test"]:
            needs.setdefault(t, set()).add("test")
    h = ClassHierarchy.resolve(hierarchy if hierarchy is not None else cfgs[0].get("hierarchy", "default"))
    problems, resolved = [], {}
    if not root.is_dir():
        problems.append(f"data root {root} does not exist")
    for ds, roles in needs.items():
        roles = tuple(r for r in ("train", "val", "test") if r in roles)
        if ds not in h.label_sets:
            problems.append(f"dataset '{ds}' has no label set in the hierarchy {h.source} "
                            f"(label sets: {sorted(h.label_sets)}); add one to the hierarchy YAML")
            continue
        if not root.is_dir():
            continue
        try:
            index = P.read_index(root, ds)
        except FileNotFoundError:
            problems.append(f"dataset '{ds}' is not prepared under {root} ({P.index_path(root, ds)} missing); "
                            f"download it from {download_url(ds) or 'its website'} and run: {P.prepare_command(ds, root)}")
            continue
        if "label_set" in index.columns:
            sets = sorted({str(v) for v in index["label_set"].dropna()})
            if sets and sets != [ds]:
                problems.append(f"{P.index_path(root, ds)} says label set {sets}, but the run uses '{ds}'; "
                                f"re-prepare it with: {P.prepare_command(ds, root)}")
        try:
            sp = resolve_splits(root, ds, roles, cfgs[0].get("splits", "auto"))
        except MissingDataError as e:
            problems.append(str(e))
            continue
        for role, split in sp.items():
            n, probs = _split_complete(root, ds, split, index)
            problems += probs
            if n == 0:
                problems.append(f"split '{split}' ({role}) of dataset '{ds}' has no patches; "
                                f"make it with: {P.prepare_command(ds, root)}")
        resolved[ds] = sp
    if problems:
        raise MissingDataError("cannot start: the prepared data is missing or incomplete (nothing was trained):\n  - "
                               + "\n  - ".join(problems)
                               + f"\n(without the real data, `stardist-hier synth --out {root}` makes synthetic "
                                 "stand-ins with the same names)")
    return resolved


def data_fingerprint(root, dataset):
    path = P.index_path(root, dataset)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def select_ids(root, dataset, split, max_images, seed):
    ids = P.list_patches(root, dataset, split)
    if max_images is not None and len(ids) > max_images:
        rng = np.random.default_rng([seed, zlib.crc32(f"{dataset}/{split}".encode())])
        ids = sorted(rng.choice(ids, size=max_images, replace=False).tolist())
    return ids


def ensure_synthetic(root, counts=None, size=None, seed=None, progress=False):
    """Make (or reuse) the synthetic stand-ins of the paper's datasets under ``root``."""
    from ..synth import generate_all

    s = SYNTHETIC_SMOKE
    generate_all(root, list(PAPER_DATASETS), counts=counts or s["counts"], size=size or s["size"],
                 seed=s["seed"] if seed is None else seed, progress=progress)
    return Path(root)
