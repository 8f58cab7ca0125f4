"""Data, settings and variants of the real-data benchmark (``bench_realdata.py``, issue 12).

Data (``../shared/realdata``, or the folder named by ``STARDIST_HIER_REALDATA``):

* MoNuSeg ``monuseg/TCGA-HT-8564-01Z-00-DX1.{tif,xml}`` (1000 x 1000, 249 nuclei, no classes;
  every nucleus at the hierarchy's root, label set ``monuseg``), split by rows into a training
  region (rows ``0 .. split[0]-1``), a validation region (rows ``split[0] .. split[1]-1``:
  validation loss and threshold tuning) and a test region (rows ``split[1] ..``: the scores).
  Default split 600 / 750: 149, 50 and 63 nuclei (a nucleus cut by a region border counts in
  both regions).
* HGSC ``hgsc_rasters/hgsc_nest.jpg`` + ``hgsc_nest_{inst,type}_mask.npz`` (key ``nuc_raster``;
  1500 x 1500, 1294 nuclei); an instance's class is the majority non-zero type of its pixels
  (1 connective, 2 inflammatory, 3 neoplastic), label set ``hgsc`` (:data:`HGSC_HIERARCHY`).

Each region is normalised on its own with :func:`stardist_hier.patches.normalize_image`.

A variant (:class:`Variant`) is one row of the table: the model (stock ``StarDist2D`` or
``HierStarDist2D``), its training episodes (which data, what share of the steps), config
overrides, threshold tuning on/off and how images are sampled. :data:`ROWS` are the issue's five
rows, :data:`ABLATIONS` the ablations today's config allows; adding one is one entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace  # noqa: F401 (asdict used by the script)
from pathlib import Path

import numpy as np

__all__ = ["HGSC_HIERARCHY", "HGSC_NAMES", "Settings", "QUICK", "Episode", "Variant", "ROWS", "ABLATIONS",
           "HOOKS", "VARIANTS", "realdata_root", "load_data", "run_variant", "fingerprint", "variant_available"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "STARDIST_HIER_REALDATA"
MONUSEG_STEM = "monuseg/TCGA-HT-8564-01Z-00-DX1"

#: the default hierarchy plus the label set of the HGSC rasters (PanNuke-like types 1-3)
HGSC_HIERARCHY = {"extends": "default",
                  "label_sets": {"hgsc": {1: "connective", 2: "inflammatory", 3: "malignant_epithelial"}}}
HGSC_NAMES = {1: "connective", 2: "inflammatory", 3: "malignant_epithelial"}


def realdata_root(path=None):
    """The real-data folder: ``path``, else ``$STARDIST_HIER_REALDATA``, else ``../shared/realdata``.

    Returns ``None`` when the folder does not exist.
    """
    p = Path(path or os.environ.get(ENV_VAR) or PROJECT_ROOT.parent / "shared" / "realdata")
    return p if p.is_dir() else None


@dataclass(frozen=True)
class Settings:
    """Everything shared by all runs; part of each run's fingerprint.

    Attributes
    ----------
    n_rays, grid, unet_n_depth, unet_n_filter_base : int
        Network (stock StarDist parameters; ``grid`` is used along both axes).
    patch, batch : int
        Training patch size (pixels, square) and batch size.
    steps, steps_per_epoch : int
        Training steps per run (all episodes together) and per Keras epoch (one validation
        per epoch; the final weights are kept, no best-weights selection).
    split : tuple of int
        First row of the MoNuSeg validation region and of the test region.
    monuseg_cols, hgsc_size : int or None
        Crop MoNuSeg to its first ``monuseg_cols`` columns and HGSC to its top-left
        ``hgsc_size`` square (``None``: whole images; the quick configuration crops).
    nms_threshs, iou_threshs : tuple of float
        Grids of ``StarDist2D.optimize_thresholds`` (its defaults).
    iou : float
        IoU threshold of bPQ (matches need IoU > iou, HoVer-Net's rule).
    deterministic : bool
        Ask TensorFlow for deterministic kernels too (``seed_everything(..., True)``).
    """

    n_rays: int = 32
    grid: int = 2
    unet_n_depth: int = 3
    unet_n_filter_base: int = 32
    patch: int = 128
    batch: int = 4
    steps: int = 1000
    steps_per_epoch: int = 100
    split: tuple = (600, 750)
    monuseg_cols: int | None = None
    hgsc_size: int | None = None
    nms_threshs: tuple = (0.3, 0.4, 0.5)
    iou_threshs: tuple = (0.3, 0.5, 0.7)
    iou: float = 0.5
    deterministic: bool = False


#: the smallest configuration (the test's): tiny network, 4 steps, cropped images
QUICK = Settings(n_rays=8, unet_n_depth=2, unet_n_filter_base=8, patch=64, batch=2, steps=4, steps_per_epoch=2,
                 split=(600, 750), monuseg_cols=200, hgsc_size=192, nms_threshs=(0.4,), iou_threshs=(0.5,))


@dataclass(frozen=True)
class Episode:
    """One ``train`` call.

    Attributes
    ----------
    data : tuple of str
        Training images: ``'monuseg'`` (the MoNuSeg training region, every nucleus at the
        root), ``'hgsc'`` (HGSC with its classes, label set ``hgsc``), ``'hgsc_root'`` (HGSC,
        every nucleus at the root: no class information). Several: mixed within batches.
        Stock StarDist ignores classes, so ``'hgsc'`` and ``'hgsc_root'`` are the same to it.
    share : float
        Share of ``Settings.steps`` spent in this episode.
    """

    data: tuple
    share: float = 1.0


@dataclass(frozen=True)
class Variant:
    """One row of the table.

    Attributes
    ----------
    label : str
        Description shown in the table.
    model : {'stock', 'hier'}
        ``stardist.models.StarDist2D`` (no classes) or ``HierStarDist2D`` (hierarchy
        :data:`HGSC_HIERARCHY`).
    episodes : tuple of Episode
    config : dict
        Config overrides (``Config2D`` / ``HierConfig2D`` keys) on top of the base config.
    tune : bool
        ``optimize_thresholds`` on the validation region; ``False``: prob 0.5, nms 0.4.
    sampling : {'image', 'nucleus'}
        In a mixed episode, each batch element picks an image uniformly (``'image'``) or in
        proportion to the images' nucleus counts (``'nucleus'``, by repeating entries).
    row : int or None
        Row number of the issue's table.
    requires : tuple of str
        Config keys the variant needs; it is unavailable (listed, not run) while the
        installed ``HierConfig2D`` lacks one (hooks for ablations still to be built).
    """

    label: str
    model: str
    episodes: tuple
    config: dict = field(default_factory=dict)
    tune: bool = True
    sampling: str = "image"
    row: int | None = None
    requires: tuple = ()

    def spec(self):
        """Plain-dict form (for the fingerprint and the records)."""
        d = asdict(self)
        d["episodes"] = [asdict(e) for e in self.episodes]
        return d


MIXED = (Episode(("monuseg", "hgsc")),)

#: the issue's table
ROWS = {
    "stock_monuseg": Variant("stock StarDist2D, MoNuSeg only", "stock", (Episode(("monuseg",)),), row=1),
    "stock_mixed": Variant("stock StarDist2D, MoNuSeg + HGSC without classes", "stock", MIXED, row=2),
    "hier_monuseg": Variant("HierStarDist2D, MoNuSeg alone, every nucleus at the root", "hier",
                            (Episode(("monuseg",)),), row=3),
    "hier_mixed": Variant("HierStarDist2D, MoNuSeg + HGSC with its classes, mixed in batches", "hier", MIXED, row=4),
    "hier_seq": Variant("HierStarDist2D, HGSC 500 steps then MoNuSeg 500 steps (paper)", "hier",
                        (Episode(("hgsc",), 0.5), Episode(("monuseg",), 0.5)), row=5),
}

#: ablations of row 4 that today's config allows (each against rows 2 and 4)
ABLATIONS = {
    "hier_mixed_root": Variant("HierStarDist2D, MoNuSeg + HGSC all at the root (no classes)", "hier",
                               (Episode(("monuseg", "hgsc_root")),)),
    "hier_mixed_lw0": Variant("row 4, class loss weight 0 (train_loss_weights 1, 0.2, 0)", "hier", MIXED,
                              config=dict(train_loss_weights=(1.0, 0.2, 0.0))),
    "hier_mixed_lw0.2": Variant("row 4, class loss weight 0.2", "hier", MIXED,
                                config=dict(train_loss_weights=(1.0, 0.2, 0.2))),
    "hier_mixed_ft0": Variant("row 4, focal Tversky off (train_focal_tversky_weight 0)", "hier", MIXED,
                              config=dict(train_focal_tversky_weight=0.0)),
    "hier_mixed_ftclass": Variant("row 4, focal Tversky classwise", "hier", MIXED,
                                  config=dict(train_focal_tversky_mode="classwise")),
    "hier_mixed_nucleus": Variant("row 4, images sampled by nucleus count", "hier", MIXED, sampling="nucleus"),
    "stock_mixed_nucleus": Variant("row 2, images sampled by nucleus count", "stock", MIXED, sampling="nucleus"),
    "hier_mixed_notune": Variant("row 4, no threshold tuning (0.5 / 0.4)", "hier", MIXED, tune=False),
    "stock_mixed_notune": Variant("row 2, no threshold tuning (0.5 / 0.4)", "stock", MIXED, tune=False),
}

#: ablations whose config keys do not exist yet (run as soon as HierConfig2D has them)
HOOKS = {
    "hier_mixed_persample": Variant("row 4, class loss normalised per sample over its valid pixels", "hier", MIXED,
                                    config=dict(train_class_loss_normalization="per_sample"),
                                    requires=("train_class_loss_normalization",)),
}

VARIANTS = {**ROWS, **ABLATIONS, **HOOKS}

#: base config; the class-loss keys are pinned (not left to the defaults) so that a change
#: of HierConfig2D's defaults does not silently change the study
_HIER_PINNED = dict(train_loss_weights=(1.0, 0.2, 1.0), train_class_ce_weight=1.0, train_focal_tversky_weight=1.0,
                    train_focal_tversky_alpha=0.7, train_focal_tversky_gamma=0.75,
                    train_focal_tversky_mode="pixelwise", predict_class_from="instance")


def variant_available(variant):
    """``(True, '')`` or ``(False, reason)`` for a variant whose config keys do not exist yet."""
    if not variant.requires:
        return True, ""
    from stardist_hier.model.config import HIER_CONFIG_DEFAULTS

    missing = [k for k in variant.requires if k not in HIER_CONFIG_DEFAULTS]
    return (not missing), (f"HierConfig2D has no {', '.join(missing)} yet" if missing else "")


def fingerprint(settings, variant):
    """Short hash of the settings and the variant spec: a record is reused only if it matches."""
    blob = json.dumps([asdict(settings), variant.spec()], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------
# data


def _relabel(inst):
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(np.asarray(inst, np.int32))[0].astype(np.int32)


def load_data(root, settings):
    """The MoNuSeg regions and the HGSC image, normalised, with their classes.

    Returns
    -------
    dict
        ``'monuseg_train' | 'monuseg_val' | 'monuseg_test' | 'hgsc'`` -> ``(image, instances,
        classes)`` with classes ``{id: class id}`` (MoNuSeg: 1 = root of label set
        ``monuseg``; HGSC: 1-3 of label set ``hgsc``).

    Raises
    ------
    FileNotFoundError
        A file of the data folder is missing (named).
    """
    import tifffile
    from skimage.io import imread

    from stardist_hier.metrics import instance_classes
    from stardist_hier.patches import normalize_image
    from stardist_hier.readers.imagescope import rasterize, read_imagescope

    root = Path(root)
    tif, xml = root / f"{MONUSEG_STEM}.tif", root / f"{MONUSEG_STEM}.xml"
    hdir = root / "hgsc_rasters"
    for p in (tif, xml, hdir / "hgsc_nest.jpg", hdir / "hgsc_nest_inst_mask.npz", hdir / "hgsc_nest_type_mask.npz"):
        if not p.is_file():
            raise FileNotFoundError(f"real-data file missing: {p}")
    img = tifffile.imread(tif)[..., :3]
    inst, _, _ = rasterize(read_imagescope(xml), img.shape[:2], lambda name: 1, path=str(xml))
    if settings.monuseg_cols:
        img, inst = img[:, : settings.monuseg_cols], inst[:, : settings.monuseg_cols]
    a, b = settings.split
    if not 0 < a < b < img.shape[0]:
        raise ValueError(f"split {settings.split}: need 0 < validation row < test row < {img.shape[0]}")
    out = {}
    for name, rows in (("monuseg_train", slice(0, a)), ("monuseg_val", slice(a, b)), ("monuseg_test", slice(b, None))):
        y = _relabel(inst[rows])
        out[name] = (normalize_image(img[rows]), y, {int(i): 1 for i in np.unique(y[y > 0])})
    himg = imread(hdir / "hgsc_nest.jpg")[..., :3]
    hinst = np.load(hdir / "hgsc_nest_inst_mask.npz")["nuc_raster"]
    htype = np.load(hdir / "hgsc_nest_type_mask.npz")["nuc_raster"]
    if settings.hgsc_size:
        s = settings.hgsc_size
        himg, hinst, htype = himg[:s, :s], hinst[:s, :s], htype[:s, :s]
    hinst = _relabel(hinst)
    ids = np.unique(hinst[hinst > 0])
    cls = instance_classes(hinst, htype, ids)
    if (cls == 0).any():
        raise ValueError(f"{hdir}: {int((cls == 0).sum())} HGSC nuclei have no type pixels")
    out["hgsc"] = (normalize_image(himg), hinst, {int(i): int(c) for i, c in zip(ids, cls)})
    return out


def _episode_data(data, episode, variant):
    """``X, Y, classes, datasets`` of one episode, with the variant's sampling."""
    parts = []
    for name in episode.data:
        if name == "monuseg":
            x, y, c = data["monuseg_train"]
            parts.append((x, y, c, "monuseg"))
        elif name == "hgsc":
            parts.append((*data["hgsc"], "hgsc"))
        elif name == "hgsc_root":
            x, y, c = data["hgsc"]
            parts.append((x, y, {i: 1 for i in c}, "monuseg"))
        else:
            raise ValueError(f"episode data {name!r}: use 'monuseg', 'hgsc' or 'hgsc_root'")
    if variant.sampling == "nucleus":
        counts = [len(p[2]) for p in parts]
        reps = [max(1, int(round(n / min(counts)))) for n in counts]
    elif variant.sampling == "image":
        reps = [1] * len(parts)
    else:
        raise ValueError(f"sampling {variant.sampling!r}: use 'image' or 'nucleus'")
    parts = [p for p, r in zip(parts, reps) for _ in range(r)]
    return tuple(list(t) for t in zip(*parts))


# ----------------------------------------------------------------------------------------
# one run


def _build(variant, settings, seed):
    from stardist.models import Config2D, StarDist2D

    from stardist_hier.model.build import build_model, seed_everything

    params = dict(n_rays=settings.n_rays, grid=(settings.grid,) * 2, n_channel_in=3,
                  unet_n_depth=settings.unet_n_depth, unet_n_filter_base=settings.unet_n_filter_base,
                  train_patch_size=(settings.patch,) * 2, train_batch_size=settings.batch,
                  train_steps_per_epoch=settings.steps_per_epoch)
    if variant.model == "stock":
        seed_everything(seed, settings.deterministic)
        conf = Config2D(**params, train_loss_weights=(1.0, 0.2), **variant.config)
        return StarDist2D(conf, name=None, basedir=None)
    if variant.model == "hier":
        return build_model(HGSC_HIERARCHY, {**params, **_HIER_PINNED, **variant.config}, seed=seed,
                           deterministic=settings.deterministic)
    raise ValueError(f"variant model {variant.model!r}: use 'stock' or 'hier'")


def _count(ids, names):
    ids = np.asarray(ids, int)
    return {names[k]: int((ids == k).sum()) for k in sorted(names)}


def run_variant(variant, seed, data, settings, log=print):
    """Train and score one variant for one seed.

    Returns
    -------
    dict
        The record: ``bPQ`` (and DQ, SQ, TP, FP, FN), ``n_pred``, ``n_gt``, ``thresholds``,
        per episode steps / seconds / final loss, for ``HierStarDist2D`` the predicted class
        counts at the ``hgsc`` label set and at depth 1, and the model config used.
    """
    from stardist_hier.metrics import image_pq

    ok, why = variant_available(variant)
    if not ok:
        raise RuntimeError(f"variant unavailable: {why}")
    t0 = time.perf_counter()
    model = _build(variant, settings, seed)
    xv, yv, cv = data["monuseg_val"]
    episodes = []
    for k, ep in enumerate(variant.episodes):
        steps = int(round(ep.share * settings.steps))
        epochs = max(1, steps // settings.steps_per_epoch)
        X, Y, C, D = _episode_data(data, ep, variant)
        t = time.perf_counter()
        if variant.model == "stock":
            # stock train has no verbose argument: keep its per-step progress bar out of the log
            with contextlib.redirect_stdout(io.StringIO()):
                hist = model.train(X, Y, validation_data=([xv], [yv]), epochs=epochs,
                                   steps_per_epoch=settings.steps_per_epoch)
        else:
            hist = model.train(X, Y, classes=C, dataset=D, validation_data=([xv], [yv], [cv], ["monuseg"]),
                               epochs=epochs, steps_per_epoch=settings.steps_per_epoch, verbose=0)
        h = hist.history
        episodes.append(dict(data=list(ep.data), steps=epochs * settings.steps_per_epoch,
                             seconds=round(time.perf_counter() - t, 1),
                             loss=float(h["loss"][-1]), val_loss=float(h["val_loss"][-1]),
                             history_last={k: float(v[-1]) for k, v in h.items() if "loss" in k}))
        log(f"    episode {k + 1}: {episodes[-1]}")
    t_train = time.perf_counter() - t0
    if variant.tune:
        th = model.optimize_thresholds([xv], [yv], nms_threshs=list(settings.nms_threshs),
                                       iou_threshs=list(settings.iou_threshs), save_to_json=False)
        thresholds = dict(prob=float(th["prob"]), nms=float(th["nms"]))
    else:
        thresholds = dict(prob=0.5, nms=0.4)
    xt, yt, _ = data["monuseg_test"]
    kw = dict(prob_thresh=thresholds["prob"], nms_thresh=thresholds["nms"], sparse=False, show_tile_progress=False)
    rec = {}
    if variant.model == "hier":
        labels, det = model.predict_instances(xt, label_set="hgsc", **kw)
        rec["classes_hgsc"] = _count(det["class_id"], HGSC_NAMES)
        cut = model.hierarchy.cut(1)
        rec["classes_depth1"] = _count(cut.classify(det["class_prob"]), dict(cut.nodes))
    else:
        labels, det = model.predict_instances(xt, **kw)
    pq = image_pq(yt, labels, thresh=settings.iou)
    conf = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(model.config).items()
            if k.startswith(("train_loss", "train_class", "train_focal", "predict_class", "unet_n", "n_rays", "grid"))}
    rec.update(bPQ=float(pq["pq"]), DQ=float(pq["dq"]), SQ=float(pq["sq"]), TP=pq["tp"], FP=pq["fp"], FN=pq["fn"],
               n_pred=int(len(np.unique(labels[labels > 0]))), n_gt=int(len(np.unique(yt[yt > 0]))),
               thresholds=thresholds, episodes=episodes, train_seconds=round(t_train, 1),
               seconds=round(time.perf_counter() - t0, 1), config=conf)
    return rec


def with_settings(settings, **changes):
    """A copy of ``settings`` with changes (tuples given as lists are converted)."""
    return replace(settings, **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})
