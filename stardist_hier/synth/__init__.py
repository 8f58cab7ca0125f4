"""Synthetic H&E nucleus datasets whose label sets are cuts of the default class hierarchy.

The real datasets (PanNuke, MoNuSAC, CoNSeP, MoNuSeg) sit behind registration pages; these
stand-ins exist everywhere, cost seconds to make and go through the same patch format, so
training, evaluation and the experiment runner read them through their real code paths.

Modules
-------
- :mod:`~stardist_hier.synth.specs`: stains, leaf morphologies (:data:`MORPHOLOGY`, which
  follow the hierarchy), tissues and the four datasets (:data:`DATASETS`: label cut, class
  mix, domain, MoNuSAC's unannotated and "Ambiguous" nuclei), label cuts, tile seeds;
- :mod:`~stardist_hier.synth.nuclei`: the shape of one nucleus, drawn from its leaf's morphology;
- :mod:`~stardist_hier.synth.render`: the scene (tissue layout, placement, painting) rendered
  in optical density into an H&E image;
- :mod:`~stardist_hier.synth.tiles`: :func:`generate_tile` (image, instance and class masks);
- :mod:`~stardist_hier.synth.overlay`: :func:`save_overlay`, outlines coloured by leaf or class;
- :mod:`~stardist_hier.synth.write`: whole datasets in the patch format (:func:`generate_all`).

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

This package is numpy/scipy/scikit-image only (no TensorFlow).
"""

from .overlay import save_overlay
from .specs import (DATASETS, DEFAULT_COUNTS, MORPHOLOGY, SPLITS, DatasetSpec, Morphology, Stain, Tissue,
                    leaf_class_ids, tile_seed)
from .tiles import SynthTile, generate_tile, iter_tiles
from .write import dataset_complete, generate_all, generate_dataset

__all__ = [
    "Stain", "Morphology", "Tissue", "DatasetSpec", "SynthTile",
    "MORPHOLOGY", "DATASETS", "SPLITS", "DEFAULT_COUNTS",
    "leaf_class_ids", "tile_seed", "generate_tile", "iter_tiles", "generate_dataset", "dataset_complete",
    "generate_all", "save_overlay",
]
