"""The write path for computed volumes: a dask-backed Dataset streamed into a store,
block by block, with ``complete`` set last.

:func:`write` / :func:`write_many` write cohort-store series (``hu`` in
32-slice shards, the store's codec); :func:`write_group` writes any Dataset of
predictions to a group of any Zarr v3 store. Both stream the graph through one
block writer, :func:`write_block`, each task owning whole Zarr chunks, on the
active scheduler. An interrupted write leaves a group without ``complete``,
which every reader ignores.

``to_zarr``'s own finalised graph fuses the upstream layers and drops their
annotations -- a model's ``resources={"GPU": 1}`` -- (measured with dask
2026.8 and xarray 2026.9; dask/dask#7036); writing the blocks with a
``map_blocks`` layer keeps them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .._compute import active_client, compute, compute_bounded
from ..errors import OptionError, StoreWriteError, VolumeError
from ._layout import SHARD_SLICES, hu_codec, open_root, open_store, store_url

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["WRITE_ERRNOS", "write", "write_block", "write_error", "write_group", "write_many"]


def write_block(block: np.ndarray, *, store: str, path: str,
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

    root = _writable_root(store, key, storage_options)
    done = _plan_write(ds, store, key, compressor=compressor, storage_options=storage_options,
                       root=root)
    try:
        compute([done], progress=progress)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise write_error(exc, store, key) from exc
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

    if errors not in ("raise", "collect"):
        raise OptionError(f"errors must be 'raise' or 'collect', got {errors!r}")
    outcome: dict[str, Exception | None] = {}
    if not series:
        return outcome
    root = _writable_root(store, next(iter(series)), storage_options)

    def plan(key: str) -> Any:
        return _plan_write(series[key], store, key, compressor=compressor,
                           storage_options=storage_options, root=root)

    def failed(key: str, exc: BaseException) -> None:
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise write_error(exc, store, key) from exc
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
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise write_error(exc, store, key) from exc
    return root


def _mark_complete(store: str | os.PathLike[str], key: str,
                   storage_options: Mapping[str, Any] | None) -> None:
    try:
        open_root(store_url(store), "r+", storage_options)[f"series/{key}"].attrs["complete"] = True
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise write_error(exc, store, key) from exc


def _plan_write(ds: xr.Dataset, store: str | os.PathLike[str], key: str, *,
                compressor: str | Any, storage_options: Mapping[str, Any] | None,
                root: Any) -> Any:
    """Write the series' metadata and coordinates (replacing any series ``key``,
    not flagged complete) and return the lazy pixel writes: one task per
    whole-shard block, each returning a tiny marker array."""
    import dask.array as da

    if "hu" not in ds or ds["hu"].dims != ("z", "y", "x"):
        raise VolumeError(f"series {key}: ds must hold 'hu' with dims ('z', 'y', 'x') "
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
        skeleton.to_zarr(store_url(store), group=f"series/{key}", mode="w", zarr_format=3,
                         consolidated=False, compute=False, encoding=encoding,
                         storage_options=so)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise write_error(exc, store, key) from exc
    # ... then pixels block by block, each task writing its own whole shards. A
    # map_blocks layer (not to_zarr's finalised graph) keeps upstream task
    # annotations, e.g. reslice's GPU resource, intact (dask/dask#7036).
    return da.map_blocks(
        write_block, hu, store=store_url(store), path=f"series/{key}/hu", storage_options=so,
        chunks=(hu.chunks[0], (1,), (1,)), dtype=np.int8, meta=np.empty((0, 0, 0), np.int8),
        token=f"ctvol-write-{key}",
    )


#: Write failures that mean "the output cannot take this": disk full, quota,
#: permission denied, read-only file system.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def write_error(exc: OSError, store: str | os.PathLike[str], key: str) -> Exception:

    what = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    err = StoreWriteError(
        f"cannot write series {key} into {store_url(store)}: {what}{where}. Series already "
        "complete in the store are untouched and this one stays invisible (not flagged "
        "complete); free space or fix the permissions, then re-run: completed series are "
        "skipped and this one is redone"
    )
    return err  # errno/filename stay on the cause (__cause__): OSError.__str__ would use them


def write_group(ds: xr.Dataset, store: str | os.PathLike[str], group: str, *,
                progress: bool = False,
                storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``ds`` to ``group`` of a Zarr v3 store, replacing the group.

    Dask-backed data variables are streamed block by block along their first
    dim (rechunked to that dim's first chunk size, whole along the others),
    on the active scheduler (:func:`ctvol._compute.compute`: a Client when
    one is running, graph optimisation off there).
    """
    import dask.array as da
    import zarr


    url = store_url(store)
    so = dict(storage_options or {}) or None
    lazy: dict[str, Any] = {}
    for name, var in ds.data_vars.items():
        if isinstance(var.data, da.Array) and var.ndim:
            first = max(1, var.data.chunks[0][0])
            lazy[str(name)] = var.data.rechunk({0: first, **{d: -1 for d in range(1, var.ndim)}})
    skeleton = ds.assign({n: (ds[n].dims, da.zeros(a.shape, dtype=a.dtype, chunks=a.chunks),
                              ds[n].attrs) for n, a in lazy.items()})
    skeleton = skeleton.assign_coords(
        {n: c.compute() for n, c in skeleton.coords.items() if c.chunks is not None})
    skeleton.attrs = {k: v for k, v in ds.attrs.items() if k != "complete"}
    encoding = {n: {"chunks": tuple(c[0] for c in a.chunks)} for n, a in lazy.items()}
    skeleton.to_zarr(url, group=group, mode="w", zarr_format=3, consolidated=False,
                     compute=False, encoding=encoding, storage_options=so)
    writes = [
        da.map_blocks(write_block, a, store=url, path=f"{group}/{n}", storage_options=so,
                      chunks=(a.chunks[0], *((1,),) * (a.ndim - 1)), dtype=np.int8,
                      meta=np.empty((0,) * a.ndim, dtype=np.int8),
                      token=f"ctvol-write-group-{group}-{n}")
        for n, a in lazy.items()
    ]
    compute(writes, progress=progress)
    zarr.open_group(url, path=group, mode="r+", zarr_format=3,
                    storage_options=so).attrs["complete"] = True
