"""Seeded construction of models: the one place that seeds training and builds a model from parameters.

The experiment runner, the claim study and the benchmarks all call these, so that a seed
means the same thing everywhere: Python's ``random``, numpy's global state and TensorFlow
(Keras 3's weight initialisers included, through :func:`keras.utils.set_random_seed`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["seed_everything", "derive_seed", "build_model"]


def derive_seed(*parts):
    """A seed in ``[0, 2**31 - 1)`` derived from integers (e.g. run seed, episode, epoch)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] % (2**31 - 1))


def seed_everything(seed, deterministic=False):
    """Seed Python, numpy and TensorFlow/Keras (weight initialisers included).

    Parameters
    ----------
    seed : int
    deterministic : bool
        Also ask TensorFlow for deterministic kernels (slower; exact reruns on the CPU).
    """
    import keras

    keras.utils.set_random_seed(int(seed) % (2**31 - 1))
    if deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def build_model(hierarchy, params, seed=None, deterministic=False, name=None, basedir=None):
    """A new :class:`HierStarDist2D` from a hierarchy and :class:`HierConfig2D` parameters.

    Parameters
    ----------
    hierarchy : str, dict, ClassHierarchy or None
        As ``HierConfig2D(hierarchy=...)``.
    params : dict
        Other :class:`HierConfig2D` parameters.
    seed : int, optional
        Seeds everything (:func:`seed_everything`) before the weights are drawn.
    deterministic : bool
    name, basedir : str, optional
        Model folder (``basedir=None``: in memory).

    Raises
    ------
    ValueError
        Invalid parameters, naming them.
    """
    from .config import HierConfig2D
    from .model2d import HierStarDist2D

    if seed is not None:
        seed_everything(seed, deterministic)
    conf = HierConfig2D(hierarchy=hierarchy, **params)
    ok, invalid = conf.is_valid(return_invalid=True)
    if not ok:
        raise ValueError(f"invalid model parameter(s): {', '.join(invalid)}")
    return HierStarDist2D(conf, name=name, basedir=basedir)
