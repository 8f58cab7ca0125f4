"""Peak memory of ``predict_slide`` against slide size, and PQ with and without test-time augmentation.

Two parts (``--part memory``, ``--part tta``, or ``all``), sharing one small model trained on
the synthetic datasets (:mod:`stardist_hier.synth`: CoNSeP-like and PanNuke-like tiles, mixed
in every batch) and saved under ``OUT/model``:

* **memory**: synthetic pyramidal TIFF slides of ``--sizes`` (default 4096, 8192, 16384 px
  square; tissue islands covering about 40% of the area, :func:`write_synthetic_slide`) are
  predicted one per fresh process with
  :func:`stardist_hier.predict.engine.predict_slide` (``--block-size``, default 2048). Each
  process reports its peak resident memory (``ru_maxrss``), its resident memory after loading
  the model and one warm-up block, the number of blocks and nuclei and the seconds taken. The
  claim: peak memory is bounded by the block, so it stays flat within 20% from the smallest
  to the largest slide (the per-nucleus results, about 0.5 kB a nucleus, are the only part
  that grows with the slide).
* **tta**: PQ on the synthetic test sets (``--tta-datasets``), with and without 8-fold
  test-time augmentation (:func:`predict_image` with ``tta=False/True``), scored with
  :func:`stardist_hier.metrics.evaluate_arrays`: ``PQ_conic`` (class-agnostic, mean over
  images) and ``mPQ+_conic`` (classes of each dataset's label set).

Results: ``OUT/memory.json``, ``OUT/tta.json`` and ``OUT/summary.md``.

Usage::

    python benchmarks/bench_predict_memory.py --out bench_out/predict_memory            # both parts
    python benchmarks/bench_predict_memory.py --out /tmp/pm --quick                    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

MODEL_PARAMS = dict(n_rays=32, grid=(2, 2), n_channel_in=3, unet_n_depth=3, unet_n_filter_base=16,
                    net_conv_after_unet=64, train_patch_size=(128, 128), train_batch_size=8,
                    train_focal_tversky_weight=0.0)
TRAIN_SETS = ("consep", "pannuke")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rss_mb():
    """Current resident memory (MB), from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tiles_of(dataset, split, n, size, seed=0):
    from stardist_hier import synth

    out = []
    for k in range(n):
        t = synth.generate_tile(dataset, synth.tile_seed(seed, dataset, split, k), size=size)
        inst, cls = t.mask[..., 0], t.mask[..., 1]
        ids = np.unique(inst[inst > 0])
        classes = {int(i): int(np.bincount(cls[inst == i]).argmax()) for i in ids}
        out.append((t.image, inst, classes, cls))
    return out


def train_model(out, epochs, steps, n_train, seed=0):
    """The shared model: trained once, then loaded from ``out/model``."""
    from stardist_hier.model import HierStarDist2D
    from stardist_hier.model.build import build_model
    from stardist_hier.patches import normalize_image

    folder = out / "model"
    if (folder / "weights_best.h5").exists():
        log(f"model: {folder} (cached)")
        return HierStarDist2D(None, name="model", basedir=str(out))
    X, Y, C, D, Xv, Yv, Cv, Dv = [], [], [], [], [], [], [], []
    for ds in TRAIN_SETS:
        tr = tiles_of(ds, "train", n_train, 256, seed)
        va = tiles_of(ds, "val", 4, 256, seed)
        X += [normalize_image(t[0]) for t in tr]
        Y += [t[1] for t in tr]
        C += [t[2] for t in tr]
        D += [ds] * len(tr)
        Xv += [normalize_image(t[0]) for t in va]
        Yv += [t[1] for t in va]
        Cv += [t[2] for t in va]
        Dv += [ds] * len(va)
    model = build_model("default", MODEL_PARAMS, seed=seed, name="model", basedir=str(out))
    t0 = time.perf_counter()
    model.train(X, Y, classes=C, dataset=D, validation_data=(Xv, Yv, Cv, Dv), epochs=epochs, steps_per_epoch=steps,
                verbose=0)
    log(f"model trained: {epochs} x {steps} steps in {time.perf_counter() - t0:.0f} s (StarDist's default thresholds)")
    return model


# ----------------------------------------------------------------------------------------
# memory


def child(args):
    """One slide in this (fresh) process: print one JSON line."""
    from stardist_hier.model import HierStarDist2D
    from stardist_hier.predict.engine import predict_image, predict_slide

    model = HierStarDist2D(None, name="model", basedir=str(args.out))
    # warm-up: TensorFlow's allocations for one block (no candidate nuclei to suppress)
    predict_image(model, np.full((args.block_size, args.block_size, 3), 240, np.uint8), prob_thresh=1.0,
                  block_size=args.block_size)
    base = rss_mb()
    base_peak = peak_rss_mb()
    t0 = time.perf_counter()
    r = predict_slide(model, args.child, block_size=args.block_size, label_set="consep")
    rec = dict(slide=str(args.child), shape=list(r.shape), block_size=args.block_size, seconds=time.perf_counter() - t0,
               blocks=r.info["blocks"], blocks_total=r.info["blocks_total"], nuclei=len(r),
               rss_after_warmup_mb=base, peak_after_warmup_mb=base_peak, peak_rss_mb=peak_rss_mb(),
               result_mb=sum(a.nbytes for a in (r.coord, r.points, r.prob, r.class_prob, r.class_id)) / 2**20)
    print("RESULT " + json.dumps(rec), flush=True)


