"""Training batches built in parallel worker processes, reproducibly: :class:`ParallelBatches`.

``HierStarDist2D.train(..., workers=N)`` with ``N >= 2`` hands Keras the batches of
:class:`ParallelBatches` instead of ``iter(data)`` (``N = 1`` keeps the stock one-thread
path, so its batches are today's, bit for bit).

Design
------
* **processes**, forked from the training process (``multiprocessing`` ``'fork'`` start
  method, Linux): StarDist's star distances, the class targets and the augmenters are
  Python/numpy code that holds the GIL, so threads do not scale (``benchmarks/bench_pipeline.py``
  measures both). A forked worker shares the training images with the parent (copy on write:
  the image buffers are never written), so the images are not copied per worker. A worker
  runs numpy/SciPy/StarDist code only, never TensorFlow, and switches OpenMP (StarDist's
  star distances) to one thread first (:func:`one_openmp_thread`: GNU OpenMP hangs in a
  forked child otherwise).
* **a fixed assignment**: worker ``w`` builds batches ``i`` with ``i % N == w``, in order,
  and the parent reads them back in order, so nothing depends on scheduling.
* **one random stream per worker and epoch**: at its first batch of epoch ``e`` worker
  ``w`` calls ``data.reseed(worker_seed(seed, w, e))`` (numpy's global state, which stock
  StarDist draws patches from, and an augmenter with ``reseed``, e.g.
  :class:`stardist_hier.augment.ClassAwareAugmenter`). The image order of each pass over the
  data is drawn from the seed too (:meth:`.PatchData2D.seed_batch_order`), the same in every
  worker. So a seed and ``N`` give the same batches on every run, no two workers (nor two
  epochs of one worker) draw the same stream, and a run resumed at ``initial_epoch`` gets the
  batches an uninterrupted run would have got. Different ``N`` give different (equally
  valid) batches.
* **transport**: one pipe per worker; a batch is pickled with protocol 5 and its arrays go
  out of band, so they are copied once into the pipe and read into writable buffers.
  A worker blocks until the parent reads its batch, which bounds the batches in flight to
  about ``N``.
* **errors**: an exception in a worker is re-raised in the parent as :class:`DataWorkerError`
  with the worker's traceback; a worker that dies (e.g. killed for memory) is reported with
  its exit code. :meth:`ParallelBatches.close` (also on leaving the ``with`` block) stops the
  workers it started.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import traceback
from numbers import Integral

import numpy as np

from .sampling import WORKER_STREAM, derive_seed

__all__ = ["ParallelBatches", "DataWorkerError", "worker_seed", "check_workers"]


class DataWorkerError(RuntimeError):
    """A data worker process failed (its traceback or exit code is in the message)."""


def worker_seed(seed, worker, epoch):
    """Seed of worker ``worker``'s random stream in epoch ``epoch``: ``derive_seed(WORKER_STREAM, seed, worker, epoch)``."""
    return derive_seed(WORKER_STREAM, seed, worker, epoch)


def check_workers(workers):
    """``workers`` as an int >= 1, else a :class:`ValueError` naming it."""
    if isinstance(workers, bool) or not isinstance(workers, Integral) or workers < 1:
        raise ValueError(f"workers={workers!r}: the number of processes that build training batches must be an "
                         f"integer >= 1 (1: build them in the training process)")
    return int(workers)


# -- transport ------------------------------------------------------------------------------


def _send(conn, obj):
    buffers = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    conn.send((head, [r.nbytes for r in raws]))
    for r in raws:
        conn.send_bytes(r)


def _recv(conn):
    head, sizes = conn.recv()
    buffers = []
    for n in sizes:
        buf = bytearray(n)
        if n:
            conn.recv_bytes_into(buf)
        else:
            conn.recv_bytes()
        buffers.append(buf)
    return pickle.loads(head, buffers=buffers)


#: OpenMP runtimes are recognised by these parts of a loaded library's file name
_OPENMP_LIBS = ("libgomp", "libomp", "libiomp")


def one_openmp_thread():
    """Switch every OpenMP runtime loaded in this process to one thread; returns the libraries touched.

    StarDist's star distances run in OpenMP (its wheel bundles GNU ``libgomp``). GNU OpenMP is
    not fork-safe: once the parent has run a parallel region, a forked child's next parallel
    region waits forever for the parent's thread pool, which the child does not have. With
    one thread a parallel region runs in the calling thread and never touches the pool, so
    each worker calls this first (the workers are the parallelism). The libraries are found
    in ``/proc/self/maps`` (Linux) and called through :mod:`ctypes` (``omp_set_num_threads``).
    """
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if any(n in line for n in _OPENMP_LIBS)})
    except OSError:
        return []
    touched = []
    for path in paths:
        try:
            ctypes.CDLL(path).omp_set_num_threads(1)
            touched.append(path)
        except (OSError, AttributeError):
            pass
    return touched


