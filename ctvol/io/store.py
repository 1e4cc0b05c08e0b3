"""The cohort store: one Zarr v3 group per cohort, one xarray Dataset per series.

Layout (``docs/storage.md``)::

    cohort.zarr/
      zarr.json                 attrs["ctvol"]: format version, summary
      series/<key>/             hu (z, y, x) int16; coords z, y, x (mm), sop_uid,
                                source, instance_number, position; geometry attrs;
                                attrs["complete"] written last
      catalog/files             one row per input file: its fate
      catalog/series            one row per series or excluded group

A series whose ``complete`` flag is missing is invisible to every reader
here: an interrupted write never looks like data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import OptionError, SeriesNotFoundError
from ._layout import (
    FILE_COLUMNS,
    FORMAT_VERSION,
    SERIES_COLUMNS,
    SHARD_SLICES,
    open_root,
    open_store,
    series_attrs,
    store_url,
)
from ._write import write, write_many

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr


__all__ = [
    "FILE_COLUMNS",
    "FORMAT_VERSION",
    "SERIES_COLUMNS",
    "SHARD_SLICES",
    "catalog",
    "list_series",
    "open_cohort",
    "open_series",
    "write",
    "write_many",
]


# --------------------------------------------------------------------------- writing


# --------------------------------------------------------------------------- reading


def list_series(
    store: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """Keys of the complete series in a store, sorted (no pixel data read)."""
    return sorted(series_attrs(open_store(store, storage_options=storage_options)))


def _chunks(root: Any, key: str, chunks: Any) -> Any:
    if chunks != "shard":
        return chunks
    arr = root[f"series/{key}/hu"]
    return {"z": (arr.shards or arr.chunks)[0], "y": -1, "x": -1}


def open_series(
    store: str | os.PathLike[str],
    key: str,
    *,
    chunks: Any = "shard",
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Open one series lazily.

    Parameters
    ----------
    store : path or URL
        A cohort store written by :func:`ctvol.ingest`.
    key : str
        Series key (see :func:`ctvol.catalog` or :func:`list_series`).
    chunks : "shard", dict or None, default "shard"
        Dask chunks; ``"shard"`` aligns them with the storage shards (32
        slices), the right size for graph-level work.

    Returns
    -------
    xarray.Dataset
        ``hu`` (z, y, x) int16 in HU, dask-backed; coordinates in mm; geometry
        in attrs. No pixel data is read.

    Raises
    ------
    SeriesNotFoundError
        No complete series with that key (lists the keys that exist).
    """
    import xarray as xr

    root = open_store(store, storage_options=storage_options)
    # Only this series' attrs: listing every series' (as _series_attrs does)
    # made opening each series of a cohort in turn quadratic in its size.
    group = root["series"].get(key) if "series" in root else None
    if group is None or group.attrs.get("complete") is not True:
        complete = series_attrs(root)
        have = ", ".join(sorted(complete)[:10]) or "none"
        why = (" (its write was interrupted; re-run ingest to complete it)"
               if "series" in root and key in root["series"] else "")
        raise SeriesNotFoundError(
            f"no complete series {key!r} in {store_url(store)}{why}; complete series: {have}"
        )
    return xr.open_zarr(
        store_url(store), group=f"series/{key}", consolidated=False, zarr_format=3,
        chunks=_chunks(root, key, chunks), storage_options=dict(storage_options or {}) or None,
    )


def open_cohort(
    store: str | os.PathLike[str],
    *,
    chunks: Any = "shard",
    storage_options: Mapping[str, Any] | None = None,
) -> xr.DataTree:
    """Open a whole cohort lazily as an :class:`xarray.DataTree`.

    ``tree["series/<key>"]`` holds each complete series (as
    :func:`open_series`), ``tree["catalog/files"]`` and
    ``tree["catalog/series"]`` the catalog. Incomplete series are left out.
    """
    import xarray as xr

    root = open_store(store, storage_options=storage_options)
    so = dict(storage_options or {}) or None
    nodes: dict[str, Any] = {"/": xr.Dataset(attrs=dict(root.attrs))}
    for key in sorted(series_attrs(root)):
        nodes[f"series/{key}"] = xr.open_zarr(
            store_url(store), group=f"series/{key}", consolidated=False, zarr_format=3,
            chunks=_chunks(root, key, chunks), storage_options=so,
        )
    for table in ("files", "series"):
        if "catalog" in root and table in root["catalog"]:
            nodes[f"catalog/{table}"] = xr.open_zarr(
                store_url(store), group=f"catalog/{table}", consolidated=False, zarr_format=3,
                chunks=None, storage_options=so,
            )
    return xr.DataTree.from_dict(nodes)


# --------------------------------------------------------------------------- catalog


