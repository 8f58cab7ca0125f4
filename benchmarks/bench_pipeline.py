"""The training input pipeline: batches per second with 1 and 2 workers, data wait of a step, peak memory.

Three measurements on synthetic H&E tiles (:mod:`stardist_hier.synth`, PanNuke's label set,
the default hierarchy), each appended to ``results.jsonl`` as it comes (wall-clock and CPU
seconds, the load average before and after), ``summary.json``/``summary.md`` rewritten after
each:

* ``generator``: batches of the training generator (:class:`HierStarDistData2D`, the
  paper's class-aware augmenter, ``--batch-size`` patches of ``--size``\u00b2, ``--rays`` rays,
  grid 2) built by ``workers=1`` (the training process, as ``train(workers=1)``),
  ``workers=2`` (:class:`~stardist_hier.model.pipeline.ParallelBatches`, two forked
  processes; the time includes starting them) and, for comparison only, ``threads=2`` (a
  thread pool over the same generator: what a ``tf.data``/thread design would get).
  Repetitions are interleaved (1, 2, threads, threads, 2, 1, ...). CPU seconds count this
  process and its finished children. Target: batches/s at 2 workers >= 1.7x that at 1.
* ``wait``: a small network (U-Net depth 2, 8 base filters) where input dominates, trained
  through ``HierStarDist2D.train`` with ``workers=1`` and ``2``: median step time over the
  second epoch, against the same network stepping on one in-memory batch (compute only);
  the difference is the time a step waits for data.
* ``rss``: peak RSS of a training run (``normalize=True`` on uint8 images, and the old
  float32 way: images normalised up front) over ``--rss-counts`` patches of ``--rss-size``\u00b2
  (copies of 200 synthetic tiles), each in a fresh process; it should grow with the uint8
  size of the images (plus the int32 masks), not 4x that.

No GPU is used: GPU step times are not measured here.

Usage::

    nohup python benchmarks/bench_pipeline.py --out benchmarks/results/pipeline [--reps 3]
          [--batches 16] [--only generator,wait,rss] > bench_pipeline.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import numpy as np  # noqa: E402


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_seconds(children=True):
    """User + system CPU seconds of this process (all threads) and, if asked, of its finished children."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    total = r.ru_utime + r.ru_stime
    if children:
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += c.ru_utime + c.ru_stime
    return total


