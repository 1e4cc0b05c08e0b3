"""Checks of the volume data model, shared by every verb (docs/storage.md).

A volume is an :class:`xarray.Dataset` with ``hu`` on dims ``("z", "y", "x")``;
these helpers validate metadata only and never compute.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import OptionError, VolumeError

__all__ = ["STORE_ATTRS", "axis_spacing", "check_factor", "check_volume", "derive_attrs",
           "uneven_step"]


def check_factor(factor: Any) -> int:
    """``factor`` as an int, or an :class:`OptionError` unless it is an integer >= 2."""
    if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 2:
        raise OptionError(f"factor must be an integer >= 2, got {factor!r}")
    return int(factor)


def check_volume(ds: Any, *, min_slices: int = 0) -> None:
    """A :class:`VolumeError` unless ``ds`` holds ``hu`` on ``("z", "y", "x")`` with at
    least ``min_slices`` slices."""
    if "hu" not in ds or ds["hu"].dims != ("z", "y", "x"):
        raise VolumeError("ds must hold 'hu' with dims ('z', 'y', 'x') (docs/storage.md)")
    if ds.sizes["z"] < min_slices:
        raise VolumeError("ds has no slices")


#: attrs of a stored series that a derived volume must not inherit: the store's
#: completeness flag and the digest of the source slices it was ingested from.
STORE_ATTRS = ("complete", "sop_digest")


def derive_attrs(attrs: Mapping[str, Any], history: str) -> dict[str, Any]:
    """The attrs of a volume derived from one with ``attrs``: the same, without the
    store's own flags (:data:`STORE_ATTRS`), with ``history`` appended to
    ``ctvol_history`` (every verb's record of what it did, in order).

    >>> derive_attrs({"complete": True, "ctvol_history": ["ingest"], "spacing": [3.0]},
    ...              "reslice(factor=3)")
    {'ctvol_history': ['ingest', 'reslice(factor=3)'], 'spacing': [3.0]}
    """
    out = {a: v for a, v in attrs.items() if a not in STORE_ATTRS}
    out["ctvol_history"] = [*list(attrs.get("ctvol_history", [])), history]
    return out


#: Index of each dim in ``attrs["spacing"]`` (dz, dy, dx).
_SPACING_INDEX = {"z": 0, "y": 1, "x": 2}


def axis_spacing(ds: Any, dim: str) -> float:
    """Spacing along ``dim`` in mm: the median step of its coordinate (docs/storage.md;
    signed: negative for a decreasing coordinate), else ``attrs["spacing"]`` (a
    one-sample axis), else NaN. Coordinates win over attrs wherever both exist."""
    if dim in ds.coords and ds.sizes.get(dim, 0) > 1:
        c = np.asarray(ds[dim].values, dtype=np.float64)
        return float(np.median(np.diff(c)))
    sp = ds.attrs.get("spacing")
    if sp is not None and len(sp) == 3 and np.isfinite(sp[_SPACING_INDEX[dim]]):
        return float(sp[_SPACING_INDEX[dim]])
    return float("nan")


def uneven_step(coord: np.ndarray, *, rtol: float, atol: float,
                increasing: bool = True) -> tuple[float, int | None]:
    """The median step of a coordinate, and the index of its worst step when any step
    differs from the median by more than ``rtol * |median| + atol`` (else None).
    A median of 0 (or, with ``increasing``, below 0) counts as uneven.

    >>> uneven_step(np.array([0.0, 1.0, 2.0, 3.5]), rtol=1e-3, atol=1e-6)
    (1.0, 2)
    """
    steps = np.diff(np.asarray(coord, dtype=np.float64))
    step = float(np.median(steps))
    worst = int(np.argmax(np.abs(steps - step)))
    if (step <= 0 if increasing else step == 0) \
            or np.any(np.abs(steps - step) > rtol * abs(step) + atol):
        return step, worst
    return step, None
