"""The claim study's summary: tables, paired differences, the answer, learning curves.

Input: the records of :func:`.claim_study.run_claim_study` (dicts with ``target``, ``size``,
``variant``, ``seed`` and the metric columns). No TensorFlow here.

* :func:`aggregate`: mean and sample standard deviation over seeds per (target, size, variant);
* :func:`paired_differences`: per (target, size, variant, metric) the mean of the per-seed
  differences to a reference variant (``target_only``, or each option variant's base), its
  sample standard deviation and the 95% t-interval ``mean +- t(0.975, n-1) * sd / sqrt(n)``
  over the ``n`` seeds both have;
* :func:`answer`: one sentence per target, computed from those intervals: at which sizes a
  variant that uses the source *beats* target-only (the interval of some metric of
  :data:`PRIMARY` lies above 0 and none lies below it), the best such variant, whether an
  option makes the difference (its base variant does not beat target-only there), and what the
  same option gives without the source (``target_only_marginal`` for the marginal variants);
* :func:`write_report`: ``summary.md``, ``summary.csv`` and ``learning_curve_<target>.png``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..atomic import atomic_save, atomic_write_text
from .claim import VARIANTS

__all__ = ["PRIMARY", "REPORTED", "t_interval", "aggregate", "paired_differences", "option_effects", "answer",
           "format_markdown", "plot_learning_curves", "write_report"]

#: metrics a "win" is judged by and plotted
PRIMARY = ("bPQ", "mPQ+")
#: columns averaged over seeds
REPORTED = ("bPQ", "mPQ", "mPQ+", "precision", "recall", "n_unannotated", "epochs")
BASELINE = "target_only"
_DIFF_COLUMNS = ["target", "size", "variant", "reference", "metric", "n", "mean", "sd", "lo", "hi", "wins"]


def t_interval(values, level=0.95):
    """``(mean, sd, lo, hi, n)`` of ``values`` (NaN dropped); the interval is NaN for ``n < 2``."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], float)
    n = len(x)
    if n == 0:
        return (math.nan,) * 4 + (0,)
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan, 1
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half, n


def _frame(records):
    import pandas as pd

    df = pd.DataFrame(list(records))
    if df.empty:
        return df
    df["size"] = df["size"].astype(int)
    return df


