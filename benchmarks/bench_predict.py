"""Throughput of ``stardist-hier predict`` on a synthetic H&E slide, against stock StarDist.

A synthetic H&E mosaic (``--size`` x ``--size``, default 8192, tiles of
:func:`stardist_hier.synth.generate_tile`) is written as a pyramidal tiled TIFF. One network
(StarDist's default 2-D architecture, 32 rays, grid 2, the default hierarchy's 12 leaves as
``n_classes``), briefly trained on synthetic tiles so that its maps look like a real model's,
is saved once and loaded twice in this process:

* **ours**: :func:`stardist_hier.predict.engine.predict_slide` on the TIFF (reads blocks from
  the file, tissue mask and normalisation from a thumbnail, classes at ``--label-set`` by the
  instance rule on each block's class map), level 0;
* **stock**: ``StarDist2D.predict_instances_big`` of the same folder on the same level-0 pixels
  (read whole, normalised with csbdeep's percentiles), the same blocks (``block_size``,
  ``min_overlap``, ``context``) and the same ``n_tiles`` per block, classes stock's way.

Repetitions are interleaved (ours, stock, stock, ours, ...) after one untimed warm-up of each;
every measurement (wall-clock and CPU seconds of the process, the load average) is appended to
``results.jsonl`` as it comes, ``summary.json``/``.md`` after every repetition: median seconds,
megapixels per second, ours / stock (target <= 1.10), and the cost ratio of ``--tta`` (ours
with and without TTA on a ``--tta-size`` crop). On a shared machine the CPU-time ratio is the
steadier one (other processes stretch wall-clock time, not this process's CPU time).

Usage::

    nohup python benchmarks/bench_predict.py --out bench_out/predict [--size 8192] [--reps 3]
          [--tta-size 2048] [--block-size 4096] [--train-steps 150] > bench_predict.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402

TILE = 512
MIN_OVERLAP = 128


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds():
    """User + system CPU time of this process, all threads (TensorFlow's included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn, *args, **kwargs):
    """``fn``'s result, its wall-clock seconds and its CPU seconds."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    res = fn(*args, **kwargs)
    return res, time.perf_counter() - t0, cpu_seconds() - c0


# -- data -------------------------------------------------------------------------------------

def make_mosaic(path, size, seed=0, n_unique=16):
    """A ``size`` x ``size`` H&E mosaic of synthetic tiles (``n_unique`` tiles, flipped and rotated),
    written as a pyramidal tiled TIFF (levels /1, /2, /4, ... down to < 1024 px, mpp 0.25)."""
    import tifffile

    from stardist_hier.synth import generate_tile, tile_seed

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    datasets = ["consep", "pannuke", "monusac"]
    tiles = [generate_tile(datasets[i % 3], tile_seed(seed, datasets[i % 3], "bench", i), size=TILE).image
             for i in range(n_unique)]
    n = int(math.ceil(size / TILE))
    mosaic = np.zeros((n * TILE, n * TILE, 3), np.uint8)
    for i in range(n):
        for j in range(n):
            t = np.rot90(tiles[rng.integers(n_unique)], int(rng.integers(4)))
            mosaic[i * TILE:(i + 1) * TILE, j * TILE:(j + 1) * TILE] = t[:, ::-1] if rng.integers(2) else t
    mosaic = np.ascontiguousarray(mosaic[:size, :size])
    levels = [mosaic]
    while max(levels[-1].shape[:2]) >= 1024:
        levels.append(np.ascontiguousarray(levels[-1][::2, ::2]))
    tmp = path.with_name(path.name + ".tmp.tif")
    res = 1e4 / 0.25  # pixels per centimetre
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        tw.write(levels[0], tile=(256, 256), photometric="rgb", compression="zlib", subifds=len(levels) - 1,
                 resolution=(res, res), resolutionunit="CENTIMETER")
        for k, lv in enumerate(levels[1:], 1):
            tw.write(lv, tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=1,
                     resolution=(res / 2 ** k, res / 2 ** k), resolutionunit="CENTIMETER")
    os.replace(tmp, path)
    return path


def make_model(basedir, train_steps, seed=0, n_train=24):
    """The benchmark network (stock's default architecture, 12 leaf classes), trained briefly."""
    from stardist_hier import patches as P
    from stardist_hier.model import HierConfig2D, HierStarDist2D
    from stardist_hier.model.folder import write_model_folder
    from stardist_hier.synth import generate_tile, tile_seed

    folder = Path(basedir) / "bench_net"
    if (folder / "weights_best.h5").exists():
        return folder
    X, Y, C = [], [], []
    for i in range(n_train + 4):
        t = generate_tile("consep", tile_seed(seed, "consep", "train", i), size=256)
        inst = t.mask[..., 0]
        X.append(P.normalize_image(t.image))
        Y.append(inst)
        C.append({int(k): int(v) for k, v in zip(*np.unique(np.stack([inst.ravel(), t.mask[..., 1].ravel()]),
                                                               axis=1)) if k > 0})
    conf = HierConfig2D(hierarchy="default", n_rays=32, grid=(2, 2), n_channel_in=3, train_patch_size=(256, 256),
                        train_batch_size=4, train_focal_tversky_weight=0.0)
    model = HierStarDist2D(conf, name=None, basedir=None)
    model.train(X[:n_train], Y[:n_train], classes=C[:n_train], dataset="consep",
                validation_data=(X[n_train:], Y[n_train:], C[n_train:]), epochs=1, steps_per_epoch=train_steps,
                seed=seed, verbose=0)
    model.thresholds = dict(prob=0.5, nms=0.4)
    write_model_folder(model, folder)
    (folder / "thresholds.json").write_text(json.dumps({"prob": 0.5, "nms": 0.4}))
    return folder


# -- the two ways -----------------------------------------------------------------------------

def run_ours(model, path, block_size, label_set, tta=False):
    from stardist_hier.predict.engine import predict_slide

    nuc = predict_slide(model, path, label_set=label_set, tta=tta, level=0, block_size=block_size)
    return len(nuc), nuc.info.get("blocks")


def run_stock(stock, path, block_size, context):
    import tifffile
    from csbdeep.utils import normalize

    img = tifffile.imread(path, level=0) if _has_level_arg() else tifffile.TiffFile(path).series[0].levels[0].asarray()
    x = normalize(img, 1, 99.8, axis=(0, 1))
    del img
    t1 = time.perf_counter()
    b = min(block_size, max(x.shape[:2]))
    read = b + 2 * max(context)
    n_tiles = (max(1, math.ceil(read / 1024)), max(1, math.ceil(read / 1024)), 1)
    if max(x.shape[:2]) <= block_size:
        labels, details = stock.predict_instances(x, axes="YXC", n_tiles=n_tiles, show_tile_progress=False)
    else:
        # per axis of 'YXC', as stock wants them; the channel axis is one block
        labels, details = stock.predict_instances_big(
            x, axes="YXC", block_size=(block_size, block_size, 3), min_overlap=(MIN_OVERLAP, MIN_OVERLAP, 0),
            context=(*context, 0), labels_out=False, show_progress=False, n_tiles=n_tiles)
    t2 = time.perf_counter()
    return len(details["prob"]), t2 - t1


def _has_level_arg():
    import inspect

    import tifffile

    return "level" in inspect.signature(tifffile.imread).parameters


def crop_slide(src, dst, size):
    """The top-left ``size`` x ``size`` of a mosaic TIFF, as its own pyramidal TIFF."""
    import tifffile

    if dst.exists():
        return dst
    with tifffile.TiffFile(src) as tf:
        img = tf.series[0].levels[0].asarray()[:size, :size]
    levels = [np.ascontiguousarray(img)]
    while max(levels[-1].shape[:2]) >= 1024:
        levels.append(np.ascontiguousarray(levels[-1][::2, ::2]))
    tmp = dst.with_name(dst.name + ".tmp.tif")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        tw.write(levels[0], tile=(256, 256), photometric="rgb", compression="zlib", subifds=len(levels) - 1)
        for lv in levels[1:]:
            tw.write(lv, tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=1)
    os.replace(tmp, dst)
    return dst


# -- main -------------------------------------------------------------------------------------

def append(out, rec):
    with open(out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())
    log(json.dumps(rec))


def summarize(out, args):
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    recs = [r for r in recs if r.get("run") == args.run_id]

    def med(method, size, key="seconds"):
        v = [r[key] for r in recs if r["method"] == method and r["size"] == size and key in r]
        return (float(np.median(v)), len(v)) if v else (None, 0)

    s = {"size": args.size, "block_size": args.block_size, "reps": args.reps, "label_set": args.label_set,
         "cores": os.cpu_count(), "machine": platform.processor() or platform.machine(), "run": args.run_id}
    mp = args.size ** 2 / 1e6
    for m in ("ours", "stock"):
        sec, n = med(m, args.size)
        cpu, _ = med(m, args.size, "cpu_seconds")
        s[m] = {"median_seconds": sec, "median_cpu_seconds": cpu, "n": n,
                "mpix_per_s": None if sec is None else mp / sec,
                "mpix_per_cpu_s": None if cpu is None else mp / cpu,
                "nuclei": next((r["nuclei"] for r in recs if r["method"] == m and r["size"] == args.size), None)}
    if s["ours"]["median_seconds"] and s["stock"]["median_seconds"]:
        s["ours_over_stock"] = s["ours"]["median_seconds"] / s["stock"]["median_seconds"]
        s["ours_over_stock_cpu"] = s["ours"]["median_cpu_seconds"] / s["stock"]["median_cpu_seconds"]
        s["within_10_percent"] = s["ours_over_stock"] <= 1.10
        s["within_10_percent_cpu"] = s["ours_over_stock_cpu"] <= 1.10
    if args.tta_size:
        a, _ = med("ours", args.tta_size)
        b, _ = med("ours_tta", args.tta_size)
        ac, _ = med("ours", args.tta_size, "cpu_seconds")
        bc, _ = med("ours_tta", args.tta_size, "cpu_seconds")
        s["tta"] = {"size": args.tta_size, "seconds_plain": a, "seconds_tta": b,
                    "cost_ratio": (b / a) if a and b else None, "cost_ratio_cpu": (bc / ac) if ac and bc else None}
    s["peak_rss_mb"] = peak_rss_mb()
    (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    lines = [f"# bench_predict: {args.size}x{args.size} synthetic H&E, block {args.block_size}, "
             f"{os.cpu_count()} cores", "",
             "| method | median wall s | MP/s (wall) | median CPU s | MP per CPU s | nuclei | reps |",
             "|---|---|---|---|---|---|---|"]
    for m in ("ours", "stock"):
        r = s[m]
        lines.append(f"| {m} | {_f(r['median_seconds'])} | {_f(r['mpix_per_s'], 3)} | {_f(r['median_cpu_seconds'])} "
                     f"| {_f(r['mpix_per_cpu_s'], 3)} | {r['nuclei']} | {r['n']} |")
    if "ours_over_stock" in s:
        lines += ["", f"ours / stock: wall {s['ours_over_stock']:.3f}, CPU {s['ours_over_stock_cpu']:.3f} "
                      f"(target <= 1.10: wall {'met' if s['within_10_percent'] else 'NOT met'}, "
                      f"CPU {'met' if s['within_10_percent_cpu'] else 'NOT met'})"]
    if s.get("tta", {}).get("cost_ratio"):
        lines += [f"--tta cost ratio at {args.tta_size}^2: wall {s['tta']['cost_ratio']:.2f}, "
                  f"CPU {s['tta']['cost_ratio_cpu']:.2f} "
                  f"({_f(s['tta']['seconds_tta'])} s vs {_f(s['tta']['seconds_plain'])} s)"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    log("\n" + "\n".join(lines))
    return s


def _f(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out/predict"))
    ap.add_argument("--size", type=int, default=8192, help="side of the mosaic (default 8192)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions of each method (default 3)")
    ap.add_argument("--block-size", type=int, default=4096)
    ap.add_argument("--tta-size", type=int, default=2048, help="side of the TTA crop (0: no TTA measurement)")
    ap.add_argument("--tta-reps", type=int, default=1)
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--label-set", default="consep")
    ap.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads (0: default)")
    args = ap.parse_args(argv)
    args.run_id = time.strftime("%Y%m%dT%H%M%S")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log(f"bench_predict {vars(args)}")
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    from stardist.models import StarDist2D

    from stardist_hier.model import HierStarDist2D
    from stardist_hier.predict.blocks import default_context

    t = time.perf_counter()
    folder = make_model(out / "models", args.train_steps)
    log(f"model {folder} ({time.perf_counter() - t:.0f} s)")
    t = time.perf_counter()
    slide = make_mosaic(out / f"mosaic_{args.size}.tif", args.size)
    log(f"mosaic {slide} ({time.perf_counter() - t:.0f} s)")
    ours = HierStarDist2D(None, name=folder.name, basedir=str(folder.parent))
    stock = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
    ctx = default_context(ours)
    warm = crop_slide(slide, out / "warmup_512.tif", 512)
    run_ours(ours, warm, args.block_size, args.label_set)
    run_stock(stock, warm, args.block_size, ctx)
    log(f"warm-up done; context {ctx}")
    for rep in range(args.reps):
        order = ("ours", "stock") if rep % 2 == 0 else ("stock", "ours")
        for m in order:
            if m == "ours":
                (n, blocks), sec, cpu = timed(run_ours, ours, slide, args.block_size, args.label_set)
                extra = dict(blocks=blocks)
            else:
                (n, pred), sec, cpu = timed(run_stock, stock, slide, args.block_size, ctx)
                extra = dict(predict_seconds=pred)
            append(out, dict(run=args.run_id, method=m, size=args.size, rep=rep, seconds=sec, cpu_seconds=cpu,
                             nuclei=n, load=os.getloadavg()[0], peak_rss_mb=peak_rss_mb(), **extra))
        summarize(out, args)
    if args.tta_size:
        crop = crop_slide(slide, out / f"crop_{args.tta_size}.tif", args.tta_size)
        for rep in range(args.tta_reps):
            for tta in (False, True):
                (n, _), sec, cpu = timed(run_ours, ours, crop, args.block_size, args.label_set, tta=tta)
                append(out, dict(run=args.run_id, method="ours_tta" if tta else "ours", size=args.tta_size, rep=rep,
                                 seconds=sec, cpu_seconds=cpu, nuclei=n, load=os.getloadavg()[0],
                                 peak_rss_mb=peak_rss_mb()))
    summarize(out, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
