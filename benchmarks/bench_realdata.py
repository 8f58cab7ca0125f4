"""Does a second dataset's classes cost segmentation on real data? (issue 12, section 1)

Trains the rows of the issue's real-data table (:data:`realdata_setup.ROWS`), stock
``StarDist2D`` beside ``HierStarDist2D`` in one run, and optionally the ablations
(:data:`realdata_setup.ABLATIONS`), for several seeds, on the MoNuSeg and HGSC samples of
``../shared/realdata`` (or ``$STARDIST_HIER_REALDATA``). Each run is seeded with
``seed_everything`` (``keras.utils.set_random_seed``), tuned with ``optimize_thresholds`` on
the MoNuSeg validation rows and scored (bPQ at IoU 0.5) on the held-out MoNuSeg test rows;
see :mod:`realdata_setup` for the data, the split and the variants.

Usage::

    python benchmarks/bench_realdata.py --out benchmarks/results/realdata               # 5 rows x 5 seeds
    python benchmarks/bench_realdata.py --out OUT --variants ablations --seeds 0,1,2,3,4
    python benchmarks/bench_realdata.py --out OUT --variants hier_mixed,stock_mixed --seeds 0
    python benchmarks/bench_realdata.py --out /tmp/q --quick     # the smallest configuration (the test's)
    python benchmarks/bench_realdata.py --out OUT --summary-only # rewrite the summary from results.jsonl
    python benchmarks/bench_realdata.py --list                   # the variants

Resumable: ``OUT/results.jsonl`` holds one JSON line per finished run, written atomically as
each run finishes; a run whose (variant, seed, tag, fingerprint of settings and variant) is
there is skipped. ``--tag rerun`` runs finished seeds again under another tag (the rerun check);
tagged runs are reported beside, not in, the table. After each run ``OUT/summary.md``,
``OUT/summary.csv``, ``OUT/differences.csv`` and ``OUT/bpq.png`` are rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import realdata_setup as R  # noqa: E402

RESULTS = "results.jsonl"
#: (a, b): mean of a - b paired by seed, reported when both are present; ablations are
#: added against rows 2 and 4
COMPARISONS = [("hier_mixed", "stock_mixed"), ("hier_mixed", "hier_monuseg"), ("stock_mixed", "stock_monuseg"),
               ("hier_monuseg", "stock_monuseg"), ("hier_seq", "stock_mixed"), ("hier_seq", "hier_mixed")]


# ----------------------------------------------------------------------------------------
# results file


def read_results(out):
    """Records of ``OUT/results.jsonl`` (a missing file: none)."""
    path = Path(out) / RESULTS
    if not path.is_file():
        return []
    recs = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{k}: not a JSON line ({e})") from None
    return recs


def append_result(out, rec):
    """Append one record: read the file, append the line, write a temporary file, rename it."""
    from stardist_hier.atomic import atomic_write_text

    path = Path(out) / RESULTS
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + json.dumps(rec, sort_keys=True) + "\n")


def _key(rec):
    return rec["variant"], int(rec["seed"]), rec.get("tag", ""), rec["fingerprint"]


# ----------------------------------------------------------------------------------------
# summary


def t_interval(d, level=0.95):
    """Mean, sd and the ``level`` t-interval of the mean of paired differences ``d``."""
    from scipy.stats import t

    d = np.asarray(d, float)
    n = d.size
    m = float(d.mean()) if n else float("nan")
    if n < 2:
        return m, float("nan"), (float("nan"), float("nan"))
    sd = float(d.std(ddof=1))
    h = float(t.ppf(0.5 + level / 2, n - 1)) * sd / np.sqrt(n)
    return m, sd, (m - h, m + h)


def current_records(recs, settings, tag=""):
    """Records of the current settings and variant definitions with the given tag, by variant."""
    by = {}
    for r in recs:
        v = R.VARIANTS.get(r["variant"])
        if v is None or r.get("tag", "") != tag or r["fingerprint"] != R.fingerprint(settings, v):
            continue
        by.setdefault(r["variant"], {})[int(r["seed"])] = r
    return by


def summarize(recs, settings):
    """Per-variant rows and paired differences (lists of dicts)."""
    by = current_records(recs, settings)
    order = [k for k in R.VARIANTS if k in by]
    rows = []
    for name in order:
        runs = [by[name][s] for s in sorted(by[name])]
        b = np.array([r["bPQ"] for r in runs])
        row = dict(variant=name, row=R.VARIANTS[name].row or "", label=R.VARIANTS[name].label, n=len(runs),
                   seeds=" ".join(str(s) for s in sorted(by[name])), bPQ_mean=b.mean(),
                   bPQ_sd=b.std(ddof=1) if len(b) > 1 else float("nan"), bPQ_min=b.min(), bPQ_max=b.max(),
                   n_pred_mean=np.mean([r["n_pred"] for r in runs]), n_pred_min=min(r["n_pred"] for r in runs),
                   n_pred_max=max(r["n_pred"] for r in runs), n_gt=runs[0]["n_gt"],
                   prob_thresh_mean=np.mean([r["thresholds"]["prob"] for r in runs]),
                   nms_thresh_mean=np.mean([r["thresholds"]["nms"] for r in runs]),
                   minutes_mean=np.mean([r["seconds"] for r in runs]) / 60)
        if "classes_hgsc" in runs[0]:
            for c in R.HGSC_NAMES.values():
                row[f"share_{c}"] = np.mean([r["classes_hgsc"][c] / max(1, r["n_pred"]) for r in runs])
        rows.append(row)
    pairs = list(COMPARISONS) + [(a, b) for a in R.ABLATIONS for b in ("stock_mixed", "hier_mixed") if a != b]
    diffs = []
    for a, b in pairs:
        if a not in by or b not in by:
            continue
        seeds = sorted(set(by[a]) & set(by[b]))
        if not seeds:
            continue
        d = [by[a][s]["bPQ"] - by[b][s]["bPQ"] for s in seeds]
        m, sd, (lo, hi) = t_interval(d)
        diffs.append(dict(a=a, b=b, n=len(seeds), mean_diff=m, sd=sd, ci95_lo=lo, ci95_hi=hi))
    return rows, diffs


def _f(x, nd=3):
    return "nan" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def format_markdown(rows, diffs, settings, command, reruns=None, commands=None):
    """The summary as markdown."""
    lines = [f"Summary written by: `{command}`", "",
             f"Settings: {json.dumps(R.asdict(settings), default=str)}", "",
             "| row | variant | training | n | bPQ mean (sd) | min-max | predicted nuclei (GT) | prob / nms thresh "
             "| hgsc classes conn/infl/malig | min per run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cls = "" if "share_connective" not in r else " / ".join(
            f"{r[f'share_{c}']:.2f}" for c in R.HGSC_NAMES.values())
        lines.append(f"| {r['row']} | {r['variant']} | {r['label']} | {r['n']} | {_f(r['bPQ_mean'])} ({_f(r['bPQ_sd'])}) "
                     f"| {_f(r['bPQ_min'])}-{_f(r['bPQ_max'])} | {r['n_pred_mean']:.0f} ({r['n_pred_min']}-{r['n_pred_max']}) "
                     f"of {r['n_gt']} | {_f(r['prob_thresh_mean'], 2)} / {_f(r['nms_thresh_mean'], 2)} | {cls} "
                     f"| {r['minutes_mean']:.1f} |")
    lines += ["", "Paired differences of bPQ (a - b, same seeds), mean and 95% t-interval:", "",
              "| a | b | n | mean diff | sd | 95% interval |", "|---|---|---|---|---|---|"]
    for d in diffs:
        lines.append(f"| {d['a']} | {d['b']} | {d['n']} | {_f(d['mean_diff'])} | {_f(d['sd'])} "
                     f"| [{_f(d['ci95_lo'])}, {_f(d['ci95_hi'])}] |")
    if commands:
        lines += ["", "Commands of the runs (runs written before commands were recorded: not listed):", ""]
        lines += [f"- `{c}`: {', '.join(vs)}" for c, vs in commands.items()]
    if reruns:
        lines += ["", "Reruns (same variant and seed, another process):", "",
                  "| variant | seed | tag | bPQ first | bPQ rerun | difference |", "|---|---|---|---|---|---|"]
        for v, s, tag, b0, b1 in reruns:
            lines.append(f"| {v} | {s} | {tag} | {b0:.4f} | {b1:.4f} | {b1 - b0:.2g} |")
    return "\n".join(lines) + "\n"


def _csv(rows):
    import csv
    import io

    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def plot(recs, settings, path):
    """bPQ per variant, one point per seed, mean and sd beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stardist_hier.atomic import atomic_save

    by = current_records(recs, settings)
    names = [k for k in R.VARIANTS if k in by]
    if not names:
        return
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 1.5), 4.2))
    cmap = plt.get_cmap("tab10")
    labelled = set()  # one legend entry per seed, whichever variant has it first
    for i, name in enumerate(names):
        seeds = sorted(by[name])
        b = np.array([by[name][s]["bPQ"] for s in seeds])
        off = np.linspace(-0.15, 0.15, len(seeds)) if len(seeds) > 1 else np.zeros(1)
        for o, s, v in zip(off, seeds, b):
            ax.scatter(i + o, v, color=cmap(s % 10), s=28, zorder=3, label=None if s in labelled else f"seed {s}")
            labelled.add(s)
        ax.errorbar(i + 0.3, b.mean(), yerr=b.std(ddof=1) if len(b) > 1 else 0, fmt="_", color="k", ms=14,
                    capsize=3, zorder=2)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([(f"({R.VARIANTS[n].row}) " if R.VARIANTS[n].row else "") + n for n in names],
                       rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"bPQ (IoU {settings.iou}) on MoNuSeg test rows")
    ax.set_title("Real-data benchmark: seeds as points, mean and sd in black", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda k: int(labels[k].split()[1]))
    ax.legend([handles[k] for k in order], [labels[k] for k in order], fontsize=7, loc="lower left")
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