def append(out, rec):
    rec = dict(rec, load_after=round(os.getloadavg()[0], 2))
    with open(out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
    log(json.dumps(rec))


def tiles(n, size, seed=0):
    """``n`` synthetic PanNuke tiles: uint8 images, int32 instance masks, per-instance classes."""
    from stardist_hier.masks import instance_classes
    from stardist_hier.synth import generate_tile, tile_seed

    X, Y, C = [], [], []
    for i in range(n):
        t = generate_tile("pannuke", tile_seed(seed, "pannuke", "train", i), size=size)
        X.append(t.image)
        Y.append(np.ascontiguousarray(t.mask[..., 0]))
        C.append(instance_classes(t.mask))
    return X, Y, C


def generator(Xu, Y, C, args, length):
    from stardist_hier.augment import ClassAwareAugmenter
    from stardist_hier.hierarchy import ClassHierarchy
    from stardist_hier.model.targets import HierStarDistData2D

    Yc, Cc, aug = ClassAwareAugmenter.for_dataset(Y, C, seed=0)
    return HierStarDistData2D(Xu, Yc, hierarchy=ClassHierarchy.default(), label_sets="pannuke", classes=Cc,
                              batch_size=args.batch_size, n_rays=args.rays, length=length,
                              patch_size=(args.size, args.size), grid=(2, 2), augmenter=aug, normalize=True)


# -- generator ------------------------------------------------------------------------------


def run_generator(data, mode, n):
    from concurrent.futures import ThreadPoolExecutor

    from stardist_hier.model.pipeline import ParallelBatches

    load = os.getloadavg()[0]
    c0, t0 = cpu_seconds(), time.perf_counter()
    first, private = None, float("nan")
    if mode == "workers=1":
        data.reseed(0)
        for i in range(n):
            data[i]
            first = first or time.perf_counter()
    elif mode == "workers=2":
        with ParallelBatches(data, 2, seed=0, steps_per_epoch=n, stop=n) as batches:
            for j, _ in enumerate(batches):
                first = first or time.perf_counter()
                if j == 1:  # the workers' own memory (the images are shared copy-on-write), both running
                    private = max(private_mb(p.pid) for p in batches._procs)
    else:
        with ThreadPoolExecutor(2) as pool:
            for _ in pool.map(data.__getitem__, range(n)):
                first = first or time.perf_counter()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    steady = (n - 1) / (time.perf_counter() - first) if n > 1 else float("nan")
    rec = dict(section="generator", mode=mode, batches=n, seconds=round(wall, 3), cpu_seconds=round(cpu, 3),
               batches_per_s=round(n / wall, 3), steady_batches_per_s=round(steady, 3), load_before=round(load, 2))
    if mode == "workers=2" and n > 2:
        rec["worker_private_mb"] = round(private, 1)
    return rec


def private_mb(pid):
    """Private (not shared) resident memory of a process, MB (``/proc/PID/smaps_rollup``)."""
    kb = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    kb += int(line.split()[1])
    except OSError:  # finished already
        return float("nan")
    return kb / 1024


# -- wait -----------------------------------------------------------------------------------


class StepTimes:
    """Keras callback: wall-clock seconds of each training step of the last epoch."""

    def __new__(cls):
        import keras

        class _Times(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.times = []

            def on_train_batch_begin(self, batch, logs=None):
                self._t = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                self.times.append(time.perf_counter() - self._t)

        return _Times()


def small_model(args):
    from stardist_hier import HierConfig2D, HierStarDist2D
    from stardist_hier.model.build import seed_everything

    seed_everything(0)
    conf = HierConfig2D(hierarchy="default", n_rays=args.rays, n_channel_in=3, grid=(2, 2), unet_n_depth=2,
                        unet_n_filter_base=8, net_conv_after_unet=16, train_patch_size=(args.size, args.size),
                        train_batch_size=args.batch_size, train_reduce_lr=None)
    return HierStarDist2D(conf, basedir=None)


def run_wait(Xu, Y, C, args, workers):
    model = small_model(args)
    times = StepTimes()
    load = os.getloadavg()[0]
    c0, t0 = cpu_seconds(), time.perf_counter()
    model.train(Xu, Y, classes=C, dataset="pannuke", validation_data=(Xu[:2], Y[:2], C[:2]), epochs=2,
                steps_per_epoch=args.wait_steps, seed=0, verbose=0, workers=workers, normalize=True,
                callbacks=[times])
    return dict(section="wait", mode=f"workers={workers}", steps=len(times.times),
                median_step_s=round(float(np.median(times.times)), 4), seconds=round(time.perf_counter() - t0, 2),
                cpu_seconds=round(cpu_seconds() - c0, 2), load_before=round(load, 2))


def run_compute_only(Xu, Y, C, args):
    import tensorflow as tf

    model = small_model(args)
    model.prepare_for_training()
    data = generator(Xu, Y, C, args, length=1)
    batch = data[0]
    ds = tf.data.Dataset.from_tensors(batch).repeat()
    times = StepTimes()
    load = os.getloadavg()[0]
    c0, t0 = cpu_seconds(), time.perf_counter()
    model.keras_model.fit(ds, epochs=2, steps_per_epoch=args.wait_steps, verbose=0, callbacks=[times])
    return dict(section="wait", mode="compute only", steps=len(times.times),
                median_step_s=round(float(np.median(times.times)), 4), seconds=round(time.perf_counter() - t0, 2),
                cpu_seconds=round(cpu_seconds() - c0, 2), load_before=round(load, 2))


# -- rss ------------------------------------------------------------------------------------

RSS_CHILD = r"""
import json, os, resource, sys, time
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
n, mode, workers, cache, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
f = np.load(cache, allow_pickle=True)
u, ymask, classes = f["X"], f["Y"], list(f["C"])
from stardist_hier import HierConfig2D, HierStarDist2D
from stardist_hier.model.build import seed_everything
from stardist_hier.patches import normalize_image
X, Y, C = [], [], []
for k in range(n):  # every patch its own buffer, as load_split gives them
    j = k % len(u)
    X.append(u[j].copy() if mode == "uint8" else normalize_image(u[j]))
    Y.append(ymask[j].copy())
    C.append(dict(classes[j]))
del u, ymask, f

def status_mb(key):
    return [int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith(key + ":")][0]

rss_data = status_mb("VmRSS")
seed_everything(0)
m = HierStarDist2D(HierConfig2D(hierarchy="default", n_rays=16, n_channel_in=3, grid=(2, 2), unet_n_depth=1,
                                unet_n_filter_base=4, net_conv_after_unet=8, train_patch_size=(size, size),
                                train_batch_size=4, train_reduce_lr=None), basedir=None)
t0 = time.perf_counter()
m.train(X, Y, classes=C, dataset="pannuke", validation_data=(X[:8], Y[:8], C[:8]), epochs=1, steps_per_epoch=4,
        seed=0, verbose=0, workers=workers, normalize=(mode == "uint8"))
print("RESULT " + json.dumps(dict(peak_rss_mb=round(status_mb("VmHWM"), 1), rss_with_data_mb=round(rss_data, 1),
                                  rss_after_training_mb=round(status_mb("VmRSS"), 1),
                                  image_mb=round(sum(x.nbytes for x in X) / 2**20, 1),
                                  mask_mb=round(sum(y.nbytes for y in Y) / 2**20, 1),
                                  train_seconds=round(time.perf_counter() - t0, 2))))
"""


def run_rss(out, n, mode, workers, cache, size):
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", RSS_CHILD, str(n), mode, str(workers), str(cache), str(size)],
                       capture_output=True, text=True, env=env, timeout=1800)
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"rss run {n} {mode} failed:\n{p.stderr[-3000:]}")
    rec = json.loads(lines[-1][7:])
    return dict(section="rss", patches=n, mode=mode, workers=workers, seconds=round(time.perf_counter() - t0, 1),
                load_before=round(load, 2), **rec)


