"""Configuration of a hierarchy-aware StarDist model: :class:`HierConfig2D`.

It takes every parameter of :class:`stardist.models.Config2D` and adds the hierarchy and the
class-loss and class-rule parameters listed in :data:`HIER_CONFIG_DEFAULTS`.
"""

from __future__ import annotations

from numbers import Integral

from stardist.models import Config2D

from ..hierarchy import ClassHierarchy, HierarchyError
from .losses import FOCAL_TVERSKY_ALPHA, FOCAL_TVERSKY_GAMMA

__all__ = ["HierConfig2D", "HIER_CONFIG_DEFAULTS"]

#: Parameters that :class:`HierConfig2D` adds to :class:`stardist.models.Config2D`, with
#: their defaults. They are saved to ``hier_config.json`` (and the hierarchy to
#: ``hierarchy.yaml``) beside ``config.json``, which keeps only stock keys so that stock
#: ``StarDist2D(None, name, basedir)`` loads the folder.
HIER_CONFIG_DEFAULTS = dict(
    hierarchy=None,
    train_class_ce_weight=1.0,
    train_focal_tversky_weight=1.0,
    train_focal_tversky_alpha=FOCAL_TVERSKY_ALPHA,
    train_focal_tversky_gamma=FOCAL_TVERSKY_GAMMA,
    train_focal_tversky_mode="pixelwise",
    train_early_stopping_patience=None,
    predict_class_from="instance",
)

HIER_CONFIG_FILE = "hier_config.json"
HIERARCHY_FILE = "hierarchy.yaml"


class HierConfig2D(Config2D):
    """Configuration of a :class:`HierStarDist2D` model.

    Takes every parameter of :class:`stardist.models.Config2D` (same positional order) and:

    Parameters
    ----------
    hierarchy : str, path, dict, ClassHierarchy or None
        Class hierarchy (YAML path, ``'default'`` for the one shipped with the package, a
        dict as in the YAML, or a :class:`ClassHierarchy`). Sets ``n_classes`` to its number
        of leaves; a different explicit ``n_classes`` is an error. ``None``: a flat
        hierarchy of ``n_classes`` leaves with one label set ``'default'`` (ids 1..n_classes),
        i.e. stock multi-class StarDist.

    Attributes
    ----------
    hierarchy : dict or None
        The hierarchy as a plain dict (see :meth:`ClassHierarchy.to_dict`).
    train_class_ce_weight : float
        Weight of the modified cross-entropy (paper Eq. 2) in the class loss (default 1).
    train_focal_tversky_weight : float
        Weight of the modified focal Tversky loss (paper Eq. 4) in the class loss
        (default 1; the paper uses "a positive combination" of the two). 0 switches it off,
        and with a flat hierarchy the class loss is then exactly stock StarDist's.
    train_focal_tversky_alpha : float
        Weight of false negatives in the Tversky index (default 0.7, Abraham & Khan 2019,
        also StarDist's CoNIC recipe).
    train_focal_tversky_gamma : float
        Exponent applied to ``1 - TI`` (default 0.75 = 1/(4/3), Abraham & Khan 2019).
    train_focal_tversky_mode : str
        ``'pixelwise'`` (paper Eq. 4, per pixel) or ``'classwise'`` (per label-set class,
        summed over the pixels of each image, Abraham & Khan 2019).
    train_early_stopping_patience : int or None
        Stop a :meth:`HierStarDist2D.train` call when ``val_loss`` has not improved for
        this many epochs (the paper monitors validation loss); ``None`` disables it.
    predict_class_from : str
        ``'instance'``: an instance's class probabilities are the object-probability-weighted
        mean of the class map over its pixels, background excluded from the arg-max
        (StarDist's CoNIC 2022 rule). ``'center'``: stock StarDist (class map at the polygon
        centre, arg-max over all channels, background included).
    train_tensorboard : bool
        As in StarDist, but off by default: TensorFlow >= 2.21 no longer installs
        TensorBoard, and StarDist's callback would fail at the first epoch without it.
    """

    def __init__(self, axes="YX", n_rays=32, n_channel_in=1, grid=(1, 1), n_classes=None, backbone="unet",
                 hierarchy=None, **kwargs):
        """See class docstring."""
        if hierarchy is not None:
            h = ClassHierarchy.resolve(hierarchy)
            if n_classes is not None and int(n_classes) != h.n_classes:
                raise HierarchyError(f"n_classes={n_classes} but the hierarchy ({h.source}) has {h.n_classes} leaves")
            n_classes = h.n_classes
            hierarchy = h.to_dict()
        for key, value in HIER_CONFIG_DEFAULTS.items():
            setattr(self, key, value)
        self.hierarchy = hierarchy
        kwargs.setdefault("train_tensorboard", False)
        super().__init__(axes=axes, n_rays=n_rays, n_channel_in=n_channel_in, grid=grid,
                         n_classes=n_classes, backbone=backbone, **kwargs)

    def is_valid(self, return_invalid=False):
        ok, invalid = super().is_valid(True)
        checks = {
            "train_class_ce_weight": self.train_class_ce_weight >= 0,
            "train_focal_tversky_weight": self.train_focal_tversky_weight >= 0
            and self.train_class_ce_weight + self.train_focal_tversky_weight > 0,
            "train_focal_tversky_alpha": 0 < self.train_focal_tversky_alpha < 1,
            "train_focal_tversky_gamma": self.train_focal_tversky_gamma > 0,
            "train_focal_tversky_mode": self.train_focal_tversky_mode in ("pixelwise", "classwise"),
            "train_early_stopping_patience": self.train_early_stopping_patience is None
            or (isinstance(self.train_early_stopping_patience, Integral) and self.train_early_stopping_patience >= 1),
            "predict_class_from": self.predict_class_from in ("instance", "center"),
        }
        invalid = tuple(invalid) + tuple(k for k, good in checks.items() if not good)
        ok = len(invalid) == 0
        return (ok, invalid) if return_invalid else ok

    @classmethod
    def from_config2d(cls, config, **kwargs):
        """Convert a stock :class:`Config2D` (same network and training parameters)."""
        params = {k: v for k, v in vars(config).items() if k not in ("n_dim", "n_channel_out")}
        params.update(kwargs)
        return cls(**params)
