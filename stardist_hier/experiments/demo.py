"""The project's main job in miniature: ``stardist-hier demo``.

On synthetic H&E data (:mod:`stardist_hier.synth`, made if absent), run four rows of the
paper's protocol through the experiment runner (:mod:`stardist_hier.experiments.runner`):

* Table II row 4: MoNuSAC only, tested on MoNuSAC (target-only training);
* Table II row 6: PanNuke then MoNuSAC, tested on MoNuSAC (pre-train, then fine-tune);
* Table III row 1: CoNSeP only, tested on MoNuSAC (domain generalisation baseline);
* Table III row 2: CoNSeP then PanNuke, tested on MoNuSAC (the unseen dataset).

Each row's detection thresholds are tuned on a few validation tiles of its last training
dataset (StarDist's ``optimize_thresholds``, as the paper-scale runs do), then each test set is
scored at its own label set (the headline metrics of
:data:`stardist_hier.metrics.folder.HEADLINE_METRICS`). The table says what each row trained
(epochs and steps: the rows' budgets differ, as the paper's do), the thresholds used and how
many nuclei were predicted (a row that detects none says so instead of showing bare zeros).
It is printed beside the paper's rows and written to ``<out>/demo_table.{csv,md}``; the loss curves
across the dataset switch (the paper's Fig. 3) and prediction overlays (Figs. 2 and 4) are
written as PNGs. Runs live in ``<out>/runs/<row name>`` with the episode cache in
``<out>/runs/cache``: a rerun with the same settings reuses every finished run, and an
interrupted one continues from its last saved epoch.

The numbers are synthetic and miniature (a small network, at most a few thousand training steps): they show
that the pipeline works end to end, not what the paper measured.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

__all__ = ["DEMO_ROWS", "DemoSettings", "DEFAULT", "QUICK", "demo_configs", "run_demo", "demo_table",
           "format_demo_table", "write_figures", "BANNER"]

#: (table, row) of the paper run by the demo, in order (III-1 and III-2 share their
#: CoNSeP pre-training through the runner's cache)
DEMO_ROWS = [(2, 4), (2, 6), (3, 1), (3, 2)]

BANNER = ("SYNTHETIC, MINIATURE numbers: synthetic H&E tiles and a small network trained for minutes on a CPU. "
          "They show the pipeline end to end; they are NOT comparable to the paper's PQ.")


@dataclass
class DemoSettings:
    """Sizes of the demo (every field is a command-line flag).

    Attributes
    ----------
    size : int
        Tile size of the synthetic data (pixels).
    n_train, n_val, n_test : int
        Tiles per split of each synthetic dataset.
    epoch_factor : float
        Each episode trains ``ceil(paper epochs * epoch_factor)`` epochs.
    epochs : int or None
        If set, every episode trains exactly this many epochs (overrides ``epoch_factor``).
    steps_per_epoch, batch_size, patch_size, n_rays, unet_depth, unet_filters : int
        Training and network sizes.
    overlay_images : int
        Test images per panel of the overlay figures.
    threshold_images : int
        Validation tiles of each row's last training dataset on which its detection
        thresholds are tuned (at most ``n_val``); 0 keeps StarDist's defaults (0.5 / 0.4).
    """

    size: int = 128
    n_train: int = 48
    n_val: int = 8
    n_test: int = 24
    epoch_factor: float = 0.2
    epochs: int | None = None
    steps_per_epoch: int = 25
    batch_size: int = 4
    patch_size: int = 128
    n_rays: int = 32
    unet_depth: int = 2
    unet_filters: int = 32
    overlay_images: int = 3
    threshold_images: int = 8

    def check(self):
        """Raise ``ValueError`` for sizes the runner cannot use."""
        if self.size < 32:
            raise ValueError(f"size must be at least 32, got {self.size}")
        if self.patch_size > self.size:
            raise ValueError(f"patch_size ({self.patch_size}) must not exceed the tile size ({self.size})")
        div = 2 ** self.unet_depth * 2  # U-Net pooling times the grid of 2
        if self.patch_size % div:
            raise ValueError(f"patch_size must be divisible by {div} (U-Net depth {self.unet_depth}, grid 2)")
        for k in ("n_train", "n_val", "n_test", "steps_per_epoch", "batch_size", "n_rays", "unet_depth",
                  "unet_filters"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.epochs is None and not self.epoch_factor > 0:
            raise ValueError(f"epoch_factor must be > 0, got {self.epoch_factor}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.threshold_images < 0:
            raise ValueError(f"threshold_images must be >= 0 (0: no tuning), got {self.threshold_images}")
        return self


#: the defaults (BENCHMARKS.md: about 6 minutes on 2 quiet CPU cores; tuning the thresholds
#: takes 13-16 s of CPU time per row of it)
DEFAULT = DemoSettings()
#: ``--quick``: about a minute (4-9 s of CPU time per row for the thresholds)
QUICK = DemoSettings(size=96, n_train=16, n_val=4, n_test=6, epoch_factor=0.04, steps_per_epoch=25,
                     patch_size=96, n_rays=16, unet_filters=16, overlay_images=2, threshold_images=4)


def demo_configs(settings, seed=0):
    """The runner configs of :data:`DEMO_ROWS` at the demo's sizes."""
    from .config import make_row_config

    s = settings
    over = dict(
        steps_per_epoch=s.steps_per_epoch, reduce_lr=None, early_stopping_patience=None,
        optimize_thresholds=s.threshold_images > 0, threshold_max_images=s.threshold_images or None,
        max_images=dict(train=None, val=None, test=None),
        model=dict(n_rays=s.n_rays, grid=(2, 2), n_channel_in=3, unet_n_depth=s.unet_depth,
                   unet_n_filter_base=s.unet_filters, net_conv_after_unet=2 * s.unet_filters,
                   train_patch_size=(s.patch_size, s.patch_size), train_batch_size=s.batch_size,
                   train_learning_rate=3e-4, use_gpu=False),
    )
    cfgs = []
    for table, row in DEMO_ROWS:
        cfg = make_row_config((table, row), "smoke", seed, epoch_factor=s.epoch_factor, **over)
        cfg["scale"] = "demo"
        if s.epochs is not None:
            for ep in cfg["episodes"]:
                ep["epochs"] = int(s.epochs)
        cfgs.append(cfg)
    return cfgs