def _worker_main(data, worker, n_workers, seed, steps_per_epoch, start, stop, conn):
    """Build batches ``i`` in ``[start, stop)`` with ``i % n_workers == worker`` and send them in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    one_openmp_thread()
    epoch = None
    first = start + (worker - start) % n_workers
    try:
        for i in range(first, stop, n_workers):
            e = i // steps_per_epoch
            if e != epoch:
                data.reseed(worker_seed(seed, worker, e))
                epoch = e
            try:
                batch = data[i]
            except BaseException as err:  # noqa: BLE001 - everything goes to the parent
                _send(conn, ("error", i, f"{type(err).__name__}: {err}", traceback.format_exc()))
                return
            _send(conn, ("batch", i, batch))
    except (BrokenPipeError, EOFError, OSError):
        pass  # the parent closed the pipe: stop quietly
    finally:
        conn.close()


class ParallelBatches:
    """Batches ``start .. stop - 1`` of a training data generator, built by ``workers`` processes.

    Parameters
    ----------
    data : PatchData2D
        The generator (``data[i]`` is batch ``i``); its batch order is seeded here
        (:meth:`.PatchData2D.seed_batch_order`).
    workers : int
        Number of worker processes (>= 2; 1 is the training process itself and needs no pool).
    seed : int
        Seed of the workers' streams and of the batch order.
    steps_per_epoch : int
        Batches per epoch (worker streams restart at each epoch).
    start, stop : int
        First batch and one past the last (e.g. ``initial_epoch * steps_per_epoch`` and
        ``epochs * steps_per_epoch``).
    poll_s : float
        How often the parent checks that a worker it waits for is alive.
    timeout_s : float or None
        Give up (:class:`DataWorkerError`) when a batch takes longer than this; ``None``: wait
        as long as the worker lives.

    Examples
    --------
    >>> with ParallelBatches(data, 2, seed=1, steps_per_epoch=10, stop=100) as batches:  # doctest: +SKIP
    ...     model.keras_model.fit(iter(batches), steps_per_epoch=10, epochs=10)
    """

    def __init__(self, data, workers, seed, steps_per_epoch, start=0, stop=None, poll_s=1.0, timeout_s=None):
        self.workers = check_workers(workers)
        if self.workers < 2:
            raise ValueError("ParallelBatches needs workers >= 2 (workers=1 builds batches in the training process)")
        if "fork" not in multiprocessing.get_all_start_methods():
            raise RuntimeError(f"workers={self.workers} needs the 'fork' start method of multiprocessing (Linux); "
                               f"use workers=1 on this platform")
        self.data = data
        self.seed = int(seed)
        self.steps_per_epoch = int(steps_per_epoch)
        self.start = int(start)
        self.stop = len(data) if stop is None else int(stop)
        self.poll_s = float(poll_s)
        self.timeout_s = None if timeout_s is None else float(timeout_s)
        self._procs, self._conns = [], []
        self._next = self.start
        self.closed = False

    def __len__(self):
        return self.stop - self.start

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    def open(self):
        """Start the worker processes (forked now, so they see the data as it is now)."""
        if self._procs or self.closed:
            return self
        self.data.seed_batch_order(derive_seed(self.seed))
        ctx = multiprocessing.get_context("fork")
        try:
            for w in range(self.workers):
                parent, child = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_worker_main, name=f"stardist-hier-data-{w}", daemon=True,
                                args=(self.data, w, self.workers, self.seed, self.steps_per_epoch, self.start,
                                      self.stop, child))
                p.start()
                child.close()
                self._procs.append(p)
                self._conns.append(parent)
        except BaseException:
            self.close()
            raise
        return self

    def _receive(self, i):
        w = i % self.workers
        conn, proc = self._conns[w], self._procs[w]
        waited = 0.0
        while not conn.poll(self.poll_s):
            waited += self.poll_s
            if not proc.is_alive():
                raise DataWorkerError(f"data worker {w} (pid {proc.pid}) exited with code {proc.exitcode} before "
                                      f"sending batch {i} (killed for lack of memory? try fewer workers)")
            if self.timeout_s is not None and waited >= self.timeout_s:
                raise DataWorkerError(f"data worker {w} (pid {proc.pid}) sent no batch {i} within {self.timeout_s:g} s")
        try:
            msg = _recv(conn)
        except (EOFError, OSError) as e:
            raise DataWorkerError(f"data worker {w} (pid {proc.pid}) closed its pipe before sending batch {i} "
                                  f"(exit code {proc.exitcode})") from e
        if msg[0] == "error":
            _, j, what, tb = msg
            raise DataWorkerError(f"data worker {w} failed on batch {j}: {what}\n--- worker traceback ---\n{tb}")
        _, j, batch = msg
        if j != i:
            raise DataWorkerError(f"data worker {w} sent batch {j}, expected batch {i}")
        return batch

    def __iter__(self):
        self.open()
        while self._next < self.stop and not self.closed:
            i = self._next
            try:
                batch = self._receive(i)
            except (DataWorkerError, EOFError, OSError):
                if self.closed:  # closed from another thread (training ended): stop quietly
                    return
                raise
            self._next += 1
            yield batch

    def close(self):
        """Stop the workers started by :meth:`open` (those started here only), and close the pipes."""
        self.closed = True
        for conn in self._conns:
            conn.close()
        for p in self._procs:
            if p.is_alive():
                p.terminate()
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self._procs, self._conns = [], []


def batch_arrays_equal(a, b):
    """True if two batches (nested tuples of arrays) are equal array by array (for tests and benchmarks)."""
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(batch_arrays_equal(x, y) for x, y in zip(a, b))
    return np.array_equal(np.asarray(a), np.asarray(b))
