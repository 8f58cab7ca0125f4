"""Cost of the hierarchical targets and losses: HierStarDist2D versus stock StarDist2D.

Same process, same network configuration, same images and instances, interleaved rounds:

* training step: ``keras_model.train_on_batch`` on a fixed, pre-generated batch (the
  stock one-hot class target versus the packed hierarchical target), the models taking
  turns step by step; median and fastest step;
* data generator: batches per second of ``StarDistData2D`` versus ``HierStarDistData2D``
  (patch sampling, star distances and class targets).

The hierarchical model is measured with CoNSeP-like labels (every label a leaf except two
super-classes) and PanNuke-like labels (mostly super-classes). Ratios are reported as
hier / stock; medians over rounds.

Usage::

    python benchmarks/bench_training.py            # 256 px patches, 32 rays, batch 4
    python benchmarks/bench_training.py --quick    # a 1-minute smoke version
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from skimage.draw import ellipse  # noqa: E402


def make_data(n_images, size, rng, label_ids, n_nuclei=60):
    X, Y, C = [], [], []
    for _ in range(n_images):
        y = np.zeros((size, size), np.int32)
        for j in range(1, n_nuclei + 1):
            r, c = rng.integers(8, size - 8, 2)
            rr, cc = ellipse(r, c, rng.uniform(4, 9), rng.uniform(4, 9), shape=y.shape, rotation=rng.uniform(0, np.pi))
            y[rr, cc] = j
        ids = np.unique(y[y > 0])
        X.append((rng.normal(0.5, 0.1, (size, size, 3)) - 0.3 * (y > 0)[..., None]).astype(np.float32))
        Y.append(y)
        C.append({int(k): int(rng.choice(label_ids)) for k in ids})
    return X, Y, C


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--rays", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--grid", type=int, default=2)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--filters", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="training steps per model per round")
    p.add_argument("--gen-batches", type=int, default=10, help="generator batches per timing")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="128 px, 16 rays, 3 rounds")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.patch, args.rays, args.rounds, args.steps, args.gen_batches, args.filters = 128, 16, 3, 3, 5, 16

    from stardist.models import Config2D, StarDist2D
    from stardist.models.model2d import StarDistData2D

    from stardist_hier import ClassHierarchy, HierConfig2D, HierStarDist2D
    from stardist_hier.model.targets import HierStarDistData2D

    h = ClassHierarchy.default()
    rng = np.random.default_rng(0)
    n_images = 2 * args.batch
    # the same instances: stock gets leaf ids 1..12; the hierarchical model gets the class ids
    # of a dataset's label set
    X, Y, C_leaf = make_data(n_images, args.patch, rng, label_ids=list(range(1, h.n_classes + 1)))
    label_sets = {"consep": h.label_set("consep"), "pannuke": h.label_set("pannuke")}
    C_sets = {name: [{k: int(rng.choice(ls.ids)) for k in c} for c in C_leaf] for name, ls in label_sets.items()}

    common = dict(n_rays=args.rays, n_channel_in=3, grid=(args.grid, args.grid), unet_n_depth=args.depth,
                  unet_n_filter_base=args.filters, train_patch_size=(args.patch, args.patch),
                  train_batch_size=args.batch, train_tensorboard=False)
    stock = StarDist2D(Config2D(n_classes=h.n_classes, **common), basedir=None)
    hier = HierStarDist2D(HierConfig2D(hierarchy=h, **common), basedir=None)
    hier.keras_model.set_weights(stock.keras_model.get_weights())
    stock.prepare_for_training()
    hier.prepare_for_training()

    data_kw = dict(batch_size=args.batch, n_rays=args.rays, length=10**6, patch_size=(args.patch, args.patch),
                   grid=(args.grid, args.grid), foreground_prob=0.9)
    gens = {"stock": StarDistData2D(X, Y, n_classes=h.n_classes, classes=C_leaf, **data_kw)}
    for name in label_sets:
        gens[f"hier_{name}"] = HierStarDistData2D(X, Y, hierarchy=h, label_sets=name, classes=C_sets[name], **data_kw)
    np.random.seed(0)
    batches = {name: g[0] for name, g in gens.items()}
    models = {"stock": stock, "hier_consep": hier, "hier_pannuke": hier}

    def train_step(name):
        x, y = batches[name]
        m = models[name]
        return lambda: m.keras_model.train_on_batch(x, y)

    def generate(name):
        g = gens[name]
        return lambda: [g[i] for i in range(args.gen_batches)]

    for name in models:  # warm-up: graph tracing
        for _ in range(2):
            train_step(name)()
    # round-robin one step at a time, so that load changes on a shared machine hit every
    # model alike; the order rotates every round
    results = {name: {"step": [], "gen": []} for name in models}
    names = list(models)
    for r in range(args.rounds * args.steps):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            results[name]["step"].append(median_time(train_step(name), 1))
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            results[name]["gen"].append(median_time(generate(name), 1) / args.gen_batches)

    import pandas as pd

    rows = []
    for name, res in results.items():
        step, gen = float(np.median(res["step"])), float(np.median(res["gen"]))
        fastest = float(np.min(res["step"]))
        rows.append(dict(model=name, step_s=step, step_ratio=step / np.median(results["stock"]["step"]),
                         fastest_step_s=fastest, fastest_ratio=fastest / np.min(results["stock"]["step"]),
                         batch_gen_s=gen, gen_ratio=gen / np.median(results["stock"]["gen"])))
    table = pd.DataFrame(rows)
    print(f"\npatch {args.patch}, rays {args.rays}, batch {args.batch}, grid {args.grid}, U-Net depth {args.depth} "
          f"x {args.filters} filters, {h.n_classes} leaf classes, {args.rounds * args.steps} steps per model taken in turns, generator: {args.rounds} rounds of "
          f"{args.gen_batches} batches (medians; 'fastest' = minimum step time)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), results=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
