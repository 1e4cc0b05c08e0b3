"""Classify a whole cohort store and write the per-slice labels into it (``ctvol curate``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._compute import compute
from .._options import check
from ..errors import CurationError
from ..io._layout import store_url
from ..io.store import SHARD_SLICES, list_series, open_series
from ._classify import classify_slices
from ._curate import curate

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["curate_store"]


def curate_store(
    store: str | os.PathLike[str],
    *,
    keys: Sequence[str] | None = None,
    model: Any = None,
    progress: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    **classify_kwargs: Any,
) -> pd.DataFrame:
    """Classify every slice of every series and store the labels next to ``hu``.

    All series are classified in one Dask compute (on the active scheduler;
    each slice is read once). Each series group then gets a ``label`` array
    (z) int8 with the class names in its attributes (``classes``, CF
    ``flag_values`` / ``flag_meanings``), and ``attrs["curation"]``: what
    :func:`ctvol.curate` would keep and drop. ``hu`` is not rewritten, and the
    ``complete`` flag is untouched. :func:`ctvol.open_series` then shows
    ``label`` as a data variable, and :func:`ctvol.curate` uses it instead of
    classifying again.

    Parameters
    ----------
    store : path or URL
        Cohort store.
    keys : sequence of str, optional
        Only these series (default: all complete series).
    model : SliceModel or path, optional
        Slice classifier (default: the blank rule).
    progress : bool
        Progress bar while classifying.
    **classify_kwargs
        Passed to :func:`ctvol.classify_slices` (thresholds, batch size).

    Returns
    -------
    pandas.DataFrame
        One row per series: key, slices, blank, kept, z0/z1 (mm) of the kept
        run, and a note (e.g. why nothing is kept).
    """
    import pandas as pd
    import zarr

    check("curate", {**classify_kwargs, "model": None})  # unknown keywords name the options
    url = store_url(store)
    keys = list(keys) if keys else list_series(url, storage_options=storage_options)
    dss = {k: open_series(url, k, storage_options=storage_options) for k in keys}
    lazy = [classify_slices(ds.drop_vars("label", errors="ignore"), model, **classify_kwargs)
            for ds in dss.values()]
    labels = compute(lazy, progress=progress)  # labels and fractions only: (z,) arrays
    so = dict(storage_options or {}) or None
    rows = []
    for (key, ds), lab in zip(dss.items(), labels, strict=True):
        codes = np.asarray(lab.values, dtype=np.int8)
        classes = list(lab.attrs["classes"])
        blank = int((codes == classes.index("blank")).sum()) if "blank" in classes else 0
        try:
            kept = curate(ds.drop_vars("label", errors="ignore"), labels=lab)
            assert not isinstance(kept, list)  # split=False: one Dataset
            info = dict(kept.attrs["curation"])
            row = {"kept": info["kept"]["n"], "z0": info["kept"]["z0"],
                   "z1": info["kept"]["z1"], "note": ""}
        except CurationError as exc:
            info = {"kept": None, "error": str(exc)}
            row = {"kept": 0, "z0": np.nan, "z1": np.nan, "note": "no body"}
        info.pop("gaps", None)
        group = zarr.open_group(url, path=f"series/{key}", mode="r+", storage_options=so)
        arr = group.create_array(
            "label", shape=codes.shape, dtype="int8", chunks=(SHARD_SLICES,),
            dimension_names=["z"], overwrite=True,
            attributes={"classes": classes, "flag_values": list(range(len(classes))),
                        "flag_meanings": " ".join(classes), "method": lab.attrs["method"],
                        "long_name": "slice class"},
        )
        arr[:] = codes
        group.attrs["curation"] = info
        rows.append({"key": key, "slices": int(codes.size), "blank": blank, **row})
    return pd.DataFrame(rows, columns=["key", "slices", "blank", "kept", "z0", "z1", "note"])
