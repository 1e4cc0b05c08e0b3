"""Ingest's writes: a planned DICOM series becomes a store series, shard by shard.

:func:`begin_series` creates the group (coordinates, geometry attrs, an empty
``hu``), each :func:`write_slices` task decodes one shard's files and writes
it, and :func:`finish_series` sets ``complete`` last (``docs/storage.md``).
The store layout comes from :mod:`ctvol.io._layout`; DICOM decoding from
:mod:`ctvol.io.dicom` (the storage layer does not know the input format).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._version import __version__
from .errors import CtvolError
from .geometry import slice_normal
from .io._layout import SHARD_SLICES, hu_codec, open_root, sop_digest, store_url
from .io.dicom import decode_hu

if TYPE_CHECKING:
    import xarray as xr

    from .io._series import SeriesPlan
    from .io.dicom import SliceHeader

__all__ = ["begin_series", "finish_series", "series_dataset", "write_slices"]


def series_dataset(plan: SeriesPlan, *, history: dict[str, Any]) -> xr.Dataset:
    """The Dataset a plan becomes, with ``hu`` as a lazy placeholder.

    Coordinates follow DESIGN.md: z along the slice normal, y along the column
    cosine, x along the row cosine, all in mm in the patient frame.
    """
    import dask.array as da
    import xarray as xr

    first = plan.first
    n, rows, cols = plan.shape
    orient = np.asarray(first.orientation, dtype=np.float64)
    row_cos, col_cos = orient[:3], orient[3:6]
    origin = np.asarray(first.position, dtype=np.float64)
    dz, dy, dx = plan.spacing
    positions = np.array([h.position for h in plan.headers], dtype=np.float64)
    hu = da.zeros((n, rows, cols), dtype=np.int16, chunks=(SHARD_SLICES, rows, cols))
    obj = np.dtype(object)
    coords = {
        "z": ("z", np.asarray(plan.z, dtype=np.float64), {"units": "mm",
              "long_name": "position along the slice normal"}),
        "y": ("y", origin @ col_cos + dy * np.arange(rows), {"units": "mm",
              "long_name": "position along the column direction cosine"}),
        "x": ("x", origin @ row_cos + dx * np.arange(cols), {"units": "mm",
              "long_name": "position along the row direction cosine"}),
        "sop_uid": ("z", np.array([h.slice_id for h in plan.headers], dtype=obj)),
        "source": ("z", np.array([h.path for h in plan.headers], dtype=obj)),
        "instance_number": ("z", np.array(
            [-1 if h.instance_number is None else h.instance_number for h in plan.headers],
            dtype=np.int64)),
        "position": (("z", "xyz"), positions, {"units": "mm",
                     "long_name": "ImagePositionPatient (LPS)"}),
    }
    attrs = {
        "spacing": [dz, dy, dx],
        "origin": origin.tolist(),
        "orientation": orient.tolist(),
        "normal": slice_normal(orient).tolist(),
        "tilt_deg": plan.tilt_deg,
        "gantry_detector_tilt": first.gantry_tilt,
        "series_uid": first.series_uid,
        "study_uid": first.study_uid,
        "frame_of_reference_uid": first.frame_of_reference_uid,
        "patient_id": first.patient_id,
        "modality": first.modality,
        "manufacturer": first.manufacturer,
        "model": first.model,
        "kernel": first.kernel,
        "slice_thickness": first.slice_thickness,
        "series_number": first.series_number,
        "series_description": first.series_description,
        "image_type": list(first.image_type),
        "transfer_syntax": first.transfer_syntax,
        # Any slice lossy-compressed (LossyImageCompression "01" or a lossy syntax).
        "lossy_compression": bool(any(h.lossy for h in plan.headers)),
        "pixel_padding_value": list(first.pixel_padding) if first.pixel_padding else None,
        "warnings": list(plan.warnings),
        "sop_digest": sop_digest([h.slice_id for h in plan.headers]),
        "ctvol_version": __version__,
        "ctvol_history": [history],
    }
    ds = xr.Dataset({"hu": (("z", "y", "x"), hu, {"units": "HU"})}, coords=coords, attrs=attrs)
    return ds


def begin_series(
    store: str, plan: SeriesPlan, *, history: dict[str, Any], compressor: str | Any = "lz4",
    storage_options: Mapping[str, Any] | None = None, write_id: str | None = None,
) -> str:
    """Create (or replace) a series group: metadata and coords, no pixels, no flag.

    Returns the series key, so that Dask tasks writing its pixels depend on it.
    ``write_id`` (unique to one write of the series) makes the task safe to run
    twice: when a worker dies holding this task's result, Dask runs it again
    while the series' finished pixel writes keep theirs, and replacing the group
    then would delete those shards under a series that is later flagged
    complete. A group already carrying the same ``write_id`` is left as it is.
    """
    if write_id is not None:
        import zarr

        try:
            group = zarr.open_group(store_url(store), path=f"series/{plan.key}", mode="r",
                                    storage_options=dict(storage_options or {}) or None)
            if group.attrs.get("ctvol_write_id") == write_id:
                return plan.key
        except FileNotFoundError:  # zarr's GroupNotFoundError: a new series
            pass
    ds = series_dataset(plan, history=history)
    n, rows, cols = plan.shape
    per_slice = {"chunks": (SHARD_SLICES,)}
    encoding: dict[str, dict[str, Any]] = {
        "hu": {"chunks": (1, rows, cols), "shards": (SHARD_SLICES, rows, cols),
               "compressors": hu_codec(compressor)},
        "sop_uid": per_slice, "source": per_slice, "instance_number": per_slice,
        "position": {"chunks": (SHARD_SLICES, 3)},
    }
    # compute=False: xarray writes metadata and the (numpy) coordinates now and
    # returns a delayed write of the dask placeholder, which we drop: pixels are
    # written shard by shard by write_slices.
    ds.to_zarr(
        store_url(store), group=f"series/{plan.key}", mode="w", zarr_format=3, consolidated=False,
        compute=False, encoding=encoding, storage_options=dict(storage_options or {}) or None,
    )
    if write_id is not None:  # once the group is whole; removed when flagged complete
        open_root(store, "r+", storage_options)[f"series/{plan.key}"].attrs[
            "ctvol_write_id"] = write_id
    return plan.key


def write_slices(
    store: str,
    key: str,
    z0: int,
    headers: Sequence[SliceHeader],
    *,
    padding_fill: int | None = -1024,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Decode slices ``z0 .. z0+len(headers)`` and write them (one Dask task).

    ``z0`` must be a multiple of the shard size so no two tasks share a
    shard. Never raises for bad pixels: returns ``{"ok": False, ...}`` naming
    the file, so one bad series cannot fail a cohort.
    """
    import zarr

    assert z0 % SHARD_SLICES == 0, "writes must start on a shard boundary"
    arr = zarr.open_array(
        store_url(store), path=f"series/{key}/hu", mode="r+",
        storage_options=dict(storage_options or {}) or None,
    )
    block = np.empty((len(headers), *arr.shape[1:]), dtype=np.int16)
    rounding = 0.0
    for i, h in enumerate(headers):
        try:
            hu, r = decode_hu(h.path, header=h, padding_fill=padding_fill)
        except CtvolError as exc:
            return {"key": key, "ok": False, "path": h.path, "error": str(exc)}
        if hu.shape != arr.shape[1:]:
            return {"key": key, "ok": False, "path": h.path,
                    "error": f"{h.path}: pixel matrix changed since the header pass"}
        block[i] = hu
        rounding = max(rounding, r)
    arr[z0 : z0 + len(headers)] = block
    return {"key": key, "ok": True, "n": len(headers), "rounding": rounding}


def finish_series(
    store: str, key: str, results: Sequence[Mapping[str, Any]],
    *, storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Set the ``complete`` flag once every block of a series is written.

    A series with a failed block is deleted instead (it was never visible).
    """
    root = open_root(store, "r+", storage_options)
    failed = [r for r in results if not r["ok"]]
    if failed:
        del root[f"series/{key}"]
        return {"key": key, "ok": False, "path": failed[0]["path"], "error": failed[0]["error"]}
    group = root[f"series/{key}"]
    rounding = max((r["rounding"] for r in results), default=0.0)
    attrs = dict(group.attrs)
    attrs.pop("ctvol_write_id", None)
    group.attrs.put({**attrs, "max_rounding_error_hu": rounding})
    group.attrs["complete"] = True  # last: the series becomes visible
    return {"key": key, "ok": True, "n": sum(r["n"] for r in results), "rounding": rounding}