def write_summary(out, settings, command):
    """Rewrite ``summary.md``, ``summary.csv``, ``differences.csv`` and ``bpq.png``; return the markdown."""
    from stardist_hier.atomic import atomic_write_text

    recs = read_results(out)
    rows, diffs = summarize(recs, settings)
    first = {}
    for r in recs:
        if r.get("tag", "") == "":
            first.setdefault((r["variant"], int(r["seed"]), r["fingerprint"]), r["bPQ"])
    reruns = [(r["variant"], int(r["seed"]), r["tag"], first[(r["variant"], int(r["seed"]), r["fingerprint"])], r["bPQ"])
              for r in recs if r.get("tag", "") and (r["variant"], int(r["seed"]), r["fingerprint"]) in first]
    commands = {}
    for r in recs:
        if r.get("command"):
            vs = commands.setdefault(r["command"], [])
            if r["variant"] not in vs:
                vs.append(r["variant"])
    md = format_markdown(rows, diffs, settings, command, reruns, commands)
    atomic_write_text(Path(out) / "summary.md", md)
    atomic_write_text(Path(out) / "summary.csv", _csv(rows))
    atomic_write_text(Path(out) / "differences.csv", _csv(diffs))
    plot(recs, settings, Path(out) / "bpq.png")
    return md


