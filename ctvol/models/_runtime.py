"""Where models run: the device, and one model cache per worker process.

Every verb that runs a model (reslice, in-plane upsampling, slice
classification, the localizer, shift-and-interleave predictors) loads it
through :func:`cached_model`: once per process and device, keyed by checkpoint
format (:data:`ctvol.models.FORMATS` names the class and the loader of each) and
by weights digest or checkpoint folder and file stamps. Task graphs carry a model as
:func:`graph_model` (its path, or one key named by its digest).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

from .._compute import active_client
from . import FORMATS

__all__ = ["cached_model", "graph_model", "remember_model", "resolve_device"]


_CACHE: dict[tuple[str, str, str], Any] = {}


_LOCK = threading.Lock()


def resolve_device(device: str | None = None) -> str:
    """``device`` as given, else ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _source_key(source: Any, model_type: Any) -> str:
    """Cache key of a model source: its digest, or the checkpoint folder with the
    modification stamps of its files (a checkpoint rewritten in place, e.g. by a
    training run in the same process, is loaded again, not served stale)."""
    if isinstance(source, model_type):
        return str(source.digest)
    import os
    import pathlib

    folder = pathlib.Path(os.fspath(source))
    try:
        stamps = [(f.name, f.stat().st_mtime_ns, f.stat().st_size)
                  for f in sorted(folder.iterdir()) if f.is_file()]
    except OSError:  # a bundled name, or not a folder: the loader reports it
        return str(source)
    return f"{folder.resolve()}|{stamps}"


def cached_model(source: Any, device: str, fmt: str, *,
                 load: Callable[[Any], Any] | None = None) -> Any:
    """The model for ``source`` on ``device``, loaded once per worker process.

    ``fmt`` is a checkpoint format, a key of :data:`ctvol.models.FORMATS`, which
    names the model class and its loader. ``source`` is a checkpoint path/name
    (loaded with the format's loader, or ``load`` when given) or an in-memory
    instance of the format's class (deep-copied: the cache must not move, or keep
    changing, the caller's own object). Threads of one worker share the copy;
    reslice, in-plane upsampling, slice classification, the localizer and
    shift-and-interleave's predictors all use it.
    """
    model_type, default_load = FORMATS[fmt]
    load = load or default_load
    key = (fmt, _source_key(source, model_type), device)
    with _LOCK:
        model: Any = _CACHE.get(key)
        if model is None:
            if not _CACHE:
                _configure_torch_threads()
            model = copy.deepcopy(source) if isinstance(source, model_type) else load(source)
            model = model.to(device)
            _CACHE[key] = model
    return model


def remember_model(source: Any, device: str, fmt: str, loaded: Any) -> None:
    """Put a model the caller has just loaded from ``source`` (a path) into this
    process's cache, so tasks on the local threaded scheduler do not load the
    checkpoint a second time. Skipped under a distributed Client: tasks run in
    worker processes there, which load it once each."""
    if not isinstance(source, str) or active_client() is not None:
        return
    key = (fmt, _source_key(source, FORMATS[fmt][0]), device)
    with _LOCK:
        if key not in _CACHE:
            if not _CACHE:
                _configure_torch_threads()
            _CACHE[key] = loaded.to(device)


def graph_model(model: Any, kind: str) -> Any:
    """A model as a task argument: its checkpoint path (each worker loads it once),
    or one graph key named by the weights digest (the same key in every graph that
    uses this model, so a Client ships it once and results cache by content)."""
    import dask

    if getattr(model, "path", None):
        return model.path
    return dask.delayed(model, pure=True, name=f"{kind}-model-{model.digest}")


def _host_threads(worker: Any) -> int:
    """Worker threads on this worker's host (all workers there), at least its own."""
    own = max(1, int(worker.state.nthreads))
    try:
        from distributed import get_client

        host = worker.address.rsplit(":", 1)[0]
        infos = get_client().scheduler_info(n_workers=-1)["workers"].values()
        total = sum(int(w.get("nthreads", 0)) for w in infos
                    if str(w.get("host", "")) and host.endswith(str(w["host"])))
    except Exception:  # no scheduler reachable: count this worker alone
        return own
    return max(own, total)


def _configure_torch_threads() -> None:
    """In a dask.distributed worker, split the host's cores between the worker
    threads on that host (every worker process there, e.g. a LocalCluster's).

    Each worker thread runs its own forward passes; torch's intra-op pool per
    pass is sized so that together they do not oversubscribe the machine.
    Outside a worker (threads scheduler, plain Python) torch's default stays.
    """
    import sys

    if "distributed" not in sys.modules:  # no worker without distributed imported
        return
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    import os

    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _host_threads(worker)))
