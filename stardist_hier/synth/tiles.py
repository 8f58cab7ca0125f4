"""Generating tiles: :func:`generate_tile` lays out and renders one scene and turns it into image and masks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .nuclei import _make_nucleus
from .render import _Scene, _composition
from .specs import _check_spec, _default_hierarchy, _get_spec, _tissue_stain, tile_seed


_IGNORE = -1  # patches.IGNORE: the instance id of ignore regions


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


def _pick_tissue(spec, rng):
    w = np.array([t.weight for t in spec.tissues], float)
    return spec.tissues[rng.choice(len(w), p=w / w.sum())]


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
