"""One input, one output folder: what :func:`predict_file` writes, atomically and resumably.

:func:`predict_file` segments one image or whole-slide image and writes its outputs into
``<out>/<name>/`` (``name`` is the file name without suffix):

================================  =========================================================
``<name>.geojson.gz``             QuPath GeoJSON, one detection per nucleus (:mod:`.geojson`)
                                  (``.geojson`` with ``geojson='geojson'``)
``<name>_nuclei.parquet`` / .csv  the per-nucleus table (:mod:`.tables`)
``<name>_labels.tif``             images: instance ids and class ids, ``(H, W, 2)`` int32
``<name>_overlay.png``            images: outlines coloured by class, with a legend;
                                  slides: the same on the slide's thumbnail
``<name>_tissue.png``             slides: the tissue mask at thumbnail scale
``done.json``                     written last: the summary row and the settings
================================  =========================================================

Every file goes to a temporary name and is renamed. ``done.json`` is the completion marker: a
re-run with the same model (folder, weights and thresholds), input file (path, size, time
stamp) and settings skips the input without loading the model; one with other settings
predicts it again. An interrupted run therefore loses at most the inputs in flight.
The model folder helpers (:func:`check_model_folder`, :func:`load_model`) live here too.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json, check_output_dir
from .slides import InputError

__all__ = ["PredictSettings", "check_model_folder", "load_model", "weights_file", "resolve_label_set",
           "model_identity", "complete_row", "predict_file", "MARKER"]

MARKER = "done.json"
GEOJSON_FORMATS = ("geojson.gz", "geojson")
TABLE_FORMATS = ("parquet", "csv")


@dataclass
class PredictSettings:
    """What is predicted and written for every input (the same for the whole run).

    Parameters
    ----------
    label_set : str or None
        Name of the label set of the classes (default: the model's default label set).
    levels : bool
        Also classify at every hierarchy level above the label set (table columns).
    tta : bool
        8-fold test-time augmentation.
    mpp : float or None
        Slides: see :func:`stardist_hier.predict.engine.predict_slide`; images: the pixel
        size recorded in the table (``area_um2``) when the file has none.
    mask : str or None
        Slides: a tissue mask file (white = tissue; :func:`predict_inputs` accepts one only
        for a single input), or a folder of masks named after the slides
        (``<name>.png``/``.tif``; a slide without one gets the automatic Otsu mask).
    block_size : int
        Slides: the block size of tiled prediction (level-0 pixels at the model's scale).
    geojson : {'geojson.gz', 'geojson'}
        Suffix of the GeoJSON (gzip-compressed by default; QuPath reads both).
    tables : tuple of {'parquet', 'csv'}
        Formats of the per-nucleus table (Parquet needs ``pyarrow``).
    overlay : bool
        Write the overlay PNGs.
    """

    label_set: str = None
    levels: bool = False
    tta: bool = False
    mpp: float = None
    mask: str = None
    block_size: int = 4096
    geojson: str = "geojson.gz"
    tables: tuple = TABLE_FORMATS
    overlay: bool = True

    def __post_init__(self):
        if self.geojson not in GEOJSON_FORMATS:
            raise ValueError(f"geojson must be one of {GEOJSON_FORMATS}, got {self.geojson!r}")
        self.tables = tuple(self.tables)
        bad = [t for t in self.tables if t not in TABLE_FORMATS]
        if bad:
            raise ValueError(f"unknown table format(s) {bad} (choose from {TABLE_FORMATS})")
        if self.mask is not None:
            self.mask = str(self.mask)


def _settings(settings, kwargs):
    if settings is None:
        return PredictSettings(**kwargs)
    if not isinstance(settings, PredictSettings):
        raise TypeError(f"settings must be a PredictSettings, got {type(settings).__name__}")
    return replace(settings, **kwargs) if kwargs else settings


# -- the model --------------------------------------------------------------------------------

def check_model_folder(folder):
    """``folder`` as a Path if it looks like a model folder (config and weights), else :class:`InputError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "model folder not found" if not folder.exists() else "not a model folder (a file)")
    if not (folder / "config.json").is_file():
        raise InputError(folder, "not a model folder (no config.json)")
    if weights_file(folder) is None:
        raise InputError(folder, "the model folder has no weights (no *.h5 / *.hdf5 file, e.g. weights_best.h5)")
    return folder


def load_model(folder, quiet=False):
    """Load a :class:`~stardist_hier.model.HierStarDist2D` from its folder, with one-line errors.

    Parameters
    ----------
    folder : str or path-like
    quiet : bool
        Hide StarDist's messages about the weights and thresholds it loads.

    Raises
    ------
    InputError
        Not a folder, no ``config.json``, or no weights file in it.
    """
    folder = check_model_folder(folder)
    from ..model import HierStarDist2D

    if not quiet:
        return HierStarDist2D(None, name=folder.name, basedir=str(folder.parent))
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # StarDist's "Loading network weights ..." lines
        return HierStarDist2D(None, name=folder.name, basedir=str(folder.parent))


def weights_file(folder):
    """The weights file StarDist loads from a model folder (None if there is none).

    The same choice as csbdeep's ``_find_and_load_weights``: the newest ``*.h5``/``*.hdf5``
    file with ``best`` in its name, else the newest one.
    """
    files = [p for ext in ("*.h5", "*.hdf5") for p in Path(folder).glob(ext) if p.is_file()]
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    best = [p for p in files if "best" in p.name]
    return (best or files or [None])[0]


def resolve_label_set(model, name=None):
    """The :class:`LabelSet` predicted (:func:`.engine.resolve_label_set`), checked before any input is read.

    ``None`` is the model's default label set; ``None`` is returned for a model without classes.

    Raises
    ------
    InputError
        ``name`` given for a model without classes (naming the model folder).
    HierarchyError
        Unknown label set (the message lists the known ones).
    """
    from .engine import model_hierarchy
    from .engine import resolve_label_set as resolve

    if model_hierarchy(model) is None and name is not None:
        where = getattr(model, "logdir", None) or getattr(model, "name", "model")
        raise InputError(where, f"--label-set {name}: this model has no classes (n_classes=None), "
                                "it predicts nuclei only")
    return resolve(model, name)


def model_identity(model):
    """Model folder and digests of its weights and thresholds (a model or its folder).

    A retrained or re-tuned model does not reuse old outputs. Computed from the folder
    without loading the model, so a re-run skips complete inputs without TensorFlow.
    """
    if isinstance(model, (str, os.PathLike)):
        folder = Path(model)
    else:
        folder = getattr(model, "logdir", None)
        if folder is None:
            return {"model": getattr(model, "name", None)}
        folder = Path(folder)
    weights = weights_file(folder)
    digest = None
    if weights is not None:
        h = hashlib.sha1()
        with open(weights, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = f"{weights.name}:{h.hexdigest()}"
    thresholds = folder / "thresholds.json"
    return {"model": str(folder.resolve()), "weights": digest,
            "thresholds": thresholds.read_text(encoding="utf-8") if thresholds.is_file() else None}


def _stem(p):
    name = p.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return p.stem


def _file_identity(path):
    st = os.stat(path)
    return {"input": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _mask_for(settings, path, name):
    if settings.mask is None:
        return None
    m = Path(settings.mask)
    if m.is_dir():
        for suffix in (".png", ".tif", ".tiff"):
            for cand in (m / (name + suffix), m / (_stem(Path(path)) + suffix)):
                if cand.is_file():
                    return cand
        return None
    return m


# -- one input --------------------------------------------------------------------------------

def _key(model_id, path, name, settings):
    s = asdict(settings)
    s["mask"] = None if s["mask"] is None else str(_mask_for(settings, path, name))
    # as JSON has it (tuples become lists), so that it compares equal to the marker's
    return json.loads(json.dumps({**model_id, **_file_identity(path), "settings": s}))


def _read_marker(folder):
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def complete_row(key, folder):
    """The summary row of complete outputs made with ``key`` in ``folder`` (status ``'skipped'``), else None."""
    marker = _read_marker(Path(folder))
    if marker is not None and marker.get("key") == key:
        return {**marker["row"], "status": "skipped"}
    return None


def _row(path, name, kind, nuc, seconds, settings):
    ls = nuc.label_set
    row = {"input": str(path), "name": name, "kind": kind, "status": "ok", "nuclei": len(nuc),
           "label_set": ls.name if ls is not None else "", "tta": bool(settings.tta),
           "mpp": nuc.info.get("mpp"), "tissue_area_px": nuc.info.get("tissue_area_px"), "tissue_area_mm2": None,
           "seconds": round(seconds, 3), "note": nuc.info.get("note", ""), "error": ""}
    if kind == "image" and row["tissue_area_px"] is None:
        row["tissue_area_px"] = int(np.prod(nuc.shape))  # an image is taken whole
    if row["tissue_area_px"] is not None:
        row["tissue_area_px"] = int(round(float(row["tissue_area_px"])))
    if row["mpp"] and row["tissue_area_px"] is not None:
        row["tissue_area_mm2"] = round(float(row["tissue_area_px"]) * float(row["mpp"]) ** 2 / 1e6, 6)
    if ls is not None:
        counts = np.bincount(np.asarray(nuc.class_id, np.int64), minlength=ls.max_id + 1) if len(nuc) else \
            np.zeros(ls.max_id + 1, int)
        for k, cname in zip(ls.ids, ls.names):
            row[f"n_{cname}"] = int(counts[k])
    return row


def _write_outputs(nuc, folder, name, kind, settings, image=None, metadata=None):
    from . import geojson as G
    from . import overlay as O
    from . import tables as T

    written = [G.write_geojson(nuc, folder / f"{name}.{settings.geojson}", name=name)]
    formats = settings.tables
    if "parquet" in formats and not T.have_parquet():
        formats = tuple(f for f in formats if f != "parquet")
        print("note: pyarrow is not installed (pip install 'stardist-hier[tables]'): no Parquet table, CSV only",
              file=sys.stderr)
        if "csv" not in formats:
            formats = ("csv",)
    written += T.write_tables(T.nuclei_table(nuc), folder / f"{name}_nuclei", formats=formats, metadata=metadata)
    if kind == "image":
        if nuc.labels is not None:
            written.append(T.write_label_image(nuc, folder / f"{name}_labels.tif"))
        if settings.overlay and image is not None:
            written.append(O.write_png(folder / f"{name}_overlay.png", O.image_overlay(image, nuc)))
    else:
        if settings.overlay and nuc.info.get("thumbnail") is not None:
            written.append(O.write_png(folder / f"{name}_overlay.png", O.slide_overlay(nuc)))
        if nuc.info.get("tissue_mask") is not None:
            written.append(O.write_png(folder / f"{name}_tissue.png", O.mask_image(nuc.info["tissue_mask"])))
    return written


def predict_file(model, path, out, settings=None, name=None, progress=False, overwrite=False, _model_id=None,
                 **kwargs):
    """Segment one image or whole-slide image and write its outputs into ``<out>/<name>/``.

    Parameters
    ----------
    model : HierStarDist2D or str or path-like or callable
        A model, its folder (loaded only if the input is not complete), or a function
        returning the model (called only then).
    path : str or path-like
        An image file (TIFF, PNG, JPEG) or a whole-slide image.
    out : str or path-like
        Output folder (one sub-folder per input).
    settings : PredictSettings, optional
        What to predict and write; keyword arguments (``label_set=``, ``tta=``, ...) build one.
    name : str, optional
        Name of the input's outputs (default: the file name without suffix).
    progress : bool
        Progress bar over the blocks of the input.
    overwrite : bool
        Predict again even when complete outputs with the same settings exist.

    Returns
    -------
    dict
        The summary row: ``status`` is ``'ok'`` or ``'skipped'`` (complete from an earlier run;
        the counts are that run's). Errors are raised (:class:`InputError` naming the file);
        :func:`predict_inputs` turns them into ``'failed'`` rows.
    """
    from . import engine
    from .slides import open_input

    settings = _settings(settings, kwargs)
    path = Path(path)
    out = check_output_dir(out)
    name = name or _stem(path)
    folder = out / name
    key = _key(_model_id or model_identity(model), path, name, settings)
    if not overwrite:
        done = complete_row(key, folder)
        if done is not None:
            return done
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    elif callable(model):
        model = model()  # a loader: the model is only loaded for an input that needs it
    t0 = time.perf_counter()
    opened = open_input(path)
    label_set = resolve_label_set(model, settings.label_set)
    image = None
    if opened.kind == "image":
        image = opened.read(model.config.n_channel_in)
        nuc = engine.predict_image(model, image, label_set=label_set, levels=settings.levels, tta=settings.tta,
                                   progress=progress, name=str(path))
        if not nuc.info.get("mpp"):
            nuc.info["mpp"] = opened.mpp or settings.mpp
    else:
        nuc = engine.predict_slide(model, path, label_set=label_set, levels=settings.levels, tta=settings.tta,
                                   mpp=settings.mpp, mask=_mask_for(settings, path, name),
                                   block_size=settings.block_size, progress=progress)
    if (folder / MARKER).exists():
        (folder / MARKER).unlink()  # outputs of other settings: no longer complete
    metadata = {"input": str(path), "label_set": label_set.name if label_set is not None else "",
                "model": key.get("model", ""), "stardist_hier_settings": json.dumps(key["settings"])}
    _write_outputs(nuc, folder, name, opened.kind, settings, image=image, metadata=metadata)
    row = _row(path, name, opened.kind, nuc, time.perf_counter() - t0, settings)
    atomic_write_json(folder / MARKER, {"key": key, "row": row})
    return row


