"""Real data: do nuclei keep their HGSC class across a root-labelled MoNuSeg episode? (issue 12, section 2)

Per seed, on the real samples of :mod:`realdata_setup` (its default settings: 32 rays,
grid 2, U-Net depth 3 x 32, 128 px patches, batch 4): a ``HierStarDist2D`` is trained on the
HGSC image with its classes (``--steps`` first value, default 500 steps: the first episode of
row 5, ``hier_seq``), then, from those weights, on the MoNuSeg training region with every
nucleus at the root (second value, default 300 steps), once per ``train_coarse_label_mode``
(``sum``: the paper's loss, ``equal_logit``: the remedy). The HGSC image and the held-out
MoNuSeg test region are predicted at the ``hgsc`` label set before and after the root
episode (thresholds 0.5 / 0.4 for both, so that the two predictions are comparable);
nuclei found in both (IoU > 0.5) are paired and the share keeping its class is reported,
with the class counts before and after. Target of the issue: at least 80% kept.

Usage::

    nohup python benchmarks/bench_realdata_keeping.py --out benchmarks/results/realdata_keeping &
    python benchmarks/bench_realdata_keeping.py --out /tmp/k --quick      # smoke run (tiny, cropped)

Resumable: ``OUT/results.jsonl`` holds one line per (seed, mode, settings), written as each
finishes; the weights after the HGSC episode are kept in ``OUT/weights/`` so a restarted
seed does not train it again. ``OUT/summary.md`` is rewritten after each run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import realdata_setup as R  # noqa: E402
from bench_coarse_labels import paired_classes  # noqa: E402

MODES = ("sum", "equal_logit")
IMAGES = ("hgsc", "monuseg_test")


def _model(settings, seed, mode):
    variant = R.Variant("keeping", "hier", R.MIXED, config=dict(train_coarse_label_mode=mode))
    return R._build(variant, settings, seed)


def _predict(model, data):
    out = {}
    for name in IMAGES:
        labels, det = model.predict_instances(data[name][0], label_set="hgsc", prob_thresh=0.5, nms_thresh=0.4,
                                              show_tile_progress=False)
        out[name] = (labels, np.asarray(det["class_id"]))
    return out


def _train(model, data, episode, steps, settings):
    X, Y, C, D = R._episode_data(data, R.Episode((episode,)), R.Variant("keeping", "hier", ()))
    xv, yv, cv = data["monuseg_val"]
    epochs = max(1, steps // settings.steps_per_epoch)
    model.train(X, Y, classes=C, dataset=D, validation_data=([xv], [yv], [cv], ["monuseg"]), epochs=epochs,
                steps_per_epoch=min(steps, settings.steps_per_epoch), verbose=0)


def first_episode(out, data, settings, seed, steps, fp):
    """Weights and predictions after the HGSC episode (trained once per seed, kept on disk)."""
    import pickle

    from stardist_hier.atomic import atomic_save

    path = out / "weights" / f"seed{seed}_{fp}.pkl"
    if path.is_file():
        return pickle.loads(path.read_bytes())
    model = _model(settings, seed, "sum")  # the mode does not matter for leaf labels
    _train(model, data, "hgsc", steps, settings)
    state = dict(weights=model.keras_model.get_weights(), before=_predict(model, data))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, lambda tmp: Path(tmp).write_bytes(pickle.dumps(state)))
    return state


def run_one(out, data, settings, seed, mode, steps, fp):
    t0 = time.perf_counter()
    state = first_episode(out, data, settings, seed, steps[0], fp)
    from stardist_hier.model.build import seed_everything

    model = _model(settings, seed, mode)
    model.keras_model.set_weights(state["weights"])
    seed_everything(seed + 1000)  # the same root-episode batches for both modes
    _train(model, data, "monuseg", steps[1], settings)
    after = _predict(model, data)
    rec = dict(seed=seed, mode=mode)
    for name in IMAGES:
        (l0, c0), (l1, c1) = state["before"][name], after[name]
        b, a = paired_classes(l0, c0, l1, c1)
        rec[name] = dict(n_before=int(len(c0)), n_after=int(len(c1)), n_paired=int(len(b)),
                         kept=float(np.mean(b == a)) if len(b) else float("nan"),
                         before=R._count(c0, R.HGSC_NAMES), after=R._count(c1, R.HGSC_NAMES))
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def _counts(d):
    return "/".join(str(d[k]) for k in R.HGSC_NAMES.values())


def summary(records, command):
    lines = [f"Command: `{command}`", "",
             "Share of nuclei keeping their class at the `hgsc` label set (connective / inflammatory / malignant "
             "epithelial) across a root-labelled MoNuSeg episode; nuclei paired at IoU > 0.5 between the predictions "
             "before and after it. Target: >= 0.80.", "",
             "| mode | image | seeds | paired (mean) | kept, mean (sd) | per seed | classes before -> after (conn/infl/malig) |",
             "|---|---|---|---|---|---|---|"]
    for mode in MODES:
        for name in IMAGES:
            rs = sorted((r for r in records if r["mode"] == mode), key=lambda r: r["seed"])
            if not rs:
                continue
            kept = np.array([r[name]["kept"] for r in rs])
            sd = f"{np.std(kept, ddof=1):.3f}" if len(kept) > 1 else "-"
            lines.append(f"| {mode} | {name} | {len(rs)} | {np.mean([r[name]['n_paired'] for r in rs]):.0f} | "
                         f"{np.nanmean(kept):.3f} ({sd}) | " + ", ".join(f"{k:.2f}" for k in kept) + " | "
                         + "; ".join(f"{_counts(r[name]['before'])} -> {_counts(r[name]['after'])}" for r in rs) + " |")
    by_seed = {}
    for r in records:
        by_seed.setdefault(r["seed"], {})[r["mode"]] = r
    for name in IMAGES:
        d = [v["equal_logit"][name]["kept"] - v["sum"][name]["kept"] for v in by_seed.values() if len(v) == 2]
        if d:
            lines.append(f"\n{name}: equal_logit - sum, paired by seed: mean {np.mean(d):+.3f} over {len(d)} seed(s) "
                         f"({', '.join(f'{x:+.3f}' for x in d)})")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--data", default=None, help=f"real-data folder (default ${R.ENV_VAR} or ../shared/realdata)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", default="500,300", help="steps of the HGSC episode, then of the root episode")
    ap.add_argument("--quick", action="store_true", help="the smallest configuration (tiny network, cropped images)")
    args = ap.parse_args(argv)
    from stardist_hier.atomic import atomic_write_text

    root = R.realdata_root(args.data)
    if root is None:
        raise SystemExit("error: no real-data folder (../shared/realdata or $STARDIST_HIER_REALDATA)")
    settings = R.QUICK if args.quick else R.Settings()
    steps = (4, 2) if args.quick else tuple(int(s) for s in args.steps.split(","))
    fp = hashlib.sha256(json.dumps([asdict(settings), steps], sort_keys=True, default=str).encode()).hexdigest()[:12]
    command = " ".join(["python", "benchmarks/bench_realdata_keeping.py"] + (argv if argv is not None else sys.argv[1:]))
    data = R.load_data(root, settings)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    done = {(r["seed"], r["mode"]) for r in records if r.get("fingerprint") == fp}
    for seed in (int(s) for s in args.seeds.split(",")):
        for mode in MODES:
            if (seed, mode) in done:
                continue
            rec = run_one(out, data, settings, seed, mode, steps, fp)
            rec.update(fingerprint=fp, steps=list(steps), command=command)
            old = path.read_text() if path.is_file() else ""
            atomic_write_text(path, old + json.dumps(rec, sort_keys=True) + "\n")
            records.append(rec)
            print(f"seed {seed} {mode}: " + ", ".join(f"{n} kept {rec[n]['kept']:.3f} of {rec[n]['n_paired']}"
                                                     for n in IMAGES) + f" ({rec['seconds']:.0f} s)", flush=True)
            atomic_write_text(out / "summary.md", summary([r for r in records if r.get("fingerprint") == fp], command))
    print(summary([r for r in records if r.get("fingerprint") == fp], command))


if __name__ == "__main__":
    main()
