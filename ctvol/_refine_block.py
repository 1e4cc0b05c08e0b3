"""The per-block core of :func:`ctvol.shift_interleave`: shift, predict, interleave, fuse.

Plain numpy on one block with its halo (:func:`refine_block`); the graph around
it lives in ``_shift_interleave.py``. Fusion sums shifted views in a fixed
order, so chunked equals unchunked bit for bit.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import PredictError, VolumeError

__all__ = ["refine_block"]


def _box_sum(x: np.ndarray, axis: int, lo: int, hi: int) -> np.ndarray:
    """``out[n] = sum(x[c] for c in n-lo .. n+hi)`` along ``axis``; missing c count as 0.

    A plain sum of shifted views (k terms): the same additions in the same
    order whatever the block layout, so chunked equals unchunked exactly.
    """
    out = np.zeros_like(x)
    length = x.shape[axis]
    for off in range(-lo, hi + 1):
        dst = [slice(None)] * x.ndim
        src = [slice(None)] * x.ndim
        dst[axis] = slice(max(0, -off), min(length, length - off))
        src[axis] = slice(max(0, off), min(length, length + off))
        out[tuple(dst)] += x[tuple(src)]
    return out


def _window_sum(x: np.ndarray, axes: Sequence[int], factors: Sequence[int]) -> np.ndarray:
    # Prediction at fine c covers fine n when n - k/2 < c <= n + k/2 (half-open
    # footprint [c - k/2, c + k/2) of one input voxel): c - n in -((k-1)//2) .. k//2.
    for ax, k in zip(axes, factors, strict=True):
        if k > 1:
            x = _box_sum(x, ax, (k - 1) // 2, k // 2)
    return x


def _fuse(fine: np.ndarray, axes: Sequence[int], factors: Sequence[int], fuse: str,
          dtype: np.dtype[Any]) -> np.ndarray:
    if fuse == "mean":
        acc = np.float64 if dtype == np.float64 else np.float32
        total = _window_sum(fine.astype(acc), axes, factors)
        count = _window_sum(np.ones_like(total), axes, factors)
        return (total / count).astype(dtype, copy=False)
    # Majority vote. The voxel's own (centred) prediction gets half a vote
    # extra: counts are whole numbers, so it only breaks ties; a tie it is not
    # part of goes to the smallest label.
    labels = np.unique(fine)
    best = np.full(fine.shape, -1.0, dtype=np.float32)
    out = np.empty(fine.shape, dtype=dtype)
    for lab in labels:  # ascending: strict '>' keeps the smallest of tied labels
        hit = fine == lab
        score = _window_sum(hit.astype(np.float32), axes, factors) + 0.5 * hit
        better = score > best
        best[better] = score[better]
        out[better] = lab
    return out


def refine_block(
    x: np.ndarray,
    predict: Callable[[np.ndarray], np.ndarray],
    *,
    axes: Sequence[int],
    factors: Sequence[int],
    halo: Sequence[tuple[int, int]] | None = None,
    margin: Sequence[tuple[int, int]] | None = None,
    stop: Sequence[bool] | None = None,
    order: int = 1,
    fuse: str | None = None,
    dtype: Any = np.float32,
    outputs: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Shift-and-interleave on one numpy block (the per-task core).

    Parameters
    ----------
    x : ndarray
        The block, with ``halo[d] = (before, after)`` extra samples along each
        dim d (0 at the volume's edges).
    predict : callable
        ``predict(block) -> block`` of the same shape (float32 input).
    axes, factors : sequences of int
        Refined dims (positions in ``x.shape``) and their factors k.
    halo : sequence of (int, int), optional
        Halo present on each side of every dim (default none).
    margin : sequence of (int, int), optional
        Per refined axis, coarse samples beyond the block's core whose
        predictions enter the fusion window (0 at the volume's edges, else 1).
        Default: 0 (the block is the whole volume).
    stop : sequence of bool, optional
        Per refined axis: the block ends the volume and the output stops at
        the last input sample ((n−1)·k + 1 samples instead of n·k).
    order : int
        Spline order of the shifts (:func:`scipy.ndimage.shift`, mode "nearest").
    fuse : {None, "vote", "mean"}
    dtype : numpy dtype
        Output dtype; predictions are cast to it (``same_kind``).
    outputs : tuple of int, optional
        None: ``predict`` returns a block of ``x``'s shape. ``()`` or ``(C,)``:
        a per-slice predictor, returning shape ``(n,)`` or ``(n, C)`` for the
        n slices along axis 0; ``axes`` must be ``(0,)`` and the other dims
        carry no halo.

    Returns
    -------
    ndarray
        The block's core, refined by k along each axis in ``axes``: the
        block's shape, or ``(n_fine,)`` / ``(n_fine, C)`` per slice.
    """
    from scipy import ndimage

    ndim = x.ndim
    halo = list(halo) if halo is not None else [(0, 0)] * ndim
    margin = list(margin) if margin is not None else [(0, 0)] * len(axes)
    stop = list(stop) if stop is not None else [False] * len(axes)
    dtype = np.dtype(dtype)
    kf = dict(zip(axes, factors, strict=True))
    mg = dict(zip(axes, margin, strict=True))
    core = [x.shape[d] - halo[d][0] - halo[d][1] for d in range(ndim)]
    # Coarse samples kept from every prediction: the core, plus the fusion margin.
    keep = tuple(slice(halo[d][0] - mg.get(d, (0, 0))[0],
                       halo[d][0] + core[d] + mg.get(d, (0, 0))[1]) for d in range(ndim))
    kept = [keep[d].stop - keep[d].start for d in range(ndim)]
    expected: tuple[int, ...] = x.shape
    if outputs is not None:  # one value (or row of C) per slice along axis 0
        if tuple(axes) != (0,) or any(h != (0, 0) for h in halo[1:]):
            raise VolumeError("per-slice outputs refine along axis 0 only, from whole slices")
        expected = (x.shape[0], *outputs)
        keep = (keep[0],) + (slice(None),) * len(outputs)
        kept = [kept[0], *outputs]
    odim = len(expected)
    fine = np.empty([kept[d] * kf.get(d, 1) for d in range(odim)], dtype=dtype)
    xf = x.astype(np.float32)
    for combo in itertools.product(*(range(k) for k in factors)):
        shifts = [0.0] * ndim
        for d, j, k in zip(axes, combo, factors, strict=True):
            # Copy j samples the input at i + j/k: scipy moves content by -j/k.
            shifts[d] = -j / k
        if any(shifts):
            copy = ndimage.shift(xf, shifts, output=np.float32, order=order, mode="nearest")
        else:
            copy = xf.copy()  # the unshifted input exactly (and a copy predict may modify)
        pred = np.asarray(predict(copy))
        if pred.shape != expected:
            raise PredictError(_shape_message(pred.shape, x.shape, outputs))
        if not np.can_cast(pred.dtype, dtype, casting="same_kind"):
            raise PredictError(
                f"predict returned {pred.dtype} values, which do not cast safely to the output "
                f"dtype {dtype}; pass dtype={pred.dtype.name!r} (or round/cast inside predict)"
            )
        dst = tuple(slice(combo[axes.index(d)], None, kf[d]) if d in kf else slice(None)
                    for d in range(odim))
        fine[dst] = pred[keep]
    if fuse is not None:
        fine = _fuse(fine, axes, factors, fuse, dtype)
    crop = []
    for d in range(odim):
        if d not in kf:
            crop.append(slice(None))
            continue
        k, (m0, _) = kf[d], mg[d]
        n = core[d] * k - ((k - 1) if stop[axes.index(d)] else 0)
        crop.append(slice(m0 * k, m0 * k + n))
    return np.ascontiguousarray(fine[tuple(crop)])


def _shape_message(got: tuple[int, ...], block: tuple[int, ...],
                   outputs: tuple[int, ...] | None) -> str:
    n = block[0]
    if outputs is None:
        hint = (f": one value per slice? A per-slice predictor (shape ({n},) or ({n}, C)) "
                "refines along z only: pass per_slice=True (and classes=C or names for "
                "(n, C)) with axis='z'" if len(got) in (1, 2) and got[:1] == (n,) else "")
        return (f"predict returned a block of shape {got} for an input block of shape {block}: "
                f"it must map a block to a block of the same shape{hint}")
    want = f"({n},)" if not outputs else f"({n}, {outputs[0]})"
    what = ("one value per slice" if not outputs
            else f"one row of {outputs[0]} values (classes) per slice")
    hint = (": a block -> block predictor? leave per_slice and classes unset"
            if got == block else "")
    return (f"predict returned shape {got} for a block of {n} slices of shape {block}; "
            f"per_slice=True expects {want}, {what}{hint}")
