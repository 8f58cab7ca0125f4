"""Synthetic whole-slide images for tests and benchmarks: pyramidal tiled TIFF mosaics.

:func:`write_synthetic_slide` lays synthetic H&E tiles (:func:`stardist_hier.synth.generate_tile`)
on a white background in a few tissue islands and writes a tiled pyramidal TIFF with its
pixel size in the resolution tags, which OpenSlide (generic TIFF) and tiffslide read as the
slide's micrometres per pixel. It writes tile by tile: memory stays that of a few tiles,
whatever the slide's size.

No TensorFlow here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_save

__all__ = ["write_synthetic_slide", "island_layout"]


def island_layout(n_rows, n_cols, kind="islands"):
    """Which cells of an ``n_rows x n_cols`` mosaic are tissue.

    ``'islands'``: three discs at fixed relative positions (about a third of the area, the
    same share at every size); ``'full'``: every cell; ``'none'``: no cell (glass only).
    """
    if kind == "full":
        return np.ones((n_rows, n_cols), bool)
    if kind == "none":
        return np.zeros((n_rows, n_cols), bool)
    if kind != "islands":
        raise ValueError(f"kind must be 'islands', 'full' or 'none', got {kind!r}")
    yy, xx = np.mgrid[:n_rows, :n_cols]
    yy, xx = (yy + 0.5) / n_rows, (xx + 0.5) / n_cols
    out = np.zeros((n_rows, n_cols), bool)
    for cy, cx, r in ((0.3, 0.3, 0.22), (0.65, 0.7, 0.25), (0.8, 0.2, 0.12)):
        out |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    return out


def write_synthetic_slide(path, shape=(2048, 2048), mpp=0.5, tile=256, kind="islands", n_distinct=8,
                          dataset="consep", seed=0, downsamples=(4, 16), compression="zlib"):
    """Write a synthetic H&E mosaic as a pyramidal tiled TIFF.

    Parameters
    ----------
    path : str or path-like
    shape : tuple of int
        ``(H, W)`` at level 0, multiples of ``tile``.
    mpp : float or None
        Micrometres per pixel written to the resolution tags (None: no resolution tags).
    tile : int
        Size of the mosaic cells and of the TIFF tiles.
    kind : {'islands', 'full', 'none'}
        Tissue layout (:func:`island_layout`).
    n_distinct : int
        Distinct synthetic tiles, repeated over the tissue cells.
    dataset : str
        Synthetic dataset the tiles are drawn from (:data:`stardist_hier.synth.DATASETS`).
    seed : int
    downsamples : tuple of int
        Reduced levels (each divides ``tile``).
    compression : str or None
        TIFF compression of the tiles (``'zlib'`` is lossless; ``'jpeg'`` as scanners do).

    Returns
    -------
    numpy.ndarray
        ``(H // tile, W // tile)`` bool: the tissue cells.
    """
    import tifffile

    from ..synth import generate_tile, tile_seed

    H, W = (int(v) for v in shape)
    if H % tile or W % tile:
        raise ValueError(f"shape {shape} must be a multiple of tile={tile}")
    for d in downsamples:
        if tile % d:
            raise ValueError(f"downsample {d} must divide tile={tile}")
    n_rows, n_cols = H // tile, W // tile
    layout = island_layout(n_rows, n_cols, kind)
    tiles = [generate_tile(dataset, tile_seed(seed, dataset, "slide", k), size=tile).image for k in range(n_distinct)]
    white = np.full((tile, tile, 3), 242, np.uint8)
    rng = np.random.default_rng(seed)
    choice = rng.integers(0, n_distinct, size=(n_rows, n_cols))

    def cell(i, j, d=1):
        img = tiles[choice[i, j]] if layout[i, j] else white
        if d == 1:
            return img
        return img.reshape(tile // d, d, tile // d, d, 3).mean(axis=(1, 3)).round().astype(np.uint8)

    def level_tiles(d):
        # a level-d TIFF tile covers d x d cells, each shrunk by d
        for I in range(0, n_rows, d):
            for J in range(0, n_cols, d):
                out = np.full((tile, tile, 3), 242, np.uint8)
                s = tile // d
                for a in range(d):
                    for b in range(d):
                        if I + a < n_rows and J + b < n_cols:
                            out[a * s:(a + 1) * s, b * s:(b + 1) * s] = cell(I + a, J + b, d)
                yield out

    kw = dict(tile=(tile, tile), photometric="rgb", compression=compression, metadata=None)

    def res(d):
        if mpp is None:
            return {}
        return dict(resolution=(1e4 / (mpp * d), 1e4 / (mpp * d)), resolutionunit="CENTIMETER")

    def write(tmp):
        with tifffile.TiffWriter(tmp, bigtiff=H * W * 3 > 2 ** 31) as tif:
            tif.write(level_tiles(1), shape=(H, W, 3), dtype=np.uint8, **kw, **res(1))
            for d in downsamples:
                h, w = -(-H // d), -(-W // d)
                tif.write(level_tiles(d), shape=(h, w, 3), dtype=np.uint8, subfiletype=1, **kw, **res(d))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, write)
    return layout
