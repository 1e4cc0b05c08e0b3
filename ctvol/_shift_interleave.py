"""``ctvol.shift_interleave``: raise a predictor's output resolution by shifting its input.

To refine the output of an unchanged block predictor (a segmentation CNN, a
threshold, ...) by an integer k along an axis, the input is resampled k times,
copy j at the fractional positions ``i + j/k`` (j = 0 … k−1, by interpolation),
the predictor runs on each copy, and the k outputs are interleaved: output
sample n is sample ``n // k`` of copy ``n % k``, which sits at input position
``n / k``. Along several axes every combination of shifts runs (the product of
the k's). ``docs/shift_interleave.md`` states the conventions.

The public wrapper validates metadata and builds the graph: the input gets a
halo along every axis (:func:`dask.array.overlap.overlap`, no padding at the
volume's edges), one task per block runs every shifted copy through the
predictor and returns the block's refined output (:func:`refine_block`).
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import GeometryError, PredictError

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["FUSE", "refine_block", "shift_interleave"]

#: Fusion rules for overlapping predictions (None: pure interleave, no fusion).
FUSE = (None, "vote", "mean")
#: Halo added for spline orders >= 2, whose prefilter has infinite support: the
#: filter's slowest pole decays below 1e-4 (quintic: 0.43**12) within it.
SPLINE_MARGIN = 12
#: Relative tolerance on coordinate steps along a refined axis.
RTOL = 1e-3

_CACHE: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
_LOCK = threading.Lock()


# --------------------------------------------------------------------------
# Argument checks (metadata only: nothing is computed)
# --------------------------------------------------------------------------


def _as_tuple(value: Any) -> tuple[Any, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return (value,)
    return tuple(value)


def _check_factors(factor: Any, axes: tuple[Hashable, ...]) -> tuple[int, ...]:
    factors = _as_tuple(factor)
    for f in factors:
        if isinstance(f, bool) or not isinstance(f, numbers.Integral) or f < 1:
            raise ValueError(f"factor must be an integer >= 1 (or one per axis), got {factor!r}")
    if len(factors) == 1 and len(axes) > 1:
        factors = factors * len(axes)
    if len(factors) != len(axes):
        raise ValueError(
            f"factor {factor!r} has {len(factors)} entries but axis {axes!r} has {len(axes)}: "
            "give one factor, or one per axis"
        )
    return tuple(int(f) for f in factors)


def _check_axes(axis: Any, dims: tuple[Hashable, ...]) -> tuple[Hashable, ...]:
    axes = _as_tuple(axis)
    if not axes:
        raise ValueError("axis must name at least one dimension")
    for a in axes:
        if a not in dims:
            raise ValueError(f"axis {a!r} is not a dimension of the data: dims are {dims!r}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"axis {axis!r} names a dimension twice")
    return axes


def _check_depth(predict_depth: Any, dims: tuple[Hashable, ...]) -> dict[Hashable, int]:
    if isinstance(predict_depth, Mapping):
        unknown = [d for d in predict_depth if d not in dims]
        if unknown:
            raise ValueError(f"predict_depth names {unknown!r}, not dimensions of {dims!r}")
        depth = {d: predict_depth.get(d, 0) for d in dims}
    else:
        depth = dict.fromkeys(dims, predict_depth)
    for d, v in depth.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ValueError(
                f"predict_depth must be an integer >= 0 (per dim), got {v!r} for {d!r}")
    return {d: int(v) for d, v in depth.items()}


def _spacing(coord: np.ndarray, name: Hashable, what: str) -> float:
    steps = np.diff(coord)
    step = float(np.median(steps))
    if step == 0 or np.any(np.abs(steps - step) > RTOL * abs(step) + 1e-9):
        bad = int(np.argmax(np.abs(steps - step)))
        raise GeometryError(
            f"{what} has uneven {name!r} spacing: a {steps[bad]:.4g} step at "
            f"{name}={coord[bad]:.4g} (expected {step:.4g}); refined coordinates need an even "
            "grid. Split the data into evenly spaced runs (ctvol.ingest(..., split_gaps=True))"
        )
    return step


def interp_depth(order: int) -> int:
    """Input samples the shifts read beyond a block's edge, for spline ``order``."""
    return 1 if order <= 1 else order + SPLINE_MARGIN


