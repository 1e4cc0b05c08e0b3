"""Write a Dataset of predictions to a group of any Zarr v3 store, keeping task annotations.

Metadata and coordinates go through xarray's ``to_zarr`` (with placeholders
for the data); the blocks of every dask-backed data variable are written by a
``map_blocks`` layer, one task per block along the first dim, each owning whole
Zarr chunks. ``to_zarr``'s own finalised graph fuses the upstream layers and
drops their annotations -- a model's ``resources={"GPU": 1}`` -- (measured with
dask 2026.8 and xarray 2026.9; dask/dask#7036), as ``ctvol.write`` notes for
the cohort store. ``attrs["complete"]`` is set last: an interrupted write
leaves a group without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["write_group"]


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

    from .._compute import compute
    from .store import _url, _write_block

    url = _url(store)
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
        da.map_blocks(_write_block, a, store=url, path=f"{group}/{n}", storage_options=so,
                      chunks=(a.chunks[0], *((1,),) * (a.ndim - 1)), dtype=np.int8,
                      meta=np.empty((0,) * a.ndim, dtype=np.int8),
                      token=f"ctvol-write-group-{group}-{n}")
        for n, a in lazy.items()
    ]
    compute(writes, progress=progress)
    zarr.open_group(url, path=group, mode="r+", zarr_format=3,
                    storage_options=so).attrs["complete"] = True