def _unique_epochs(cfgs):
    """Epochs the configs train at most (an episode shared through the cache counts once)."""
    seen, total = set(), 0
    for cfg in cfgs:
        prefix = ()
        for ep in cfg["episodes"]:
            prefix += ((ep["dataset"], ep["epochs"]),)
            if prefix not in seen:
                seen.add(prefix)
                total += ep["epochs"]
    return total


def run_demo(out, data=None, settings=None, seed=0, data_seed=0, progress=True, verbose=0, overwrite=False,
             log=print):
    """Generate the data if absent, run the demo rows, write the table and figures.

    Parameters
    ----------
    out : path-like
        Output folder: ``runs/``, ``demo_table.csv``, ``demo_table.md`` and the PNGs.
    data : path-like, optional
        Synthetic data root (default ``<out>/synthetic-data``); made if absent.
    settings : DemoSettings, optional
        Default :data:`DEFAULT`.
    seed : int
        Seed of the training (weights, patches, augmentation).
    data_seed : int
        Seed of the synthetic data.
    progress : bool
        Progress bars (data generation, epochs over all runs).
    verbose : int
        Runner verbosity (0: only a line per run; 1: a line per epoch; 2: Keras' bars).
    overwrite : bool
        Replace runs made with other settings in ``out`` (else that is an error).
    log : callable
        Where the lines of text go.

    Returns
    -------
    dict
        ``table`` (DataFrame), ``text`` (the printed table), ``figures`` (PNG paths),
        ``runs`` (RunResult per row name), ``reused`` (row names found complete),
        ``seconds``.
    """
    from tqdm import tqdm

    from ..atomic import atomic_write_text
    from .paper_tables import get_row
    from .report import run_status
    from .runner import run_experiment
    from ..synth import generate_all

    t0 = time.perf_counter()
    settings = (settings or DEFAULT).check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(data) if data is not None else out / "synthetic-data"
    counts = dict(train=settings.n_train, val=settings.n_val, test=settings.n_test)
    log(BANNER)
    log(f"data: synthetic pannuke/monusac/consep in {data} ({settings.n_train}/{settings.n_val}/{settings.n_test} "
        f"tiles of {settings.size} px, seed {data_seed})")
    generate_all(data, ["pannuke", "monusac", "consep"], counts=counts, size=settings.size, seed=data_seed,
                 progress=progress)

    cfgs = demo_configs(settings, seed)
    runs_dir = out / "runs"
    reused = [c["name"] for c in cfgs if run_status(runs_dir / c["name"]) == "done"]
    todo_epochs = _unique_epochs([c for c in cfgs if c["name"] not in reused])
    bar = tqdm(total=todo_epochs, desc="demo training", unit="epoch", disable=not progress or todo_epochs == 0)

    def say(msg):
        # through tqdm while a bar is shown, so the bar is not torn
        (bar.write if progress and todo_epochs else log)(msg)

    def tick(info):
        bar.set_postfix_str(f"{info['run'][:24]} ep {info['episode']} {info['dataset']}", refresh=False)
        bar.update(1)

    runs = {}
    for cfg in cfgs:
        row = get_row(cfg["paper_row"]["table"], cfg["paper_row"]["row"])
        eps = " -> ".join(f"{e['dataset']} {e['epochs']} ep" for e in cfg["episodes"])
        if cfg["name"] in reused:
            say(f"[{cfg['name']}] already complete: reusing {runs_dir / cfg['name']}")
        r = run_experiment(cfg, data, runs_dir, verbose=verbose, overwrite=overwrite, on_epoch_end=tick)
        runs[cfg["name"]] = r
        if cfg["name"] not in reused:
            say(f"[{cfg['name']}] {eps}, test {row.test}: done in {r.info['seconds']:.0f} s ({_provenance(r)})")
    bar.close()

    table = demo_table(runs)
    text = format_demo_table(table)
    log("")
    log(text)
    atomic_write_text(out / "demo_table.csv", table.to_csv(index=False))
    atomic_write_text(out / "demo_table.md", format_demo_table(table, markdown=True) + "\n")
    figures = write_figures(runs_dir, out, n_images=settings.overlay_images, data_root=data)
    for f in figures:
        log(f"figure: {f}")
    seconds = time.perf_counter() - t0
    log(f"demo: {len(cfgs)} runs ({len(reused)} reused) in {seconds:.0f} s -> {out}")
    return dict(table=table, text=text, figures=figures, runs=runs, reused=reused, seconds=seconds)


