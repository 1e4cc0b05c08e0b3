"""The per-block engine behind :func:`ctvol.reslice`: one call per z-block.

Each Dask task gets a block of acquired slices and the slice after it, and
returns the block's output: the acquired slices bit-for-bit, with the k-1
generated slices after each one. Models are loaded once per worker process
(cached by checkpoint path or digest) rather than shipped with every task.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .models import RESLICE_FORMAT
from .models._runtime import cached_model, resolve_device

__all__ = ["generate_linear", "reslice_block", "resolve_device"]


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
    m = cached_model(model, resolve_device(device), RESLICE_FORMAT)
    # Every slice of the block windowed once, in place, then the pairs as one copy
    # of views; the output turned into HU in place: the same float32 operations as
    # to_unit / from_unit / to_hu_int16 (bit-identical, tested), fewer passes.
    unit = np.empty((pairs + 1, *cur.shape[1:]), dtype=np.float32)
    unit[:pairs] = cur[:pairs]
    unit[pairs] = nxt(pairs - 1)
    window_into(unit, m.window)
    x = np.stack([unit[:-1], unit[1:]], axis=1)
    del unit
    y = m.predict(x, batch_size=batch_size, amp=amp)  # (pairs, k-1, H, W) in [0, 1]
    del x
    hu = hu_from_unit_into(y, m.window)
    for i in range(pairs):
        out[i * k + 1 : (i + 1) * k] = hu[i]
    return out


def window_into(x: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """:func:`ctvol.intensity.to_unit` of float32 HU, in place (the same float32 result)."""
    lo, hi = window
    np.clip(x, np.float32(lo), np.float32(hi), out=x)
    x -= np.float32(lo)
    x /= np.float32(hi - lo)
    return x


def hu_from_unit_into(y: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """``to_hu_int16(from_unit(y, window))`` for float32 ``y``, overwriting ``y``."""
    lo, hi = window
    np.clip(y, 0.0, 1.0, out=y)
    y *= hi - lo
    y += lo
    np.rint(y, out=y)
    np.clip(y, -32768, 32767, out=y)
    return y.astype(np.int16)
