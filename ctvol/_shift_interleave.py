"""``ctvol.shift_interleave``: raise a predictor's output resolution by shifting its input.

To refine the output of an unchanged block predictor (a segmentation CNN, a
threshold, ...) by an integer k along an axis, the input is resampled k times,
copy j at the fractional positions ``i + j/k`` (j = 0 … k−1, by interpolation),
the predictor runs on each copy, and the k outputs are interleaved: output
sample n is sample ``n // k`` of copy ``n % k``, which sits at input position
``n / k``. Along several axes every combination of shifts runs (the product of
the k's). A per-slice predictor ((n, H, W) -> (n,) or (n, C): a slice
classifier) refined along z gives per-slice outputs at the finer spacing.
``docs/shift_interleave.md`` states the conventions.

The public wrapper validates metadata and the predictor (``_predictor.py``:
callables, segmenters, slice models, checkpoint paths, devices) and builds the
graph: the input gets a halo along every axis
(:func:`dask.array.overlap.overlap`, no padding at the volume's edges), one
task per block runs every shifted copy through the predictor and returns the
block's refined output (:func:`refine_block`, ``_refine_block.py``).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._compute import cluster_has_gpu
from ._predictor import on_worker, resolve
from ._refine_block import refine_block
from ._volume import derive_attrs, uneven_step
from .errors import GeometryError, OptionError, OptionTypeError, VolumeError

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["FUSE", "refine_block", "shift_interleave"]

#: Fusion rules for overlapping predictions (None: pure interleave, no fusion).
FUSE = (None, "vote", "mean")
#: Halo added for spline orders >= 2, whose prefilter has infinite support: the
#: filter's slowest pole decays below 1e-4 (quintic: 0.43**12) within it.
SPLINE_MARGIN = 12

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
            raise OptionError(f"factor must be an integer >= 1 (or one per axis), got {factor!r}")
    if len(factors) == 1 and len(axes) > 1:
        factors = factors * len(axes)
    if len(factors) != len(axes):
        raise OptionError(
            f"factor {factor!r} has {len(factors)} entries but axis {axes!r} has {len(axes)}: "
            "give one factor, or one per axis"
        )
    return tuple(int(f) for f in factors)


def _check_axes(axis: Any, dims: tuple[Hashable, ...]) -> tuple[Hashable, ...]:
    axes = _as_tuple(axis)
    if not axes:
        raise OptionError("axis must name at least one dimension")
    for a in axes:
        if a not in dims:
            raise VolumeError(f"axis {a!r} is not a dimension of the data: dims are {dims!r}")
    if len(set(axes)) != len(axes):
        raise OptionError(f"axis {axis!r} names a dimension twice")
    return axes


def _check_depth(predict_depth: Any, dims: tuple[Hashable, ...]) -> dict[Hashable, int]:
    if isinstance(predict_depth, Mapping):
        unknown = [d for d in predict_depth if d not in dims]
        if unknown:
            raise VolumeError(f"predict_depth names {unknown!r}, not dimensions of {dims!r}")
        depth = {d: predict_depth.get(d, 0) for d in dims}
    else:
        depth = dict.fromkeys(dims, predict_depth)
    for d, v in depth.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise OptionError(
                f"predict_depth must be an integer >= 0 (per dim), got {v!r} for {d!r}")
    return {d: int(v) for d, v in depth.items()}


def _spacing(coord: np.ndarray, name: Hashable, what: str) -> float:
    step, bad = uneven_step(coord, increasing=False)
    if bad is not None:
        steps = np.diff(coord)
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
# One task: the block's predictor, then the numpy core (_refine_block.py)
# --------------------------------------------------------------------------


def _task(x: np.ndarray, source: Any, *, block_id: tuple[int, ...],
          nblocks: tuple[int, ...], depth: tuple[int, ...], axes: tuple[int, ...],
          factors: tuple[int, ...], fuse: str | None, extend: bool, out_dtype: Any,
          kind: str, device: str | None, amp: bool, labels: bool,
          outputs: tuple[int, ...] | None, **kwargs: Any) -> np.ndarray:
    if outputs is not None:  # output blocks (z,) / (z, class): whole slices, one block
        block_id = (block_id[0],) + (0,) * (x.ndim - 1)
    halo = [(depth[d] if block_id[d] > 0 else 0,
             depth[d] if block_id[d] < nblocks[d] - 1 else 0) for d in range(x.ndim)]
    extra = 1 if fuse is not None else 0
    margin = [(extra if block_id[d] > 0 else 0, extra if block_id[d] < nblocks[d] - 1 else 0)
              for d in axes]
    stop = [not extend and block_id[d] == nblocks[d] - 1 for d in axes]
    predict = on_worker(kind, source, device=device, amp=amp, labels=labels)
    return refine_block(x, predict, axes=axes, factors=factors, halo=halo, margin=margin,
                        stop=stop, fuse=fuse, dtype=out_dtype, outputs=outputs, **kwargs)


# --------------------------------------------------------------------------
# The public verb
# --------------------------------------------------------------------------


def shift_interleave(
    ds: xr.Dataset | xr.DataArray,
    predict: Callable[[np.ndarray], np.ndarray] | str | os.PathLike[str] | Any,
    factor: int | Sequence[int] = 2,
    axis: Hashable | Sequence[Hashable] = "z",
    *,
    fuse: str | None = None,
    order: int = 1,
    extend: bool = False,
    predict_depth: int | Mapping[Hashable, int] = 0,
    dtype: Any = None,
    per_slice: bool | None = None,
    classes: int | Sequence[str] | None = None,
    labels: bool = False,
    device: str | None = None,
    amp: bool = False,
    var: str = "hu",
    name: str = "prediction",
) -> xr.DataArray:
    """Refine a predictor's output by shifting its input (lazy, a Dask graph).

    Along each axis in ``axis`` with factor k, copy j (j = 0 … k−1) of the
    input is resampled at the fractional positions ``i + j/k`` (spline
    interpolation of ``order``, :func:`scipy.ndimage.shift`, mode "nearest"),
    ``predict`` runs on every copy unchanged, and the outputs are interleaved:
    **output sample n is sample n // k of copy n % k**, at coordinate
    ``x0 + n·dx/k``. Several axes run every combination of shifts
    (the product of the k's predictions per block). A per-slice predictor
    (one value, or one row of class probabilities, per slice) refined along z
    gives per-slice outputs at the finer z spacing.

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
        The input: a volume (``docs/storage.md``; its ``var``, default ``hu``,
        in HU) or any DataArray; dask-backed or in memory.
    predict : callable, SegmentModel, SliceModel or path
        A **callable** ``predict(block) -> block``: a float32 numpy block in
        (with the halo), a block of the **same shape** out (labels or
        probabilities) -- a CNN, a threshold...; with ``per_slice=True`` it
        gets whole slices (n, H, W) and returns shape (n,) or, with
        ``classes``, (n, C). A callable travels to the workers once per graph
        (one shared key). A **model**: a :class:`ctvol.models.SegmentModel`
        (probabilities of the block's shape), a
        :class:`ctvol.curation.SliceModel` (per slice: class probabilities, or
        the localizer's location), or a **path** to either's checkpoint
        (:func:`ctvol.models.save_segmenter`,
        :func:`ctvol.curation.save_slice_model`). Models run on ``device`` and
        are loaded once per worker process and device.
    factor : int or sequence of int, default 2
        k >= 1 per axis (one value for every axis, or one per axis). k = 1
        leaves an axis unrefined (its output is ``predict`` of the input).
    axis : str or sequence of str, default "z"
        The dims to refine (``"z"`` only for per-slice predictors).
    fuse : {None, "vote", "mean"}, default None
        None: pure interleave, one prediction per output sample. ``"vote"`` /
        ``"mean"``: every prediction whose one-input-voxel footprint covers
        an output sample (one from each combination of shifts: the product
        of the k's) is fused there, by majority vote (labels; ties go to the
        sample's own prediction, else the smallest tied label) or by the mean
        (probabilities). Equivalently: the interleaved output filtered by a
        centred box of k samples along each refined axis, truncated at the
        volume's edges. Per-slice outputs fuse along z, each class apart.
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
        Per-slice predictors see whole slices: along z only.
    dtype : numpy dtype, optional
        Output dtype; predictions must cast to it (``same_kind``): pass an
        integer dtype for labels. Default float32 (uint8 with ``labels``).
    per_slice : bool, optional
        The callable returns one value per slice, shape (n,) (or a row of C,
        shape (n, C), with ``classes``) for (n, H, W) slices. Default: False,
        True when ``classes`` is given or ``predict`` is a SliceModel.
    classes : int or sequence of str, optional
        A per-slice callable's row length C, or its C class names (which
        become the ``class`` coordinate). A SliceModel names its own.
    labels : bool, default False
        Models only: labels instead of probabilities -- a segmenter's mask
        (probability > 0.5, 0/1), a slice classifier's most probable class
        code (one per slice). What ``fuse="vote"`` counts.
    device : str, optional
        Models only: ``"cuda"``, ``"cpu"``, ``"cuda:1"``...; default CUDA when
        the worker sees a GPU, else CPU (resolved where the task runs). On a
        ``dask.distributed`` cluster whose workers declare a ``GPU`` resource
        the model's tasks ask for ``resources={"GPU": 1}``.
    amp : bool, default False
        Models only: bf16 autocast on CUDA (ignored on CPU).
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
        (factors, axes, fuse, order, extend, predict, model digest...),
        ``ctvol_history`` extended, ``spacing`` divided by the factors when
        present. Dims as the input; for per-slice predictors ``("z",)`` or
        ``("z", "class")`` (class names as coordinate when known; class labels
        carry ``classes``/``flag_values``/``flag_meanings`` attrs).

    Raises
    ------
    ValueError
        Bad factor, axis, fuse, order, predict_depth, dtype, var, device or
        classes; a factor and axis of different lengths; options that do not
        fit the predictor (per-slice predictors along another axis than z,
        ``fuse="vote"`` on a model's probabilities, ``device`` for a plain
        callable); a checkpoint of another kind.
    FileNotFoundError
        ``predict`` is a path but not a checkpoint folder.
    GeometryError
        Uneven coordinates along a refined axis.
    PredictError
        At compute time: ``predict`` returned another shape (the message names
        it and what was expected), or values that do not cast to ``dtype``.

    See Also
    --------
    ctvol.reslice : generates intensities between slices (a U-net on slice pairs).
    ctvol.classify_slices : a class per slice at the input's spacing.

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

    A per-slice predictor (here each slice's mean) gives per-slice values on the
    finer grid:

    >>> means = ctvol.shift_interleave(ds, lambda b: b.mean(axis=(1, 2)), factor=2,
    ...                                per_slice=True)
    >>> means.dims, means.values.tolist()
    (('z',), [0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0])
    """
    import contextlib

    import dask
    import dask.array as da
    import xarray as xr

    if isinstance(ds, xr.Dataset):
        if var not in ds:
            raise VolumeError(f"ds has no variable {var!r}: it has {list(ds.data_vars)}; "
                              "pass var=NAME")
        arr = ds[var]
        attrs_in = dict(ds.attrs)
    elif isinstance(ds, xr.DataArray):
        arr = ds
        attrs_in = dict(ds.attrs)
    else:
        raise OptionTypeError(f"ds must be an xarray Dataset or DataArray, got {type(ds).__name__}")
    dims = tuple(arr.dims)
    axes = _check_axes(axis, dims)
    factors = _check_factors(factor, axes)
    if fuse not in FUSE:
        raise OptionError(f"fuse must be one of {list(FUSE)}, got {fuse!r}")
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or not 0 <= order <= 5:
        raise OptionError(f"order must be an integer spline order 0-5, got {order!r}")
    depth_in = _check_depth(predict_depth, dims)
    pred = resolve(predict, per_slice=per_slice, classes=classes, labels=bool(labels),
                   device=device, amp=bool(amp))
    try:
        out_dtype = np.dtype(dtype if dtype is not None
                             else (np.uint8 if pred.labels else np.float32))
    except TypeError as err:
        raise OptionError(f"dtype must be a numpy dtype, got {dtype!r}") from err
    if fuse == "mean" and out_dtype.kind != "f":
        raise OptionError(f"fuse='mean' averages predictions: dtype must be a float dtype, "
                          f"got {out_dtype}")
    if fuse == "vote" and pred.is_model and not pred.labels:
        raise OptionError(
            f"fuse='vote' counts equal labels, but the {pred.description} outputs "
            "probabilities: pass labels=True (a segmenter's mask, p > 0.5; a slice "
            "classifier's most probable class), or fuse='mean'")
    if pred.per_slice:
        if axes != ("z",) or dims[0] != "z" or (pred.is_model and len(dims) != 3):
            raise VolumeError(
                f"a per-slice predictor ({pred.description}: one value or row per slice) "
                f"refines along 'z' only, from data with 'z' first"
                f"{' and (z, y, x) slices' if pred.is_model else ''}: got axis={axis!r} on "
                f"dims {dims} of shape {tuple(arr.shape)}; refine along z, or use a "
                "block -> block predictor")
        if any(depth_in[d] for d in dims[1:]):
            raise OptionError(f"predict_depth {predict_depth!r}: a per-slice predictor sees "
                              "whole slices; give predict_depth along 'z' only")

    what = attrs_in.get("series_uid", "the data")
    sizes = dict(zip(dims, arr.shape, strict=True))
    for a, k in zip(axes, factors, strict=True):
        if sizes[a] < 1:
            raise VolumeError(f"axis {a!r} has no samples")
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
    if pred.per_slice:  # the predictor sees whole slices
        data = data.rechunk({d: -1 for d in range(1, len(dims))})
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
    reshape: dict[str, Any] = {}
    if pred.outputs is not None:  # (z,) or (z, class): the slice dims go, classes come
        out_chunks = [out_chunks[0], *((c,) for c in pred.outputs)]
        reshape = {"drop_axis": list(range(1, len(dims))),
                   "new_axis": list(range(1, 1 + len(pred.outputs))) or None}
    runs = math.prod(factors)
    # A model's tasks ask for a GPU where the cluster's workers declare one
    # (as ctvol.reslice's; graph optimisation can drop annotations,
    # dask/dask#7036: ctvol's compute and the CLI compute without it).
    gpu = pred.is_model and cluster_has_gpu()
    with dask.annotate(resources={"GPU": 1}) if gpu else contextlib.nullcontext():
        fine = da.map_blocks(
            _task, haloed, pred.source, nblocks=nblocks, depth=depth, axes=ax_idx,
            factors=factors, fuse=fuse, extend=extend, order=int(order), out_dtype=out_dtype,
            kind=pred.kind, device=device, amp=bool(amp), labels=pred.labels,
            outputs=pred.outputs, chunks=tuple(out_chunks),
            meta=np.empty((0,) * len(out_chunks), dtype=out_dtype), **reshape,
            name=f"shift-interleave-{'x'.join(map(str, factors))}-"
                 + dask.base.tokenize(haloed, pred.source, pred.digest, pred.kind, nblocks,
                                      depth, ax_idx, factors, fuse, extend, int(order),
                                      out_dtype, device, bool(amp), pred.labels, pred.outputs),
        )

    # ---- coordinates and attrs -----------------------------------------------
    out_dims: tuple[Hashable, ...] = dims
    if pred.outputs is not None:
        out_dims = ("z", "class") if pred.outputs else ("z",)
    coords: dict[Hashable, Any] = {}
    for cname, c in arr.coords.items():
        if not set(c.dims) & set(axes) and set(c.dims) <= set(out_dims):
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
    if pred.outputs and pred.classes is not None:
        coords["class"] = ("class", np.array(pred.classes, dtype=object))  # zarr: vlen strings
    params: dict[str, Any] = {"factor": list(factors), "axis": [str(a) for a in axes],
                              "fuse": fuse, "order": int(order), "extend": bool(extend)}
    params.update({o: True for o in ("per_slice", "labels") if getattr(pred, o)})
    params["predict"] = pred.description
    attrs = derive_attrs(attrs_in, "shift_interleave", params)
    if spacing_attr is not None:
        attrs["spacing"] = spacing_attr
    attrs["sub_voxel_prediction"] = True
    attrs["shift_interleave"] = {
        "factor": list(factors), "axis": [str(a) for a in axes], "fuse": fuse,
        "order": int(order), "extend": bool(extend), "runs": runs,
        "predict": pred.description, "model_digest": pred.digest,
        "per_slice": pred.per_slice, "labels": pred.labels,
        "device": device, "amp": bool(amp),
    }
    if pred.per_slice and pred.labels and pred.classes is not None:
        # CF flags, as ctvol.classify_slices labels slices
        attrs.update({"classes": list(pred.classes),
                      "flag_values": list(range(len(pred.classes))),
                      "flag_meanings": " ".join(pred.classes)})
    return xr.DataArray(fine, dims=out_dims, coords=coords, name=name, attrs=attrs)
