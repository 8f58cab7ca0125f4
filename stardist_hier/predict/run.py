"""Predict many images and slides: :func:`predict_inputs`, the engine of ``stardist-hier predict``.

:func:`predict_inputs` expands the inputs (files, folders of them), gives each a distinct
output name, and runs :func:`~.single.predict_file` on each, one after the other or on a Dask
cluster (:mod:`.distributed`). It continues past inputs that fail (one line each naming the
file), skips inputs complete from an earlier run, and writes ``<out>/summary.csv``
(:mod:`.summary`) after every input, so an interrupted run keeps its summary and a re-run
finishes the rest. :func:`predict_file` (one input) is re-exported here.
"""

from __future__ import annotations

import hashlib
import os
import traceback
from pathlib import Path

from ..atomic import check_output_dir
from .single import (MARKER, PredictSettings, _settings, _stem, check_model_folder, load_model, model_identity,
                     predict_file, resolve_label_set)
from .slides import IMAGE_SUFFIXES, SLIDE_SUFFIXES, InputError
from .summary import failed_row, is_input_failure, report_row, summary_table, write_summary

__all__ = ["PredictSettings", "predict_file", "predict_inputs", "expand_inputs", "output_names", "load_model",
           "check_model_folder", "resolve_label_set", "summary_table", "write_summary", "MARKER"]


def _suffix_ok(p):
    return p.suffix.lower() in IMAGE_SUFFIXES + SLIDE_SUFFIXES


def expand_inputs(inputs):
    """The input files: files as given, folders replaced by their image/slide files (sorted).

    Hidden files (``.*``, e.g. temporaries) in folders are skipped; a folder with no input
    file and a path that does not exist are errors.

    Raises
    ------
    FileNotFoundError
        A path that does not exist, or a folder without inputs.
    """
    files = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".") and _suffix_ok(q))
            if not found:
                raise FileNotFoundError(f"{p}: no image or slide files in this folder "
                                        f"({', '.join(IMAGE_SUFFIXES + SLIDE_SUFFIXES)})")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return list(dict.fromkeys(files))


def output_names(paths):
    """A distinct output name per input: its stem, plus a short hash of its path where stems clash."""
    stems = [_stem(p) for p in paths]
    counts = {s: stems.count(s) for s in stems}
    return [s if counts[s] == 1 else f"{s}-{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:6]}"
            for s, p in zip(stems, paths)]



def predict_inputs(model, inputs, out, settings=None, scheduler=None, address=None, n_workers=None,
                   progress=True, verbose=0, overwrite=False, **kwargs):
    """Segment many images/slides, write each one's outputs and ``<out>/summary.csv``.

    Parameters
    ----------
    model : str or path-like or HierStarDist2D
        Model folder (required for ``scheduler='dask'``: each worker loads it), or a model.
    inputs : sequence of str or path-like
        Image/slide files and folders of them.
    out : str or path-like
        Output folder.
    settings : PredictSettings, optional
        Keyword arguments build one when not given.
    scheduler : {None, 'dask'}
        ``None``: one input after the other in this process; ``'dask'``: one task per input
        on a ``dask.distributed`` cluster (:func:`.distributed.predict_on_dask`).
    address : str, optional
        ``HOST:PORT`` of an existing Dask scheduler (default: a ``LocalCluster``).
    n_workers : int, optional
        Workers of the ``LocalCluster``.
    progress : bool
        Progress bars over inputs (and over blocks without Dask).
    verbose : int
        -1 quiet; 0 a line per failure; 1 a line per input.
    overwrite : bool
        Predict inputs again even when complete.

    Returns
    -------
    list of dict
        One summary row per input, in input order; failed inputs have ``status='failed'``
        and their error.
    """
    settings = _settings(settings, kwargs)
    out = check_output_dir(out)
    paths = expand_inputs(inputs)
    names = output_names(paths)
    if settings.mask is not None and not Path(settings.mask).exists():
        raise FileNotFoundError(f"--mask {settings.mask}: no such file or folder")
    n_slides_mask = settings.mask is not None and Path(settings.mask).is_file() and len(paths) > 1
    if n_slides_mask:
        raise InputError(settings.mask, "one mask file for several inputs: give a folder of masks named "
                                        "after the slides (<name>.png)")
    out.mkdir(parents=True, exist_ok=True)
    if scheduler == "dask":
        from .distributed import predict_on_dask

        if not isinstance(model, (str, os.PathLike)):
            model = model.logdir
        check_model_folder(model)  # one clear error here rather than one per task
        rows = predict_on_dask(model, paths, names, out, settings, address=address, n_workers=n_workers,
                               progress=progress, verbose=verbose, overwrite=overwrite)
    elif scheduler is None:
        rows = _predict_here(model, paths, names, out, settings, progress, verbose, overwrite)
    else:
        raise ValueError(f"scheduler must be None or 'dask', got {scheduler!r}")
    write_summary(rows, out)
    return rows


def _predict_here(model, paths, names, out, settings, progress, verbose, overwrite):
    from tqdm.auto import tqdm

    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, quiet=verbose < 0)
    resolve_label_set(model, settings.label_set)  # unknown label set: an error before any input
    model_id = model_identity(model)
    rows = [None] * len(paths)
    bar = tqdm(total=len(paths), desc="inputs", unit="input", disable=not progress or len(paths) < 2)
    try:
        for i, (path, name) in enumerate(zip(paths, names)):
            bar.set_postfix_str(name)
            try:
                rows[i] = predict_file(model, path, out, settings, name=name, progress=progress,
                                       overwrite=overwrite, _model_id=model_id)
            except Exception as e:
                if not is_input_failure(e):
                    raise
                if verbose >= 1:
                    traceback.print_exc()
                rows[i] = failed_row(path, name, e)
            report_row(rows[i], verbose)
            bar.update()
            write_summary([r for r in rows if r is not None], out)  # an interrupted run keeps its summary
    finally:
        bar.close()
    return rows


