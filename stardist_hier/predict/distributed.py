"""Many slides on a Dask cluster: one task per input, each writing its own outputs atomically.

:func:`predict_on_dask` submits one ``dask.distributed`` task per input to an existing
cluster (``address='HOST:PORT'`` of its scheduler) or to a ``LocalCluster`` it starts on
this machine (loopback only). Each worker process loads the model from its folder once and
runs :func:`stardist_hier.predict.single.predict_file`, which writes the input's outputs under
temporary names, renames them and writes the completion marker last. So:

* a worker that dies (killed, out of memory) loses only the input it was working on; Dask
  gives that task to another worker (up to ``distributed.scheduler.allowed-failures`` times,
  then the input is reported as failed);
* an interrupted run (Ctrl-C, the client killed) loses the inputs in flight; running the
  same command again skips every input that is complete and predicts the rest.

On a cluster of several machines the workers must see the model folder, the inputs and
``--out`` under the same paths (shared storage), and have this package installed. Needs
``dask[distributed]`` (the ``dask`` extra).
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import asdict
from pathlib import Path

__all__ = ["predict_on_dask", "predict_task", "default_workers"]

#: per worker process: model folder -> model, and model folder -> identity
_MODELS = {}
_IDS = {}


def default_workers():
    """Workers of a ``LocalCluster``: one per 4 cores (TensorFlow threads within each), 1 to 4."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def _loader(folder):
    def load():
        from .single import load_model

        if folder not in _MODELS:
            _MODELS[folder] = load_model(folder)
        return _MODELS[folder]

    return load


def predict_task(model_dir, path, name, out, settings, overwrite=False):
    """The task of one input, run on a worker: its summary row (a failed row for bad input).

    The worker loads the model once, and only when an input needs predicting (a complete
    input is skipped without TensorFlow).

    Parameters
    ----------
    model_dir : str
        Model folder.
    path, name, out : str
        Input file, name of its outputs, output folder.
    settings : dict
        The fields of a :class:`~stardist_hier.predict.single.PredictSettings`.
    overwrite : bool
        Predict again even when complete.
    """
    from .single import PredictSettings, model_identity, predict_file
    from .summary import failed_row, is_input_failure

    folder = str(Path(model_dir).resolve())
    try:
        if folder not in _IDS:
            _IDS[folder] = model_identity(folder)
        return predict_file(_loader(folder), path, out, PredictSettings(**settings), name=name, overwrite=overwrite,
                            _model_id=_IDS[folder])
    except Exception as e:
        if not is_input_failure(e):
            raise
        return failed_row(path, name, e)


def predict_on_dask(model_dir, paths, names, out, settings, address=None, n_workers=None, progress=True,
                    verbose=0, overwrite=False, threads_per_worker=1):
    """Predict ``paths`` on a Dask cluster, one task per input; the summary rows in input order.

    Parameters
    ----------
    model_dir : str or path-like
        Model folder.
    paths, names : list
        Input files and the names of their outputs (:func:`.run.output_names`).
    out : pathlib.Path
        Output folder; ``summary.csv`` is rewritten as results arrive.
    settings : PredictSettings
    address : str, optional
        ``HOST:PORT`` (or ``tcp://HOST:PORT``) of a running scheduler; default: start a
        ``LocalCluster`` on 127.0.0.1 and close it at the end.
    n_workers : int, optional
        Workers of the ``LocalCluster`` (default :func:`default_workers`).
    progress : bool
        A progress bar over inputs.
    verbose : int
        -1 quiet, 0 failures, 1 every input.
    overwrite : bool
        Predict again even when complete.
    threads_per_worker : int
        Tasks run at once per worker (1: a slide at a time; TensorFlow uses the cores).

    Returns
    -------
    list of dict
    """
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ImportError("--scheduler dask needs dask.distributed: pip install 'stardist-hier[dask]'") from None
    from tqdm.auto import tqdm

    from .summary import failed_row, report_row, write_summary

    cluster = None
    if address:
        addr = address if "://" in address else f"tcp://{address}"
        try:
            client = Client(addr, timeout="20s")
        except OSError as e:
            from .slides import InputError

            raise InputError(f"--address {address}", f"cannot reach a Dask scheduler there ({e})") from None
    else:
        cluster = LocalCluster(n_workers=n_workers or default_workers(), threads_per_worker=threads_per_worker,
                               processes=True, host="127.0.0.1", dashboard_address=None)
        client = Client(cluster)
    model_dir = str(Path(model_dir).resolve())
    out = Path(out).resolve()
    token = secrets.token_hex(3)
    rows = [None] * len(paths)
    try:
        futures = {}
        for i, (path, name) in enumerate(zip(paths, names)):
            f = client.submit(predict_task, model_dir, str(Path(path).resolve()), name, str(out), asdict(settings),
                              overwrite, key=f"stardist-hier-predict-{name}-{token}", pure=False)
            futures[f] = i
        bar = tqdm(total=len(paths), desc="inputs (dask)", unit="input", disable=not progress)
        try:
            for f in as_completed(futures):
                i = futures[f]
                try:
                    rows[i] = f.result()
                except Exception as e:  # the task's bug, or a worker that kept dying
                    rows[i] = failed_row(paths[i], names[i], f"{type(e).__name__}: {e}")
                report_row(rows[i], verbose)
                bar.update()
                write_summary([r for r in rows if r is not None], out)
        finally:
            bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if verbose >= 1:
        print(f"dask: {len(paths)} inputs done", file=sys.stderr)
    return rows
