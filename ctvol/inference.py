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


def cached_model(source: Any, device: str, model_type: Any, load: Any) -> Any:
    """The model for ``source`` on ``device``, loaded once per worker process.

    ``source`` is a checkpoint path/name (loaded with ``load``) or an
    in-memory ``model_type`` instance (deep-copied: the cache must not move,
    or keep changing, the caller's own object). Threads of one worker share
    the copy; reslice, slice classification and the localizer all use it.
    """
    key = (model_type.__name__,
           source.digest if isinstance(source, model_type) else str(source), device)
    with _LOCK:
        model = _CACHE.get(key)
        if model is None:
            if not _CACHE:
                _configure_torch_threads()
            model = copy.deepcopy(source) if isinstance(source, model_type) else load(source)
            model = model.to(device)
            _CACHE[key] = model
    return model


def _model(source: Any, device: str) -> Any:
    """The reslice model for ``source`` (checkpoint path/name or ResliceModel), cached."""
    from .models import ResliceModel, load_model

    return cached_model(source, device, ResliceModel, load_model)


def _configure_torch_threads() -> None:
    """In a dask.distributed worker, split the cores between the worker's threads.

    Each worker thread runs its own forward passes; torch's intra-op pool per
    pass is sized so that together they do not oversubscribe the machine.
    Outside a worker (threads scheduler, plain Python) torch's default stays.
    """
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    import os

    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, worker.state.nthreads)))


def generate_linear(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """The paper's baseline: distance-weighted average of two slices.

    Returns the k-1 slices at fractions j/k (j = 1..k-1) from ``a`` to ``b``,
    float32 ``a + (b - a) * (j / k)``, unrounded.
    """
    a32 = a.astype(np.float32)
    d = b.astype(np.float32) - a32
    return np.stack([a32 + d * (np.float32(j) / np.float32(k)) for j in range(1, k)])


def _linear_into(out: np.ndarray, a: np.ndarray, b: np.ndarray, k: int) -> None:
    """``generate_linear`` rounded to whole HU, written into ``out`` (k-1, H, W) int16.

    The same float32 arithmetic, in place, one slice at a time: no (k-1)-deep
    temporaries. Values between two int16 slices always fit int16.
    """
    a32 = a.astype(np.float32)
    d = b.astype(np.float32)
    d -= a32
    tmp = np.empty_like(a32)
    for j in range(1, k):
        np.multiply(d, np.float32(j) / np.float32(k), out=tmp)
        tmp += a32
        np.rint(tmp, out=tmp)
        out[j - 1] = tmp


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
    device: str = "cpu",
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
        for i in range(pairs):
            _linear_into(out[i * k + 1 : (i + 1) * k], cur[i], nxt(i), k)
        return out
    m = _model(model, device)
    window = m.window
    b = np.stack([nxt(i) for i in range(pairs)])
    x = np.stack([to_unit(cur[:pairs], window), to_unit(b, window)], axis=1)
    y = m.predict(x, batch_size=batch_size, amp=amp)  # (pairs, k-1, H, W) in [0, 1]
    hu = _to_hu_int16(from_unit(y, window))
    for i in range(pairs):
        out[i * k + 1 : (i + 1) * k] = hu[i]
    return out
