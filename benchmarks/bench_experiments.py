"""Experiments (issue 6): CPU cost of the paper-scale training data, the basis of the
full-replay estimate in experiments/README.md.

StarDist computes its training targets (64 star distances per pixel, EDT, class targets) and
the augmentation on the CPU, one batch at a time; on a GPU machine this is usually what a
training step waits for at the paper's network size. This times HierStarDistData2D batches
of the paper scale (8 patches of 256x256, 64 rays, grid 2x2) on synthetic PanNuke-like
tiles, with and without the paper's augmentation.

    python benchmarks/bench_experiments.py [--batches 20]
"""

import argparse
import os
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--tiles", type=int, default=32)
    args = p.parse_args(argv)

    import numpy as np

    from stardist_hier import ClassHierarchy
    from stardist_hier.augment import ClassAwareAugmenter
    from stardist_hier.patches import instance_classes, normalize_image
    from stardist_hier.experiments.config import SCALES
    from stardist_hier.model.build import seed_everything
    from stardist_hier.synth import generate_tile, tile_seed
    from stardist_hier.model.targets import HierStarDistData2D

    tiles = [generate_tile("pannuke", tile_seed(0, "pannuke", "train", i), size=256) for i in range(args.tiles)]
    X = [normalize_image(t.image).astype(np.float32) for t in tiles]
    Y = [np.ascontiguousarray(t.mask[..., 0]) for t in tiles]
    C = [instance_classes(t.mask) for t in tiles]
    m = SCALES["paper"]["model"]
    h = ClassHierarchy.default()
    kw = dict(batch_size=m["train_batch_size"], n_rays=m["n_rays"], length=args.batches, patch_size=m["train_patch_size"],
              grid=m["grid"], hierarchy=h, label_sets="pannuke")
    print(f"paper scale: batch {m['train_batch_size']} x {m['train_patch_size']}, {m['n_rays']} rays, grid {m['grid']}; "
          f"{args.batches} batches, 1 process")
    for name in ("no augmentation", "paper augmentation"):
        if name == "no augmentation":
            data = HierStarDistData2D(X, Y, classes=C, **kw)
        else:
            Yc, Cc, aug = ClassAwareAugmenter.for_dataset(Y, C, seed=0)
            data = HierStarDistData2D(X, Yc, classes=Cc, augmenter=aug, **kw)
        seed_everything(0)  # the generator draws its patches from numpy's global state
        data[0]
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(args.batches):
            data[i]
        dt = (time.perf_counter() - t0) / args.batches
        dc = (time.process_time() - c0) / args.batches
        # CPU time (all threads of the process) does not grow when other jobs share the cores
        print(f"  {name:20s} {dt * 1000:7.1f} ms wall, {dc * 1000:7.1f} ms CPU per batch")


if __name__ == "__main__":
    main()
