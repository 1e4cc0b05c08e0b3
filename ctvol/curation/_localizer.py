"""The slice localizer: a normalised body location for every slice.

The method (normalised-location regression): annotate a few anatomical
landmarks per series, each with the slice (SOPInstanceUID) it lies on; the
method's table gives every landmark a fixed location on a 0..1 scale from
the top of the head; every slice gets a location by 1-D interpolation over z,
with linear extrapolation beyond the outermost landmarks. A regression
network (sigmoid output, MSE loss) learns to predict it from the slice alone,
so series of one patient can be matched slice by slice.
"""

from __future__ import annotations

import json
import numbers
import os
import pathlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .._compute import cluster_has_gpu, compute
from .._volume import check_volume
from ..errors import LabelError, OptionError
from ..models._runtime import resolve_device
from ..models._slice import resolve
from ._classify import model_block, slice_map

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["LANDMARKS", "landmark_locations", "localize", "match_slices"]

#: The method's table: normalised location of each landmark (top of head = 0).
LANDMARKS: dict[str, float] = {
    "top of head": 0.0,
    "centre of orbit": 0.05,
    "C1": 0.1,
    "C7": 0.15,
    "T1": 0.16,
    "aortic arch": 0.2,
    "tracheal bifurcation": 0.225,
    "right dome of diaphragm": 0.275,
    "T12": 0.325,
    "L1": 0.35,
    "tip of iliac crest": 0.425,
    "head of femur": 0.5,
}


def _read_landmarks(landmarks: Mapping[str, str] | str | os.PathLike[str]) -> dict[str, str]:
    if isinstance(landmarks, str | os.PathLike):
        path = pathlib.Path(landmarks)
        try:
            landmarks = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LabelError(f"cannot read landmark annotations {path}: {exc}; expected a JSON "
                             'object such as {"C1": "<SOPInstanceUID>", ...}') from exc
    if not isinstance(landmarks, Mapping):
        raise LabelError(f"landmark annotations must map landmark -> SOPInstanceUID, got "
                         f"{type(landmarks).__name__}")
    return {str(k): str(v) for k, v in landmarks.items()}


def landmark_locations(
    ds: xr.Dataset,
    landmarks: Mapping[str, str] | str | os.PathLike[str],
    *,
    table: Mapping[str, float] = LANDMARKS,
) -> xr.DataArray:
    """Normalised location of every slice from landmark annotations.

    Parameters
    ----------
    ds : xarray.Dataset
        A volume with ``z`` (mm) and ``sop_uid`` (z) coordinates, as stored
        by :func:`ctvol.ingest`.
    landmarks : mapping or path to a JSON file
        Landmark name (a key of ``table``) -> SOPInstanceUID of its slice.
        At least two landmarks at different z.
    table : mapping, default :data:`LANDMARKS`
        Normalised location of each landmark name.

    Returns
    -------
    xarray.DataArray
        ``location`` (z) float64, in memory (computed from coordinates only):
        piecewise-linear in z through the landmarks, extended linearly beyond
        the outermost ones (so it can leave [0, 1]).

    Raises
    ------
    LabelError
        Unknown landmark names, SOPInstanceUIDs not in the series, fewer than
        two landmarks, or locations that do not follow z monotonically.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from ctvol.curation import landmark_locations
    >>> ds = xr.Dataset(coords={"z": [0.0, 10.0, 20.0, 30.0], "sop_uid": ("z", list("abcd"))})
    >>> landmark_locations(ds, {"C1": "b", "C7": "c"}).values.round(3).tolist()
    [0.05, 0.1, 0.15, 0.2]
    """
    import xarray as xr
    from scipy.interpolate import make_interp_spline

    marks = _read_landmarks(landmarks)
    unknown = sorted(set(marks) - set(table))
    if unknown:
        raise LabelError(f"unknown landmark name(s) {unknown}; known landmarks: {list(table)}")
    if "sop_uid" not in ds.coords:
        raise LabelError("ds has no sop_uid coordinate: landmarks name slices by "
                         "SOPInstanceUID (open the series with ctvol.open_series)")
    # Coordinates only (one small read of the sop_uid column), never pixels.
    sops = [str(v) for v in np.asarray(ds["sop_uid"].values)]  # StringDType or object
    z = np.asarray(ds["z"].values, dtype=np.float64)
    where = {s: i for i, s in enumerate(sops)}
    missing = {m: s for m, s in marks.items() if s not in where}
    name = ds.attrs.get("series_uid", "the series")
    if missing:
        raise LabelError(f"landmark slice(s) not in {name}: {missing}; the SOPInstanceUIDs must "
                         "be slices of this series (check the series and the annotation file)")
    pts = sorted((z[where[s]], table[m], m) for m, s in marks.items())
    zs = np.array([p[0] for p in pts])
    locs = np.array([p[1] for p in pts])
    if len(pts) < 2 or np.unique(zs).size < len(zs):
        raise LabelError(f"{name}: need at least two landmarks on different slices to "
                         f"interpolate, got {[(p[2], round(p[0], 2)) for p in pts]}")
    d = np.diff(locs)
    if not (np.all(d < 0) or np.all(d > 0)):
        order = " < ".join(f"{p[2]} ({p[1]:g})" for p in pts)
        raise LabelError(f"{name}: landmark locations do not follow z monotonically "
                         f"(in z order: {order}); check the annotations")
    # Linear spline through the landmarks; extrapolate=True extends the end
    # segments linearly beyond the outermost landmarks.
    spline = make_interp_spline(zs, locs, k=1)
    return xr.DataArray(spline(z, extrapolate=True), dims=("z",), coords={"z": ds["z"]},
                        name="location",
                        attrs={"long_name": "normalised body location (top of head = 0)",
                               "landmarks": dict(marks)})


