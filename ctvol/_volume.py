"""Checks of the volume data model, shared by every verb (docs/storage.md).

A volume is an :class:`xarray.Dataset` with ``hu`` on dims ``("z", "y", "x")``;
these helpers validate metadata only and never compute.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np

from ._version import __version__
from .errors import OptionError, VolumeError
from .geometry import step_tolerance

__all__ = ["STORE_ATTRS", "HistoryEntry", "axis_spacing", "check_factor", "check_volume",
           "derive_attrs", "history_record", "history_text", "uneven_step"]

#: One entry of ``attrs["ctvol_history"]``: a record ``{"op", "params", "version"}``
#: (:func:`history_record`), or a string in stores written before records existed
#: (``"ctvol 0.1.0.dev0 reslice(factor=3, ...)"``). Readers accept both; display
#: them with :func:`history_text`.
HistoryEntry: TypeAlias = str | dict[str, Any]


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


def _plain(value: Any) -> Any:
    """``value`` as a JSON type for ``json.dumps``: numpy scalars and arrays as Python
    numbers and lists, anything else (a path) as its string."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def history_record(op: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One ``ctvol_history`` entry: the verb ``op``, its ``params`` (as JSON types, so
    the record survives zarr attrs unchanged: tuples become lists, numpy scalars
    Python numbers) and the ctvol version that wrote it.

    >>> history_record("reslice", {"factor": np.int64(3), "axis": ("z",)})["params"]
    {'factor': 3, 'axis': ['z']}
    """
    return {"op": op, "params": json.loads(json.dumps(dict(params or {}), default=_plain)),
            "version": __version__}


def history_text(entry: Any) -> str:
    """One line for a ``ctvol_history`` entry: a record as ``ctvol <version>
    <op>(<param>=<value>, ...)``, a string (an older store's entry) as it is.

    >>> history_text(history_record("curate", {"split": False}))  # doctest: +ELLIPSIS
    'ctvol ... curate(split=False)'
    >>> history_text("ctvol 0.1 ingest(split_gaps=False)")
    'ctvol 0.1 ingest(split_gaps=False)'
    """
    if isinstance(entry, Mapping) and "op" in entry:
        params = entry.get("params") or {}
        args = ", ".join(f"{k}={v!r}" for k, v in params.items())
        return f"ctvol {entry.get('version', '?')} {entry['op']}({args})"
    return str(entry)


def derive_attrs(attrs: Mapping[str, Any], op: str,
                 params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The attrs of a volume derived from one with ``attrs``: the same, without the
    store's own flags (:data:`STORE_ATTRS`), with ``history_record(op, params)``
    appended to ``ctvol_history`` (every verb's record of what it did, in order;
    entries already there, records or older strings, are kept as they are).

    >>> out = derive_attrs({"complete": True, "ctvol_history": ["ingest"], "spacing": [3.0]},
    ...                    "reslice", {"factor": 3})
    >>> out["ctvol_history"][0], out["ctvol_history"][1]["params"], "complete" in out
    ('ingest', {'factor': 3}, False)
    """
    out = {a: v for a, v in attrs.items() if a not in STORE_ATTRS}
    out["ctvol_history"] = [*list(attrs.get("ctvol_history", [])), history_record(op, params)]
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


def uneven_step(coord: np.ndarray, *, increasing: bool = True) -> tuple[float, int | None]:
    """The median step of a coordinate (mm), and the index of its worst step when any
    step differs from the median by more than the spacing tolerance,
    :func:`ctvol.geometry.step_tolerance` (1 % of the step or 0.005 mm, the one set
    ingest's gap split and export use too), else None. A median of 0 (or, with
    ``increasing``, below 0) counts as uneven.

    >>> uneven_step(np.array([0.0, 1.0, 2.0, 3.5]))
    (1.0, 2)
    >>> uneven_step(np.array([0.0, 0.625, 1.251, 1.876]))  # positions written to 1e-3 mm
    (0.625, None)
    """
    steps = np.diff(np.asarray(coord, dtype=np.float64))
    step = float(np.median(steps))
    worst = int(np.argmax(np.abs(steps - step)))
    if (step <= 0 if increasing else step == 0) \
            or np.any(np.abs(steps - step) > step_tolerance(step)):
        return step, worst
    return step, None
