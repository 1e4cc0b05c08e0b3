"""Run Dask tasks on whatever scheduler is active, with an optional progress bar.

The library never starts a cluster: a ``dask.distributed.Client`` that is
already running is used when there is one, otherwise the configured default
(threads).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import Any

from .errors import OptionError

__all__ = ["AUTO_CLUSTER_SLICES", "active_client", "choose_scheduler", "compute",
           "compute_bounded", "default_in_flight", "persist", "scheduler_context"]

#: ``scheduler="auto"``: a job of fewer slices (or files) than this runs on
#: threads; a larger one starts a LocalCluster. On a shared 2-core machine the
#: cluster never paid for itself up to 800 files (``ctvol ingest``, measured in
#: docs/cluster.md); the threshold sits above what was measured.
AUTO_CLUSTER_SLICES = 1000


def choose_scheduler(spec: str, slices: int | None) -> str:
    """Resolve ``"auto"``: ``"threads"`` for a job of fewer than
    :data:`AUTO_CLUSTER_SLICES` slices (files), else ``"local"`` (unknown size:
    ``"local"``). Any other ``spec`` is returned as is."""
    if spec != "auto":
        return spec
    return "threads" if slices is not None and slices < AUTO_CLUSTER_SLICES else "local"


def active_client() -> Any:
    """The active ``distributed.Client``, or None.

    Without ``distributed`` imported there can be no client: return None
    without importing it (~0.8 s) on the threaded path.
    """
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


def cluster_has_gpu() -> bool:
    """True when a distributed Client is active and a worker declares a GPU resource."""
    client = active_client()
    if client is None:
        return False
    workers = client.scheduler_info().get("workers", {}).values()
    return any("GPU" in (w.get("resources") or {}) for w in workers)


def compute(tasks: Sequence[Any], *, progress: bool = False) -> list[Any]:
    """Compute dask collections/delayed objects and return their results in order.

    Parameters
    ----------
    tasks : sequence of dask objects
    progress : bool, default False
        Show a progress bar (``distributed.progress`` on a Client, dask's
        ``ProgressBar`` on local schedulers), written to stdout.
    """
    import dask

    if not tasks:
        return []
    client = active_client()
    if client is not None:
        # optimize_graph=False keeps task annotations (e.g. GPU resources)
        # from being lost in fusion (dask/dask#7036, ../shared/MEASURED.md).
        futures = client.compute(list(tasks), optimize_graph=False)
        if progress:
            _client_progress(futures)
        return list(client.gather(futures))
    if progress:
        with _local_progress():
            return list(dask.compute(*tasks))
    return list(dask.compute(*tasks))


#: Seconds between progress lines when stdout is not a terminal (a log file, a pipe).
PROGRESS_EVERY_S = 5.0


def _tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def _line(done: int, total: int, t0: float) -> None:
    pct = 100.0 * done / total if total else 100.0
    print(f"ctvol: {pct:.0f}% ({done}/{total} tasks, {time.monotonic() - t0:.0f} s)",
          flush=True)


@contextlib.contextmanager
def _local_progress() -> Iterator[None]:
    """Progress of a local-scheduler compute: dask's live bar on a terminal; on
    anything else a plain line every :data:`PROGRESS_EVERY_S` seconds and one at
    the end (no carriage returns or escape codes in logs)."""
    if _tty():
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=0.5):
            yield
        return
    from dask.callbacks import Callback

    class Lines(Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.t0 = self.last = time.monotonic()
            self.state: Any = None

        def _start_state(self, dsk: Any, state: Any) -> None:
            self.state = state

        def _counts(self) -> tuple[int, int]:
            s = self.state
            done = len(s["finished"])
            return done, done + sum(len(s[k]) for k in ("ready", "waiting", "running"))

        def _posttask(self, *args: Any) -> None:
            now = time.monotonic()
            if self.state is not None and now - self.last >= PROGRESS_EVERY_S:
                self.last = now
                _line(*self._counts(), self.t0)

        def _finish(self, *args: Any) -> None:
            if self.state is not None and time.monotonic() - self.t0 >= 0.5:
                _line(*self._counts(), self.t0)

    with Lines():
        yield


def _client_progress(futures: Sequence[Any]) -> None:
    """Wait for futures with progress: distributed's live bar on a terminal, plain
    lines every :data:`PROGRESS_EVERY_S` seconds otherwise."""
    from distributed import wait

    if _tty():
        from distributed import progress as dprogress

        dprogress(futures)
        return
    t0 = time.monotonic()
    while True:
        try:
            wait(futures, timeout=PROGRESS_EVERY_S)
            break
        except TimeoutError:
            _line(sum(f.done() for f in futures), len(futures), t0)
    if time.monotonic() - t0 >= 0.5:
        _line(len(futures), len(futures), t0)


def default_in_flight() -> int:
    """Items to keep submitted at once: twice the Client's worker threads, else
    twice the cores (enough queued work that no worker idles between items)."""
    client = active_client()
    threads = sum(client.nthreads().values()) if client is not None else os.cpu_count()
    return 2 * max(1, threads or 1)


def compute_bounded(items: Iterable[Any], *, in_flight: int, progress: bool = False,
                    total: int | None = None, what: str = "items",
                    errors: str = "raise") -> Generator[tuple[int, Any], None, None]:
    """Compute dask objects drawn lazily from ``items``, at most ``in_flight`` at once.

    ``items`` is advanced only when a slot frees, so a generator that builds
    each graph when asked keeps at most ``in_flight`` graphs alive in this
    process and on the scheduler: memory is bounded by the window, not by
    the number of items (:func:`compute` builds and submits them all at once).
    Results are computed, not persisted: once gathered, nothing of an item's
    graph stays on the scheduler (a persisted result keeps its whole lineage
    there, to recompute it if a worker is lost).

    Parameters
    ----------
    items : iterable of dask objects
        Each item is one dask collection or delayed object (wrap several in
        one ``dask.delayed`` to compute them as one item).
    in_flight : int
        On a Client, items submitted and not finished at any time (a new one
        is submitted as each finishes); on local schedulers, items computed
        together, one group after another.
    progress : bool, default False
        Print ``what: done/total`` about every 5 % of the items.
    errors : {"raise", "return"}, default "raise"
        ``"return"``: a failing item yields its exception as its result and
        the others go on (on local schedulers a failing group is recomputed
        item by item to tell which one failed).

    Yields
    ------
    (int, object)
        The item's number in ``items`` and its result, as items finish (in
        order on local schedulers, in any order on a Client). The first
        failing item's exception is raised after what is still running is
        cancelled.
    """
    import dask

    if in_flight < 1:
        raise OptionError(f"in_flight must be >= 1, got {in_flight}")
    if errors not in ("raise", "return"):
        raise OptionError(f"errors must be 'raise' or 'return', got {errors!r}")
    step = max(1, (total or 0) // 20)
    done = 0

    def report() -> None:
        if progress and (done % step == 0 or done == total):
            print(f"{what}: {done}/{total if total is not None else '?'}", flush=True)

    numbered = enumerate(items)
    client = active_client()
    if client is None:
        while group := list(itertools.islice(numbered, in_flight)):
            try:
                values: Sequence[Any] = dask.compute(*(obj for _, obj in group))
            except Exception as exc:
                if errors == "raise":
                    raise
                values = [exc] if len(group) == 1 else [
                    next(compute_bounded([obj], in_flight=1, errors="return"))[1]
                    for _, obj in group]
            for (i, _), value in zip(group, values, strict=True):
                done += 1
                report()
                yield i, value
        return

    from distributed import as_completed

    running: dict[int, int] = {}  # id(future) -> item number
    pool = as_completed()

    def submit() -> None:
        nxt = next(numbered, None)
        if nxt is not None:
            # optimize_graph=False keeps task annotations (dask/dask#7036).
            fut = client.compute(nxt[1], optimize_graph=False)
            running[id(fut)] = nxt[0]
            pool.add(fut)

    for _ in range(in_flight):
        submit()
    try:
        for fut in pool:
            i = running.pop(id(fut))
            if fut.status == "error" and errors == "return":
                value = fut.exception()
            else:
                value = fut.result()  # raises the item's exception
            del fut  # its result leaves the cluster before the next item is built
            done += 1
            report()
            submit()
            yield i, value
    finally:
        pending = [f for f in pool.futures if not f.done()]
        if pending and client.status == "running":  # not when closed before this generator
            client.cancel(pending)


def persist(collections: Sequence[Any], *, progress: bool = False) -> list[Any]:
    """Persist dask collections where they will be used: on the Client's
    workers when one is active (results stay distributed), else in memory.
    """
    import dask

    if not collections:
        return []
    client = active_client()
    if client is not None:
        out = client.persist(list(collections), optimize_graph=False)
        if progress:
            _client_progress(out)
        return list(out)
    if progress:
        with _local_progress():
            return list(dask.persist(*collections))
    return list(dask.persist(*collections))


#: Entries of distributed's developer logs (``distributed.admin.low-level-log-length``,
#: default 1000) in the clusters and clients started here. Each batched stream
#: (client -> scheduler, scheduler -> every worker) keeps its last that many
#: payloads and each worker its last task stimuli, task specs included: with the
#: default, a cohort of small tasks keeps tens of MiB of finished tasks' specs
#: alive in the driver (the Client; a LocalCluster's scheduler) and in every
#: worker, growing with the cohort up to the cap (measured in docs/cluster.md).
LOW_LEVEL_LOG_LENGTH = 50


@contextlib.contextmanager
def _short_developer_logs() -> Iterator[None]:
    """Cap distributed's developer logs at :data:`LOW_LEVEL_LOG_LENGTH` (unless
    configured lower, or unbounded on purpose with None) while objects are created."""
    import dask

    key = "distributed.admin.low-level-log-length"
    current = dask.config.get(key, None)
    if isinstance(current, int) and current > LOW_LEVEL_LOG_LENGTH:
        with dask.config.set({key: LOW_LEVEL_LOG_LENGTH}):
            yield
    else:
        yield


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Start processes that ignore SIGINT: Ctrl-C in a terminal goes to the whole
    process group, and the driver, not each worker, handles it (closing the
    cluster); otherwise every worker prints its own KeyboardInterrupt traceback.
    A child inherits the ignored disposition, and Python installs its
    KeyboardInterrupt handler only where SIGINT is not ignored."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def scheduler_context(spec: str, workers: int | None = None, *,
                      announce: bool = False) -> Iterator[Any]:
    """Run the block on a scheduler: ``"threads"``, ``"local"`` (a LocalCluster,
    one single-threaded worker process per core unless ``workers``) or a
    distributed scheduler address. Yields the Client, or None for threads.

    The cluster and client started here keep distributed's developer logs
    short (:data:`LOW_LEVEL_LOG_LENGTH`), so their memory does not grow with
    the number of tasks run.
    """
    if spec == "threads":
        import dask

        with dask.config.set(scheduler="threads"):
            yield None
        return
    from distributed import Client, LocalCluster

    if spec == "local":
        n = workers or os.cpu_count() or 1
        with _short_developer_logs():  # read when the scheduler, workers and client start
            with _workers_ignore_sigint():
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
            with cluster, Client(cluster) as client:
                from ._worker_logging import QuietCancel

                client.register_plugin(QuietCancel(), name="ctvol-quiet-cancel")
                if announce:
                    print(f"ctvol: LocalCluster with {n} workers, dashboard "
                          f"{client.dashboard_link}", flush=True)
                yield client
    else:
        with _short_developer_logs(), Client(spec) as client:
            yield client
