"""Do nuclei keep their class across a root-labelled episode? ``train_coarse_label_mode`` (issue 12, section 2)

Per seed: a tiny HierStarDist2D is trained on synthetic CoNSeP-like tiles (labels at the
leaves, and at ``other``), then fine-tuned on synthetic MoNuSeg-like tiles labelled at the
root only, once per ``train_coarse_label_mode`` from the same weights. The CoNSeP-like test
tiles are predicted before and after the root episode; predicted nuclei are paired across
the two predictions (IoU > 0.5) and the share of pairs whose class is the same (at the
``consep`` label set and at the leaves) is reported, with the number of classes in use.

Usage::

    python benchmarks/bench_coarse_labels.py --out benchmarks/results/coarse_labels          # 3 seeds
    python benchmarks/bench_coarse_labels.py --out /tmp/q --seeds 0 --steps 20,10 --quick   # smoke run

Resumable: ``OUT/results.jsonl`` holds one line per (seed, mode, settings); finished ones are
skipped. ``OUT/summary.md`` is rewritten after each run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

MODES = ("sum", "equal_logit")


def tiles(dataset, split, n, size, seed):
    from stardist_hier import synth
    from stardist_hier.metrics import instance_classes
    from stardist_hier.patches import normalize_image

    X, Y, C = [], [], []
    for k in range(n):
        t = synth.generate_tile(dataset, synth.tile_seed(seed, dataset, split, k), size=size)
        inst, cls = t.mask[..., 0], t.mask[..., 1]
        ids = np.unique(inst[inst > 0])
        X.append(normalize_image(t.image))
        Y.append(inst.astype(np.int32))
        C.append({int(i): int(c) for i, c in zip(ids, instance_classes(inst, cls, ids))})
    return X, Y, C


def paired_classes(lab0, cls0, lab1, cls1):
    """Class of each nucleus predicted in both (IoU > 0.5): (before, after) arrays."""
    from stardist_hier.metrics.matching import _match_core

    m = _match_core(lab0, lab1, 0.5)
    sel = m["sel"][0]
    g, p = m["g_ids"][m["gi"][sel]], m["p_ids"][m["pj"][sel]]
    return np.asarray([cls0[i - 1] for i in g]), np.asarray([cls1[j - 1] for j in p])


def run_one(args, seed, mode, first):
    from stardist_hier import HierConfig2D, HierStarDist2D
    from stardist_hier.model.build import seed_everything

    size, (s1, s2) = args.size, args.steps
    params = dict(n_rays=16, n_channel_in=3, grid=(2, 2), unet_n_depth=2, unet_n_filter_base=16,
                  net_conv_after_unet=32, train_patch_size=(64, 64), train_batch_size=4, train_reduce_lr=None)
    Xc, Yc, Cc = tiles("consep", "train", args.n_train, size, seed)
    Xv, Yv, Cv = tiles("consep", "val", 2, size, seed)
    Xt, _, _ = tiles("consep", "test", args.n_test, size, seed)
    Xm, Ym, _ = tiles("monuseg", "train", args.n_train, size, seed)
    Xmv, Ymv, _ = tiles("monuseg", "val", 2, size, seed)
    if first.get(seed) is None:
        seed_everything(seed)
        m1 = HierStarDist2D(HierConfig2D(hierarchy="default", **params), basedir=None)
        m1.train(Xc, Yc, validation_data=(Xv, Yv, Cv), classes=Cc, dataset="consep", epochs=1, steps_per_epoch=s1,
                 seed=seed, verbose=0)
        before = [m1.predict_instances(x, label_set="consep") for x in Xt]
        first[seed] = (m1.keras_model.get_weights(), before)
    weights, before = first[seed]
    seed_everything(seed + 1000)
    m2 = HierStarDist2D(HierConfig2D(hierarchy="default", train_coarse_label_mode=mode, **params), basedir=None)
    m2.keras_model.set_weights(weights)
    m2.train(Xm, Ym, validation_data=(Xmv, Ymv), dataset="monuseg", epochs=1, steps_per_epoch=s2, seed=seed,
             verbose=0)
    after = [m2.predict_instances(x, label_set="consep") for x in Xt]
    b_cls, a_cls, b_leaf, a_leaf = [], [], [], []
    for (l0, d0), (l1, d1) in zip(before, after):
        c0, c1 = paired_classes(l0, d0["class_id"], l1, d1["class_id"])
        f0, f1 = paired_classes(l0, d0["leaf_class_id"], l1, d1["leaf_class_id"])
        b_cls += list(c0)
        a_cls += list(c1)
        b_leaf += list(f0)
        a_leaf += list(f1)
    b_cls, a_cls, b_leaf, a_leaf = map(np.asarray, (b_cls, a_cls, b_leaf, a_leaf))
    return dict(seed=seed, mode=mode, n_before=int(sum(len(d["class_id"]) for _, d in before)),
                n_after=int(sum(len(d["class_id"]) for _, d in after)), n_paired=int(len(b_cls)),
                kept_class=float(np.mean(b_cls == a_cls)) if len(b_cls) else float("nan"),
                kept_leaf=float(np.mean(b_leaf == a_leaf)) if len(b_leaf) else float("nan"),
                classes_before=int(len(np.unique(b_cls))), classes_after=int(len(np.unique(a_cls))))


def summary(records):
    lines = ["| mode | seeds | paired nuclei (mean) | kept class (consep), mean (sd) | kept leaf, mean (sd) | "
             "classes in use before -> after |", "|---|---|---|---|---|---|"]
    for mode in MODES:
        rs = [r for r in records if r["mode"] == mode]
        if not rs:
            continue
        kc, kl = np.array([r["kept_class"] for r in rs]), np.array([r["kept_leaf"] for r in rs])
        lines.append(f"| {mode} | {len(rs)} | {np.mean([r['n_paired'] for r in rs]):.0f} | {np.nanmean(kc):.3f} "
                     f"({np.nanstd(kc):.3f}) | {np.nanmean(kl):.3f} ({np.nanstd(kl):.3f}) | "
                     + ", ".join(f"{r['classes_before']}->{r['classes_after']}" for r in rs) + " |")
    pairs = {}
    for r in records:
        pairs.setdefault(r["seed"], {})[r["mode"]] = r["kept_class"]
    d = [v["equal_logit"] - v["sum"] for v in pairs.values() if len(v) == 2]
    if d:
        lines.append(f"\nequal_logit - sum, kept class, paired by seed: mean {np.mean(d):+.3f} over {len(d)} seed(s): "
                     + ", ".join(f"{x:+.3f}" for x in d))
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", default="300,150", help="steps of the leaf episode, then of the root episode")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=6)
    ap.add_argument("--quick", action="store_true", help="4 training tiles, 2 test tiles")
    args = ap.parse_args(argv)
    args.steps = tuple(int(s) for s in args.steps.split(","))
    if args.quick:
        args.n_train, args.n_test = 4, 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(steps=args.steps, size=args.size, n_train=args.n_train, n_test=args.n_test)
    fp = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = out / "results.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    done = {(r["seed"], r["mode"]) for r in records if r.get("fingerprint") == fp}
    first = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for mode in MODES:
            if (seed, mode) in done:
                continue
            t0 = time.perf_counter()
            rec = run_one(args, seed, mode, first)
            rec.update(fingerprint=fp, settings=settings, seconds=round(time.perf_counter() - t0, 1),
                       command=" ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])))
            with open(path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            records.append(rec)
            print(json.dumps(rec), flush=True)
            tmp = out / ".summary.md.tmp"
            tmp.write_text(summary([r for r in records if r.get("fingerprint") == fp]))
            os.replace(tmp, out / "summary.md")
    print(summary([r for r in records if r.get("fingerprint") == fp]))


if __name__ == "__main__":
    main()