# -- summary --------------------------------------------------------------------------------


def summarize(out, args):
    from stardist_hier.atomic import atomic_write_json, atomic_write_text

    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    med = lambda xs: float(np.median(xs)) if xs else float("nan")  # noqa: E731
    gen = {m: [r for r in recs if r["section"] == "generator" and r["mode"] == m]
           for m in ("workers=1", "workers=2", "threads=2")}
    summary = dict(command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]), machine=platform.processor() or
                   platform.machine(), cpus=os.cpu_count(), generator={}, wait={}, rss=[])
    for m, rs in gen.items():
        if rs:
            summary["generator"][m] = dict(
                reps=len(rs), batches_per_s=med([r["batches_per_s"] for r in rs]),
                steady_batches_per_s=med([r["steady_batches_per_s"] for r in rs]),
                cpu_seconds_per_batch=med([r["cpu_seconds"] / r["batches"] for r in rs]),
                load=med([r["load_before"] for r in rs]))
    g = summary["generator"]
    if "workers=1" in g and "workers=2" in g:
        summary["generator"]["speedup_2_workers"] = g["workers=2"]["batches_per_s"] / g["workers=1"]["batches_per_s"]
    for m in ("workers=1", "workers=2", "compute only"):
        rs = [r for r in recs if r["section"] == "wait" and r["mode"] == m]
        if rs:
            summary["wait"][m] = dict(reps=len(rs), median_step_s=med([r["median_step_s"] for r in rs]),
                                      load=med([r["load_before"] for r in rs]))
    w = summary["wait"]
    if "compute only" in w:
        for m in ("workers=1", "workers=2"):
            if m in w:
                w[m]["wait_per_step_s"] = w[m]["median_step_s"] - w["compute only"]["median_step_s"]
    summary["rss"] = [r for r in recs if r["section"] == "rss"]
    atomic_write_json(out / "summary.json", summary)

    lines = [f"# Input pipeline benchmark\n", f"`{summary['command']}` ({summary['cpus']} CPUs; no GPU: GPU step "
             f"times not measured)\n"]
    if g:
        lines += ["| generator | batches/s (median) | steady batches/s | CPU s per batch | load |", "|---|---|---|---|---|"]
        for m in ("workers=1", "workers=2", "threads=2"):
            if m in g:
                r = g[m]
                lines.append(f"| {m} ({r['reps']} reps) | {r['batches_per_s']:.2f} | {r['steady_batches_per_s']:.2f} | "
                             f"{r['cpu_seconds_per_batch']:.3f} | {r['load']:.1f} |")
        if "speedup_2_workers" in g:
            lines.append(f"\n2 workers / 1: **{g['speedup_2_workers']:.2f}x** (target >= 1.7x)\n")
    if w:
        lines += ["| training step | median step s | waits for data s | load |", "|---|---|---|---|"]
        for m in ("workers=1", "workers=2", "compute only"):
            if m in w:
                r = w[m]
                lines.append(f"| {m} | {r['median_step_s']:.3f} | {r.get('wait_per_step_s', 0):.3f} | {r['load']:.1f} |")
        lines.append("")
    if summary["rss"]:
        lines += ["| patches | images | workers | peak RSS MB | RSS with data MB | RSS after training MB | images MB | "
                  "masks MB | load |", "|---|---|---|---|---|---|---|---|---|"]
        for r in summary["rss"]:
            lines.append(f"| {r['patches']} | {r['mode']} | {r['workers']} | {r['peak_rss_mb']:.0f} | "
                         f"{r['rss_with_data_mb']:.0f} | {r['rss_after_training_mb']:.0f} | {r['image_mb']:.1f} | "
                         f"{r['mask_mb']:.1f} | {r['load_before']:.1f} |")
        by = {(r['patches'], r['mode'], r['workers']): r for r in summary["rss"]}
        counts = sorted({r['patches'] for r in summary["rss"]})
        if len(counts) >= 2:
            lo, hi = counts[0], counts[-1]
            for mode in ("uint8", "float32"):
                if (lo, mode, 1) in by and (hi, mode, 1) in by:
                    a, b = by[(lo, mode, 1)], by[(hi, mode, 1)]
                    data = b['image_mb'] + b['mask_mb'] - a['image_mb'] - a['mask_mb']
                    lines.append(f"\n{mode}: peak RSS grows {b['peak_rss_mb'] - a['peak_rss_mb']:.0f} MB from {lo} to "
                                 f"{hi} patches; their images and masks grow {data:.0f} MB")
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batches", type=int, default=16, help="batches per generator measurement")
    p.add_argument("--tiles", type=int, default=24, help="synthetic tiles of the generator and wait measurements")
    p.add_argument("--size", type=int, default=256, help="tile and patch size")
    p.add_argument("--rays", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--wait-steps", type=int, default=8, help="steps per epoch of the wait measurement")
    p.add_argument("--rss-counts", default="1000,8000")
    p.add_argument("--rss-size", type=int, default=64)
    p.add_argument("--only", default="generator,wait,rss")
    args = p.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    sections = set(args.only.split(","))
    log(f"tiles: {args.tiles} x {args.size}^2")
    Xu, Y, C = tiles(args.tiles, args.size)
    if "generator" in sections:
        data = generator(Xu, Y, C, args, length=args.batches)
        data[0]  # caches (percentiles, valid indices) and OpenMP warm, as in a running training
        modes = ["workers=1", "workers=2", "threads=2"]
        for rep in range(args.reps):
            for mode in (modes if rep % 2 == 0 else modes[::-1]):
                append(out, dict(run_generator(data, mode, args.batches), rep=rep))
            summarize(out, args)
    if "wait" in sections:
        for rep in range(args.reps):
            for fn in ((lambda: run_wait(Xu, Y, C, args, 1)), (lambda: run_wait(Xu, Y, C, args, 2)),
                       (lambda: run_compute_only(Xu, Y, C, args)))[:: 1 if rep % 2 == 0 else -1]:
                append(out, dict(fn(), rep=rep))
            summarize(out, args)
    if "rss" in sections:
        cache = out / "_rss_tiles.npz"
        if not cache.exists():
            Xs, Ys, Cs = tiles(200, args.rss_size, seed=1)
            np.savez(cache, X=np.stack(Xs), Y=np.stack(Ys), C=np.array(Cs, dtype=object))
        counts = [int(c) for c in args.rss_counts.split(",")]
        runs = [(n, mode, 1) for n in counts for mode in ("uint8", "float32")] + [(counts[-1], "uint8", 2)]
        for n, mode, workers in runs:
            append(out, run_rss(out, n, mode, workers, cache, args.rss_size))
            summarize(out, args)
    log(json.dumps(summarize(out, args), indent=1))


if __name__ == "__main__":
    main()