def _provenance(run):
    """``'12 epochs trained, 5 from the cache'``: where a finished run's epochs came from."""
    eps = run.info["episodes"]
    cached = sum(e.get("epochs_run", e["epochs"]) for e in eps if e["reused"])
    resumed = sum(e.get("epochs_run", e["epochs"]) - e["trained_epochs"] for e in eps if not e["reused"])
    n = run.trained_epochs
    parts = [f"{n} epoch{'' if n == 1 else 's'} trained"]
    if cached:
        parts.append(f"{cached} from the cache")
    if resumed:
        parts.append(f"{resumed} before an interruption")
    return ", ".join(parts)


def _zero_note(n_pred, metrics):
    """Why a row's scores are 0, or ``''``."""
    if n_pred == 0:
        return "no nuclei detected"
    if float(metrics.get("F1_det", float("nan"))) == 0:  # no true positive at IoU > 0.5
        return "no predicted nucleus matches an annotated one"
    return ""


def demo_table(runs):
    """One row per demo run: what was trained and tested, the paper's PQ and ours.

    Parameters
    ----------
    runs : dict
        Row name -> :class:`stardist_hier.experiments.runner.RunResult`.

    Returns
    -------
    pandas.DataFrame
        ``table``, ``row``, ``training (paper epochs)``, ``test``, ``paper PQ``, then the
        :data:`~stardist_hier.metrics.folder.HEADLINE_METRICS` of the synthetic miniature
        run (at the test set's label set), ``epochs run`` (per episode, as trained: fewer
        than planned when it stopped early), ``steps`` (training steps in all),
        ``thresholds`` (``prob / nms``, ``tuned`` or StarDist's ``default``),
        ``predicted nuclei`` (on the test set), ``note`` (why a row scores 0: ``no nuclei
        detected``, or ``no predicted nucleus matches an annotated one``) and ``seconds``.
    """
    import pandas as pd

    from ..metrics.folder import HEADLINE_METRICS
    from .paper_tables import get_row

    out = []
    for name, r in runs.items():
        pr = r.config["paper_row"]
        row = get_row(pr["table"], pr["row"])
        m = r.metrics[r.metrics["dataset"] == row.test].iloc[0]
        eps = r.info["episodes"]
        run_epochs = [int(e.get("epochs_run", e["epochs"])) for e in eps]
        steps = int(r.info.get("steps_per_epoch", r.config["steps_per_epoch"])) * sum(run_epochs)
        th = r.info.get("thresholds") or {}
        n_pred = int(m["n_pred_nuclei"])
        rec = {"table": {2: "II", 3: "III"}[row.table], "row": row.row,
               "training (paper epochs)": " -> ".join(f"{d} {e}" for d, e in row.episodes),
               "test": row.test, "paper PQ": row.pq}
        rec.update({label: float(m[key]) for label, key in HEADLINE_METRICS})
        rec.update({
            "epochs run": " + ".join(map(str, run_epochs)), "steps": steps,
            "thresholds": (f"{th['prob']:.2f} / {th['nms']:.2f} {'tuned' if th.get('tuned_on') else 'default'}"
                           if th else "-"),
            "predicted nuclei": n_pred, "note": _zero_note(n_pred, m),
            "seconds": float(r.info.get("seconds", float("nan"))),
        })
        out.append(rec)
    return pd.DataFrame(out)