def part_memory(args):
    from stardist_hier.predict.synthetic import write_synthetic_slide

    slides = args.out / "slides"
    recs = []
    for size in args.sizes:
        path = slides / f"islands_{size}.tif"
        if not path.exists():
            t0 = time.perf_counter()
            write_synthetic_slide(path, (size, size), mpp=0.5, tile=256, kind="islands", n_distinct=16,
                                  downsamples=(4, 16, 64), compression="zlib")
            log(f"wrote {path} in {time.perf_counter() - t0:.0f} s")
        cmd = [sys.executable, __file__, "--out", str(args.out), "--block-size", str(args.block_size),
               "--child", str(path)]
        log(f"predicting {path.name} in a fresh process")
        p = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not lines:
            raise RuntimeError(f"child failed ({p.returncode}): {p.stderr[-2000:]}")
        rec = json.loads(lines[-1][7:])
        recs.append(rec)
        log(f"  {size}: peak {rec['peak_rss_mb']:.0f} MB (after warm-up {rec['peak_after_warmup_mb']:.0f} MB), "
            f"{rec['blocks']}/{rec['blocks_total']} blocks, {rec['nuclei']} nuclei, {rec['seconds']:.0f} s")
    peaks = [r["peak_rss_mb"] for r in recs]
    res = dict(records=recs, max_over_min_peak=max(peaks) / min(peaks), flat_within_20pct=max(peaks) / min(peaks) <= 1.2)
    (args.out / "memory.json").write_text(json.dumps(res, indent=1))
    return res


# ----------------------------------------------------------------------------------------
# TTA


def part_tta(args, model):
    from stardist_hier.metrics import evaluate_arrays
    from stardist_hier.predict.engine import predict_image

    res = {}
    for ds in args.tta_datasets:
        tiles = tiles_of(ds, "test", args.n_test, 256, seed=0)
        ls = model.hierarchy.label_set(ds)
        row = {}
        for tta in (False, True):
            preds, pcls, t0 = [], [], time.perf_counter()
            for img, inst, classes, cls in tiles:
                r = predict_image(model, img, label_set=ds, tta=tta)
                preds.append(r.labels)
                pcls.append({i + 1: int(c) for i, c in enumerate(r.class_id)})
            secs = time.perf_counter() - t0
            gts = [t[1] for t in tiles]
            summary, _ = evaluate_arrays(gts, preds, gt_classes=[t[3] for t in tiles], pred_classes=pcls,
                                         class_ids=ls)
            row["tta" if tta else "plain"] = dict(PQ_conic=summary["PQ_conic"], mPQ_plus_conic=summary["mPQ+_conic"],
                                                  seconds=secs)
        res[ds] = row
        log(f"  {ds}: PQ {row['plain']['PQ_conic']:.4f} -> {row['tta']['PQ_conic']:.4f} with TTA, "
            f"mPQ+ {row['plain']['mPQ_plus_conic']:.4f} -> {row['tta']['mPQ_plus_conic']:.4f}, "
            f"time x{row['tta']['seconds'] / row['plain']['seconds']:.1f}")
    (args.out / "tta.json").write_text(json.dumps(res, indent=1))
    return res


def write_summary(args, mem, tta):
    lines = [f"# bench_predict_memory ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)", ""]
    if mem:
        lines += [f"Peak resident memory of one `predict_slide` per fresh process, block {args.block_size}:", "",
                  "| slide | blocks predicted / total | nuclei | seconds | peak RSS (MB) | RSS after warm-up (MB) |"
                  " result arrays (MB) |", "|---|---|---|---|---|---|---|"]
        for r in mem["records"]:
            lines.append(f"| {r['shape'][0]}x{r['shape'][1]} | {r['blocks']} / {r['blocks_total']} | {r['nuclei']} | "
                         f"{r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | {r['rss_after_warmup_mb']:.0f} | "
                         f"{r['result_mb']:.1f} |")
        lines += ["", f"largest / smallest peak: {mem['max_over_min_peak']:.3f} "
                      f"({'flat within 20%' if mem['flat_within_20pct'] else 'NOT flat within 20%'})", ""]
    if tta:
        lines += ["PQ on the synthetic test sets, without and with 8-fold TTA:", "",
                  "| dataset | PQ | PQ (TTA) | mPQ+ | mPQ+ (TTA) | time ratio |", "|---|---|---|---|---|---|"]
        for ds, row in tta.items():
            p, t = row["plain"], row["tta"]
            lines.append(f"| {ds} | {p['PQ_conic']:.4f} | {t['PQ_conic']:.4f} | {p['mPQ_plus_conic']:.4f} | "
                         f"{t['mPQ_plus_conic']:.4f} | {t['seconds'] / p['seconds']:.1f} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--part", choices=("memory", "tta", "all"), default="all")
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--block-size", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--n-train", type=int, default=24, help="training tiles per dataset (256 px)")
    ap.add_argument("--n-test", type=int, default=16, help="test tiles per dataset (256 px)")
    ap.add_argument("--tta-datasets", nargs="+", default=["consep", "pannuke", "monusac"])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, a few steps")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        return child(args)
    if args.quick:
        args.sizes, args.block_size, args.epochs, args.steps = [1024, 2048], 512, 2, 3
        args.n_train, args.n_test, args.tta_datasets = 4, 2, ["consep"]
    model = train_model(args.out, args.epochs, args.steps, args.n_train)
    mem = part_memory(args) if args.part in ("memory", "all") else None
    tta = part_tta(args, model) if args.part in ("tta", "all") else None
    write_summary(args, mem, tta)


if __name__ == "__main__":
    main()
