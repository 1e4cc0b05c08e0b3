"""Run Dask tasks on whatever scheduler is active, with an optional progress bar.

The library never starts a cluster: a ``dask.distributed.Client`` that is
already running is used when there is one, otherwise the configured default
(threads).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["active_client", "compute", "persist", "scheduler_context"]


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
            from distributed import progress as dprogress

            dprogress(futures)
        return list(client.gather(futures))
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=0.5):
            return list(dask.compute(*tasks))
    return list(dask.compute(*tasks))


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
            from distributed import progress as dprogress

            dprogress(out)
        return list(out)
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=0.5):
            return list(dask.persist(*collections))
    return list(dask.persist(*collections))


@contextlib.contextmanager
def scheduler_context(spec: str, workers: int | None = None, *,
                      announce: bool = False) -> Iterator[Any]:
    """Run the block on a scheduler: ``"threads"``, ``"local"`` (a LocalCluster,
    one single-threaded worker process per core unless ``workers``) or a
    distributed scheduler address. Yields the Client, or None for threads.
    """
    if spec == "threads":
        import dask

        with dask.config.set(scheduler="threads"):
            yield None
        return
    from distributed import Client, LocalCluster

    if spec == "local":
        n = workers or os.cpu_count() or 1
        with (
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                         dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            if announce:
                print(f"ctvol: LocalCluster with {n} workers, dashboard "
                      f"{client.dashboard_link}", flush=True)
            yield client
    else:
        with Client(spec) as client:
            yield client
