"""Specifications of the synthetic datasets: stains, leaf morphologies, tissues, the four datasets, seeds.

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
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..hierarchy import ClassHierarchy, HierarchyError


SPLITS = ("train", "val", "test")
#: tiles per split made by default (CLI and :func:`generate_all`)
DEFAULT_COUNTS = {"train": 160, "val": 32, "test": 48}

# Ruifrok & Johnston's optical-density vectors (RGB) of hematoxylin and eosin.
_REF_H = np.array([0.650, 0.704, 0.286])
_REF_E = np.array([0.072, 0.990, 0.105])


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
