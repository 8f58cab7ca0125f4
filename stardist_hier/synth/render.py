"""Synthetic H&E nucleus datasets whose label sets are cuts of the default class hierarchy.

The real datasets (PanNuke, MoNuSAC, CoNSeP, MoNuSeg) sit behind registration pages; these
stand-ins exist everywhere, cost seconds to make and go through the same patch format, so
training, evaluation and the experiment runner read them through their real code paths.

What a tile looks like
----------------------
Tiles are rendered in optical density: hematoxylin and eosin concentration maps are mixed
with per-dataset stain vectors (Beer-Lambert, ``I = I0 * exp(-OD)``), then blurred and given
sensor noise. Eosin-pink stroma has wavy collagen fibres with loose gaps and small vessels
holding red blood cells; epithelium forms glands (healthy, with lumens and nuclei palisading
along the basement membrane) or solid nests (malignant, crowded and overlapping). Nuclei
are hematoxylin-dark with chromatin texture; touching and overlapping nuclei are common and
overlaps resolve in the instance mask with the later-drawn nucleus on top.

Morphology follows the hierarchy
--------------------------------
Every leaf of the default hierarchy has its own morphology (:data:`MORPHOLOGY`). Siblings
share their super-class's traits and differ in finer ones, so a coarse label says something,
but not everything, about the leaf:

- inflammatory: small, round-ish, dark. Lymphocyte round and dense; plasma cell eccentric
  in amphophilic cytoplasm with a pale hof and clock-face chromatin; neutrophil 3-5 lobes in
  pale cytoplasm; eosinophil two lobes in pink granular cytoplasm; macrophage larger, pale,
  kidney-shaped, in foamy cytoplasm.
- connective: elongated along the stroma's fibres. Fibroblast thin and tapered; muscle
  (smooth) cigar-shaped with blunt ends in bundles of pink cytoplasm; endothelial thin, flat
  and curved along a vessel lumen.
- epithelial: large, oval, vesicular (pale centre, dark membrane). Malignant larger, more
  pleomorphic and irregular, hyperchromatic with coarse chromatin and prominent nucleoli.
- other: dead nuclei small and pyknotic or fragmented (karyorrhexis) in hypereosinophilic
  shrunken cytoplasm; miscellaneous nuclei irregular with variable staining.

The datasets
------------
:data:`DATASETS` mimics four real datasets' label cuts, class imbalance and domain (stain,
nucleus density, organ mix); frequencies are approximations of the published counts, not
exact. MoNuSAC annotates only its four classes: other nuclei (stromal, plasma cells, ...)
are drawn in its images but not annotated. By default they stay background in the mask, as
in the real ground truth (a detector is penalised for finding them there too);
``unannotated='ignore'`` marks them as ignore regions (negative instance ids) instead.
Its test split also has a few "Ambiguous" ignore regions, as the real test annotations.

Everything is deterministic from a seed: every tile has its own
:class:`numpy.random.SeedSequence` derived from ``(seed, dataset, split, index)``, so a tile
does not depend on how many others are made or in which order.

Usage
-----
.. code-block:: python

    from stardist_hier import synth
    synth.generate_all("data/synth", counts={"train": 160, "val": 32, "test": 48}, seed=0)
    tile = synth.generate_tile("consep", synth.tile_seed(0, "consep", "train", 0), size=128)
    synth.save_overlay([tile], "overlay.png")

or ``stardist-hier synth --out data/synth``.

This module is numpy/scipy/scikit-image only (no TensorFlow).
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..hierarchy import ClassHierarchy, HierarchyError

__all__ = [
    "Stain", "Morphology", "Tissue", "DatasetSpec", "SynthTile",
    "MORPHOLOGY", "DATASETS", "SPLITS", "DEFAULT_COUNTS",
    "leaf_class_ids", "tile_seed", "generate_tile", "iter_tiles", "generate_dataset", "dataset_complete",
    "generate_all", "save_overlay",
]

SPLITS = ("train", "val", "test")
#: tiles per split made by default (CLI and :func:`generate_all`)
DEFAULT_COUNTS = {"train": 160, "val": 32, "test": 48}

# Ruifrok & Johnston's optical-density vectors (RGB) of hematoxylin and eosin.
_REF_H = np.array([0.650, 0.704, 0.286])
_REF_E = np.array([0.072, 0.990, 0.105])
_RBC = np.array([0.10, 0.85, 0.52])
_IGNORE = -1  # patches.IGNORE: the instance id of ignore regions


# ----------------------------------------------------------------------------------------
# Specifications


@dataclass(frozen=True)
class Stain:
    """Stain of a dataset or tissue: OD vectors, gains and the scanner's white.

    Parameters
    ----------
    h, e : tuple of float
        Optical density (R, G, B) per unit of hematoxylin / eosin (normalised on use).
    h_gain, e_gain : float
        Staining strength multipliers.
    white : tuple of float
        RGB of an empty slide (light source and glass tint).
    """

    h: tuple = tuple(_REF_H)
    e: tuple = tuple(_REF_E)
    h_gain: float = 1.0
    e_gain: float = 1.0
    white: tuple = (244.0, 242.0, 246.0)

    def perturbed(self, rng, spread):
        """A copy with vectors and gains jittered by ``spread`` (0 = identical)."""
        h = np.asarray(self.h) + rng.normal(0, spread * 0.6, 3)
        e = np.asarray(self.e) + rng.normal(0, spread * 0.6, 3)
        h, e = np.clip(h, 0.05, None), np.clip(e, 0.02, None)
        white = np.clip(np.asarray(self.white) + rng.normal(0, spread * 40, 3), 200, 255)
        return Stain(tuple(h / np.linalg.norm(h)), tuple(e / np.linalg.norm(e)),
                     float(self.h_gain * math.exp(rng.normal(0, spread * 1.5))),
                     float(self.e_gain * math.exp(rng.normal(0, spread * 1.5))), tuple(white))


@dataclass(frozen=True)
class Morphology:
    """How nuclei of one leaf class look and where they sit (sizes in pixels at 40x).

    Parameters
    ----------
    shape : str
        ``ellipse``, ``lobed``, ``kidney``, ``spindle`` (tapered ends), ``blunt`` (cigar),
        ``flat`` (thin, curved along a vessel) or ``dead`` (pyknotic or fragmented).
    a, b : tuple of float
        Half length and half width: (mean, coefficient of variation).
    irregular : float
        Amplitude of random contour harmonics (pleomorphism).
    lobes : tuple of int
        Range of lobes for ``lobed`` nuclei.
    bend : float
        Typical curvature of elongated nuclei.
    hema : tuple of float
        Hematoxylin concentration: (mean, coefficient of variation).
    texture : float
        Chromatin contrast; ``grain`` in (0, 1) mixes fine (0) and coarse (1) clumps.
    rim : float
        Darkening at the nuclear membrane; ``pallor`` lightens the centre (vesicular).
    nucleoli : tuple
        (min count, max count, strength).
    clockface : bool
        Peripheral chromatin clumps (plasma cells).
    cytoplasm : str or None
        Cell body painted around the nucleus (``neutrophil``, ``eosinophil``, ``plasma``,
        ``macrophage``, ``apoptotic``, ``muscle``) or None.
    site : str
        Where it sits: ``gland`` (band along the epithelium's edge), ``nest`` (anywhere in
        epithelium), ``infiltrate`` (stroma, often clustered), ``stroma``, ``bundle``,
        ``vessel`` or ``any``.
    overlap : float
        Largest accepted fraction of the nucleus covering already drawn nuclei.
    """

    shape: str
    a: tuple
    b: tuple
    irregular: float = 0.04
    lobes: tuple = (1, 1)
    bend: float = 0.0
    hema: tuple = (1.0, 0.1)
    texture: float = 0.15
    grain: float = 0.5
    rim: float = 0.0
    pallor: float = 0.0
    nucleoli: tuple = (0, 0, 0.0)
    clockface: bool = False
    cytoplasm: str | None = None
    site: str = "any"
    overlap: float = 0.08


#: morphology of every leaf of the default hierarchy
MORPHOLOGY = {
    # epithelial: large, oval, vesicular; malignant larger, pleomorphic, hyperchromatic
    "healthy_epithelial": Morphology(
        "ellipse", a=(14.5, 0.10), b=(9.5, 0.10), irregular=0.03, hema=(0.85, 0.10), texture=0.14,
        grain=0.3, rim=0.55, pallor=0.35, nucleoli=(0, 1, 0.35), site="gland", overlap=0.12),
    "malignant_epithelial": Morphology(
        "ellipse", a=(19.0, 0.20), b=(13.5, 0.18), irregular=0.10, hema=(1.20, 0.20), texture=0.32,
        grain=0.8, rim=0.45, pallor=0.15, nucleoli=(1, 3, 0.9), site="nest", overlap=0.22),
    # inflammatory: small, round, dark
    "lymphocyte": Morphology(
        "ellipse", a=(9.8, 0.08), b=(9.0, 0.08), irregular=0.03, hema=(1.85, 0.08), texture=0.18,
        grain=0.7, rim=0.15, site="infiltrate", overlap=0.06),
    "plasma_cell": Morphology(
        "ellipse", a=(10.0, 0.08), b=(8.6, 0.08), irregular=0.03, hema=(1.25, 0.10), texture=0.10,
        grain=0.6, rim=0.35, clockface=True, cytoplasm="plasma", site="infiltrate", overlap=0.05),
    "neutrophil": Morphology(
        "lobed", a=(4.6, 0.10), b=(4.2, 0.10), lobes=(3, 5), bend=0.05, hema=(1.70, 0.08),
        texture=0.08, grain=0.5, cytoplasm="neutrophil", site="infiltrate", overlap=0.04),
    "eosinophil": Morphology(
        "lobed", a=(6.0, 0.10), b=(5.4, 0.10), lobes=(2, 2), bend=0.03, hema=(1.55, 0.08),
        texture=0.08, grain=0.5, cytoplasm="eosinophil", site="infiltrate", overlap=0.04),
    "macrophage": Morphology(
        "kidney", a=(13.5, 0.12), b=(10.0, 0.12), irregular=0.05, hema=(0.75, 0.12), texture=0.12,
        grain=0.2, rim=0.4, pallor=0.1, nucleoli=(0, 1, 0.3), cytoplasm="macrophage", site="stroma",
        overlap=0.05),
    # connective: elongated along the fibres
    "fibroblast": Morphology(
        "spindle", a=(22.0, 0.15), b=(4.2, 0.15), bend=0.012, hema=(1.40, 0.12), texture=0.12,
        grain=0.4, site="stroma", overlap=0.05),
    "muscle": Morphology(
        "blunt", a=(26.0, 0.12), b=(6.0, 0.12), bend=0.004, hema=(0.95, 0.10), texture=0.10,
        grain=0.2, rim=0.25, pallor=0.05, cytoplasm="muscle", site="bundle", overlap=0.04),
    "endothelial": Morphology(
        "flat", a=(16.0, 0.15), b=(3.0, 0.15), hema=(1.45, 0.10), texture=0.08, grain=0.4,
        site="vessel", overlap=0.05),
    # other: dead (pyknotic / karyorrhectic) and miscellaneous irregular nuclei
    "dead": Morphology(
        "dead", a=(5.0, 0.15), b=(4.6, 0.15), irregular=0.06, hema=(2.30, 0.08), texture=0.04,
        grain=0.5, cytoplasm="apoptotic", site="any", overlap=0.04),
    "miscellaneous": Morphology(
        "ellipse", a=(12.0, 0.25), b=(8.5, 0.25), irregular=0.16, hema=(1.10, 0.30), texture=0.25,
        grain=0.6, rim=0.2, pallor=0.1, nucleoli=(0, 1, 0.4), site="any", overlap=0.08),
}


@dataclass(frozen=True)
class Tissue:
    """An organ or source of a dataset.

    Parameters
    ----------
    name : str
        Written to the index's ``tissue`` column.
    weight : float
        Share of the dataset's tiles.
    leaf_scale : dict
        Node (leaf or super-class) -> multiplier on the dataset's leaf frequencies.
    density : float
        Multiplier on the dataset's nuclei per tile.
    """

    name: str
    weight: float = 1.0
    leaf_scale: dict = field(default_factory=dict)
    density: float = 1.0


@dataclass(frozen=True)
class DatasetSpec:
    """A synthetic dataset: label cut, class frequencies and domain.

    Parameters
    ----------
    name : str
        Dataset name (directory under the output root).
    label_set : str
        Label set of the hierarchy the masks are written in.
    leaf_freq : dict
        Leaf -> relative frequency of nuclei drawn in its images. Leaves no class of the
        label set covers must be listed in ``unannotated``.
    tissues : tuple of Tissue
        Organs or sources, each with its own stain.
    stain : Stain
        The dataset's base stain.
    stain_spread : float
        How much the tissues' stains differ from the base.
    density : float
        Mean nuclei per 256x256 tile.
    unannotated : tuple of str
        Leaves drawn but not annotated (MoNuSAC's other nuclei).
    ambiguous : dict
        Split -> mean number of ignore regions per 256x256 tile (MoNuSAC's test set has
        "Ambiguous" regions).
    """

    name: str
    label_set: str
    leaf_freq: dict
    tissues: tuple
    stain: Stain
    stain_spread: float = 0.05
    density: float = 30.0
    unannotated: tuple = ()
    ambiguous: dict = field(default_factory=dict)
    description: str = ""


def _split_group(total, shares):
    return {k: total * v / sum(shares.values()) for k, v in shares.items()}


# The immune and stromal mixes below are rough tissue-level proportions; they only decide
# which leaves the coarse classes contain, the coarse shares follow the real datasets.
_IMMUNE = {"lymphocyte": 0.62, "plasma_cell": 0.14, "neutrophil": 0.09, "eosinophil": 0.04, "macrophage": 0.11}
_STROMA = {"fibroblast": 0.62, "muscle": 0.20, "endothelial": 0.18}

# PanNuke (Gamper et al. 2020): 189,744 nuclei; neoplastic 77,403, inflammatory 32,276,
# connective 50,585, dead 2,908, epithelial 26,572. It labels every nucleus with one of its
# five classes, so no "miscellaneous" nuclei are drawn.
_PANNUKE = {"malignant_epithelial": 0.408, "healthy_epithelial": 0.140, "dead": 0.015,
            **_split_group(0.170, _IMMUNE), **_split_group(0.267, _STROMA)}

# MoNuSAC 2020: ~47k annotated nuclei, epithelial and lymphocytes dominate, neutrophils and
# macrophages are a few percent each. The stroma and other immune cells are in the images
# but not annotated (about a fifth of the nuclei here).
_MONUSAC = {"healthy_epithelial": 0.10, "malignant_epithelial": 0.30, "lymphocyte": 0.32,
            "neutrophil": 0.035, "macrophage": 0.045,
            "plasma_cell": 0.03, "eosinophil": 0.005, "fibroblast": 0.10, "muscle": 0.02,
            "endothelial": 0.03, "dead": 0.01, "miscellaneous": 0.005}

# CoNSeP (Graham et al. 2019): colorectal adenocarcinoma, 24,319 nuclei; malignant
# epithelium, fibroblasts and inflammatory cells dominate, "other" is rare.
_CONSEP = {"malignant_epithelial": 0.32, "healthy_epithelial": 0.11,
           **_split_group(0.22, {"lymphocyte": 0.50, "plasma_cell": 0.30, "neutrophil": 0.06,
                                 "eosinophil": 0.08, "macrophage": 0.06}),
           "fibroblast": 0.19, "muscle": 0.08, "endothelial": 0.05, "dead": 0.012, "miscellaneous": 0.018}

# MoNuSeg (Kumar et al. 2017/2020): tumour tissue of seven organs, mostly epithelial.
_MONUSEG = {"malignant_epithelial": 0.36, "healthy_epithelial": 0.14,
            **_split_group(0.24, _IMMUNE), **_split_group(0.24, _STROMA),
            "dead": 0.01, "miscellaneous": 0.01}

#: the synthetic datasets, by name
DATASETS = {
    "pannuke": DatasetSpec(
        "pannuke", "pannuke", _PANNUKE,
        tissues=(
            Tissue("Breast", 3.0, {"malignant_epithelial": 1.4, "healthy_epithelial": 0.5}),
            Tissue("Colon", 1.8, {"healthy_epithelial": 1.6, "plasma_cell": 2.0, "eosinophil": 2.0}, 1.2),
            Tissue("Lung", 0.8, {"inflammatory": 1.8, "macrophage": 2.5, "neutrophil": 1.5}, 0.9),
            Tissue("Kidney", 0.6, {"healthy_epithelial": 2.0, "malignant_epithelial": 0.8, "endothelial": 2.0}),
            Tissue("Prostate", 0.7, {"muscle": 2.5, "healthy_epithelial": 1.3}),
            Tissue("Skin", 0.6, {"connective": 1.6, "inflammatory": 1.3}, 0.8),
            Tissue("Uterus", 0.5, {"connective": 2.0, "muscle": 2.0}, 1.1),
            Tissue("Esophagus", 0.6, {"malignant_epithelial": 1.2, "inflammatory": 1.2}),
        ),
        stain=Stain(h=(0.62, 0.72, 0.31), e=(0.09, 0.98, 0.13), h_gain=1.0, e_gain=1.0,
                    white=(242, 238, 244)),
        stain_spread=0.10, density=24.0,
        description="PanNuke-like: 5 classes, several organs, each with its own stain"),
    "monusac": DatasetSpec(
        "monusac", "monusac", _MONUSAC,
        tissues=(
            Tissue("Lung", 1.0, {"lymphocyte": 1.3, "macrophage": 1.8, "neutrophil": 1.4}),
            Tissue("Kidney", 1.0, {"healthy_epithelial": 1.6, "endothelial": 1.5}),
            Tissue("Breast", 1.2, {"malignant_epithelial": 1.3}),
            Tissue("Prostate", 0.9, {"muscle": 2.5, "healthy_epithelial": 1.2}),
        ),
        stain=Stain(h=(0.55, 0.74, 0.39), e=(0.14, 0.98, 0.16), h_gain=1.18, e_gain=0.78,
                    white=(236, 236, 244)),
        stain_spread=0.07, density=30.0, unannotated=(
            "plasma_cell", "eosinophil", "fibroblast", "muscle", "endothelial", "dead", "miscellaneous"),
        ambiguous={"test": 0.5},
        description="MoNuSAC-like: epithelial (coarse) + lymphocyte, neutrophil, macrophage; "
                    "other nuclei present but not annotated"),
    "consep": DatasetSpec(
        "consep", "consep", _CONSEP,
        tissues=(Tissue("Colon", 1.0),),
        stain=Stain(h=(0.62, 0.74, 0.26), e=(0.05, 0.97, 0.24), h_gain=1.05, e_gain=1.2,
                    white=(246, 240, 246)),
        stain_spread=0.03, density=40.0,
        description="CoNSeP-like: 7 classes, colorectal adenocarcinoma, one centre"),
    "monuseg": DatasetSpec(
        "monuseg", "monuseg", _MONUSEG,
        tissues=tuple(Tissue(t) for t in ("Breast", "Kidney", "Liver", "Prostate", "Bladder", "Colon", "Stomach")),
        stain=Stain(h=(0.66, 0.68, 0.32), e=(0.10, 0.99, 0.10), h_gain=1.1, e_gain=0.9,
                    white=(240, 238, 242)),
        stain_spread=0.12, density=48.0,
        description="MoNuSeg-like: no classes (every nucleus labelled at the root), seven organs"),
}


# ----------------------------------------------------------------------------------------
# Label cuts


def leaf_class_ids(label_set, hierarchy=None):
    """Map every leaf to the class id of the label-set node that covers it.

    Parameters
    ----------
    label_set : str or LabelSet
        Name of a label set of ``hierarchy`` (or the label set itself).
    hierarchy : ClassHierarchy, optional
        Defaults to :meth:`ClassHierarchy.default`.

    Returns
    -------
    dict
        Leaf name -> class id, or None for leaves that no class of the label set covers.
    """
    h = _default_hierarchy() if hierarchy is None else hierarchy
    ls = h.label_set(label_set)
    out = {}
    for leaf in h.leaves:
        covering = [cid for cid, node in ls.nodes.items() if node == leaf or node in h.ancestors(leaf)]
        out[leaf] = covering[0] if covering else None
    return out


def _check_spec(spec, hierarchy):
    ids = leaf_class_ids(spec.label_set, hierarchy)
    for leaf, freq in spec.leaf_freq.items():
        if leaf not in ids:
            raise HierarchyError(f"synthetic dataset '{spec.name}': '{leaf}' is not a leaf of {hierarchy.source}")
        if leaf not in MORPHOLOGY:
            raise HierarchyError(f"synthetic dataset '{spec.name}': no morphology for leaf '{leaf}'")
        if ids[leaf] is None and leaf not in spec.unannotated:
            raise HierarchyError(
                f"synthetic dataset '{spec.name}': leaf '{leaf}' is drawn but label set "
                f"'{spec.label_set}' has no class covering it (list it in 'unannotated')")
        if ids[leaf] is not None and leaf in spec.unannotated:
            raise HierarchyError(f"synthetic dataset '{spec.name}': '{leaf}' is both labelled and unannotated")
    return ids


@functools.lru_cache(maxsize=1)
def _default_hierarchy():
    # parsed once per process: tiles are generated by the thousand
    return ClassHierarchy.default()


def _get_spec(dataset):
    if isinstance(dataset, DatasetSpec):
        return dataset
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(f"unknown synthetic dataset {dataset!r}; known: {', '.join(DATASETS)}") from None


# ----------------------------------------------------------------------------------------
# Seeds


def tile_seed(seed, dataset, split, index):
    """The :class:`numpy.random.SeedSequence` of one tile.

    Derived from the run's seed, the dataset's name, the split and the tile's index only,
    so each tile is the same whatever else is generated.
    """
    split_no = SPLITS.index(split) if split in SPLITS else zlib.crc32(str(split).encode())
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(str(dataset).encode()), split_no, int(index)])


def _tissue_stain(spec, tissue):
    # Fixed per (dataset, tissue), independent of the seed: the domain is a property of the
    # dataset, and two seeds should give two samples of the same domain.
    if len(spec.tissues) == 1:
        return spec.stain
    rng = np.random.default_rng(zlib.crc32(f"{spec.name}/{tissue.name}".encode()))
    return spec.stain.perturbed(rng, spec.stain_spread)


# ----------------------------------------------------------------------------------------
# Drawing helpers


def _smooth_noise(rng, shape, sigma):
    """Gaussian-filtered white noise scaled to unit standard deviation.

    Filtered in the Fourier domain (periodic boundaries): the cost does not grow with
    ``sigma``, and tile-wide fields use sigmas of tens of pixels.
    """
    spec = np.fft.rfft2(rng.standard_normal(shape))
    n = np.fft.irfft2(ndi.fourier_gaussian(spec, sigma, n=shape[1], axis=-1), s=shape)
    return n / (n.std() + 1e-9)


class _Sampler:
    """Draws positions with probability proportional to a weight map (cumulative sums cached)."""

    def __init__(self, weight):
        self.shape = weight.shape
        self.cs = np.cumsum(weight.ravel(), dtype=np.float64)
        self.any = bool(self.cs[-1] > 0)

    def __call__(self, rng, n=1):
        size = self.cs.size
        if not self.any:
            flat = rng.integers(0, size, n)
        else:
            flat = np.minimum(np.searchsorted(self.cs, rng.random(n) * self.cs[-1], side="right"), size - 1)
        y, x = np.divmod(flat, self.shape[1])
        return np.stack([y + rng.random(n) - 0.5, x + rng.random(n) - 0.5], axis=1)


def _sample_weighted(rng, weight, n=1):
    """``n`` (y, x) positions drawn with probability proportional to ``weight``."""
    return _Sampler(weight)(rng, n)


def _window(cy, cx, radius, shape):
    """Slices of a square window around (cy, cx) clipped to ``shape`` and the local grid."""
    r = int(math.ceil(radius)) + 2
    y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, shape[0])
    x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return (slice(y0, y1), slice(x0, x1)), yy - cy, xx - cx


def _rotate(dy, dx, angle):
    c, s = math.cos(angle), math.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def _disc(dy, dx, r):
    return dy * dy + dx * dx <= r * r


def _segment_dist(u, v, p, q):
    """Distance of points (u, v) to the segment p-q."""
    pu, pv = p
    du, dv = q[0] - pu, q[1] - pv
    t = np.clip(((u - pu) * du + (v - pv) * dv) / (du * du + dv * dv + 1e-9), 0, 1)
    return np.hypot(u - pu - t * du, v - pv - t * dv)


def _harmonics(rng, amp, kmax=5):
    """Random contour harmonics: radius factor 1 + sum a_k cos(k theta + phi_k)."""
    if amp <= 0:
        return []
    return [(k, amp * rng.normal(0, 1) / k ** 0.8, rng.uniform(0, 2 * math.pi)) for k in range(2, kmax + 1)]


def _radial_factor(theta, harm):
    f = np.ones_like(theta)
    for k, a, phi in harm:
        f += a * np.cos(k * theta + phi)
    return np.maximum(f, 0.35)


@dataclass
class _Nucleus:
    """Geometry of one nucleus in its own frame (u along the long axis)."""

    leaf: str
    morph: Morphology
    a: float
    b: float
    hema: float
    harm: list = field(default_factory=list)
    bend: float = 0.0
    lobes: list = field(default_factory=list)     # (u, v, r) for lobed / fragmented
    notch: float = 0.0
    taper: float = 1.4
    power: float = 2.0
    nucleoli: list = field(default_factory=list)  # (u, v, r)
    angle: float = 0.0
    center: tuple = (0.0, 0.0)

    @property
    def radius(self):
        ext = max(self.a, self.b)
        if self.lobes:
            ext = max(ext, max(math.hypot(u, v) + r for u, v, r in self.lobes))
        return ext * 1.25 + abs(self.bend) * ext * ext + 1

    def inside(self, dy, dx):
        """Boolean mask of the nucleus on local offsets (dy, dx) from its centre."""
        u, v = _rotate(dy, dx, self.angle)
        shape = self.morph.shape
        v = v - self.bend * u * u
        if shape in ("lobed",) or (shape == "dead" and self.lobes):
            m = np.zeros(u.shape, bool)
            for i, (lu, lv, r) in enumerate(self.lobes):
                m |= _disc(v - lv, u - lu, r)
                if shape == "lobed" and i:
                    # thin chromatin strands keep the lobes one connected nucleus
                    m |= _segment_dist(u, v, self.lobes[i - 1][:2], (lu, lv)) <= 1.1
            return m
        if shape in ("spindle", "flat"):
            w = self.b * np.clip(1 - (u / self.a) ** 2, 0, None) ** self.taper
            return (np.abs(v) <= w) & (np.abs(u) < self.a)
        if shape == "blunt":
            return (np.abs(u / self.a) ** self.power + np.abs(v / self.b) ** self.power) <= 1
        # ellipse, kidney, pyknotic dead
        theta = np.arctan2(v / self.b, u / self.a)
        rho = np.hypot(u / self.a, v / self.b) / _radial_factor(theta, self.harm)
        m = rho <= 1
        if shape == "kidney":
            m &= np.hypot(u / (0.55 * self.a), (v - 1.05 * self.b) / (0.62 * self.b)) > 1
        return m


def _make_nucleus(leaf, rng, scale):
    m = MORPHOLOGY[leaf]

    def draw(mean_cv, lo=0.5):
        mean, cv = mean_cv
        return float(mean * scale * max(lo, rng.normal(1, cv)))

    a, b = draw(m.a), draw(m.b)
    if b > a:
        a, b = b, a
    nuc = _Nucleus(leaf, m, a, b, hema=float(m.hema[0] * max(0.3, rng.normal(1, m.hema[1]))))
    nuc.harm = _harmonics(rng, m.irregular)
    nuc.bend = float(rng.normal(0, m.bend)) if m.bend else 0.0
    if m.shape == "lobed":
        # lobes on an arc (horseshoe / "S" of a segmented nucleus), joined by strands
        n = int(rng.integers(m.lobes[0], m.lobes[1] + 1))
        spacing = a * rng.uniform(1.45, 1.8)
        arc_r = spacing * rng.uniform(1.1, 1.8) * (1 if n > 2 else 4)
        step = spacing / arc_r
        t0 = -step * (n - 1) / 2
        nuc.lobes = [(float(arc_r * math.sin(t0 + i * step) + rng.normal(0, 0.5)),
                      float(arc_r * (1 - math.cos(t0 + i * step)) + rng.normal(0, 0.5)),
                      float(a * rng.uniform(0.85, 1.1))) for i in range(n)]
    elif m.shape == "dead" and rng.random() < 0.4:
        # karyorrhexis: touching fragments; each new one touches an earlier one so the
        # nucleus stays one connected region
        frags = [(0.0, 0.0, a * 0.62)]
        for _ in range(int(rng.integers(2, 5))):
            pu, pv, pr = frags[rng.integers(len(frags))]
            r = a * rng.uniform(0.45, 0.65)
            t = rng.uniform(0, 2 * math.pi)
            d = (pr + r) * 0.75
            frags.append((pu + d * math.cos(t), pv + d * math.sin(t), r))
        nuc.lobes = frags
        nuc.hema *= 0.9
    elif m.shape == "spindle":
        nuc.taper = float(rng.uniform(1.2, 1.8))
    elif m.shape == "flat":
        nuc.taper = float(rng.uniform(0.45, 0.7))
    elif m.shape == "blunt":
        nuc.power = float(rng.uniform(2.8, 4.0))
    lo, hi, _ = m.nucleoli
    for _ in range(int(rng.integers(lo, hi + 1))):
        nuc.nucleoli.append((float(rng.uniform(-0.4, 0.4) * a), float(rng.uniform(-0.35, 0.35) * b),
                             float(rng.uniform(1.2, 2.2) * scale * (1.2 if leaf == "malignant_epithelial" else 0.8))))
    return nuc


# ----------------------------------------------------------------------------------------
# The scene


@dataclass
class SynthTile:
    """One generated tile.

    Attributes
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` uint8 RGB.
    mask : numpy.ndarray
        ``(H, W, 2)`` int32: instance ids (0 background, ``1..n``, negative = ignore) and
        class ids in the dataset's label set.
    leaves : list of str
        Leaf of instance ``i`` at ``leaves[i - 1]``.
    hidden : numpy.ndarray
        ``(H, W)`` int32 map of the nuclei drawn but not annotated (``1..m``, MoNuSAC).
    hidden_leaves : list of str
        Leaf of hidden nucleus ``j`` at ``hidden_leaves[j - 1]``.
    dataset, tissue, label_set : str
    """

    image: np.ndarray
    mask: np.ndarray
    leaves: list
    hidden: np.ndarray
    hidden_leaves: list
    dataset: str
    tissue: str
    label_set: str


class _Scene:
    """One tile being drawn: stain concentration maps, the label map and the nuclei placed.

    Hematoxylin (``h_*``) and eosin (``e_*``) are kept apart for background, cytoplasm and
    nuclei so that each layer can be textured and blurred on its own before mixing.
    """

    def __init__(self, size, rng, scale):
        self.size = size
        self.rng = rng
        self.scale = scale
        shape = (size, size)
        self.h_bg = np.zeros(shape)
        self.e_bg = np.zeros(shape)
        self.h_cyt = np.zeros(shape)
        self.e_cyt = np.zeros(shape)
        self.h_nuc = np.zeros(shape)
        self.e_nuc = np.zeros(shape)
        self.nuc_cover = np.zeros(shape)
        self.rbc = np.zeros(shape)
        self.labels = np.zeros(shape, np.int32)
        self.fine = _smooth_noise(rng, shape, 0.7)
        self.coarse = _smooth_noise(rng, shape, 1.6)
        self.nuclei = []

    # -- tissue layout --------------------------------------------------------------------

    def layout(self, epi_fraction, glandular, n_vessels, muscle_bundles):
        rng, size = self.rng, self.size
        shape = (size, size)
        yy, xx = np.mgrid[0:size, 0:size]
        field_ = _smooth_noise(rng, shape, size / 7.0)
        if epi_fraction > 0:
            thr = np.quantile(field_, 1 - epi_fraction)
            self.epi = field_ > thr
            # no slivers of epithelium too thin to hold a cell
            self.epi = ndi.binary_opening(self.epi, iterations=2) if epi_fraction > 0.1 else self.epi
        else:
            self.epi = np.zeros(shape, bool)
        self.epi_dist = ndi.distance_transform_edt(self.epi)
        self.lumen = np.zeros(shape, bool)
        if glandular and self.epi.any():
            depth = rng.uniform(16, 22) * self.scale
            self.lumen = self.epi_dist > depth
        # collagen: streaky noise along the tile's fibre direction, warped so fibres wave
        self.fibre_angle = rng.uniform(0, math.pi)
        big = size + 64
        # wavy collagen: broad bundles plus fine fibrils, both running along the fibre angle
        streak = (0.65 * _smooth_noise(rng, (big, big), (2.5, 16.0))
                  + 0.45 * _smooth_noise(rng, (big, big), (0.7, 7.0)))
        warp_y = _smooth_noise(rng, shape, size / 8) * 10
        warp_x = _smooth_noise(rng, shape, size / 8) * 10
        c, s = math.cos(self.fibre_angle), math.sin(self.fibre_angle)
        u = (xx + warp_x) * c + (yy + warp_y) * s
        v = -(xx + warp_x) * s + (yy + warp_y) * c
        fibres = ndi.map_coordinates(streak, [v % big, u % big], order=1, mode="wrap")
        # bundles of collagen with thin clefts between them
        fibres = 1 / (1 + np.exp(-1.6 * (fibres + 0.6)))
        loose = np.clip(0.55 + 0.6 * _smooth_noise(rng, shape, size / 12), 0.3, 1.0)
        self.e_bg[:] = (0.10 + 0.32 * fibres) * loose + 0.04
        self.h_bg[:] = 0.04 + 0.02 * self.coarse
        # epithelium: amphophilic cytoplasm, fine granular texture
        cyto_e = 0.30 + 0.025 * self.fine + 0.03 * self.coarse
        self.e_bg[self.epi] = cyto_e[self.epi]
        self.h_bg[self.epi] = (0.12 + 0.03 * self.coarse)[self.epi]
        self.e_bg[self.lumen] *= 0.08
        self.h_bg[self.lumen] = 0.03
        self.stroma = ~self.epi
        # small vessels in the stroma: lumen with red blood cells, lined by endothelium
        self.vessels = []
        for _ in range(n_vessels):
            w = self.stroma.astype(float)
            (vy, vx), = _sample_weighted(rng, w if w.any() else np.ones(shape))
            rv = rng.uniform(8, 20) * self.scale
            lum = (yy - vy) ** 2 + (xx - vx) ** 2 <= rv * rv
            self.e_bg[lum] *= 0.1
            self.h_bg[lum] *= 0.2
            for _ in range(int(rng.integers(0, 4))):
                t, d = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.6) * rv
                rbc = (yy - vy - d * math.sin(t)) ** 2 + (xx - vx - d * math.cos(t)) ** 2 <= (7.5 * self.scale) ** 2
                self.rbc[rbc & lum] = 1.1
            self.stroma &= ~((yy - vy) ** 2 + (xx - vx) ** 2 <= (rv + 4) ** 2)
            self.vessels.append((vy, vx, rv))
        self.bundles = []
        for _ in range(muscle_bundles):
            (by, bx), = _sample_weighted(rng, self.stroma.astype(float) + 1e-6)
            ang = self.fibre_angle + rng.normal(0, 0.3)
            self.bundles.append((by, bx, ang))
            # a smooth-muscle fascicle: homogeneous, deeper pink than collagen, no fibrils
            across = np.abs(-(xx - bx) * math.sin(ang) + (yy - by) * math.cos(ang) + 0.4 * warp_y)
            width = rng.uniform(16, 26) * self.scale
            band = np.clip((width - across) / 6, 0, 1) * self.stroma
            self.e_bg[:] = self.e_bg * (1 - band) + band * (0.46 + 0.03 * self.fine)
        # where nuclei go
        band = self.epi & ~self.lumen & (self.epi_dist >= 2) & (self.epi_dist <= 14 * self.scale)
        nest = self.epi & ~self.lumen
        self.w_any = _Sampler(np.where(self.lumen, 0.02, 1.0))
        self.w_stroma = _Sampler(self.stroma.astype(float) + 1e-6)
        self.w_nest = _Sampler(nest.astype(float)) if nest.any() else self.w_any
        self.w_gland = _Sampler(band.astype(float)) if band.any() else self.w_nest
        self.infiltrates = [tuple(self.w_stroma(rng)[0]) for _ in range(int(rng.integers(0, 3)))]
        gy, gx = np.gradient(ndi.gaussian_filter(self.epi_dist, 2.0))
        self.epi_dir = np.arctan2(gy, gx)

    # -- placement ------------------------------------------------------------------------

    def position(self, nuc):
        """A centre and long-axis angle for ``nuc`` according to its site."""
        rng, size, site = self.rng, self.size, nuc.morph.site
        if site == "gland":
            (y, x), = self.w_gland(rng)
            # columnar cells stand perpendicular to the basement membrane
            yi, xi = min(max(int(y), 0), size - 1), min(max(int(x), 0), size - 1)
            return (y, x), float(self.epi_dir[yi, xi] + rng.normal(0, 0.25))
        if site == "nest":
            (y, x), = self.w_nest(rng)
            return (y, x), rng.uniform(0, math.pi)
        if site == "vessel" and self.vessels:
            vy, vx, rv = self.vessels[rng.integers(len(self.vessels))]
            t = rng.uniform(0, 2 * math.pi)
            d = rv + nuc.b * 0.6
            # along the lumen's wall, curved with it (the v axis points at the lumen centre)
            nuc.bend = 1.0 / (2 * d)
            return (vy + d * math.sin(t), vx + d * math.cos(t)), t + math.pi / 2
        if site == "bundle" and self.bundles:
            by, bx, ang = self.bundles[rng.integers(len(self.bundles))]
            t, s = rng.normal(0, size / 4), rng.normal(0, 14 * self.scale)
            y = by + t * math.sin(ang) + s * math.cos(ang)
            x = bx + t * math.cos(ang) - s * math.sin(ang)
            return (y, x), ang + rng.normal(0, 0.12)
        if site == "infiltrate":
            if self.infiltrates and rng.random() < 0.55:
                cy, cx = self.infiltrates[rng.integers(len(self.infiltrates))]
                y, x = rng.normal(cy, 22 * self.scale), rng.normal(cx, 22 * self.scale)
                return (y, x), rng.uniform(0, math.pi)
            # some immune cells sit inside the epithelium (intra-epithelial lymphocytes)
            (y, x), = (self.w_any if rng.random() < 0.15 else self.w_stroma)(rng)
            return (y, x), rng.uniform(0, math.pi)
        if site in ("stroma", "vessel", "bundle"):
            (y, x), = self.w_stroma(rng)
            along = nuc.morph.shape in ("spindle", "blunt", "flat")
            return (y, x), (self.fibre_angle + rng.normal(0, 0.25)) if along else rng.uniform(0, math.pi)
        (y, x), = self.w_any(rng)
        return (y, x), rng.uniform(0, math.pi)

    def place(self, nuc, tries=8):
        """Find a position where ``nuc`` overlaps others little enough; paint it there."""
        for _ in range(tries):
            (cy, cx), angle = self.position(nuc)
            if not (-4 <= cy < self.size + 4 and -4 <= cx < self.size + 4):
                continue
            nuc.center, nuc.angle = (float(cy), float(cx)), float(angle)
            win = _window(cy, cx, nuc.radius, self.labels.shape)
            if win is None:
                continue
            sl, dy, dx = win
            m = nuc.inside(dy, dx)
            if m.sum() < 6:
                continue
            if (self.labels[sl][m] > 0).mean() > nuc.morph.overlap:
                continue
            self.nuclei.append(nuc)
            self.labels[sl][m] = len(self.nuclei)
            self._paint_cytoplasm(nuc)
            self._paint_nucleus(nuc, sl, dy, dx, m)
            return True
        return False

    # -- painting -------------------------------------------------------------------------

    def _paint_cytoplasm(self, nuc):
        kind = nuc.morph.cytoplasm
        if kind is None:
            return
        rng, (cy, cx) = self.rng, nuc.center
        s = self.scale
        if kind in ("neutrophil", "eosinophil", "macrophage", "apoptotic"):
            r = {"neutrophil": 19 * s, "eosinophil": 19 * s, "macrophage": 2.0 * nuc.a,
                 "apoptotic": 2.0 * nuc.a}[kind] * rng.uniform(0.9, 1.1)
            win = _window(cy, cx, r * 1.4, self.labels.shape)
            if win is None:
                return
            sl, dy, dx = win
            rad = np.hypot(dy, dx) / r
            body = np.clip((1.05 - rad) * 6, 0, 1)
            if kind == "neutrophil":
                self.e_cyt[sl] += 0.14 * body
                self.h_cyt[sl] += 0.05 * body
            elif kind == "eosinophil":
                # coarse refractile granules: a bright orange-pink, grainy cytoplasm
                gran = np.clip(0.6 + 0.6 * self.fine[sl], 0.2, 1.4)
                self.e_cyt[sl] += 0.95 * body * gran
            elif kind == "macrophage":
                foam = np.clip(1 - 0.5 * (self.coarse[sl] > 0.6), 0, 1)
                self.e_cyt[sl] += 0.16 * body * foam
                self.h_cyt[sl] += 0.06 * body * foam
            else:
                # apoptotic body: shrunken, hypereosinophilic, with a clear retraction halo
                halo = (rad > 1.0) & (rad < 1.3)
                self.e_bg[sl][halo] *= 0.6
                self.e_cyt[sl] += 0.55 * body
            return
        # elongated bodies
        if kind == "muscle":
            # cell borders in a fascicle are indistinct: a faint, soft-edged body
            la, lb, off = nuc.a * 2.0, nuc.b * 2.4, 0.0
            e, h = 0.08, 0.03
        else:  # plasma: eccentric nucleus in an amphophilic cell with a perinuclear hof
            la, lb, off = nuc.a * 1.8, nuc.b * 1.6, nuc.a * 0.75
            e, h = 0.26, 0.28
        win = _window(cy, cx, la + off + 2, self.labels.shape)
        if win is None:
            return
        sl, dy, dx = win
        u, v = _rotate(dy, dx, nuc.angle)
        body = np.clip((1.0 - np.hypot((u - off) / la, v / lb)) * 4, 0, 1)
        if kind == "plasma":
            # the Golgi hof: a paler zone against the nucleus on the cytoplasm's side
            hof = np.hypot((u - nuc.a * 1.25) / (0.45 * nuc.a), v / (0.55 * nuc.b))
            body = body * (1 - 0.45 * np.clip(1.3 - hof, 0, 1))
        self.e_cyt[sl] += e * body
        self.h_cyt[sl] += h * body

    def _paint_nucleus(self, nuc, sl, dy, dx, m):
        mo = nuc.morph
        d = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        dn = d / max(d.max(), 1.0)
        tex = (1 - mo.grain) * self.fine[sl] + mo.grain * self.coarse[sl]
        h = nuc.hema * (1 + mo.texture * tex)
        # vesicular nuclei: chromatin condensed on the membrane, a pale centre
        h *= 1 - mo.pallor * dn
        h += nuc.hema * mo.rim * np.exp(-(d - 0.5) / 1.1)
        u, v = _rotate(dy, dx, nuc.angle)
        if mo.clockface:
            ang = np.arctan2(v / nuc.b, u / nuc.a)
            rad = np.hypot(u / nuc.a, v / nuc.b)
            spokes = np.clip(np.cos(7 * ang + nuc.a), 0, 1) ** 3
            h += nuc.hema * 0.55 * spokes * np.exp(-((rad - 0.7) / 0.18) ** 2)
        e = np.zeros_like(h)
        strength = mo.nucleoli[2]
        for nu, nv, r in nuc.nucleoli:
            spot = np.exp(-((u - nu) ** 2 + (v - nv) ** 2) / (2 * (r * 0.7) ** 2))
            # nucleoli are dense and amphophilic-to-eosinophilic: darker, redder spots
            h += strength * 0.9 * spot
            e += strength * 0.9 * spot
        h = np.clip(h, 0, None) * m
        cur = self.h_nuc[sl]
        # overlapping nuclei both absorb: the overlap is darker than either
        self.h_nuc[sl] = np.maximum(cur, h) + 0.35 * np.minimum(cur, h)
        self.e_nuc[sl] += e * m
        self.nuc_cover[sl] = np.maximum(self.nuc_cover[sl], m)

    def membranes(self):
        """Faint cell borders between neighbouring epithelial cells (Voronoi edges)."""
        seeds = [n.center for n in self.nuclei if n.morph.site in ("gland", "nest")]
        if len(seeds) < 2:
            return
        marker = np.zeros(self.labels.shape, np.int32)
        for i, (y, x) in enumerate(seeds, start=1):
            yi, xi = int(round(y)), int(round(x))
            if 0 <= yi < self.size and 0 <= xi < self.size:
                marker[yi, xi] = i
        if marker.max() == 0:
            return
        _, (iy, ix) = ndi.distance_transform_edt(marker == 0, return_indices=True)
        near = marker[iy, ix]
        edge = np.zeros_like(near, bool)
        edge[:-1] |= near[:-1] != near[1:]
        edge[:, :-1] |= near[:, :-1] != near[:, 1:]
        edge &= self.epi & ~self.lumen
        self.e_bg[edge] += 0.12

    # -- image ----------------------------------------------------------------------------

    def render(self, stain, blur):
        rng = self.rng
        h_nuc = ndi.gaussian_filter(self.h_nuc, blur)
        e_nuc = ndi.gaussian_filter(self.e_nuc, blur)
        cover = ndi.gaussian_filter(self.nuc_cover, blur)
        # the nucleus displaces eosinophilic cytoplasm and matrix
        e = (self.e_bg + self.e_cyt) * (1 - 0.7 * cover) + e_nuc
        h = self.h_bg + self.h_cyt + h_nuc
        thickness = 1 + 0.08 * _smooth_noise(rng, h.shape, self.size / 5)
        hv = np.asarray(stain.h) / np.linalg.norm(stain.h)
        ev = np.asarray(stain.e) / np.linalg.norm(stain.e)
        od = (h[..., None] * hv * stain.h_gain + e[..., None] * ev * stain.e_gain) * thickness[..., None]
        # red blood cells: haemoglobin and eosin make them orange-red, not eosin-pink
        od += ndi.gaussian_filter(self.rbc, 0.8)[..., None] * _RBC * stain.e_gain
        img = np.asarray(stain.white) * np.exp(-od)
        img = ndi.gaussian_filter(img, (0.5, 0.5, 0))
        img += rng.normal(0, 2.0, img.shape)
        return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _composition(spec, tissue, rng, size, hierarchy):
    """Leaf of every nucleus of one tile (before placement)."""
    leaves = list(spec.leaf_freq)
    p = np.array([spec.leaf_freq[k] for k in leaves], float)
    for node, mult in tissue.leaf_scale.items():
        for i, leaf in enumerate(leaves):
            if leaf == node or node in hierarchy.ancestors(leaf):
                p[i] *= mult
    p /= p.sum()
    # tiles are heterogeneous (an infiltrate here, a necrotic focus there) but the
    # dataset-level mix stays the table's: a Dirichlet around it
    p = rng.dirichlet(p * 12 + 1e-3)
    mean = spec.density * tissue.density * (size / 256) ** 2 * math.exp(rng.normal(-0.08, 0.4))
    n = int(rng.poisson(mean))
    counts = rng.multinomial(n, p)
    return [leaf for leaf, c in zip(leaves, counts) for _ in range(c)]


def generate_tile(dataset, seed=0, size=256, tissue=None, unannotated="background", ambiguous=0.0,
                  hierarchy=None):
    """Generate one synthetic tile.

    Parameters
    ----------
    dataset : str or DatasetSpec
        One of :data:`DATASETS` (``pannuke``, ``monusac``, ``consep``, ``monuseg``).
    seed : int, SeedSequence or Generator
        Randomness of the tile (see :func:`tile_seed`).
    size : int
        Tile height and width in pixels (40x, about 0.25 micron per pixel).
    tissue : str, optional
        Force one of the dataset's tissues; by default drawn by their weights.
    unannotated : {'background', 'ignore'}
        What the mask says over nuclei the dataset does not annotate.
    ambiguous : float
        Mean number (per 256x256) of annotated nuclei turned into ignore regions, as
        MoNuSAC's "Ambiguous" test annotations (see :attr:`DatasetSpec.ambiguous`).
    hierarchy : ClassHierarchy, optional
        Defaults to the package's default hierarchy.

    Returns
    -------
    SynthTile
    """
    if unannotated not in ("background", "ignore"):
        raise ValueError(f"unannotated must be 'background' or 'ignore', got {unannotated!r}")
    spec = _get_spec(dataset)
    h = _default_hierarchy() if hierarchy is None else hierarchy
    ids = _check_spec(spec, h)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    size = int(size)

    if tissue is None:
        t = _pick_tissue(spec, rng)
    else:
        matches = [t for t in spec.tissues if t.name == tissue]
        if not matches:
            raise ValueError(f"dataset '{spec.name}' has no tissue {tissue!r}; it has {[t.name for t in spec.tissues]}")
        t = matches[0]
    stain = _tissue_stain(spec, t).perturbed(rng, 0.025)
    scale = float(rng.normal(1.0, 0.04))

    leaves = _composition(spec, t, rng, size, h)
    nuclei = [_make_nucleus(leaf, rng, scale) for leaf in leaves]
    rng.shuffle(nuclei)
    # epithelium gets roughly the area its cells need (nuclei plus cytoplasm)
    epi_area = sum(math.pi * n.a * n.b for n in nuclei if n.morph.site in ("gland", "nest"))
    n_healthy = sum(n.morph.site == "gland" for n in nuclei)
    n_epi = sum(n.morph.site in ("gland", "nest") for n in nuclei)
    glandular = n_epi > 0 and n_healthy / n_epi > 0.5
    frac = 0.0 if n_epi == 0 else float(np.clip(epi_area * (3.4 if glandular else 2.6) / size ** 2, 0.05, 0.85))
    n_endo = sum(n.morph.site == "vessel" for n in nuclei)
    n_vessels = 0 if n_endo == 0 else max(1, int(round(n_endo / rng.uniform(1.5, 3.0))))
    n_bundles = 0 if not any(n.morph.site == "bundle" for n in nuclei) else int(rng.integers(1, 3))

    scene = _Scene(size, rng, scale)
    scene.layout(frac, glandular, n_vessels, n_bundles)
    for nuc in nuclei:
        scene.place(nuc)
    scene.membranes()
    image = scene.render(stain, blur=float(rng.uniform(0.6, 1.0)))

    inst, cls, out_leaves, hidden, hidden_leaves = _finalise_masks(scene, ids, unannotated)
    if ambiguous > 0:
        # drawn last, so the image and the other nuclei do not depend on it
        n_amb = int(rng.poisson(ambiguous * (size / 256) ** 2))
        inst, cls, out_leaves = _mark_ambiguous(inst, cls, out_leaves, n_amb, rng)
    mask = np.stack([inst, cls], axis=-1).astype(np.int32)
    return SynthTile(image, mask, out_leaves, hidden, hidden_leaves, spec.name, t.name, spec.label_set)


def _mark_ambiguous(inst, cls, leaves, n, rng):
    """Turn ``n`` random annotated nuclei, with a 3-pixel margin of background, into ignore regions.

    MoNuSAC's test annotations have an "Ambiguous" layer of regions whose nuclei the
    annotators could not decide on; converters mark them as ignore regions.
    """
    n = min(n, len(leaves))
    if n == 0:
        return inst, cls, leaves
    chosen = set((rng.choice(len(leaves), n, replace=False) + 1).tolist())
    region = np.isin(inst, list(chosen))
    region |= ndi.binary_dilation(region, iterations=3) & (inst == 0)
    inst = inst.copy()
    cls = cls.copy()
    inst[region] = _IGNORE
    cls[region] = 0
    keep = [k for k in range(1, len(leaves) + 1) if k not in chosen]
    lut = np.zeros(len(leaves) + 1, np.int32)
    lut[keep] = np.arange(1, len(keep) + 1)
    pos = inst > 0
    inst[pos] = lut[inst[pos]]
    return inst, cls, [leaves[k - 1] for k in keep]


def _finalise_masks(scene, ids, unannotated, min_area=8):
    """Turn the drawn label map into contiguous instance ids, class ids and hidden nuclei.

    A nucleus partly covered by later ones may be left in pieces: only its largest piece
    keeps the label (StarDist's objects are star-convex; a stray sliver would be a second
    object with the same id), and nuclei with fewer than ``min_area`` visible pixels are
    dropped to background, as an annotator would skip them.
    """
    labels = scene.labels
    shape = labels.shape
    inst = np.zeros(shape, np.int32)
    cls = np.zeros(shape, np.int32)
    hidden = np.zeros(shape, np.int32)
    out_leaves, hidden_leaves = [], []
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        m = labels[sl] == k
        lab, n = ndi.label(m)
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            m = lab == (np.argmax(sizes) + 1)
        if m.sum() < min_area:
            continue
        leaf = scene.nuclei[k - 1].leaf
        cid = ids[leaf]
        if cid is None:
            hidden_leaves.append(leaf)
            hidden[sl][m] = len(hidden_leaves)
            if unannotated == "ignore":
                inst[sl][m] = _IGNORE
        else:
            out_leaves.append(leaf)
            inst[sl][m] = len(out_leaves)
            cls[sl][m] = cid
    return inst, cls, out_leaves, hidden, hidden_leaves


def iter_tiles(dataset, split, n, size=256, seed=0, unannotated="background", start=0):
    """Yield ``(patch_id, SynthTile)`` for tiles ``start..n-1`` of one split (as :func:`generate_dataset` writes them)."""
    spec = _get_spec(dataset)
    for i in range(start, n):
        yield f"{spec.name}_{split}_{i:05d}", generate_tile(
            spec, tile_seed(seed, spec.name, split, i), size=size, unannotated=unannotated,
            ambiguous=spec.ambiguous.get(split, 0.0))


# ----------------------------------------------------------------------------------------
# Visual check


def save_overlay(tiles, path, ncols=4, by="leaf", title=True):
    """Draw tiles with their instance outlines coloured by class into a PNG.

    Parameters
    ----------
    tiles : list of SynthTile
        Tiles to show (one panel per tile, the image next to its outlined copy).
    path : str or Path
        PNG to write.
    ncols : int
        Tiles per row.
    by : {'leaf', 'class'}
        Colour outlines by the hidden leaf (to judge morphology) or by the dataset class id.
    title : bool
        Put dataset and tissue above each panel.

    Returns
    -------
    pathlib.Path
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from pathlib import Path
    from skimage.segmentation import find_boundaries

    from matplotlib.colors import to_rgb

    h = ClassHierarchy.default()
    # saturated colours that stay visible on both pink stroma and dark nuclei; siblings in
    # related hues so the super-classes read at a glance
    palette = {"healthy_epithelial": "#1f5fff", "malignant_epithelial": "#00e5ff", "lymphocyte": "#ff8c00",
               "plasma_cell": "#ffd700", "neutrophil": "#00c000", "eosinophil": "#a0ff40",
               "macrophage": "#ff2020", "fibroblast": "#ff1493", "muscle": "#a0522d", "endothelial": "#b000ff",
               "dead": "#000000", "miscellaneous": "#ffffff"}
    hidden_colour = (0.72, 0.72, 0.72)
    spare = iter(plt.cm.tab20.colors)
    leaf_colour = {leaf: to_rgb(palette[leaf]) if leaf in palette else next(spare) for leaf in h.leaves}
    ncols = max(1, min(ncols, len(tiles)))
    nrows = int(math.ceil(len(tiles) / ncols))
    # panels at about one screen pixel per image pixel, so 2-pixel outlines survive
    px = max(t.image.shape[0] for t in tiles) / 100
    fig, axes = plt.subplots(nrows, 2 * ncols, figsize=(2 * px * ncols, (px + 0.25) * nrows + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        over = tile.image.astype(float) / 255
        inst, cls = tile.mask[..., 0], tile.mask[..., 1]
        for k in range(1, int(inst.max()) + 1):
            edge = find_boundaries(inst == k, mode="thick") & (inst == k)
            colour = leaf_colour[tile.leaves[k - 1]] if by == "leaf" else plt.cm.tab10(int(cls[inst == k][0]) % 10)[:3]
            over[edge] = colour
        for j in range(1, int(tile.hidden.max()) + 1):
            over[find_boundaries(tile.hidden == j, mode="thick") & (tile.hidden == j)] = hidden_colour
        axes[r, 2 * c].imshow(tile.image)
        axes[r, 2 * c + 1].imshow(over)
        if title:
            axes[r, 2 * c].set_title(f"{tile.dataset} / {tile.tissue}", fontsize=7)
    if by == "leaf":
        handles = [Patch(color=leaf_colour[l], label=l) for l in h.leaves] + [Patch(color=hidden_colour, label="unannotated")]
        ncol = 7 if ncols > 1 else 4
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.5 / fig.get_size_inches()[1] if by == "leaf" else 0, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------
# Writing datasets in the patch format

_FORMAT_VERSION = 1


def _pick_tissue(spec, rng):
    w = np.array([t.weight for t in spec.tissues], float)
    return spec.tissues[rng.choice(len(w), p=w / w.sum())]


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
    tmp = meta.with_name(".synth.json.tmp")
    tmp.write_text(json.dumps(params, indent=1))
    tmp.replace(meta)

    jobs = [(spec, str(root), split, i, seed, size, unannotated)
            for split in SPLITS for i in range(counts.get(split, 0))]
    rows = []
    with tqdm(total=total, desc=f"synth {spec.name}", unit="tile", disable=not progress) as bar:
        if workers > 1 and len(jobs) > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=workers) as pool:
                for row in pool.map(_make_patch, jobs, chunksize=4):
                    rows.append(row)
                    bar.update(1)
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