def localize(ds: xr.Dataset, model: Any, *, batch_size: int = 64,
             device: str | None = None) -> xr.DataArray:
    """Predicted normalised body location of every slice (lazy, one task per z-block).

    Parameters
    ----------
    ds : xarray.Dataset
        A volume (``docs/storage.md``).
    model : SliceModel or path
        A localizer (:func:`ctvol.curation.train_localizer`); none is bundled.
    batch_size : int, default 64
    device : str, optional
        Default CUDA when available.

    Returns
    -------
    xarray.DataArray
        ``location`` (z) float32 in [0, 1], dask-backed.
    """
    import xarray as xr

    check_volume(ds, min_slices=1)
    if model is None:
        raise OptionError("localize needs model= (a trained localizer checkpoint or SliceModel); "
                          "none is bundled: train one with ctvol.curation.train_localizer")
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise OptionError(f"batch_size must be a positive integer, got {batch_size!r}")
    loaded = resolve(model, "localize")
    out = slice_map(ds, model_block, 1, model=loaded.path or loaded, gpu=cluster_has_gpu(),
                    token="ctvol-localize", device=resolve_device(device),
                    batch_size=int(batch_size))
    return xr.DataArray(out[:, 0], dims=("z",), coords={"z": ds["z"]}, name="location",
                        attrs={"long_name": "predicted normalised body location",
                               "model": loaded.path or loaded.digest[:12]})


def nearest(loc_a: np.ndarray, loc_b: np.ndarray, tolerance: float) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """For each value of ``loc_a``, the index of the nearest ``loc_b`` (-1 beyond tolerance)
    and the distance."""
    a = np.asarray(loc_a, dtype=np.float64)
    b = np.asarray(loc_b, dtype=np.float64)
    if b.size == 0:
        return np.full(a.shape, -1), np.full(a.shape, np.inf)
    order = np.argsort(b, kind="stable")
    sb = b[order]
    pos = np.clip(np.searchsorted(sb, a), 1, max(sb.size - 1, 1))
    left = np.clip(pos - 1, 0, sb.size - 1)
    right = np.clip(pos, 0, sb.size - 1)
    pick = np.where(np.abs(a - sb[left]) <= np.abs(sb[right] - a), left, right)
    idx = order[pick]
    dist = np.abs(a - b[idx])
    return np.where(dist <= tolerance, idx, -1), dist


def match_slices(ds_a: xr.Dataset, ds_b: xr.Dataset, model: Any, *, tolerance: float = 0.01,
                 batch_size: int = 64, device: str | None = None) -> xr.Dataset:
    """For each slice of ``ds_a``, the slice of ``ds_b`` at the nearest predicted location.

    Computes both series' predicted locations (one Dask compute of two (z,)
    arrays; reading each slice once) — the match is a decision on them.

    Parameters
    ----------
    ds_a, ds_b : xarray.Dataset
        Two volumes (e.g. two series of one patient).
    model : SliceModel or path
        A localizer.
    tolerance : float, default 0.01
        Largest location difference (normalised units; 0.01 is about 1/50 of
        the head-to-femur span of 0.5) for a match.

    Returns
    -------
    xarray.Dataset
        On ``ds_a``'s z: ``index_b`` (int64, -1 without a match within the
        tolerance), ``z_b`` (mm, NaN without a match), ``location_a``,
        ``location_b`` (of the nearest slice) and ``distance``.
    """
    import xarray as xr

    if not tolerance >= 0:
        raise OptionError(f"tolerance must be >= 0, got {tolerance!r}")
    la = localize(ds_a, model, batch_size=batch_size, device=device)
    lb = localize(ds_b, model, batch_size=batch_size, device=device)
    va, vb = compute([la.data, lb.data])
    idx, dist = nearest(va, vb, tolerance)
    zb = np.asarray(ds_b["z"].values, dtype=np.float64)
    safe = np.clip(idx, 0, max(len(vb) - 1, 0))
    return xr.Dataset(
        {"index_b": ("z", idx.astype(np.int64)),
         "z_b": ("z", np.where(idx >= 0, zb[safe], np.nan), {"units": "mm"}),
         "location_a": ("z", np.asarray(va, dtype=np.float32)),
         "location_b": ("z", np.asarray(vb, dtype=np.float32)[safe]),
         "distance": ("z", dist)},
        coords={"z": ds_a["z"]},
        attrs={"tolerance": float(tolerance), "model": la.attrs["model"]},
    )