def _order(df):
    rank = {v: i for i, v in enumerate(VARIANTS)}
    df = df.assign(_o=[rank.get(v, len(rank)) for v in df["variant"]])
    return df.sort_values(["target", "size", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


def aggregate(records):
    """Per (target, size, variant): ``n_seeds`` and ``<col> mean`` / ``<col> sd`` of :data:`REPORTED`."""
    import pandas as pd

    df = _frame(records)
    rows = []
    if df.empty:
        return pd.DataFrame(rows)
    for (t, size, v), g in df.groupby(["target", "size", "variant"], sort=False):
        rec = dict(target=t, size=int(size), variant=v, label=VARIANTS[v].label if v in VARIANTS else "?",
                   n_seeds=int(g["seed"].nunique()))
        for col in REPORTED:
            x = g[col].astype(float).dropna() if col in g else pd.Series(dtype=float)
            rec[f"{col} mean"] = float(x.mean()) if len(x) else math.nan
            rec[f"{col} sd"] = float(x.std(ddof=1)) if len(x) > 1 else math.nan
        # runs whose target phase ran to the epoch ceiling (not stopped by the patience)
        rec["at ceiling"] = int((g["stopped_early"] == False).sum()) if "stopped_early" in g else 0  # noqa: E712
        rows.append(rec)
    return _order(pd.DataFrame(rows))


def paired_differences(records, reference=BASELINE, metrics=PRIMARY + ("mPQ",), variants=None):
    """Per-seed differences of each variant to ``reference`` (a variant name, or ``'base'``: each option variant's base).

    Returns
    -------
    pandas.DataFrame
        Columns ``target, size, variant, reference, metric, n, mean, sd, lo, hi, wins``
        (``wins``: seeds where the variant is higher).
    """
    import pandas as pd

    df = _frame(records)
    rows = []
    if df.empty:
        return pd.DataFrame(rows, columns=_DIFF_COLUMNS)
    for (t, size, v), g in df.groupby(["target", "size", "variant"], sort=False):
        ref = VARIANTS[v].base if reference == "base" else reference
        if ref is None or v == ref or (variants is not None and v not in variants):
            continue
        base = df[(df["target"] == t) & (df["size"] == size) & (df["variant"] == ref)].set_index("seed")
        gi = g.set_index("seed")
        common = sorted(set(gi.index) & set(base.index))
        if not common:
            continue
        for m in metrics:
            d = [float(gi.loc[s, m]) - float(base.loc[s, m]) for s in common]
            mean, sd, lo, hi, n = t_interval(d)
            rows.append(dict(target=t, size=int(size), variant=v, reference=ref, metric=m, n=n, mean=mean, sd=sd,
                             lo=lo, hi=hi, wins=int(sum(x > 0 for x in d))))
    return _order(pd.DataFrame(rows, columns=_DIFF_COLUMNS))


def option_effects(records, metrics=PRIMARY + ("mPQ",)):
    """Each option variant against its base variant (:func:`paired_differences` with ``reference='base'``)."""
    return paired_differences(records, reference="base", metrics=metrics)


def _fmt(mean, lo, hi):
    if math.isnan(lo):
        return f"{mean:+.3f}"
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _winners(diffs, target, size):
    """Variants using the source that beat target-only at (target, size): ``{variant: (metric, row)}``."""
    d = diffs[(diffs["target"] == target) & (diffs["size"] == size) & diffs["metric"].isin(PRIMARY)]
    out = {}
    for v, g in d.groupby("variant", sort=False):
        if not VARIANTS[v].combines:
            continue
        if (g["hi"] < 0).any():
            continue  # significantly worse in some primary metric
        above = g[g["lo"] > 0]
        if len(above):
            best = above.sort_values("mean", ascending=False).iloc[0]
            out[v] = (best["metric"], best)
    return out


def _option_alone(name):
    """The target-only variant with the same option as ``name`` (None if there is none)."""
    v = VARIANTS[name]
    for other in VARIANTS.values():
        if other.kind == "target" and other.base is not None and other.overrides == v.overrides and other.name != name:
            return other.name
    return None


def answer(records, target):
    """The plain-language answer for one target, computed from the paired intervals (module docstring)."""
    diffs = paired_differences(records, metrics=PRIMARY)
    if diffs.empty or not (diffs["target"] == target).any():
        return f"{target}: no paired results yet (target_only and a combining variant on the same seeds)."
    d = diffs[diffs["target"] == target]
    d = d[[VARIANTS[v].combines for v in d["variant"]]]
    if d.empty:
        return f"{target}: no variant that uses the source has finished yet."
    if int(d["n"].max()) < 2:
        return f"{target}: {int(d['n'].max())} seed per run so far, too few for an interval; no answer yet."
    sizes = sorted(d["size"].unique())
    eff = option_effects(records, metrics=PRIMARY)
    won, parts = [], []
    for s in sizes:
        w = _winners(d, target, s)
        if not w:
            continue
        won.append(s)
        v, (m, row) = max(w.items(), key=lambda kv: kv[1][1]["mean"])
        text = f"at {s} tiles {v} ({m} {_fmt(row['mean'], row['lo'], row['hi'])})"
        base = VARIANTS[v].base
        if base is not None:
            e = eff[(eff["target"] == target) & (eff["size"] == s) & (eff["variant"] == v) & (eff["metric"] == m)]
            vs = f"; {v} - {base}: {m} {_fmt(*e[['mean', 'lo', 'hi']].iloc[0])}" if len(e) else ""
            if base in w:
                text += f"; {base} beats target-only there without the option{vs}"
            else:
                text += (f": the option {VARIANTS[v].option} makes the difference ({base} alone does not beat "
                         f"target-only{vs})")
            alone = _option_alone(v)  # the same option without the source: is it the option, or the source?
            a = diffs[(diffs["target"] == target) & (diffs["size"] == s) & (diffs["variant"] == alone)
                      & (diffs["metric"] == m)] if alone else diffs.iloc[:0]
            if len(a):
                text += f"; the option without the source, {alone}: {m} {_fmt(*a[['mean', 'lo', 'hi']].iloc[0])}"
        if len(w) > 1:
            text += f" (also: {', '.join(sorted(set(w) - {v}, key=list(VARIANTS).index))})"
        parts.append(text)
    sz = lambda xs: ", ".join(str(x) for x in xs)  # noqa: E731
    n = int(d["n"].min()), int(d["n"].max())
    seeds = f"{n[0]}" if n[0] == n[1] else f"{n[0]}-{n[1]}"
    if not won:
        best = d[d["metric"] == PRIMARY[0]].sort_values("mean", ascending=False).iloc[0]
        return (f"{target}: combining does not beat target-only at any size ({sz(sizes)} tiles; {seeds} seeds, 95% "
                f"intervals of the paired differences in {' and '.join(PRIMARY)}); closest: {best['variant']} at "
                f"{best['size']} tiles, {PRIMARY[0]} {_fmt(best['mean'], best['lo'], best['hi'])}.")
    rest = [s for s in sizes if s not in won]
    return (f"{target}: combining beats target-only at {sz(won)} tiles" + (f", not at {sz(rest)}" if rest else "")
            + f" ({seeds} seeds, 95% intervals of the paired differences); best " + "; ".join(parts) + ".")


def _cell(mean, sd, digits=3):
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}")


def _md_table(head, rows):
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def format_markdown(records, skipped=None, meta=None):
    """``summary.md``: the answers, then per target and size the table and the differences."""
    agg = aggregate(records)
    diffs = paired_differences(records)
    eff = option_effects(records)
    lines = ["# Claim study: does combining datasets beat target-only training?", ""]
    if meta:
        s = meta.get("settings", {})
        lines += [f"Settings fingerprint `{meta.get('fingerprint')}`; sources: "
                  + ", ".join(f"{t} <- {src}" for t, src in meta.get("sources", {}).items())
                  + f"; sizes {meta.get('sizes')} target tiles; seeds {meta.get('seeds')}; max {s.get('max_epochs')} "
                  f"epochs of {s.get('steps_per_epoch')} steps, patience {s.get('patience')}, best epoch restored.", ""]
    targets = list(dict.fromkeys(r["target"] for r in records))
    lines += ["## Answer", ""] + [f"* {answer(records, t)}" for t in targets] + [""]
    lines += ["Beats: the 95% t-interval of the per-seed difference to target_only lies above 0 in "
              f"{' or '.join(PRIMARY)} and below 0 in neither.", ""]
    for t in targets:
        lines += [f"## {t}", ""]
        if skipped and skipped.get(t):
            lines += ["Not run here: " + "; ".join(f"{v} ({why})" for v, why in skipped[t].items()) + ".", ""]
        a = agg[agg["target"] == t]
        for size in sorted(a["size"].unique()):
            g = a[a["size"] == size]
            head = ["variant", "seeds", "bPQ", "mPQ", "mPQ+", "precision", "recall", "set aside", "epochs",
                    "ΔbPQ vs (a)", "ΔmPQ+ vs (a)"]
            rows = []
            for _, r in g.iterrows():
                cells = [f"({r['label']}) {r['variant']}", r["n_seeds"]]
                cells += [_cell(r[f"{c} mean"], r[f"{c} sd"]) for c in ("bPQ", "mPQ", "mPQ+", "precision", "recall")]
                cells += [_cell(r["n_unannotated mean"], math.nan, 1),
                          _cell(r["epochs mean"], math.nan, 1) + (f" ({r['at ceiling']} at ceiling)" if r["at ceiling"]
                                                                  else "")]
                for m in ("bPQ", "mPQ+"):
                    dd = diffs[(diffs["target"] == t) & (diffs["size"] == size) & (diffs["variant"] == r["variant"])
                               & (diffs["metric"] == m)]
                    cells.append(_fmt(*dd[["mean", "lo", "hi"]].iloc[0]) + f" ({dd['wins'].iloc[0]}/{dd['n'].iloc[0]})"
                                 if len(dd) and dd["n"].iloc[0] else "-")
                rows.append(cells)
            lines += [f"### {t}, {size} training tiles", "", _md_table(head, rows), ""]
        e = eff[eff["target"] == t] if len(eff) else eff
        if len(e):
            rows = [[r["size"], r["variant"], r["reference"], r["metric"], _fmt(r["mean"], r["lo"], r["hi"]),
                     f"{r['wins']}/{r['n']}"] for _, r in e.iterrows()]
            lines += [f"### {t}: each option against its base variant", "",
                      _md_table(["size", "variant", "base", "metric", "Δ [95% CI]", "seeds higher"], rows), ""]
    lines += ["mean ± sd over seeds; Δ: mean of the per-seed differences [95% t-interval] (seeds where the variant "
              "is higher / pairs). bPQ, mPQ: PanNuke's tissue-averaged conventions; mPQ+: CoNIC's; precision and "
              "recall: detection at IoU > 0.5; set aside: predicted nuclei mostly in classes the target does not "
              "annotate (not scored); epochs: of the target phase (at ceiling: runs it did not stop before the epoch "
              "ceiling).", ""]
    return "\n".join(lines)


def summary_frame(records):
    """``summary.csv``: :func:`aggregate` with the differences to target_only per primary metric."""
    agg = aggregate(records)
    diffs = paired_differences(records)
    if agg.empty:
        return agg
    for m in diffs["metric"].unique() if len(diffs) else ():
        d = diffs[diffs["metric"] == m].set_index(["target", "size", "variant"])
        for col in ("mean", "lo", "hi", "wins", "n"):
            agg[f"Δ{m} vs (a) {col}"] = [d[col].get((r.target, r.size, r.variant), math.nan)
                                          for r in agg.itertuples()]
    return agg


def plot_learning_curves(records, out, targets=None):
    """``learning_curve_<target>.png`` per target: bPQ and mPQ+ against training tiles (log2), one line per variant.

    Error bars: sample standard deviation over seeds. Returns the paths written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    agg = aggregate(records)
    paths = []
    if agg.empty:
        return paths
    targets = list(dict.fromkeys(agg["target"])) if targets is None else targets
    for t in targets:
        a = agg[agg["target"] == t]
        if a.empty:
            continue
        fig = Figure(figsize=(11, 4.2), dpi=100)
        axes = fig.subplots(1, len(PRIMARY))
        sizes = sorted(a["size"].unique())
        names = [v for v in VARIANTS if v in set(a["variant"])]
        for ax, m in zip(axes, PRIMARY):
            for k, v in enumerate(names):
                g = a[a["variant"] == v].sort_values("size")
                x = np.asarray(g["size"], float) * 2 ** ((k - (len(names) - 1) / 2) * 0.02)  # a small dodge
                ax.errorbar(x, g[f"{m} mean"], yerr=np.nan_to_num(g[f"{m} sd"].to_numpy(float)), marker="o",
                            ms=4, capsize=3, lw=1.8 if v == BASELINE else 1.1,
                            ls="-" if VARIANTS[v].base is None else "--", color="black" if v == BASELINE else f"C{k}",
                            label=f"({VARIANTS[v].label}) {v}")
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [str(s) for s in sizes])
            ax.set_xlabel(f"{t} training tiles")
            ax.set_ylabel(f"{m} (mean ± sd over seeds)")
            ax.grid(alpha=0.3)
        n = int(a["n_seeds"].max())
        fig.suptitle(f"claim study, target {t}: {n} seed(s) per point")
        axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        path = Path(out) / f"learning_curve_{t}.png"
        atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"))
        paths.append(path)
    return paths


def write_report(records, out, skipped=None, meta=None, targets=None):
    """Write ``summary.md``, ``summary.csv`` and the learning-curve PNGs (``targets``: only theirs)."""
    out = Path(out)
    atomic_write_text(out / "summary.md", format_markdown(records, skipped, meta))
    atomic_write_text(out / "summary.csv", summary_frame(records).to_csv(index=False))
    return plot_learning_curves(records, out, targets)