# ----------------------------------------------------------------------------------------
# main


def select_variants(spec):
    """Variant names from ``rows``, ``ablations``, ``all`` or a comma list."""
    names = []
    for part in [p for p in spec.split(",") if p]:
        if part == "rows":
            names += list(R.ROWS)
        elif part == "ablations":
            names += list(R.ABLATIONS)
        elif part == "all":
            names += list(R.VARIANTS)
        elif part in R.VARIANTS:
            names.append(part)
        else:
            raise SystemExit(f"--variants: unknown variant {part!r}; known: rows, ablations, all, "
                             f"{', '.join(R.VARIANTS)}")
    return list(dict.fromkeys(names))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="results folder (results.jsonl, summary.md/.csv, differences.csv, bpq.png)")
    p.add_argument("--data", default=None, help=f"real-data folder (default ${R.ENV_VAR} or ../shared/realdata)")
    p.add_argument("--variants", default="rows", help="rows (default), ablations, all, or names, comma-separated")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 1000)")
    p.add_argument("--deterministic", action="store_true", help="also TensorFlow's deterministic kernels")
    p.add_argument("--quick", action="store_true", help="the smallest configuration (tiny network, 4 steps)")
    p.add_argument("--tag", default="", help="run finished (variant, seed) again under this tag (rerun check)")
    p.add_argument("--summary-only", action="store_true", help="only rewrite the summary files")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    args = p.parse_args(argv)

    if args.list:
        for name, v in R.VARIANTS.items():
            ok, why = R.variant_available(v)
            print(f"{name:22s} {'row %d' % v.row if v.row else 'ablation':9s} {v.label}{'' if ok else '  [' + why + ']'}")
        return 0
    if not args.out:
        p.error("--out is required")
    from stardist_hier.atomic import check_output_dir

    out = check_output_dir(args.out)
    settings = R.QUICK if args.quick else R.Settings()
    changes = {k: v for k, v in (("steps", args.steps), ("deterministic", args.deterministic or None)) if v}
    settings = R.with_settings(settings, **changes)
    command = "python benchmarks/bench_realdata.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.summary_only:
        print(write_summary(out, settings, command))
        return 0
    root = R.realdata_root(args.data)
    if root is None:
        raise SystemExit(f"real-data folder not found: {args.data or os.environ.get(R.ENV_VAR) or '../shared/realdata'}")
    names = select_variants(args.variants)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    out.mkdir(parents=True, exist_ok=True)
    data = R.load_data(root, settings)
    print(f"data {root}: " + ", ".join(f"{k} {v[0].shape[:2]} {len(v[2])} nuclei" for k, v in data.items()), flush=True)
    done = {_key(r) for r in read_results(out)}
    t_all, n_run, failed = time.perf_counter(), 0, []
    for seed in seeds:  # seed-major: a stopped study still has every row for its first seeds
        for name in names:
            v = R.VARIANTS[name]
            ok, why = R.variant_available(v)
            if not ok:
                print(f"skip {name}: {why}", flush=True)
                continue
            fp = R.fingerprint(settings, v)
            if (name, seed, args.tag, fp) in done:
                continue
            print(f"run {name} seed {seed}{' tag ' + args.tag if args.tag else ''} ...", flush=True)
            try:
                rec = R.run_variant(v, seed, data, settings, log=lambda m: print(m, flush=True))
            except Exception:
                traceback.print_exc()
                failed.append((name, seed))
                continue
            rec.update(variant=name, seed=seed, tag=args.tag, fingerprint=fp, settings=R.asdict(settings),
                       finished=time.strftime("%Y-%m-%d %H:%M:%S"), git=_git_head(), command=command)
            append_result(out, rec)
            n_run += 1
            print(f"  {name} seed {seed}: bPQ {rec['bPQ']:.4f}, {rec['n_pred']} predicted of {rec['n_gt']}, "
                  f"thresholds {rec['thresholds']}, {rec['seconds']:.0f} s"
                  + (f", classes {rec['classes_hgsc']}" if "classes_hgsc" in rec else ""), flush=True)
            write_summary(out, settings, command)
    md = write_summary(out, settings, command)
    print("\n" + md)
    print(f"{n_run} runs in {time.perf_counter() - t_all:.0f} s this invocation; failed: {failed or 'none'}")
    return 1 if failed else 0


def _git_head():
    import subprocess

    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=R.PROJECT_ROOT, capture_output=True, text=True,
                           timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