def format_demo_table(table, markdown=False):
    """The demo table as text (or markdown), under the synthetic-numbers banner."""
    from ..metrics.folder import HEADLINE_METRICS

    shown = table.copy()
    labels = [label for label, _ in HEADLINE_METRICS]
    for c in ["paper PQ", *labels]:
        shown[c] = [f"{v:.4f}" for v in shown[c]]
    shown["seconds"] = [f"{v:.0f}" for v in shown["seconds"]]
    shown["note"] = shown["note"].fillna("")
    note = (f"paper PQ: the published value (real data, full training). {'/'.join(labels)}: this run, "
            "synthetic data, miniature training, scored at the test set's own label set. "
            "epochs run / steps: what each row trained (the paper's epochs scaled down, so the rows' budgets "
            "differ as the paper's do). thresholds: detection prob / NMS thresholds, tuned on a few validation "
            "tiles of the row's last training dataset (or StarDist's defaults).")
    if markdown:
        head = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns)
        body = "\n".join("| " + " | ".join(str(v) for v in r) + " |" for r in shown.itertuples(index=False))
        return f"**{BANNER}**\n\n{head}\n{body}\n\n{note}"
    return f"{BANNER}\n\n{shown.to_string(index=False)}\n\n{note}"


def write_figures(runs_dir, out, n_images=3, data_root=None):
    """The paper's Fig. 3 (loss curves) and Figs. 2 and 4 (overlays) for the demo runs.

    Returns
    -------
    list of pathlib.Path
        ``fig3_loss_curves.png``, ``fig2_overlays_monusac.png`` and
        ``fig4_overlays_unseen_monusac.png`` in ``out``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..atomic import atomic_save
    from .report import figure_panels, plot_loss_curves, plot_overlays

    out = Path(out)
    made = []
    figs = [
        ("fig3_loss_curves.png", lambda: plot_loss_curves(runs_dir, panels=figure_panels("Fig. 3"))),
        ("fig2_overlays_monusac.png", lambda: plot_overlays(runs_dir, panels=figure_panels("Fig. 2"),
                                                             n_images=n_images, data_root=data_root)),
        ("fig4_overlays_unseen_monusac.png", lambda: plot_overlays(runs_dir, panels=figure_panels("Fig. 4"),
                                                                    n_images=n_images, data_root=data_root)),
    ]
    for name, make in figs:
        fig = make()
        fig.suptitle("synthetic data, miniature training (not the paper's numbers)", fontsize=9, color="#a00")
        fig.tight_layout(rect=(0, 0.03, 1, 1))  # keeps the overlays' colour key at the bottom
        atomic_save(out / name, lambda tmp, fig=fig: fig.savefig(tmp, dpi=100))
        plt.close(fig)
        made.append(out / name)
    return made


def settings_from_args(args, quick=False):
    """:class:`DemoSettings` from parsed flags: the preset (:data:`QUICK` or :data:`DEFAULT`)
    with every flag that was given replacing its field."""
    base = QUICK if quick else DEFAULT
    given = {k: getattr(args, k) for k in asdict(base) if getattr(args, k, None) is not None}
    return replace(base, **given)
