"""The paper's training augmentations (Section IV-D) as a StarDist augmenter.

* Stain variability: random brightness, hue and saturation on every patch (probability
  ``p_color``).
* Class imbalance: geometric augmentations (flips and 90 degree rotations) and an elastic
  deformation, applied *more often* to patches that hold a nucleus of an under-represented
  class (``p_geometric_rare`` / ``p_elastic_rare``) than to the others
  (``p_geometric_common`` / ``p_elastic_common``).
* Optionally (:func:`oversample_indices`), images holding rare classes are drawn more often.

How the augmenter knows the classes of a patch
----------------------------------------------
StarDist calls ``augmenter(x, y)`` with a cropped image patch and its instance labels only:
not with the image index, so per-image ``{instance id: class}`` dicts cannot be looked up.
:func:`encode_class_ids` therefore renumbers the instances of every training image as
``id = class_code * stride + rank`` (``class_code`` = the dataset class id, 0 for unknown
class; ``rank`` = 1..n within the image; ``stride`` = 1 + the most nuclei in any image) and
returns the matching ``classes`` dicts. The class of every instance is then ``id // stride``
in any crop, and stays so through flips, rotations and the elastic warp because labels are
warped with nearest-neighbour sampling (instance ids are never mixed). Ids stay small
(``stride * (max class id + 1)``), which keeps StarDist's per-id loops cheap. Negative ids
(ignore regions) are left as they are.

Colour augmentations work on normalised float images (the runner normalises every image
as :func:`stardist_hier.patches.normalize_image`): brightness adds a constant, hue
rotates and saturation scales the chroma plane of the YIQ colour space. YIQ is linear, so
values outside ``[0, 1]`` (percentile normalisation produces some) need no clipping.

Everything random comes from the augmenter's own :class:`numpy.random.Generator`
(``seed``; :meth:`ClassAwareAugmenter.reseed`), never from numpy's global state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage as ndi

__all__ = ["AugmentConfig", "ClassAwareAugmenter", "encode_class_ids", "find_rare_classes",
           "rare_image_indices", "oversample_indices", "class_counts_of"]

# RGB <-> YIQ (NTSC); the inverse is computed, so the round trip is exact to float precision
_RGB2YIQ = np.array([[0.299, 0.587, 0.114],
                     [0.596, -0.274, -0.322],
                     [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


@dataclass
class AugmentConfig:
    """Parameters of :class:`ClassAwareAugmenter` (defaults: our reading of the paper).

    The paper gives no numbers; these are moderate values that keep H&E nuclei recognisable.

    Attributes
    ----------
    p_color : float
        Probability of the colour jitter (brightness, hue, saturation) per patch.
    brightness : float
        Brightness offset drawn from ``U(-brightness, brightness)`` (normalised intensities).
    hue : float
        Hue rotation drawn from ``U(-hue, hue)`` turns (0.05 = 18 degrees).
    saturation : float
        Chroma scaled by a factor from ``U(1 - saturation, 1 + saturation)``.
    p_geometric_common, p_geometric_rare : float
        Probability of a random flip/90 degree rotation (one of the 7 non-identity elements
        of the square's symmetry group) for patches without / with a rare-class nucleus.
    p_elastic_common, p_elastic_rare : float
        Probability of the elastic deformation, likewise.
    elastic_alpha : float
        Standard deviation (pixels) of the displacement at the control points.
    elastic_grid : int
        Control points per side; the displacement between them is a cubic spline, so the
        field is smooth at the scale of ``patch size / elastic_grid``.
    rare_classes : 'auto', sequence of int or None
        Dataset class ids treated as under-represented; ``'auto'``: those whose share of the
        training nuclei is below ``rare_share / K`` (K = classes present), see
        :func:`find_rare_classes`. ``None`` or empty: no patch is rare.
    rare_share : float
        Threshold of ``'auto'`` as a fraction of a uniform share (0.5: half of ``1/K``).
    oversample_rare : float
        Factor by which images holding a rare class are drawn more often by the runner
        (:func:`oversample_indices`); 1 = off (the paper only mentions augmentation).
    """

    p_color: float = 0.8
    brightness: float = 0.1
    hue: float = 0.05
    saturation: float = 0.2
    p_geometric_common: float = 0.5
    p_geometric_rare: float = 1.0
    p_elastic_common: float = 0.1
    p_elastic_rare: float = 0.5
    elastic_alpha: float = 3.0
    elastic_grid: int = 4
    rare_classes: object = "auto"
    rare_share: float = 0.5
    oversample_rare: float = 1.0

    def __post_init__(self):
        for f in ("p_color", "p_geometric_common", "p_geometric_rare", "p_elastic_common", "p_elastic_rare"):
            v = getattr(self, f)
            if not 0 <= v <= 1:
                raise ValueError(f"augmentation: {f} must be in [0, 1], got {v}")
        for f in ("brightness", "hue", "saturation", "elastic_alpha", "rare_share"):
            if getattr(self, f) < 0:
                raise ValueError(f"augmentation: {f} must be >= 0, got {getattr(self, f)}")
        if int(self.elastic_grid) < 2:
            raise ValueError(f"augmentation: elastic_grid must be >= 2, got {self.elastic_grid}")
        if self.oversample_rare < 1:
            raise ValueError(f"augmentation: oversample_rare must be >= 1, got {self.oversample_rare}")
        if not (self.rare_classes is None or self.rare_classes == "auto"
                or all(isinstance(c, (int, np.integer)) for c in self.rare_classes)):
            raise ValueError(f"augmentation: rare_classes must be 'auto', None or class ids, got {self.rare_classes!r}")

    @classmethod
    def from_dict(cls, d):
        """Build from a dict (e.g. a YAML section); unknown keys are an error."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"augmentation: unknown parameter(s) {unknown}; known: {sorted(known)}")
        if isinstance(d.get("rare_classes"), (list, tuple)):
            d["rare_classes"] = [int(c) for c in d["rare_classes"]]
        return cls(**d)

    def to_dict(self):
        d = asdict(self)
        if isinstance(d["rare_classes"], tuple):
            d["rare_classes"] = list(d["rare_classes"])
        return d


# ----------------------------------------------------------------------------------------
# classes of the training set


def class_counts_of(classes):
    """``{class id: nuclei}`` over a list of per-image ``{instance id: class}`` dicts (``None`` skipped)."""
    counts = {}
    for c in classes:
        if isinstance(c, dict):
            for v in c.values():
                if v is not None:
                    counts[int(v)] = counts.get(int(v), 0) + 1
    return counts


def find_rare_classes(classes, share=0.5):
    """Class ids whose share of the labelled nuclei is below ``share / K``.

    Parameters
    ----------
    classes : sequence of dict
        Per image ``{instance id: class id or None}``.
    share : float
        Fraction of a uniform share; ``K`` is the number of classes present.

    Returns
    -------
    list of int
        Sorted class ids (empty when there is at most one class).
    """
    counts = class_counts_of(classes)
    if len(counts) < 2:
        return []
    total = sum(counts.values())
    limit = share / len(counts)
    return sorted(c for c, n in counts.items() if n / total < limit)


def rare_image_indices(classes, rare_classes):
    """Indices of the images holding at least one nucleus of a rare class."""
    rare = set(int(c) for c in (rare_classes or ()))
    return [k for k, c in enumerate(classes)
            if isinstance(c, dict) and any(v is not None and int(v) in rare for v in c.values())]


def oversample_indices(n_images, rare_indices, factor, seed=None):
    """Image indices in which the rare-class images appear ``factor`` times as often.

    StarDist's data generator draws every listed image once per pass over the list, so
    training on ``[X[i] for i in indices]`` draws the rare-class images ``factor`` times as
    often. A fractional factor adds the fractional part as a seeded random subset.

    Returns
    -------
    list of int
        Sorted indices (every image at least once).
    """
    if factor < 1:
        raise ValueError(f"oversampling factor must be >= 1, got {factor}")
    rare = sorted(set(int(i) for i in rare_indices))
    whole, frac = int(np.floor(factor)), factor - np.floor(factor)
    extra = [i for i in rare for _ in range(whole - 1)]
    if frac > 0 and rare:
        rng = np.random.default_rng(seed)
        extra += [int(i) for i in rng.choice(rare, size=int(round(frac * len(rare))), replace=False)]
    return sorted(list(range(n_images)) + extra)


def encode_class_ids(Y, classes):
    """Renumber instances so that ``id // stride`` is the instance's class (see module docs).

    Parameters
    ----------
    Y : sequence of numpy.ndarray
        Instance label images (0 background, negative = ignore).
    classes : sequence of dict
        Per image ``{instance id: class id or None}``.

    Returns
    -------
    Y_coded : list of numpy.ndarray
        int32 label images; ignore regions and background unchanged.
    classes_coded : list of dict
        ``{new id: class id or None}``.
    stride : int
        ``1 +`` the most instances in one image.
    """
    Y = [np.asarray(y) for y in Y]
    if len(Y) != len(classes):
        raise ValueError(f"{len(Y)} label images but {len(classes)} class dicts")
    uniq = [np.unique(y[y > 0]) for y in Y]
    stride = 1 + max((len(u) for u in uniq), default=0)
    top = max((int(v) for c in classes if isinstance(c, dict) for v in c.values() if v is not None), default=0)
    if (top + 1) * stride >= np.iinfo(np.int32).max:
        raise ValueError("too many instances or classes to encode classes in int32 instance ids")
    Y_out, C_out = [], []
    for k, (y, ids, cls) in enumerate(zip(Y, uniq, classes)):
        cls = cls if isinstance(cls, dict) else {int(i): cls for i in ids}
        lut = np.zeros(int(ids.max()) + 1 if len(ids) else 1, np.int64)
        new_cls = {}
        for rank, i in enumerate(ids.tolist(), 1):
            if i not in cls:
                raise ValueError(f"image {k}: instance id {i} has no entry in classes")
            c = cls[i]
            code = 0 if c is None else int(c)
            lut[i] = code * stride + rank
            new_cls[int(lut[i])] = c
        out = np.where(y > 0, lut[np.clip(y, 0, len(lut) - 1)], y).astype(np.int32)
        Y_out.append(out)
        C_out.append(new_cls)
    return Y_out, C_out, stride


# ----------------------------------------------------------------------------------------
# the augmenter


class ClassAwareAugmenter:
    """StarDist augmenter ``augmenter(x, y) -> (x, y)`` with class-dependent frequencies.

    Parameters
    ----------
    config : AugmentConfig or dict, optional
        Probabilities and strengths.
    rare_classes : sequence of int
        Class ids treated as rare (``config.rare_classes`` is resolved by
        :meth:`for_dataset`, not here).
    stride : int or None
        Stride of :func:`encode_class_ids`; ``None``: the classes of a patch are unknown
        and every patch is treated as common.
    seed : int or None
        Seed of the augmenter's own random generator.

    Attributes
    ----------
    counts : dict
        How many patches were seen (``patches``, ``rare``) and how many got each
        augmentation (``geometric_rare``, ``geometric_common``, ``elastic_rare``,
        ``elastic_common``, ``color``): the tests count these.
    """

    def __init__(self, config=None, rare_classes=(), stride=None, seed=None):
        self.config = config if isinstance(config, AugmentConfig) else AugmentConfig.from_dict(config)
        self.rare_classes = tuple(sorted(int(c) for c in (rare_classes or ())))
        self.stride = None if stride is None else int(stride)
        self.reseed(seed)

    @classmethod
    def for_dataset(cls, Y, classes, config=None, seed=None):
        """Encode a training set's classes into its ids and build the augmenter for it.

        Returns
        -------
        Y_coded, classes_coded : list
            Train on these instead of ``Y`` and ``classes`` (see :func:`encode_class_ids`).
        augmenter : ClassAwareAugmenter
        """
        config = config if isinstance(config, AugmentConfig) else AugmentConfig.from_dict(config)
        if config.rare_classes == "auto":
            rare = find_rare_classes(classes, config.rare_share)
        else:
            rare = list(config.rare_classes or ())
        Y_coded, C_coded, stride = encode_class_ids(Y, classes)
        return Y_coded, C_coded, cls(config, rare, stride, seed)

    def reseed(self, seed):
        """Restart the random stream (the runner does so at every episode start)."""
        self.rng = np.random.default_rng(seed)
        self.counts = dict(patches=0, rare=0, geometric_rare=0, geometric_common=0, elastic_rare=0,
                           elastic_common=0, color=0)

    def classes_in(self, y):
        """Dataset class ids of the instances in a label patch (needs ``stride``)."""
        if self.stride is None:
            return set()
        ids = np.unique(y[y > 0])
        return set(int(c) for c in (ids // self.stride).tolist() if c > 0)

    def is_rare(self, y):
        """True if the patch holds a nucleus of a rare class."""
        if not self.rare_classes or self.stride is None:
            return False
        return bool(self.classes_in(y) & set(self.rare_classes))

    def __call__(self, x, y):
        c = self.config
        rng = self.rng
        rare = self.is_rare(y)
        tag = "rare" if rare else "common"
        self.counts["patches"] += 1
        self.counts["rare"] += int(rare)
        if rng.random() < (c.p_geometric_rare if rare else c.p_geometric_common):
            x, y = self.flip_rot90(x, y, rng)
            self.counts[f"geometric_{tag}"] += 1
        if rng.random() < (c.p_elastic_rare if rare else c.p_elastic_common):
            x, y = self.elastic(x, y, rng)
            self.counts[f"elastic_{tag}"] += 1
        if x.ndim == 3 and x.shape[-1] == 3 and rng.random() < c.p_color:
            x = self.color(x, rng)
            self.counts["color"] += 1
        return x, y

    @staticmethod
    def flip_rot90(x, y, rng):
        """One of the 7 non-identity symmetries of the square (rotation only by 180 degrees
        on non-square patches, so shapes are kept)."""
        square = x.shape[0] == x.shape[1]
        choices = [(k, f) for k in range(4) for f in (False, True) if (k, f) != (0, False) and (square or k % 2 == 0)]
        k, flip = choices[rng.integers(len(choices))]
        if flip:
            x, y = x[:, ::-1], y[:, ::-1]
        if k:
            x, y = np.rot90(x, k, axes=(0, 1)), np.rot90(y, k, axes=(0, 1))
        return np.ascontiguousarray(x), np.ascontiguousarray(y)

    def elastic(self, x, y, rng):
        """Smooth random warp: linear interpolation for the image, nearest for the labels."""
        c = self.config
        h, w = y.shape
        g = int(c.elastic_grid)
        coarse = rng.normal(0, c.elastic_alpha, size=(2, g, g))
        # cubic upsampling of the control-point displacements gives a smooth field
        field = np.stack([ndi.zoom(d, (h / g, w / g), order=3, mode="nearest", grid_mode=True)[:h, :w]
                          for d in coarse])
        rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
        coords = np.stack([rows + field[0], cols + field[1]])
        # 'reflect' for both so image and labels sample the same pixels at the border
        if x.ndim == 3:
            xo = np.stack([ndi.map_coordinates(x[..., ch], coords, order=1, mode="reflect")
                           for ch in range(x.shape[-1])], axis=-1)
        else:
            xo = ndi.map_coordinates(x, coords, order=1, mode="reflect")
        yo = ndi.map_coordinates(y, coords, order=0, mode="reflect")
        return xo.astype(x.dtype, copy=False), yo.astype(y.dtype, copy=False)

    def color(self, x, rng):
        """Brightness offset, hue rotation and saturation scaling in YIQ space."""
        c = self.config
        b = rng.uniform(-c.brightness, c.brightness)
        theta = 2 * np.pi * rng.uniform(-c.hue, c.hue)
        s = rng.uniform(1 - c.saturation, 1 + c.saturation)
        cos, sin = np.cos(theta), np.sin(theta)
        chroma = np.array([[1, 0, 0], [0, s * cos, -s * sin], [0, s * sin, s * cos]])
        m = _YIQ2RGB @ chroma @ _RGB2YIQ
        out = x @ m.T.astype(np.float32) + np.float32(b)
        return out.astype(x.dtype, copy=False)
