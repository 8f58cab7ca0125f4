"""Benchmark of ``stardist-hier prepare pannuke``: conversion rate and peak memory.

A synthetic PanNuke fold of the real dimensions and dtypes (``images.npy`` float64
(N, 256, 256, 3), ``masks.npy`` float64 (N, 256, 256, 6), ``types.npy``) is written in the
release layout, then converted in a fresh process per fold size. Peak memory is the peak
resident set size of the converting process and of its largest worker (``ru_maxrss``);
memory flatness means the same peaks for 100 and 1,000 patches (within 20%).

Usage::

    python benchmarks/bench_prepare.py --sizes 100 1000 --workers 2 --cores 2 [--dir DIR] [--keep]
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_fold(root, n, seed=0, n_templates=16):
    """Write a synthetic fold with PanNuke's layout, dtypes and quirks; returns its folder.

    Patches cycle through ``n_templates`` random templates (~40 nuclei each, ids in the
    thousands, all five class channels, a few overlap pixels), written one patch at a time
    into memory-mapped ``.npy`` files so that the writer itself stays small.
    """
    rng = np.random.default_rng(seed)
    idir = Path(root) / "Fold 1" / "images" / "fold1"
    mdir = Path(root) / "Fold 1" / "masks" / "fold1"
    idir.mkdir(parents=True, exist_ok=True)
    mdir.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:256, :256]
    templates = []
    for _ in range(n_templates):
        img = rng.uniform(0, 255, (256, 256, 3))
        m = np.zeros((256, 256, 6))
        for _ in range(40):
            c, r = rng.integers(0, 5), rng.integers(5, 11)
            cy, cx = rng.integers(0, 256, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            m[disc, c] = rng.integers(1, 3500)
        m[..., 5] = (m[..., :5] == 0).all(-1)
        templates.append((img, m))
    images = np.lib.format.open_memmap(idir / "images.npy", "w+", np.float64, (n, 256, 256, 3))
    masks = np.lib.format.open_memmap(mdir / "masks.npy", "w+", np.float64, (n, 256, 256, 6))
    for i in range(n):
        images[i], masks[i] = templates[i % n_templates]
    images.flush()
    masks.flush()
    del images, masks
    tissues = ["Breast", "Colon", "Lung", "Kidney", "Liver"]
    np.save(idir / "types.npy", np.array([tissues[i % 5] for i in range(n)]))
    return Path(root)


def _vm_hwm_kib():
    """Peak resident set of this process image. Unlike ru_maxrss it restarts at exec, so it
    does not inherit the resident size of the parent that forked us."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _convert_child(src, out, workers, cores):
    """Run in a fresh interpreter: convert and print rate and peak memory as JSON."""
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])  # workers inherit it
    from stardist_hier.readers.convert import convert

    t, c0 = time.perf_counter(), os.times()
    s = convert("pannuke", src, out, workers=workers, progress=False, val_fraction=0)
    dt, c1 = time.perf_counter() - t, os.times()
    # CPU time of this process and its (reaped) workers: unlike the wall time, it does not
    # depend on what else runs on the machine
    cpu = sum(getattr(c1, k) - getattr(c0, k) for k in ("user", "system", "children_user", "children_system"))
    kib = _vm_hwm_kib()
    # pool workers are forked from this small process and reaped when the pool closes
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"patches": s.patches, "seconds": dt, "cpu_seconds": cpu, "main_peak_mib": kib / 1024,
                      "worker_peak_mib": child / 1024, "load_avg_1min": os.getloadavg()[0]}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic folds and patches")
    ap.add_argument("--cores", type=int, default=2, help="CPU cores the conversion may use (default 2)")
    ap.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        _convert_child(args._child[0], args._child[1], int(args._child[2]), int(args._child[3]))
        return 0
    base = Path(args.dir or tempfile.mkdtemp(prefix="bench_prepare_"))
    results = []
    try:
        for n in args.sizes:
            src, out = base / f"src{n}", base / f"out{n}"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            make_fold(src, n)
            gen = time.perf_counter() - t
            r = subprocess.run([sys.executable, __file__, "--_child", str(src), str(out), str(args.workers), str(args.cores)],
                               capture_output=True, text=True, check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            res.update(n=n, rate=res["patches"] / res["seconds"], fold_gib=n * 256 * 256 * 9 * 8 / 2**30, gen_s=gen)
            results.append(res)
            cpu_ms = 1000 * res["cpu_seconds"] / max(res["patches"], 1)
            print(f"N={n:5d}  fold {res['fold_gib']:.2f} GiB  {res['patches']} patches in {res['seconds']:.1f} s "
                  f"= {res['rate']:.0f} patches/s (load avg {res['load_avg_1min']:.1f})  CPU {cpu_ms:.1f} ms/patch "
                  f"(= {args.cores * 1000 / cpu_ms:.0f} patches/s on {args.cores} free cores)  "
                  f"peak RSS main {res['main_peak_mib']:.0f} MiB, largest worker {res['worker_peak_mib']:.0f} MiB",
                  flush=True)
            if not args.keep:
                shutil.rmtree(src, ignore_errors=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    if len(results) >= 2:
        a, b = results[0], results[-1]
        for k in ("main_peak_mib", "worker_peak_mib"):
            print(f"{k}: N={a['n']} {a[k]:.0f} MiB, N={b['n']} {b[k]:.0f} MiB, ratio {b[k] / a[k]:.2f}")
    print(f"cores used: {args.cores} of {os.cpu_count()}, workers: {args.workers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
