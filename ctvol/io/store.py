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

import errno
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import SeriesNotFoundError, StoreError, StoreWriteError

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

    from ._series import SeriesPlan
    from .dicom import SliceHeader

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

FORMAT_VERSION = 1
#: Slices per shard: each Dask write task owns whole shards (zarr-python#3682).
SHARD_SLICES = 32

#: ``catalog(store)`` columns, in this order (docs/storage.md); ``ctvol info``
#: prints them under the same names.
SERIES_COLUMNS = [
    "key", "status", "last_run", "reason", "detail", "series_uid", "series_number",
    "description", "n_files", "n_slices", "rows", "cols", "dz", "dy", "dx", "tilt_deg",
    "warnings", "transfer_syntax", "lossy",
]
#: ``catalog(store, level="files")`` columns, in this order.
FILE_COLUMNS = ["path", "status", "reason", "detail", "key", "series_uid", "sop_uid", "frame",
                "transfer_syntax", "lossy"]


#: Lossless codecs for ``hu``, measured on the Philips head CT (512^2 int16
#: slices; numcodecs Blosc, one slice per call, this machine, same run):
#: lz4 + bit-shuffle 2.26-2.29x at ~840 slices/s; zstd level 1 + bit-shuffle
#: 2.66x at ~280 slices/s (level 3: 2.70x at ~180/s). lz4 keeps compression
#: from dominating ingest (decode runs at ~300 slices/s); zstd saves ~15 %
#: more space for archives.
COMPRESSORS: dict[str, dict[str, Any]] = {
    "lz4": {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"},
    "zstd": {"cname": "zstd", "clevel": 1, "shuffle": "bitshuffle"},
}


def hu_codec(compressor: str | Any = "lz4") -> Any:
    """The zarr codec for ``hu``: a name from :data:`COMPRESSORS` or a zarr codec."""
    import zarr.codecs

    if not isinstance(compressor, str):
        return compressor
    if compressor not in COMPRESSORS:
        raise ValueError(
            f"compressor must be one of {sorted(COMPRESSORS)} or a zarr codec, got {compressor!r}"
        )
    return zarr.codecs.BloscCodec(**COMPRESSORS[compressor])


def _url(store: str | os.PathLike[str]) -> str:
    s = os.fspath(store)
    return s if "://" in s else os.path.abspath(os.path.expanduser(s))


def _open_root(
    store: str, mode: Literal["r", "r+", "a", "w"], storage_options: Mapping[str, Any] | None
) -> Any:
    import zarr

    return zarr.open_group(
        _url(store), mode=mode, zarr_format=3, storage_options=dict(storage_options or {}) or None
    )


def check_store_path(store: str | os.PathLike[str], *, create: bool = False) -> None:
    """Refuse a local path that is not (and cannot become) a cohort store, without
    creating anything: a file, a folder holding something else, or (``create``)
    a new store under a path that is not a writable folder.

    Raises
    ------
    StoreError
        The path exists and is not a Zarr store.
    StoreWriteError
        ``create`` and the store could not be created there (names why).
    """
    url = _url(store)
    if "://" in url:
        return
    fix = "; choose a new output path" if create else ""
    if os.path.exists(url):
        if not os.path.isdir(url):
            raise StoreError(f"{url} is a file, not a cohort store{fix}")
        entries = [e for e in os.listdir(url) if not e.startswith(".")]
        if entries and "zarr.json" not in entries:
            raise StoreError(
                f"{url} exists and is not a Zarr store (it holds {', '.join(sorted(entries)[:3])}"
                f"{', ...' if len(entries) > 3 else ''}){fix}"
            )
        return
    if not create:
        return
    parent = os.path.dirname(url)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise StoreWriteError(f"cannot create the cohort store {url}: {parent} is not a "
                              "folder; choose an output path in a writable folder")
    if parent and not os.access(parent, os.W_OK):
        raise StoreWriteError(f"cannot create the cohort store {url}: {parent} is not "
                              "writable; choose an output path in a writable folder")


def list_incomplete(
    store: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> tuple[list[str], bool]:
    """What an interrupted run left: the keys of series whose write started and
    never finished (not flagged ``complete``; readers do not see them), sorted,
    and whether an ingest started and never wrote its catalog."""
    root = open_store(store, storage_options=storage_options)
    running = bool(root.attrs.get("ctvol", {}).get("ingest_running"))
    if "series" not in root:
        return [], running
    return sorted(name for name, group in root["series"].groups()
                  if group.attrs.get("complete") is not True), running


def open_store(
    store: str | os.PathLike[str],
    *,
    create: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Open (or create) the root group of a cohort store, refusing anything else.

    Raises
    ------
    StoreError
        The path exists but is not a ctvol cohort store (a non-Zarr folder, a
        file, or a Zarr group written by something else).
    FileNotFoundError
        ``create=False`` and there is no store at the path.
    """
    import zarr
    from zarr.errors import GroupNotFoundError

    url = _url(store)
    check_store_path(url, create=create)
    if create and "://" not in url:
        try:  # a path that cannot be a folder fails here, with its reason, not in zarr
            os.makedirs(url, exist_ok=True)
        except OSError as exc:
            raise StoreWriteError(
                f"cannot create the cohort store {url}: {exc.strerror or exc}; choose an "
                "output path in a writable folder") from exc
    try:
        root = _open_root(url, "r+" if not create else "a", storage_options)
    except (GroupNotFoundError, FileNotFoundError) as exc:
        if create:  # a URL whose bucket (or container) does not exist
            raise StoreWriteError(
                f"cannot create the cohort store {url}: {exc}; create the bucket first, or "
                "check the URL and its storage_options (endpoint, credentials)") from exc
        raise FileNotFoundError(f"no cohort store at {url}; create one with ctvol.ingest") from exc
    except (zarr.errors.ContainsArrayError, ValueError) as exc:
        raise StoreError(f"{url} is not a ctvol cohort store: {exc}") from exc
    info = root.attrs.get("ctvol")
    if info is None:
        if create and not list(root.keys()) and not dict(root.attrs):
            root.attrs["ctvol"] = {"format_version": FORMAT_VERSION}
            return root
        raise StoreError(
            f"{url} is a Zarr group but not a ctvol cohort store (no 'ctvol' attribute)"
            + ("; choose a new output path" if create else "")
        )
    if int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise StoreError(
            f"{url} has ctvol format {info.get('format_version')}, newer than this ctvol "
            f"({FORMAT_VERSION}); upgrade ctvol"
        )
    return root


def sop_digest(sop_uids: Sequence[str]) -> str:
    """SHA-1 of the ordered SOPInstanceUIDs: identifies a series' exact content."""
    return hashlib.sha1("\n".join(sop_uids).encode()).hexdigest()


# --------------------------------------------------------------------------- writing


def series_dataset(plan: SeriesPlan, *, history: str) -> xr.Dataset:
    """The Dataset a plan becomes, with ``hu`` as a lazy placeholder.

    Coordinates follow DESIGN.md: z along the slice normal, y along the column
    cosine, x along the row cosine, all in mm in the patient frame.
    """
    import dask.array as da
    import xarray as xr

    from .. import __version__
    from ..geometry import slice_normal

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
    store: str, plan: SeriesPlan, *, history: str, compressor: str | Any = "lz4",
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
            group = zarr.open_group(_url(store), path=f"series/{plan.key}", mode="r",
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
        _url(store), group=f"series/{plan.key}", mode="w", zarr_format=3, consolidated=False,
        compute=False, encoding=encoding, storage_options=dict(storage_options or {}) or None,
    )
    if write_id is not None:  # once the group is whole; removed when flagged complete
        _open_root(store, "r+", storage_options)[f"series/{plan.key}"].attrs[
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

    from ..errors import CtvolError
    from .dicom import decode_hu

    assert z0 % SHARD_SLICES == 0, "writes must start on a shard boundary"
    arr = zarr.open_array(
        _url(store), path=f"series/{key}/hu", mode="r+",
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
    root = _open_root(store, "r+", storage_options)
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


# --------------------------------------------------------------------------- reading


def _series_attrs(root: Any) -> dict[str, dict[str, Any]]:
    if "series" not in root:
        return {}
    out = {}
    for name, group in root["series"].groups():
        attrs = dict(group.attrs)
        if attrs.get("complete") is True:
            out[name] = attrs
    return out


def list_series(
    store: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """Keys of the complete series in a store, sorted (no pixel data read)."""
    return sorted(_series_attrs(open_store(store, storage_options=storage_options)))


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
        complete = _series_attrs(root)
        have = ", ".join(sorted(complete)[:10]) or "none"
        why = (" (its write was interrupted; re-run ingest to complete it)"
               if "series" in root and key in root["series"] else "")
        raise SeriesNotFoundError(
            f"no complete series {key!r} in {_url(store)}{why}; complete series: {have}"
        )
    return xr.open_zarr(
        _url(store), group=f"series/{key}", consolidated=False, zarr_format=3,
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
    for key in sorted(_series_attrs(root)):
        nodes[f"series/{key}"] = xr.open_zarr(
            _url(store), group=f"series/{key}", consolidated=False, zarr_format=3,
            chunks=_chunks(root, key, chunks), storage_options=so,
        )
    for table in ("files", "series"):
        if "catalog" in root and table in root["catalog"]:
            nodes[f"catalog/{table}"] = xr.open_zarr(
                _url(store), group=f"catalog/{table}", consolidated=False, zarr_format=3,
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
        ds.to_zarr(_url(store), group=f"catalog/{name}", mode="w", zarr_format=3,
                   consolidated=False, storage_options=so)
    root = _open_root(store, "r+", storage_options)
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
    for key, attrs in sorted(_series_attrs(root).items()):
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
        raise ValueError(f"level must be 'series' or 'files', got {level!r}")
    root = open_store(store, storage_options=storage_options)
    import pandas as pd

    order = SERIES_COLUMNS if level == "series" else FILE_COLUMNS
    if "catalog" not in root or level not in root["catalog"]:
        if level == "series" and "series" in root:
            return _derived_catalog(root)
        return pd.DataFrame(columns=order)
    ds = xr.open_zarr(_url(store), group=f"catalog/{level}", consolidated=False, zarr_format=3,
                      chunks=None, storage_options=dict(storage_options or {}) or None)
    df = ds.to_dataframe().reset_index(drop=True)
    for col in df.columns:
        if df[col].dtype == object or str(df[col].dtype).startswith(("string", "str")):
            df[col] = df[col].astype(object)
    if level == "series" and "last_run" not in df:  # a catalog written before the column
        df["last_run"] = ""
    # The documented order first, whatever the stored one; columns of a newer ctvol after.
    return df[[c for c in order if c in df] + [c for c in df if c not in order]]


def _write_block(block: np.ndarray, *, store: str, path: str,
                 storage_options: Mapping[str, Any] | None, block_info: Any = None) -> np.ndarray:
    import zarr

    z0, z1 = block_info[0]["array-location"][0]
    arr = zarr.open_array(store, path=path, mode="r+",
                          storage_options=dict(storage_options or {}) or None)
    arr[z0:z1] = block
    return np.zeros((block.shape[0],) + (1,) * (block.ndim - 1), dtype=np.int8)


def write(
    ds: xr.Dataset,
    store: str | os.PathLike[str],
    key: str,
    *,
    compressor: str | Any = "lz4",
    progress: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write a volume into a cohort store as series ``key`` (streams the graph).

    The Dask graph behind ``ds`` is computed shard by shard (dask chunks are
    aligned to the 32-slice shards first), so memory stays bounded by a few
    blocks; the ``complete`` flag is set last, as for ingested series.

    Parameters
    ----------
    ds : xarray.Dataset
        ``hu`` (z, y, x) int16 in HU, e.g. the output of :func:`ctvol.reslice`.
    store : path or URL
        A cohort store (created if absent).
    key : str
        Series key; an existing series with that key is replaced.

    Returns
    -------
    str
        The key.

    Raises
    ------
    StoreWriteError
        The store cannot take the write (disk full, permission denied,
        read-only); names the store, the series and the path.

    See Also
    --------
    write_many : several series at once, concurrently on a Client.
    """
    from .._compute import compute

    root = _writable_root(store, key, storage_options)
    done = _plan_write(ds, store, key, compressor=compressor, storage_options=storage_options,
                       root=root)
    try:
        compute([done], progress=progress)
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        raise _write_error(exc, store, key) from exc
    _mark_complete(store, key, storage_options)
    return key


def write_many(
    series: Mapping[str, xr.Dataset],
    store: str | os.PathLike[str],
    *,
    compressor: str | Any = "lz4",
    progress: bool = False,
    errors: str = "raise",
    in_flight: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Exception | None]:
    """Write several volumes into a cohort store; concurrently on a Client.

    Every series is written as by :func:`write`: its metadata first (an
    existing series of that key stops being visible), then its pixels, then
    its ``complete`` flag, so a series is visible only once all of it is
    written. On a ``distributed`` Client up to ``in_flight`` series are
    computed at once, so the workers stay busy across series boundaries (a
    cohort of short series does not idle at the tail of each one) while only
    those series are ever incomplete; a series is started only when a slot
    frees. Without a Client (threads), series are written one after another,
    each in parallel over its blocks.

    Parameters
    ----------
    series : mapping of key -> xarray.Dataset
    store : path or URL
        A cohort store (created if absent).
    errors : {"raise", "collect"}, default "raise"
        ``"collect"``: a series whose graph fails (a bad input block, a model
        error) is left invisible and its exception returned; the others are
        written. A store that cannot take writes (:class:`StoreWriteError`)
        always raises, after cancelling what is in flight; series not yet
        started are untouched.
    in_flight : int, optional
        Series computed at once on a Client; default: the cluster's worker
        threads (at least 2).
    progress : bool, default False
        A line per series written (on a Client), or dask's progress bar per
        series (threads).

    Returns
    -------
    dict
        key -> None (written) or the exception that stopped that series.
    """
    from .._compute import active_client, compute

    if errors not in ("raise", "collect"):
        raise ValueError(f"errors must be 'raise' or 'collect', got {errors!r}")
    outcome: dict[str, Exception | None] = {}
    if not series:
        return outcome
    root = _writable_root(store, next(iter(series)), storage_options)

    def plan(key: str) -> Any:
        return _plan_write(series[key], store, key, compressor=compressor,
                           storage_options=storage_options, root=root)

    def failed(key: str, exc: BaseException) -> None:
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise _write_error(exc, store, key) from exc
        if errors == "raise" or not isinstance(exc, Exception):
            raise exc
        outcome[key] = exc

    client = active_client()
    if client is None:
        for key in series:
            try:
                compute([plan(key)], progress=progress)
            except BaseException as exc:
                failed(key, exc)
                continue
            _mark_complete(store, key, storage_options)
            outcome[key] = None
        return {key: outcome[key] for key in series}

    from .._compute import compute_bounded

    keys = list(series)
    slots = in_flight or max(2, sum(client.nthreads().values()))
    # Each series' metadata is written (and its graph built) only when a slot frees.
    for i, result in compute_bounded((plan(key) for key in keys), in_flight=slots,
                                     errors="return"):
        key = keys[i]
        if isinstance(result, BaseException):
            failed(key, result)
            continue
        _mark_complete(store, key, storage_options)
        outcome[key] = None
        if progress:
            print(f"written {len(outcome)}/{len(series)}: {key}", flush=True)
    return {key: outcome[key] for key in series}


def _writable_root(store: str | os.PathLike[str], key: str,
                   storage_options: Mapping[str, Any] | None) -> Any:
    """The store's root group, created with its ``series`` group if absent."""
    try:
        root = open_store(store, create=True, storage_options=storage_options)
        root.require_group("series")
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        raise _write_error(exc, store, key) from exc
    return root


def _mark_complete(store: str | os.PathLike[str], key: str,
                   storage_options: Mapping[str, Any] | None) -> None:
    try:
        _open_root(_url(store), "r+", storage_options)[f"series/{key}"].attrs["complete"] = True
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        raise _write_error(exc, store, key) from exc


def _plan_write(ds: xr.Dataset, store: str | os.PathLike[str], key: str, *,
                compressor: str | Any, storage_options: Mapping[str, Any] | None,
                root: Any) -> Any:
    """Write the series' metadata and coordinates (replacing any series ``key``,
    not flagged complete) and return the lazy pixel writes: one task per
    whole-shard block, each returning a tiny marker array."""
    import dask.array as da

    if "hu" not in ds or ds["hu"].dims != ("z", "y", "x"):
        raise ValueError(f"series {key}: ds must hold 'hu' with dims ('z', 'y', 'x') "
                         "(docs/storage.md)")
    hu = ds["hu"].data
    if not isinstance(hu, da.Array):
        hu = da.from_array(np.asarray(hu), chunks=(SHARD_SLICES, -1, -1))
    # Whole shards per task: no two tasks ever write into one shard (zarr-python#3682).
    zc = max(hu.chunks[0][0], 1)
    hu = hu.rechunk({0: SHARD_SLICES * -(-zc // SHARD_SLICES), 1: -1, 2: -1})
    hu = hu.astype(np.int16)
    # Metadata and coordinates through xarray, with a placeholder for hu ...
    skeleton = ds.drop_vars("hu").assign(
        hu=(("z", "y", "x"), da.zeros(hu.shape, dtype=np.int16, chunks=hu.chunks),
            ds["hu"].attrs))
    skeleton = skeleton.assign_coords(
        {n: c.compute() for n, c in skeleton.coords.items() if c.chunks is not None})
    skeleton.attrs = {a: v for a, v in ds.attrs.items() if a != "complete"}
    rows, cols = hu.shape[1:]
    encoding: dict[str, Any] = {"hu": {"chunks": (1, rows, cols),
                                       "shards": (SHARD_SLICES, rows, cols),
                                       "compressors": hu_codec(compressor)}}
    for name, var in skeleton.coords.items():
        # every per-slice coordinate in z-chunks of a shard (position is (z, 3)),
        # so open_series' shard-aligned chunks never split a stored chunk
        if var.dims[:1] == ("z",) and var.dims.count("z") == 1:
            encoding[str(name)] = {"chunks": (SHARD_SLICES, *var.shape[1:])}
    so = dict(storage_options or {}) or None
    try:
        skeleton.to_zarr(_url(store), group=f"series/{key}", mode="w", zarr_format=3,
                         consolidated=False, compute=False, encoding=encoding,
                         storage_options=so)
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        raise _write_error(exc, store, key) from exc
    # ... then pixels block by block, each task writing its own whole shards. A
    # map_blocks layer (not to_zarr's finalised graph) keeps upstream task
    # annotations, e.g. reslice's GPU resource, intact (dask/dask#7036).
    return da.map_blocks(
        _write_block, hu, store=_url(store), path=f"series/{key}/hu", storage_options=so,
        chunks=(hu.chunks[0], (1,), (1,)), dtype=np.int8, meta=np.empty((0, 0, 0), np.int8),
        token=f"ctvol-write-{key}",
    )


#: Write failures that mean "the output cannot take this": disk full, quota,
#: permission denied, read-only file system.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _write_error(exc: OSError, store: str | os.PathLike[str], key: str) -> Exception:
    from ..errors import StoreWriteError

    what = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    err = StoreWriteError(
        f"cannot write series {key} into {_url(store)}: {what}{where}. Series already "
        "complete in the store are untouched and this one stays invisible (not flagged "
        "complete); free space or fix the permissions, then re-run: completed series are "
        "skipped and this one is redone"
    )
    return err  # errno/filename stay on the cause (__cause__): OSError.__str__ would use them
