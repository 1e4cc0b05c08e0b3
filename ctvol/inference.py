"""The per-block engine behind :func:`ctvol.reslice`: one call per z-block.

Each Dask task gets a block of acquired slices and the slice after it, and
returns the block's output: the acquired slices bit-for-bit, with the k-1
generated slices after each one. Models are loaded once per worker process
(cached by checkpoint path or digest) rather than shipped with every task.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import numpy as np

from .intensity import from_unit, to_unit

__all__ = ["generate_linear", "reslice_block", "resolve_device"]

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


def cached_model(source: Any, device: str, model_type: Any, load: Any) -> Any:
    """The model for ``source`` on ``device``, loaded once per worker process.

    ``source`` is a checkpoint path/name (loaded with ``load``) or an
    in-memory ``model_type`` instance (deep-copied: the cache must not move,
    or keep changing, the caller's own object). Threads of one worker share
    the copy; reslice, slice classification and the localizer all use it.
    """
    key = (model_type.__name__, _source_key(source, model_type), device)
    with _LOCK:
        model = _CACHE.get(key)
        if model is None:
            if not _CACHE:
                _configure_torch_threads()
            model = copy.deepcopy(source) if isinstance(source, model_type) else load(source)
            model = model.to(device)
            _CACHE[key] = model
    return model


def remember_model(source: Any, device: str, model_type: Any, loaded: Any) -> None:
    """Put a model the caller has just loaded from ``source`` (a path) into this
    process's cache, so tasks on the local threaded scheduler do not load the
    checkpoint a second time. Skipped under a distributed Client: tasks run in
    worker processes there, which load it once each."""
    from ._compute import active_client

    if not isinstance(source, str) or active_client() is not None:
        return
    key = (model_type.__name__, _source_key(source, model_type), device)
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


def _model(source: Any, device: str) -> Any:
    """The reslice model for ``source`` (checkpoint path/name or ResliceModel), cached."""
    from .models import ResliceModel, load_model

    return cached_model(source, device, ResliceModel, load_model)


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


def generate_linear(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """The paper's baseline: distance-weighted average of two slices.

    Returns the k-1 slices at fractions j/k (j = 1..k-1) from ``a`` to ``b``,
    float32 ``a + (b - a) * (j / k)``, unrounded.
    """
    a32 = a.astype(np.float32)
    d = b.astype(np.float32) - a32
    return np.stack([a32 + d * (np.float32(j) / np.float32(k)) for j in range(1, k)])


#: Row-strip size of the linear kernel, in float32 elements per buffer: three
#: 256 KB buffers stay in L2, which makes the kernel ~1.3x faster than the same
#: arithmetic on whole 512^2 slices (measured: benchmarks/reslice.py notes).
_STRIP_ELEMENTS = 65536


def _linear_scratch(shape: tuple[int, ...]) -> np.ndarray:
    """Reusable float32 scratch for :func:`_linear_into`: (3, rows, W)."""
    h, w = shape[-2:]
    return np.empty((3, max(1, min(h, _STRIP_ELEMENTS // max(1, w))), w), dtype=np.float32)


def _linear_into(out: np.ndarray, a: np.ndarray, b: np.ndarray, k: int,
                 scratch: np.ndarray | None = None) -> None:
    """``generate_linear`` rounded to whole HU, written into ``out`` (k-1, H, W) int16.

    The same float32 arithmetic (``rint(a + (b - a) * (j / k))``, bit for bit),
    in place, a strip of rows at a time so the working set stays in cache.
    ``scratch`` (from :func:`_linear_scratch`) is reused across the pairs of a
    block. Values between two int16 slices always fit int16.
    """
    if scratch is None:
        scratch = _linear_scratch(a.shape)
    rows = scratch.shape[1]
    weights = [np.float32(j) / np.float32(k) for j in range(1, k)]
    for r in range(0, a.shape[0], rows):
        h = min(rows, a.shape[0] - r)
        a32, d, tmp = scratch[0, :h], scratch[1, :h], scratch[2, :h]
        np.copyto(a32, a[r : r + h])
        np.copyto(d, b[r : r + h])
        d -= a32
        for j, w in enumerate(weights):
            np.multiply(d, w, out=tmp)
            tmp += a32
            np.rint(tmp, out=tmp)
            out[j, r : r + h] = tmp


def _to_hu_int16(values: np.ndarray) -> np.ndarray:
    return np.rint(values).clip(-32768, 32767).astype(np.int16)


def reslice_block(
    cur: np.ndarray,
    after: np.ndarray,
    *,
    k: int,
    last: bool,
    method: str,
    model: Any = None,
    device: str | None = "cpu",
    batch_size: int = 16,
    amp: bool = False,
) -> np.ndarray:
    """Output of one z-block.

    Parameters
    ----------
    cur : (n, H, W) int16
        Acquired slices of the block (HU).
    after : (1, H, W) int16
        The acquired slice after the block (ignored for the last block).
    k : int
        Re-slice factor.
    last : bool
        The block ends the volume: its last slice has no pair.
    method : {"linear", "unet"}
    model : checkpoint path/name or ResliceModel, for ``"unet"``

    Returns
    -------
    (n*k, H, W) int16, or ((n-1)*k + 1, H, W) for the last block; slice
    ``i*k`` is ``cur[i]`` exactly.
    """
    n = cur.shape[0]
    pairs = n - 1 if last else n
    out = np.empty((pairs * k + (1 if last else 0), *cur.shape[1:]), dtype=np.int16)
    out[::k] = cur[: out[::k].shape[0]]
    if pairs == 0:
        return out

    def nxt(i: int) -> np.ndarray:
        return cur[i + 1] if i + 1 < n else after[0]

    if method == "linear":
        scratch = _linear_scratch(cur.shape)
        for i in range(pairs):
            _linear_into(out[i * k + 1 : (i + 1) * k], cur[i], nxt(i), k, scratch)
        return out
    m = _model(model, resolve_device(device))
    window = m.window
    b = np.stack([nxt(i) for i in range(pairs)])
    x = np.stack([to_unit(cur[:pairs], window), to_unit(b, window)], axis=1)
    y = m.predict(x, batch_size=batch_size, amp=amp)  # (pairs, k-1, H, W) in [0, 1]
    hu = _to_hu_int16(from_unit(y, window))
    for i in range(pairs):
        out[i * k + 1 : (i + 1) * k] = hu[i]
    return out
