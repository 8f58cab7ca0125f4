"""Pieces of run configs used everywhere: the config error, episode accessors, key suggestions, the YAML loader.

Split from :mod:`.config` (which re-exports them); plain Python, no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RunConfigError", "closest", "unknown_keys", "episode_datasets", "episode_name", "mix_probabilities",
           "validation_sets", "episode_monitor", "monitor_choices", "load_run_config"]


class RunConfigError(ValueError):
    """A run config that cannot run; the message lists every problem found (one per line)."""

    def __init__(self, problems, source="run config"):
        self.problems = [problems] if isinstance(problems, str) else [str(p) for p in problems]
        self.source = source
        if len(self.problems) == 1:
            msg = f"{source}: {self.problems[0]}"
        else:
            msg = f"{source}: {len(self.problems)} problems (nothing was trained):\n  - " + "\n  - ".join(self.problems)
        super().__init__(msg)


def closest(name, known):
    """``" (did you mean 'x'?)"`` for the known key closest to ``name``, or ``""``."""
    import difflib

    match = difflib.get_close_matches(str(name), sorted(map(str, known)), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown_keys(given, known, where):
    """One problem line per unknown key of ``given``, each with the closest known key."""
    pre = f"{where}: " if where else ""
    return [f"{pre}unknown key '{k}'{closest(k, known)}" for k in sorted(map(str, set(given) - set(known)))]


def episode_datasets(ep):
    """Datasets an episode trains on, in order (one, or the keys of its ``mix``)."""
    return list(ep["mix"]) if "mix" in ep else [ep["dataset"]]


def episode_name(ep):
    """``'pannuke'`` for one dataset, ``'pannuke+lizard'`` for a mix (history, folder names)."""
    return "+".join(episode_datasets(ep))


def mix_probabilities(ep):
    """``{dataset: probability}`` of an episode: its mix weights divided by their sum (1 for one dataset)."""
    if "mix" not in ep:
        return {ep["dataset"]: 1.0}
    total = float(sum(ep["mix"].values()))
    return {d: float(w) / total for d, w in ep["mix"].items()}


def validation_sets(ep):
    """Datasets validated in an episode: its ``validate`` list, by default the datasets it trains on."""
    return list(ep.get("validate") or episode_datasets(ep))


def episode_monitor(ep, cfg):
    """The quantity watched in an episode: its ``monitor``, else the run's (default ``val_loss``)."""
    return ep.get("monitor") or cfg.get("monitor") or "val_loss"


def monitor_choices(ep):
    """The names ``monitor`` may take in an episode: ``val_loss`` and ``val_loss_<dataset>`` per validation set."""
    return ["val_loss"] + [f"val_loss_{d}" for d in validation_sets(ep)]


def load_run_config(path):
    """Read a run config YAML (``stardist-hier train``); relative paths in it become relative to its folder.

    ``hierarchy`` (unless ``default``) and ``data_root`` are resolved against the folder
    of ``path``. The config is not validated here (:func:`.preflight.preflight` does it).

    Returns
    -------
    dict

    Raises
    ------
    FileNotFoundError
        No such file.
    RunConfigError
        Not YAML, or not a mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run config {path} not found")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RunConfigError(f"not valid YAML: {' '.join(str(e).split())}", source=str(path)) from None
    if not isinstance(cfg, dict):
        raise RunConfigError(f"expected a mapping of run-config keys (name, episodes, test, ...), got "
                             f"{type(cfg).__name__}", source=str(path))
    base = path.resolve().parent
    for key in ("hierarchy", "data_root"):
        v = cfg.get(key)
        if isinstance(v, str) and v and not (key == "hierarchy" and v == "default"):
            cfg[key] = str((base / Path(v).expanduser()).resolve())
    return cfg