# --------------------------------------------------------------------------
# The predictor on a worker
# --------------------------------------------------------------------------


def _load_path(path: str) -> Callable[[np.ndarray], np.ndarray]:
    from .models import load_segmenter

    return load_segmenter(path)


def _predictor(source: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The callable for ``source``: itself, or a checkpoint path loaded once per process."""
    if not isinstance(source, str):
        return source  # type: ignore[no-any-return]
    with _LOCK:  # threads of one worker share one copy
        fn = _CACHE.get(source)
        if fn is None:
            fn = _CACHE[source] = _load_path(source)
    return fn


def _describe(predict: Any) -> str:
    if isinstance(predict, str | os.PathLike):
        return os.fspath(predict)
    name = getattr(predict, "__qualname__", None) or type(predict).__qualname__
    return f"{getattr(predict, '__module__', '?')}.{name}"


# --------------------------------------------------------------------------
# One block
# --------------------------------------------------------------------------


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

    Returns
    -------
    ndarray
        The block's core, refined by k along each axis in ``axes``.
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
    fine = np.empty([kept[d] * kf.get(d, 1) for d in range(ndim)], dtype=dtype)
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
        if pred.shape != x.shape:
            raise PredictError(
                f"predict returned a block of shape {pred.shape} for an input block of shape "
                f"{x.shape}: it must map a block to a block of the same shape"
            )
        if not np.can_cast(pred.dtype, dtype, casting="same_kind"):
            raise PredictError(
                f"predict returned {pred.dtype} values, which do not cast safely to the output "
                f"dtype {dtype}; pass dtype={pred.dtype.name!r} (or round/cast inside predict)"
            )
        dst = tuple(slice(combo[axes.index(d)], None, kf[d]) if d in kf else slice(None)
                    for d in range(ndim))
        fine[dst] = pred[keep]
    if fuse is not None:
        fine = _fuse(fine, axes, factors, fuse, dtype)
    crop = []
    for d in range(ndim):
        if d not in kf:
            crop.append(slice(None))
            continue
        k, (m0, _) = kf[d], mg[d]
        n = core[d] * k - ((k - 1) if stop[axes.index(d)] else 0)
        crop.append(slice(m0 * k, m0 * k + n))
    return np.ascontiguousarray(fine[tuple(crop)])


def _task(x: np.ndarray, source: Any, *, block_id: tuple[int, ...],
          nblocks: tuple[int, ...], depth: tuple[int, ...], axes: tuple[int, ...],
          factors: tuple[int, ...], fuse: str | None, extend: bool, out_dtype: Any,
          **kwargs: Any) -> np.ndarray:
    halo = [(depth[d] if block_id[d] > 0 else 0,
             depth[d] if block_id[d] < nblocks[d] - 1 else 0) for d in range(x.ndim)]
    extra = 1 if fuse is not None else 0
    margin = [(extra if block_id[d] > 0 else 0, extra if block_id[d] < nblocks[d] - 1 else 0)
              for d in axes]
    stop = [not extend and block_id[d] == nblocks[d] - 1 for d in axes]
    return refine_block(x, _predictor(source), axes=axes, factors=factors, halo=halo,
                        margin=margin, stop=stop, fuse=fuse, dtype=out_dtype, **kwargs)


# --------------------------------------------------------------------------
# The public verb
# --------------------------------------------------------------------------


def shift_interleave(
    ds: xr.Dataset | xr.DataArray,
    predict: Callable[[np.ndarray], np.ndarray] | str | os.PathLike[str],
    factor: int | Sequence[int] = 2,
    axis: Hashable | Sequence[Hashable] = "z",
    *,
    fuse: str | None = None,
    order: int = 1,
    extend: bool = False,
    predict_depth: int | Mapping[Hashable, int] = 0,
    dtype: Any = np.float32,
    var: str = "hu",
    name: str = "prediction",
) -> xr.DataArray:
    """Refine a block predictor's output by shifting its input (lazy, a Dask graph).

    Along each axis in ``axis`` with factor k, copy j (j = 0 … k−1) of the
    input is resampled at the fractional positions ``i + j/k`` (spline
    interpolation of ``order``, :func:`scipy.ndimage.shift`, mode "nearest"),
    ``predict`` runs on every copy unchanged, and the outputs are interleaved:
    **output sample n is sample n // k of copy n % k**, at coordinate
    ``x0 + n·dx/k``. Several axes run every combination of shifts
    (the product of the k's predictions per block).

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
        The input: a volume (``docs/storage.md``; its ``var``, default ``hu``,
        in HU) or any DataArray; dask-backed or in memory.
    predict : callable or path
        ``predict(block) -> block``: a float32 numpy block in (with the halo),
        a block of the **same shape** out (labels or probabilities). Any block
        predictor: a CNN, a threshold... A callable travels to the workers
        once per graph (one shared key); a path to a segmenter checkpoint
        (:func:`ctvol.models.save_segmenter`) is loaded once per worker process.
    factor : int or sequence of int, default 2
        k >= 1 per axis (one value for every axis, or one per axis). k = 1
        leaves an axis unrefined (its output is ``predict`` of the input).
    axis : str or sequence of str, default "z"
        The dims to refine.
    fuse : {None, "vote", "mean"}, default None
        None: pure interleave, one prediction per output sample. ``"vote"`` /
        ``"mean"``: every prediction whose one-input-voxel footprint covers
        an output sample (one from each combination of shifts: the product
        of the k's) is fused there, by majority vote (labels; ties go to the
        sample's own prediction, else the smallest tied label) or by the mean
        (probabilities). Equivalently: the interleaved output filtered by a
        centred box of k samples along each refined axis, truncated at the
        volume's edges.
    order : int, default 1
        Spline order of the shifts, 0–5. Orders 0 and 1 are exact blockwise;
        higher orders use a spline prefilter of infinite support, so blocks
        get a halo of ``order + 12`` and match the unchunked result to ~1e-4
        of the value range.
    extend : bool, default False
        False: the output stops at the last input sample, (N−1)·k + 1 samples.
        True: N·k samples; the last k−1 are predicted on copies that read past
        the last input sample (mode "nearest" repeats it).
    predict_depth : int or mapping, default 0
        Context ``predict`` needs beyond a sample (its receptive radius, in
        input samples), per dim or for all: blocks carry it as extra halo.
    dtype : numpy dtype, default float32
        Output dtype; predictions must cast to it (``same_kind``): pass an
        integer dtype for labels.
    var : str, default "hu"
        The variable of a Dataset to refine.
    name : str, default "prediction"
        Name of the returned DataArray.

    Returns
    -------
    xarray.DataArray
        Dask-backed, refined along each axis: coordinates ``x0 + n·dx/k``
        (samples with n % k == 0 keep the input's exact values), an integer
        coordinate ``<axis>_shift`` = n % k (the copy, shifted by j/k input
        samples, that predicted sample n); coordinates along unrefined dims
        kept; ``attrs["sub_voxel_prediction"] = True``, ``attrs["shift_interleave"]``
        (factors, axes, fuse, order, extend, predict), ``ctvol_history``
        extended, ``spacing`` divided by the factors when present.

    Raises
    ------
    ValueError
        Bad factor, axis, fuse, order, predict_depth, dtype or var; a factor and
        axis of different lengths.
    GeometryError
        Uneven coordinates along a refined axis.
    PredictError
        At compute time: ``predict`` returned a block of another shape, or values
        that do not cast to ``dtype``.

    See Also
    --------
    ctvol.reslice : generates intensities between slices (a U-net on slice pairs).

    Examples
    --------
    >>> import numpy as np, xarray as xr, ctvol
    >>> hu = np.array([0.0, 100.0, 200.0, 300.0])[:, None, None] * np.ones((1, 2, 2))
    >>> ds = xr.Dataset({"hu": (("z", "y", "x"), hu)}, coords={"z": [0.0, 5.0, 10.0, 15.0]})
    >>> bone = lambda b: (b > 150).astype(np.uint8)               # a block -> block predictor
    >>> fine = ctvol.shift_interleave(ds.chunk({"z": 2}), bone, factor=5, axis="z",
    ...                               dtype=np.uint8)             # lazy
    >>> fine[:, 0, 0].values.tolist()
    [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    >>> fine.z.values.tolist()[:4], fine.z_shift.values.tolist()[:6]
    ([0.0, 1.0, 2.0, 3.0], [0, 1, 2, 3, 4, 0])
    """
    import dask
    import dask.array as da
    import xarray as xr

    from . import __version__

    if isinstance(ds, xr.Dataset):
        if var not in ds:
            raise ValueError(f"ds has no variable {var!r}: it has {list(ds.data_vars)}; "
                             "pass var=NAME")
        arr = ds[var]
        attrs_in = dict(ds.attrs)
    elif isinstance(ds, xr.DataArray):
        arr = ds
        attrs_in = dict(ds.attrs)
    else:
        raise TypeError(f"ds must be an xarray Dataset or DataArray, got {type(ds).__name__}")
    dims = tuple(arr.dims)
    axes = _check_axes(axis, dims)
    factors = _check_factors(factor, axes)
    if fuse not in FUSE:
        raise ValueError(f"fuse must be one of {list(FUSE)}, got {fuse!r}")
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or not 0 <= order <= 5:
        raise ValueError(f"order must be an integer spline order 0-5, got {order!r}")
    depth_in = _check_depth(predict_depth, dims)
    if isinstance(predict, os.PathLike):
        predict = os.fspath(predict)
    if not (callable(predict) or isinstance(predict, str)):
        raise TypeError(f"predict must be a callable (block -> block) or a checkpoint path, "
                        f"got {type(predict).__name__}")
    try:
        out_dtype = np.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"dtype must be a numpy dtype, got {dtype!r}") from err
    if fuse == "mean" and out_dtype.kind != "f":
        raise ValueError(f"fuse='mean' averages predictions: dtype must be a float dtype, "
                         f"got {out_dtype}")

    what = attrs_in.get("series_uid", "the data")
    sizes = dict(zip(dims, arr.shape, strict=True))
    for a, k in zip(axes, factors, strict=True):
        if sizes[a] < 1:
            raise ValueError(f"axis {a!r} has no samples")
        if a in arr.coords and sizes[a] > 1:
            _spacing(np.asarray(arr[a].values, dtype=np.float64), a, what)
        elif a in arr.coords and k > 1 and extend:
            raise GeometryError(f"{what} has a single sample along {a!r}: its spacing is "
                                "unknown, so refined coordinates cannot be placed (extend=True)")

    # ---- the graph ---------------------------------------------------------
    data = arr.data
    if not isinstance(data, da.Array):
        first = dims.index(axes[0])
        data = da.from_array(np.asarray(data), chunks=tuple(
            32 if d == first else -1 for d in range(len(dims))))
    ax_idx = tuple(dims.index(a) for a in axes)
    kf = dict(zip(ax_idx, factors, strict=True))
    fuse_extra = 1 if fuse is not None else 0
    depth = tuple(
        depth_in[dims[d]] + (interp_depth(order) + fuse_extra if kf.get(d, 1) > 1 else 0)
        for d in range(len(dims))
    )
    from dask.array.overlap import ensure_minimum_chunksize

    # Every block must be at least as deep as the halo (dask's overlap reads
    # only from direct neighbours); an axis shorter than the halo is one block.
    data = data.rechunk(tuple(
        data.chunks[d] if not depth[d] or len(data.chunks[d]) == 1
        else (-1 if depth[d] >= data.shape[d]
              else ensure_minimum_chunksize(depth[d], data.chunks[d]))
        for d in range(len(dims))))
    nblocks = tuple(len(c) for c in data.chunks)
    halo_depth = {d: depth[d] for d in range(len(dims)) if depth[d] and nblocks[d] > 1}
    haloed = (da.overlap.overlap(data, depth=halo_depth, boundary="none")
              if halo_depth else data)
    depth = tuple(halo_depth.get(d, 0) for d in range(len(dims)))
    out_chunks = []
    for d, cs in enumerate(data.chunks):
        k = kf.get(d, 1)
        out = [c * k for c in cs]
        if k > 1 and not extend:
            out[-1] -= k - 1
        out_chunks.append(tuple(out))
    # Checkpoint paths travel as strings (each worker process loads them
    # once); a callable travels as one graph key shared by every task.
    source: Any = predict if isinstance(predict, str) else dask.delayed(predict, pure=True)
    runs = math.prod(factors)
    fine = da.map_blocks(
        _task, haloed, source, nblocks=nblocks, depth=depth, axes=ax_idx,
        factors=factors, fuse=fuse, extend=extend, order=int(order), out_dtype=out_dtype,
        chunks=tuple(out_chunks), meta=np.empty((0,) * len(dims), dtype=out_dtype),
        name=f"shift-interleave-{'x'.join(map(str, factors))}-"
             + dask.base.tokenize(haloed, source, nblocks, depth, ax_idx, factors, fuse,
                                  extend, int(order), out_dtype),
    )

    # ---- coordinates and attrs -----------------------------------------------
    coords: dict[Hashable, Any] = {}
    for cname, c in arr.coords.items():
        if not set(c.dims) & set(axes):
            coords[cname] = c
    spacing_attr = list(attrs_in["spacing"]) if "spacing" in attrs_in else None
    for a, k in zip(axes, factors, strict=True):
        n_in = sizes[a]
        n_out = n_in * k if extend else (n_in - 1) * k + 1
        idx = np.arange(n_out)
        coords[f"{a}_shift"] = (a, idx % k)
        if a in arr.coords:
            c_in = np.asarray(arr[a].values, dtype=np.float64)
            step = float(np.median(np.diff(c_in))) if n_in > 1 else 0.0
            c_out = c_in[0] + idx * (step / k)
            c_out[::k] = c_in[: len(c_out[::k])]  # input positions stay exact
            coords[a] = (a, c_out, arr[a].attrs)
        if spacing_attr is not None and dims == ("z", "y", "x") and len(spacing_attr) == 3:
            spacing_attr[dims.index(a)] = float(spacing_attr[dims.index(a)]) / k
    attrs = {key: v for key, v in attrs_in.items() if key not in ("complete", "sop_digest")}
    if spacing_attr is not None:
        attrs["spacing"] = spacing_attr
    desc = (f"ctvol {__version__} shift_interleave(factor={list(factors)}, "
            f"axis={list(axes)}, fuse={fuse!r}, order={order}, extend={extend}, "
            f"predict={_describe(predict)!r})")
    attrs["ctvol_history"] = [*list(attrs_in.get("ctvol_history", [])), desc]
    attrs["sub_voxel_prediction"] = True
    attrs["shift_interleave"] = {
        "factor": list(factors), "axis": [str(a) for a in axes], "fuse": fuse,
        "order": int(order), "extend": bool(extend), "runs": runs,
        "predict": _describe(predict),
    }
    return xr.DataArray(fine, dims=dims, coords=coords, name=name, attrs=attrs)
