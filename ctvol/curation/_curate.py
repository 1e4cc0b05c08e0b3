"""``curate``: drop blank slices, keep contiguous runs, report and fill gaps.

The one place where the library computes on the user's behalf: choosing the
run to keep needs the per-slice labels, so ``curate`` computes the labels
(one ``(z,)`` int8 array per volume, in one Dask compute) — never the
pixels themselves, which stay lazy in the result. Labels already stored in
the dataset (``ctvol curate STORE`` writes them) are read instead of
classifying again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._compute import compute
from .._reslice import reslice
from .._volume import axis_spacing, check_volume, derive_attrs
from ..errors import CurationError, GeometryError, OptionError, VolumeError
from ..geometry import step_tolerance
from ._blank import MIN_FRACTION
from ._classify import classify_slices

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["FILL_METHODS", "curate", "find_gaps"]

FILL_METHODS = (None, "linear", "unet")


def _dz(ds: xr.Dataset) -> float:
    return axis_spacing(ds, "z")


def _close(a: float, b: float) -> bool:
    """A gap is a whole number of steps within the spacing tolerance (as ingest's)."""
    return abs(a - b) <= step_tolerance(b)


def find_gaps(runs: Sequence[xr.Dataset]) -> list[dict[str, Any]]:
    """The gaps between consecutive runs of one series (sorted by z), from coordinates only.

    Returns one dict per gap: ``z0`` (last slice before), ``z1`` (first
    after), ``step`` and ``spacing`` in mm, ``missing`` (k-1 when the step is
    k whole spacings, else None) and ``fillable`` with a ``reason`` when not.
    """
    gaps = []
    for a, b in zip(runs[:-1], runs[1:], strict=True):
        za, zb = float(a["z"].values[-1]), float(b["z"].values[0])
        da_, db_ = _dz(a), _dz(b)
        dz = da_ if np.isfinite(da_) else db_
        step = zb - za
        gap: dict[str, Any] = {"z0": za, "z1": zb, "step": step, "spacing": dz,
                               "missing": None, "fillable": False, "filled": None,
                               "reason": ""}
        k = int(round(step / dz)) if dz > 0 and np.isfinite(dz) else 0
        if np.isfinite(da_) and np.isfinite(db_) and not _close(da_, db_):
            gap["reason"] = f"the runs' spacings differ ({da_:.4g} vs {db_:.4g} mm)"
        elif k < 2 or not _close(step, k * dz):
            gap["reason"] = (f"the {step:.4g} mm step is not a whole number (>= 2) of "
                             f"{dz:.4g} mm spacings")
        elif a.sizes["y"] != b.sizes["y"] or a.sizes["x"] != b.sizes["x"] or not (
                np.allclose(a["y"].values, b["y"].values)
                and np.allclose(a["x"].values, b["x"].values)):
            gap["reason"] = "the runs' in-plane grids differ (matrix, pixel size or tilt)"
        else:
            gap.update(missing=k - 1, fillable=True)
        gaps.append(gap)
    return gaps


def _filler(a: xr.Dataset, b: xr.Dataset, k: int, method: str, model: Any) -> xr.Dataset:
    """The k-1 slices between the last of ``a`` and the first of ``b``, lazily, as a Dataset
    with the same variables and z-coordinates as the runs (marked ``generated``)."""
    import dask.array as da
    import xarray as xr

    hu = da.concatenate([a["hu"].data[-1:], b["hu"].data[:1]]).rechunk((2, -1, -1))
    za, zb = float(a["z"].values[-1]), float(b["z"].values[0])
    pair = xr.Dataset({"hu": (("z", "y", "x"), hu)}, coords={"z": [za, zb]},
                      attrs={"series_uid": a.attrs.get("series_uid", "the series")})
    out = reslice(pair, k, method=method, model=model).isel(z=slice(1, k))
    w = (np.arange(1, k) / k).astype(np.float64)
    coords: dict[str, Any] = {"z": ("z", za + (zb - za) * w, a["z"].attrs)}
    for name, c in a.coords.items():
        if name in ("z", "y", "x", "generated") or c.dims[:1] != ("z",):
            continue
        shape = (k - 1, *c.shape[1:])
        if c.dtype.kind == "f":  # positions: along the line between the neighbours
            lo = a[name].data[-1]
            hi = b[name].data[0]
            wb = w.reshape((-1,) + (1,) * (c.ndim - 1))
            values: Any = lo + (hi - lo) * wb
        elif c.dtype.kind in "iu":
            values = np.full(shape, -1, dtype=c.dtype)
        elif c.dtype.kind == "b":
            values = np.zeros(shape, dtype=bool)
        else:  # strings: no SOPInstanceUID, no source file
            values = np.full(shape, "", dtype=c.dtype)
        if isinstance(c.data, da.Array) and not isinstance(values, da.Array):
            # Explicit chunks: dask cannot size string blocks automatically.
            values = da.from_array(values, chunks=shape)
        coords[str(name)] = (c.dims, values, c.attrs)
    coords["generated"] = ("z", np.ones(k - 1, dtype=bool))
    return xr.Dataset({"hu": (("z", "y", "x"), out["hu"].data, a["hu"].attrs)},
                      coords=coords).assign_coords(y=a["y"], x=a["x"])


def _join(runs: list[xr.Dataset], gaps: list[dict[str, Any]], method: str,
          model: Any) -> list[xr.Dataset]:
    """Runs joined across fillable gaps (generated slices between), as segments."""
    import xarray as xr

    def flagged(r: xr.Dataset) -> xr.Dataset:
        r = r.drop_vars([v for v in ("label",) if v in r.data_vars])
        if "generated" not in r.coords:
            r = r.assign_coords(generated=("z", np.zeros(r.sizes["z"], dtype=bool)))
        return r

    segments: list[list[xr.Dataset]] = [[flagged(runs[0])]]
    for gap, a, b in zip(gaps, runs[:-1], runs[1:], strict=True):
        if gap["fillable"]:
            k = gap["missing"] + 1
            segments[-1] += [_filler(a, b, k, method, model), flagged(b)]
            gap["filled"] = method
        else:
            segments.append([flagged(b)])
    return [parts[0] if len(parts) == 1 else
            xr.concat(parts, dim="z", data_vars="minimal", coords="minimal",
                      compat="override", join="override", combine_attrs="override")
            for parts in segments]


def _stored_labels(ds: xr.Dataset) -> xr.DataArray | None:
    lab = ds.get("label")
    if lab is None or lab.dims != ("z",) or "classes" not in lab.attrs:
        return None
    if "generated" in ds.coords and ds["generated"].dtype == bool:
        return None  # generated slices were never classified
    return lab


def _ranges(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of every run of True in a 1-D mask (scipy.ndimage.label)."""
    from scipy import ndimage as ndi

    lab, _ = ndi.label(mask)
    return [(s[0].start, s[0].stop) for s in ndi.find_objects(lab)]


def curate(
    ds: xr.Dataset | Sequence[xr.Dataset],
    *,
    labels: xr.DataArray | None = None,
    model: Any = None,
    blank: Sequence[str] = ("blank",),
    split: bool = False,
    fill_gaps: str | None = None,
    fill_model: Any = None,
    min_slices: int = 2,
    **classify_kwargs: Any,
) -> xr.Dataset | list[xr.Dataset]:
    """Drop blank slices and keep contiguous runs; optionally fill gaps between runs.

    Parameters
    ----------
    ds : xarray.Dataset or sequence of Datasets
        A volume (``docs/storage.md``), or the runs of one series that ingest
        split at gaps (keys ``<uid>_r1``, ``<uid>_r2``, ...), in any order.
    labels : xarray.DataArray, optional
        Per-slice labels from :func:`ctvol.classify_slices` for a single
        volume. Default: the dataset's stored ``label`` variable when there
        is one, else ``classify_slices(volume, model, **classify_kwargs)``.
    model : SliceModel or path, optional
        Slice classifier for the default labels (default: the blank rule).
    blank : sequence of str, default ("blank",)
        Class names that count as blank.
    split : bool, default False
        Return every non-blank run (a list) instead of the longest.
    fill_gaps : {None, "linear", "unet"}
        None: gaps between runs are only reported. ``"linear"`` / ``"unet"``:
        a gap of exactly k-1 missing slices at the series' spacing is filled
        with :func:`ctvol.reslice`'s k-1 generated slices (``"unet"``: the
        bundled model for factor k, or ``fill_model``); they are marked in a
        ``generated`` coordinate. Other gaps stay (reported, with the reason).
    fill_model : str, path or ResliceModel, optional
        Reslice model for ``fill_gaps="unet"``.
    min_slices : int, default 2
        Non-blank runs shorter than this are dropped.
    **classify_kwargs
        Passed to :func:`ctvol.classify_slices` (thresholds, batch size).

    Returns
    -------
    xarray.Dataset, or list of Datasets with ``split=True``
        Lazy slices of the input (pixels are not computed). ``attrs["curation"]``
        records what was kept and dropped (z ranges in mm, counts, reasons:
        ``blank``, ``short-run``, ``shorter-run``), the gaps and how they were
        handled, and the label method; ``ctvol_history`` gets a line.

    Raises
    ------
    CurationError
        No slice has a body (every slice blank), or no run is long enough.
    GeometryError
        A single slice, runs of different series, or overlapping runs.
    ValueError
        Bad options, labels that do not match the volume, or ``blank`` naming
        no class of the labels.
    FileNotFoundError
        ``fill_gaps="unet"`` for a gap with no model for its factor.

    Examples
    --------
    >>> import numpy as np, xarray as xr, ctvol
    >>> from ctvol.testing import head_phantom
    >>> hu = head_phantom((6, 64, 64)); hu[:2] = -1000         # two air slices at one end
    >>> ds = xr.Dataset({"hu": (("z", "y", "x"), hu)}, coords={"z": np.arange(6.0)},
    ...                 attrs={"spacing": [1.0, 1.0, 1.0]}).chunk({"z": 3})
    >>> clean = ctvol.curate(ds)
    >>> clean.z.values.tolist(), clean.attrs["curation"]["dropped"][0]["reason"]
    ([2.0, 3.0, 4.0, 5.0], 'blank')
    """
    import xarray as xr

    if fill_gaps not in FILL_METHODS:
        raise OptionError(f"fill_gaps must be one of {list(FILL_METHODS)}, got {fill_gaps!r}")
    if isinstance(min_slices, bool) or not isinstance(min_slices, int) or min_slices < 1:
        raise OptionError(f"min_slices must be a positive integer, got {min_slices!r}")
    if isinstance(blank, str):
        blank = (blank,)
    runs = [ds] if isinstance(ds, xr.Dataset) else list(ds)
    if not runs:
        raise OptionError("curate needs a Dataset or a non-empty sequence of runs")
    for r in runs:
        check_volume(r, min_slices=1)
    name = runs[0].attrs.get("series_uid", "the series")
    uids = {r.attrs.get("series_uid") for r in runs}
    if len(uids) > 1:
        raise GeometryError(f"runs of different series given together ({sorted(map(str, uids))})"
                            "; curate the runs of one SeriesInstanceUID at a time")
    runs.sort(key=lambda r: float(r["z"].values[0]))
    for a, b in zip(runs[:-1], runs[1:], strict=True):
        if float(b["z"].values[0]) <= float(a["z"].values[-1]):
            raise GeometryError(f"runs of {name} overlap in z (at {float(b['z'].values[0]):.2f} "
                                "mm); give each run once")
    total = sum(r.sizes["z"] for r in runs)
    if total < 2:
        raise GeometryError(f"{name} has {total} slice: curation keeps contiguous runs of at "
                            "least 2 slices; a single slice is not a volume")
    if labels is not None and len(runs) > 1:
        raise OptionError("labels= applies to a single volume; for several runs let curate "
                          "classify them (or store labels with `ctvol curate`)")

    gaps = find_gaps(runs)
    segments = _join(runs, gaps, fill_gaps, fill_model) if fill_gaps else list(runs)
    labs = []
    for seg in segments:
        lab = labels if labels is not None else _stored_labels(seg)
        if lab is None:
            lab = classify_slices(seg, model, **classify_kwargs)
        if lab.sizes.get("z") != seg.sizes["z"] or (
                "z" in lab.coords and not np.allclose(lab["z"].values, seg["z"].values)):
            raise VolumeError(f"labels do not match the volume: {lab.sizes.get('z')} labels for "
                              f"{seg.sizes['z']} slices (or other z); classify this volume")
        labs.append(lab)
    classes = list(labs[0].attrs.get("classes", []))
    codes_blank = [classes.index(c) for c in blank if c in classes]
    if not codes_blank:
        raise OptionError(f"blank={list(blank)} names no class of the labels ({classes}); "
                          "pass the name(s) of the blank class(es)")
    extra = [lab["body_fraction"] for lab in labs if "body_fraction" in lab.coords]
    # The one compute: per-slice labels (and fractions), never the pixels.
    got = compute([lab.data for lab in labs] + [e.data for e in extra])
    codes, fractions = got[: len(labs)], got[len(labs):]

    kept: list[tuple[int, int, int]] = []  # (segment, start, stop)
    dropped: list[dict[str, Any]] = []

    def record(i: int, start: int, stop: int, reason: str) -> None:
        z = segments[i]["z"].values
        dropped.append({"z0": float(z[start]), "z1": float(z[stop - 1]), "n": stop - start,
                        "reason": reason})

    for i, c in enumerate(codes):
        body = ~np.isin(np.asarray(c), codes_blank)
        for start, stop in _ranges(~body):
            record(i, start, stop, "blank")
        for start, stop in _ranges(body):
            if stop - start < min_slices:
                record(i, start, stop, "short-run")
            else:
                kept.append((i, start, stop))
    if not kept:
        n_blank = sum(int(np.isin(c, codes_blank).sum()) for c in codes)
        most = ""
        if fractions:
            largest = max(float(f.max()) for f in fractions)
            threshold = classify_kwargs.get("min_fraction", MIN_FRACTION)
            most = (f"; the largest thick-tissue fraction is {largest:.3%} "
                    f"(threshold min_fraction={threshold:g})")
        raise CurationError(
            f"nothing to keep in {name}: {n_blank} of {total} slices are blank and no non-blank "
            f"run has {min_slices} slices{most}. Check the labels (ctvol.classify_slices), "
            "or lower min_fraction / min_slices if the body is very small"
        )
    if not split:
        best = max(kept, key=lambda t: t[2] - t[1])  # the first of equal lengths
        for t in kept:
            if t != best:
                record(*t, "shorter-run")
        kept = [best]
    dropped.sort(key=lambda d: d["z0"])

    method = labs[0].attrs.get("method", "labels")
    params = {"split": split, "fill_gaps": fill_gaps, "blank": list(blank), "labels": method}
    out = []
    for i, start, stop in kept:
        seg = segments[i].isel(z=slice(start, stop))
        z = seg["z"].values
        attrs = derive_attrs(runs[0].attrs, "curate", params)
        n_gen = int(seg["generated"].values.sum()) if "generated" in seg.coords else 0
        attrs["curation"] = {
            "kept": {"z0": float(z[0]), "z1": float(z[-1]), "n": int(z.size),
                     "generated": n_gen},
            "dropped": dropped, "gaps": gaps, "input_slices": total,
            "input_runs": len(runs), "labels": method, "classes": classes,
            "blank": list(blank),
        }
        seg = seg.copy()
        seg.attrs = attrs
        out.append(seg)
    return out if split else out[0]