def write_catalog(
    store: str, files: pd.DataFrame, series: pd.DataFrame, *,
    summary: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Replace the catalog tables and the root summary (driver only)."""
    so = dict(storage_options or {}) or None
    for name, df, dim in (("files", files, "file"), ("series", series, "series")):
        ds = _frame_to_dataset(df, dim)
        ds.to_zarr(store_url(store), group=f"catalog/{name}", mode="w", zarr_format=3,
                   consolidated=False, storage_options=so)
    root = open_root(store, "r+", storage_options)
    info = dict(root.attrs.get("ctvol", {}))
    info.update({"format_version": FORMAT_VERSION, "summary": json.loads(json.dumps(summary))})
    info.pop("ingest_running", None)
    root.attrs["ctvol"] = info


def mark_ingest_running(root: Any) -> None:
    """Flag the store's root: an ingest started and has not written its catalog yet
    (:func:`write_catalog` clears it), so an interrupted ingest can be told apart."""
    info = dict(root.attrs.get("ctvol", {}))
    info["ingest_running"] = True
    root.attrs["ctvol"] = info


def _frame_to_dataset(df: pd.DataFrame, dim: str) -> xr.Dataset:
    import xarray as xr

    data = {}
    for col in df.columns:
        values = df[col].to_numpy()
        if values.dtype.kind in "OUST" or str(df[col].dtype) in ("string", "str"):
            # Variable-length strings: a stable zarr v3 dtype (fixed-width
            # unicode warns UnstableSpecificationWarning in zarr 3.1).
            values = np.array(["" if v is None or v != v else str(v) for v in values],
                              dtype=object)
        data[col] = (dim, values)
    return xr.Dataset(data)


def _derived_catalog(root: Any) -> pd.DataFrame:
    """One row per complete series of a store written by ``ctvol.write`` (a reslice
    output, no ingest catalog): shape, spacing and how it was made, with the
    ``method="auto"`` decision and its self-check scores."""
    import pandas as pd

    rows = []
    for key, attrs in sorted(series_attrs(root).items()):
        hu = root[f"series/{key}/hu"]
        rs = attrs.get("reslice") or {}
        auto = rs.get("auto") or {}
        spacing = list(attrs.get("spacing", [None] * 3))
        rows.append({"key": key, "status": "ok", "n_slices": int(hu.shape[0]),
                     "rows": int(hu.shape[1]), "cols": int(hu.shape[2]),
                     "dz": spacing[0], "factor": rs.get("factor"),
                     "method": rs.get("method"), "auto": "auto" in rs,
                     "auto_reason": auto.get("reason"),
                     "selfcheck_psnr_unet": auto.get("psnr_unet"),
                     "selfcheck_psnr_linear": auto.get("psnr_linear"),
                     "selfcheck_ssim_unet": auto.get("ssim_unet"),
                     "selfcheck_ssim_linear": auto.get("ssim_linear"),
                     "model_digest": rs.get("model_digest")})
    return pd.DataFrame(rows)


def catalog(
    store: str | os.PathLike[str],
    *,
    level: str = "series",
    storage_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """The store's catalog as a :class:`pandas.DataFrame`.

    Parameters
    ----------
    level : {"series", "files"}
        ``"series"``: one row per series written or group excluded, columns
        :data:`SERIES_COLUMNS` in that order (``status``: ``ok``, ``failed``,
        ``refused``, ``excluded``; ``last_run``: what the latest ingest did to
        it, ``written`` or ``unchanged``; spacing ``dz``/``dy``/``dx`` in mm).
        ``"files"``: one row per input file with its fate, columns
        :data:`FILE_COLUMNS`. docs/storage.md describes every column. A
        store written by :func:`write` (a reslice output) has no ingest
        catalog: its series rows are derived from the series (key, shape,
        dz, factor, method, and for ``method="auto"`` the decision and
        self-check scores).
    """
    import xarray as xr

    if level not in ("series", "files"):
        raise OptionError(f"level must be 'series' or 'files', got {level!r}")
    root = open_store(store, storage_options=storage_options)
    import pandas as pd

    order = SERIES_COLUMNS if level == "series" else FILE_COLUMNS
    if "catalog" not in root or level not in root["catalog"]:
        if level == "series" and "series" in root:
            return _derived_catalog(root)
        return pd.DataFrame(columns=order)
    ds = xr.open_zarr(store_url(store), group=f"catalog/{level}", consolidated=False, zarr_format=3,
                      chunks=None, storage_options=dict(storage_options or {}) or None)
    df = ds.to_dataframe().reset_index(drop=True)
    for col in df.columns:
        if df[col].dtype == object or str(df[col].dtype).startswith(("string", "str")):
            df[col] = df[col].astype(object)
    if level == "series" and "last_run" not in df:  # a catalog written before the column
        df["last_run"] = ""
    # The documented order first, whatever the stored one; columns of a newer ctvol after.
    return df[[c for c in order if c in df] + [c for c in df if c not in order]]


