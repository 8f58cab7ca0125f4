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

__all__ = ["MissingDataError", "SPLIT_CHOICES", "PAPER_DATASETS", "resolve_splits", "check_data", "data_problems",
           "dataset_roles", "data_fingerprint", "select_ids", "ensure_synthetic"]

#: Split folders tried for each role, in order: the first complete set wins. PanNuke's
#: prepared data has the official folds only (fold 1 trains, fold 2 validates, fold 3
#: tests, the PanNuke protocol), and so has Lizard's when prepared with its ``info.csv``;
#: the synthetic sets and the other datasets have train/val/test.
SPLIT_CHOICES = {
    "pannuke": [dict(train="train", val="val", test="test"), dict(train="fold1", val="fold2", test="fold3")],
    "lizard": [dict(train="train", val="val", test="test"), dict(train="fold1", val="fold2", test="fold3")],
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

    ``splits='auto'`` tries :data:`SPLIT_CHOICES` (``train/val/test``, for PanNuke and Lizard
    also the folds); a dict ``{dataset: {role: folder}}`` names them.
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


def dataset_roles(cfgs):
    """``{dataset: roles}`` that runs need: ``train`` and ``val`` of every dataset an episode
    trains on, ``val`` of every dataset it validates, ``test`` of the test sets."""
    from .config import episode_datasets, validation_sets

    needs = {}
    for c in cfgs:
        for ep in c["episodes"]:
            for ds in episode_datasets(ep):
                needs.setdefault(ds, set()).update(("train", "val"))
            for ds in validation_sets(ep):
                needs.setdefault(ds, set()).add("val")
        for t in c["test"]:
            needs.setdefault(t, set()).add("test")
    return needs


def _label_set_of(root, ds, index, h, problems):
    """The label set name of ``ds`` in ``h`` (recorded in ``index.csv``, else ``ds``), or ``None``."""
    from .config import closest

    sets = sorted({str(v) for v in index["label_set"].dropna()}) if "label_set" in index.columns else []
    if len(sets) > 1:
        problems.append(f"{P.index_path(root, ds)} mixes label sets {sets}; a dataset has one label set: "
                        f"re-prepare it with: {P.prepare_command(ds, root)}")
        return None
    rec = sets[0] if sets else ds
    if rec not in h.label_sets:
        what = (f"dataset '{ds}' has no label set in the hierarchy {h.source}" if rec == ds else
                f"dataset '{ds}' was prepared with label set '{rec}', which the hierarchy {h.source} lacks")
        problems.append(f"{what} (label sets: {sorted(h.label_sets)}){closest(rec, h.label_sets)}; add it to the "
                        f"hierarchy YAML, or run with the hierarchy the data was prepared with")
        return None
    if rec != ds and ds in h.label_sets and h.label_set(ds).nodes != h.label_set(rec).nodes:
        problems.append(f"{P.index_path(root, ds)} says label set '{rec}', but the hierarchy's label set '{ds}' "
                        f"has other classes; re-prepare it with: {P.prepare_command(ds, root)}")
        return None
    return rec


def _class_id_problems(root, ds, index, ls):
    """Class ids counted in ``index.csv`` (``n_class_<k>``) that the label set does not have."""
    bad = {}
    for c in index.columns:
        if c.startswith("n_class_") and c[8:].isdigit():
            k, n = int(c[8:]), int(index[c].fillna(0).sum())
            if n > 0 and k not in ls.ids:
                bad[k] = n
    if not bad:
        return []
    shown = ", ".join(f"{k} ({n} nuclei)" for k, n in sorted(bad.items()))
    return [f"dataset '{ds}': class id(s) {shown} in {P.index_path(root, ds)} are not covered by its label set "
            f"'{ls.name}' (ids: {', '.join(f'{k} = {v}' for k, v in ls.nodes.items())}); give the label set "
            f"these classes in the hierarchy YAML, or re-prepare the data"]


def data_problems(data_root, cfg, hierarchy=None):
    """Everything missing or inconsistent in the prepared data a run needs, before any training.

    Parameters
    ----------
    data_root : str or path-like
        The ``--out`` of ``stardist-hier prepare`` (or of ``stardist-hier synth``).
    cfg : dict or list of dict
        Normalised run config(s).
    hierarchy : ClassHierarchy, optional
        Default: the config's.

    Returns
    -------
    splits : dict
        ``{dataset: {role: split folder}}`` of the datasets found.
    label_sets : dict
        ``{dataset: label set name}``: the label set recorded in the dataset's ``index.csv``
        (the dataset's name if none is recorded).
    problems : list of str
        Missing datasets, splits or patches (each with the command that makes them), label
        sets the hierarchy lacks, class ids a label set does not cover.
    """
    from .config import closest

    cfgs = [cfg] if isinstance(cfg, dict) else list(cfg)
    root = Path(data_root)
    h = ClassHierarchy.resolve(hierarchy if hierarchy is not None else cfgs[0].get("hierarchy", "default"))
    problems, resolved, label_sets = [], {}, {}
    if not root.is_dir():
        problems.append(f"data root {root} does not exist")
    for ds, roles in dataset_roles(cfgs).items():
        roles = tuple(r for r in ("train", "val", "test") if r in roles)
        if not root.is_dir():
            if ds not in h.label_sets:
                problems.append(f"dataset '{ds}' has no label set in the hierarchy {h.source} "
                                f"(label sets: {sorted(h.label_sets)}){closest(ds, h.label_sets)}")
            continue
        try:
            index = P.read_index(root, ds)
        except FileNotFoundError:
            # a misspelt name is more likely than a missing download when the hierarchy knows a close one
            hint = ""
            if ds not in h.label_sets and closest(ds, h.label_sets):
                hint = f"; nor is '{ds}' a label set of the hierarchy{closest(ds, h.label_sets)}"
            url = download_url(ds)
            problems.append(f"dataset '{ds}' is not prepared under {root} ({P.index_path(root, ds)} missing); "
                            + (f"download it from {url} and run: " if url else "make it with: ")
                            + f"{P.prepare_command(ds, root)}{hint}")
            continue
        ls_name = _label_set_of(root, ds, index, h, problems)
        if ls_name is not None:
            label_sets[ds] = ls_name
            problems += _class_id_problems(root, ds, index, h.label_set(ls_name))
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
    return resolved, label_sets, problems


def data_problem_message(problems, root):
    """The one message of :class:`MissingDataError` for a list of data problems."""
    return ("cannot start: the prepared data is missing or incomplete (nothing was trained):\n  - "
            + "\n  - ".join(problems)
            + f"\n(without the real data, `stardist-hier synth --out {root}` makes synthetic "
              "stand-ins with the same names)")


def check_data(data_root, cfg, hierarchy=None):
    """Check, before any training, that every split a run needs is prepared and complete.

    Parameters
    ----------
    data_root : str or path-like
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
        Listing every problem of :func:`data_problems`.
    """
    resolved, _, problems = data_problems(data_root, cfg, hierarchy)
    if problems:
        raise MissingDataError(data_problem_message(problems, Path(data_root)))
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
