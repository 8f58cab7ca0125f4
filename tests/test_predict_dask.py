"""Many slides on Dask: a 2-worker LocalCluster on loopback, one worker killed mid-run."""

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("tensorflow")
distributed = pytest.importorskip("dask.distributed")

from stardist_hier.cli import main  # noqa: E402
from stardist_hier.predict.run import predict_inputs  # noqa: E402

from test_predict_cli import he_like, setup, write_slide  # noqa: E402,F401  (setup: the tiny model fixture)

N_SLIDES = 6
TIME_LIMIT = 420  # seconds for the killed run (TensorFlow is imported by 3 worker processes)


def make_slides(folder, n=N_SLIDES):
    folder.mkdir()
    for i in range(n):
        img = np.full((384, 384, 3), 245, np.uint8)
        img[32:352, 48:336] = he_like((320, 288), 10 + i, n=60)
        write_slide(folder / f"s{i}.tif", img)
    return folder


class Killer(threading.Thread):
    """Kills (SIGKILL) the first worker seen working on a task; its nanny starts a new one."""

    def __init__(self, address):
        super().__init__(daemon=True)
        self.address, self.killed, self.stop = address, None, threading.Event()

    def run(self):
        with distributed.Client(self.address, timeout="20s") as client:
            while not self.stop.is_set():
                busy = [w for w, tasks in client.processing().items() if tasks]
                if busy:
                    time.sleep(1.0)  # the task is under way (importing TensorFlow or predicting)
                    tasks = client.processing().get(busy[0], ())
                    if tasks:
                        pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                        os.kill(pid, signal.SIGKILL)  # a process this test started (the cluster's worker)
                        self.killed = (busy[0], list(tasks))
                        return
                time.sleep(0.2)


def test_dask_worker_killed_mid_run_loses_nothing(setup, tmp_path):
    slides = make_slides(tmp_path / "slides")
    out = tmp_path / "out"
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None)
    try:
        killer = Killer(cluster.scheduler_address)
        killer.start()
        result = {}

        def go():
            result["rows"] = predict_inputs(setup["model"], [slides], out, scheduler="dask",
                                            address=cluster.scheduler_address.replace("tcp://", ""),
                                            progress=False, verbose=-1)

        t = threading.Thread(target=go, daemon=True)
        t0 = time.perf_counter()
        t.start()
        t.join(TIME_LIMIT)
        killer.stop.set()
        assert not t.is_alive(), f"the Dask run took over {TIME_LIMIT} s"
        assert killer.killed is not None, "no worker was killed"
        rows = result["rows"]
        # the killed worker's task was run again elsewhere: every slide complete
        assert [r["status"] for r in rows] == ["ok"] * N_SLIDES, rows
        assert [r["name"] for r in rows] == [f"s{i}" for i in range(N_SLIDES)]
        for i in range(N_SLIDES):
            d = out / f"s{i}"
            assert (d / "done.json").exists() and (d / f"s{i}.geojson.gz").exists()
            assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temporary left
        summary = pd.read_csv(out / "summary.csv")
        assert (summary["status"] == "ok").all() and len(summary) == N_SLIDES
        print(f"killed {killer.killed}; run took {time.perf_counter() - t0:.0f} s")

        # an interrupted run: two slides lose their marker; a re-run on the cluster predicts
        # only those (the workers skip the others without loading the model)
        for i in (1, 4):
            (out / f"s{i}" / "done.json").unlink()
        rows = predict_inputs(setup["model"], [slides], out, scheduler="dask", address=cluster.scheduler_address,
                              progress=False, verbose=-1)
        assert [r["status"] for r in rows] == ["skipped", "ok", "skipped", "skipped", "ok", "skipped"]
    finally:
        cluster.close()


def test_dask_command_with_its_own_local_cluster(setup, tmp_path, capsys):
    slides = make_slides(tmp_path / "slides", n=2)
    out = tmp_path / "out"
    (slides / "bad.svs").write_bytes(b"not a slide")
    rc = main(["predict", "--model", str(setup["model"]), str(slides), "--out", str(out), "--scheduler", "dask",
               "--workers", "1", "-q"])
    cap = capsys.readouterr()
    assert rc == 1, cap.err
    assert "3 input(s): 2 predicted, 0 already complete, 1 failed" in cap.out
    assert str(slides / "bad.svs") in cap.err
    s = pd.read_csv(out / "summary.csv")
    assert (s["status"] == "failed").sum() == 1 and s.loc[s["status"] == "failed", "name"].item() == "bad"
