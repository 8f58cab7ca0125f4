"""Writing synthetic datasets in the patch format (:mod:`stardist_hier.patches`), with their ``index.csv``."""

from __future__ import annotations

import numpy as np

from ..atomic import atomic_write_text
from .specs import DATASETS, DEFAULT_COUNTS, SPLITS, _check_spec, _default_hierarchy, _get_spec, tile_seed
from .tiles import generate_tile


_FORMAT_VERSION = 1


def _write(out_root, dataset, split, patch_id, image, mask):
    from .. import patches

    # tiles smaller than the format's 256 (tests, quick demos) keep the same layout and
    # are read back by the same read_patch / load_split
    return patches.write_patch(out_root, dataset, split, patch_id, image, np.ascontiguousarray(mask, np.int32),
                               size=None)


def _index_row(spec, split, patch_id, source, tissue, mask, n_hidden, class_ids):
    from ..patches import class_counts, instance_classes

    counts = class_counts(instance_classes(mask))
    row = {"patch_id": patch_id, "split": split, "source": source, "offset_y": 0, "offset_x": 0,
           "tissue": tissue, "label_set": spec.label_set, "n_nuclei": int(sum(counts.values()))}
    for k in class_ids:
        row[f"n_class_{k}"] = int(counts.get(k, 0))
    row["n_unknown"] = int(counts.get(0, 0))
    # nuclei in the image that the label set does not annotate (MoNuSAC's other nuclei)
    row["n_unannotated"] = int(n_hidden)
    return row


def _params(spec, counts, size, seed, unannotated):
    return {"generator": "stardist_hier.synth", "format_version": _FORMAT_VERSION, "dataset": spec.name,
            "label_set": spec.label_set, "seed": int(seed), "size": int(size),
            "counts": {s: int(counts.get(s, 0)) for s in SPLITS}, "unannotated": unannotated}


def dataset_complete(out_root, dataset, counts=None, size=256, seed=0, unannotated="background"):
    """True if ``<out_root>/<dataset>`` holds a finished synthetic set made with these parameters."""
    import json
    from pathlib import Path
    from .. import patches

    spec = _get_spec(dataset)
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    meta = Path(out_root) / spec.name / "synth.json"
    if not meta.is_file() or not patches.index_path(out_root, spec.name).is_file():
        return False
    try:
        if json.loads(meta.read_text()) != _params(spec, counts, size, seed, unannotated):
            return False
    except ValueError:
        return False
    return all(patches.patch_exists(out_root, spec.name, split, f"{spec.name}_{split}_{i:05d}")
               for split in SPLITS for i in range(counts.get(split, 0)))


def generate_dataset(out_root, dataset, counts=None, size=256, seed=0, unannotated="background",
                     overwrite=False, progress=True, workers=1):
    """Write one synthetic dataset in the patch format, with its ``index.csv``.

    Parameters
    ----------
    out_root : str or path-like
        Root folder; the set goes to ``<out_root>/<dataset>/``.
    dataset : str
        One of :data:`DATASETS`.
    counts : dict, optional
        Tiles per split, e.g. ``{'train': 160, 'val': 32, 'test': 48}`` (default
        :data:`DEFAULT_COUNTS`).
    size : int
        Tile size in pixels.
    seed : int
        Seed of the whole run; each tile's randomness comes from :func:`tile_seed`.
    unannotated : {'background', 'ignore'}
        Mask value over nuclei the dataset does not annotate (see the module docstring).
    overwrite : bool
        Delete and remake an existing set. Without it a finished set with the same
        parameters is skipped, an interrupted one is completed (tiles do not depend on each
        other), and one made with other parameters is an error.
    progress : bool
        Show a progress bar.
    workers : int
        Processes generating tiles in parallel (the output does not depend on it).

    Returns
    -------
    dict
        ``{'dataset', 'path', 'patches', 'skipped', 'nuclei', 'seconds'}``.
    """
    import json
    import shutil
    import time
    from pathlib import Path
    from tqdm.auto import tqdm
    from .. import patches

    t0 = time.perf_counter()
    spec = _get_spec(dataset)
    _check_spec(spec, _default_hierarchy())
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; splits are {SPLITS}")
    root = Path(out_root)
    folder = root / spec.name
    params = _params(spec, counts, size, seed, unannotated)
    meta = folder / "synth.json"
    total = sum(counts.values())
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    elif dataset_complete(root, spec.name, counts, size, seed, unannotated):
        return {"dataset": spec.name, "path": folder, "patches": total, "skipped": True, "nuclei": None,
                "seconds": time.perf_counter() - t0}
    elif meta.is_file():
        try:
            old = json.loads(meta.read_text())
        except ValueError:
            old = None
        if old != params:
            raise FileExistsError(
                f"{folder} holds a synthetic set made with other parameters ({old}); "
                f"use overwrite=True (--overwrite) to replace it, or another --out")
    elif folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not a synthetic set; use overwrite=True "
                              f"(--overwrite) to replace it, or another --out")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta, json.dumps(params, indent=1))

    jobs = [(spec, str(root), split, i, seed, size, unannotated)
            for split in SPLITS for i in range(counts.get(split, 0))]
    rows = []
    with tqdm(total=total, desc=f"synth {spec.name}", unit="tile", disable=not progress) as bar:
        if workers > 1 and len(jobs) > 1:
            from concurrent.futures import ProcessPoolExecutor

            # workers ignore Ctrl-C: the parent gets the KeyboardInterrupt and cancels what is
            # queued, so an interrupted run prints one line, not a traceback per worker
            pool = ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint)
            try:
                for row in pool.map(_make_patch, jobs, chunksize=4):
                    rows.append(row)
                    bar.update(1)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        else:
            for job in jobs:
                rows.append(_make_patch(job))
                bar.update(1)
    patches.write_index(root, spec.name, rows)
    return {"dataset": spec.name, "path": folder, "patches": total, "skipped": False,
            "nuclei": int(sum(r["n_nuclei"] for r in rows)), "seconds": time.perf_counter() - t0}


def _make_patch(job):
    """Generate and write one tile (unless already on disk); return its index row."""
    from .. import patches

    spec, root, split, i, seed, size, unannotated = job
    h = _default_hierarchy()
    pid = f"{spec.name}_{split}_{i:05d}"
    # Tiles are cheap and independent: a resumed run regenerates a finished tile for its
    # index row (tissue, unannotated nuclei) and only skips writing it.
    tile = generate_tile(spec, tile_seed(seed, spec.name, split, i), size=size, unannotated=unannotated,
                         ambiguous=spec.ambiguous.get(split, 0.0), hierarchy=h)
    if not patches.patch_exists(root, spec.name, split, pid):
        _write(root, spec.name, split, pid, tile.image, tile.mask)
    return _index_row(spec, split, pid, f"synthetic/{spec.name}/seed{seed}/{split}/{i}", tile.tissue, tile.mask,
                      len(tile.hidden_leaves), h.label_set(spec.label_set).ids)


def _ignore_sigint():
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def generate_all(out_root, datasets=None, counts=None, size=256, seed=0, unannotated="background",
                 overwrite=False, progress=True, workers=1):
    """Write several synthetic datasets (default: all of :data:`DATASETS`).

    Returns
    -------
    list of dict
        One :func:`generate_dataset` summary per dataset.
    """
    names = list(DATASETS) if datasets is None else [d.strip() for d in datasets]
    for name in names:
        _get_spec(name)
    return [generate_dataset(out_root, name, counts=counts, size=size, seed=seed, unannotated=unannotated,
                             overwrite=overwrite, progress=progress, workers=workers) for name in names]
