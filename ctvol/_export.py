"""``ctvol.export``: every series of a store → NIfTI files or derived DICOM series.

Layout of the output folder (``docs/export.md``)::

    OUT/<key>.nii.gz     --format nifti: one file per series
    OUT/<key>/NNNNN.dcm  --format dicom: one folder per series, a file per slice
    OUT/<key>.json       written last: provenance and the export fingerprint

A series is exported when its sidecar is missing or records another
fingerprint (content of the series and the export options); otherwise it is
``unchanged`` and skipped, so an interrupted cohort export resumes where it
stopped. Each series fails on its own: the others are still exported.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._deps import require
from ._version import __version__
from .errors import CtvolError, OptionError, OutputExistsError, StoreError, StoreWriteError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FORMATS", "export"]

#: Export formats and the output each series becomes, relative to OUT.
FORMATS = {"nifti": "{key}.nii.gz", "dicom": "{key}"}
#: Bumped when an unchanged series would now be written differently.
EXPORT_VERSION = 1
#: Errors that stop the whole export: the output cannot take writes.
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _check_output(output: pathlib.Path, store: str) -> None:
    if output.exists() and not output.is_dir():
        raise StoreError(f"-o {output} is a file; choose a folder for the exported series")
    if "://" not in store and output.resolve() == pathlib.Path(store).resolve():
        raise StoreError(f"-o {output} is the input store; choose another folder")
    if (output / "zarr.json").exists():
        raise StoreError(f"-o {output} is a Zarr store; export writes NIfTI or DICOM files: "
                         "choose another folder")


def _sidecar(output: pathlib.Path, key: str) -> pathlib.Path:
    return output / f"{key}.json"


def _recorded(sidecar: pathlib.Path) -> dict[str, Any] | None:
    try:
        info = json.loads(sidecar.read_text())
        return dict(info["ctvol"]["export"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _written_by_ctvol(target: pathlib.Path) -> bool:
    """An output of an export interrupted before its sidecar: ctvol's mark inside it
    (the NIfTI ``descrip``, the DICOM SoftwareVersions), so it is redone, not refused."""
    try:
        if target.is_dir():
            import pydicom

            first = min(target.glob("*.dcm"), default=None)
            if first is None:
                return not any(target.iterdir())
            f = pydicom.dcmread(first, stop_before_pixels=True)
            return str(f.get("SoftwareVersions", "")).startswith("ctvol")
        import gzip

        opener: Any = gzip.open if target.suffix == ".gz" else open
        with opener(target, "rb") as f:
            head = f.read(348)
        return head[148:154] == b"ctvol "  # descrip, 80 bytes at offset 148
    except (OSError, ValueError):
        return False


def export(
    store: str | os.PathLike[str],
    output: str | os.PathLike[str],
    format: str,
    *,
    series: Sequence[str] | None = None,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Export the series of a store (cohort, reslice or upsample output) to NIfTI or DICOM.

    Parameters
    ----------
    store : path or URL
        A ctvol store: written by :func:`ctvol.ingest`, ``ctvol reslice``,
        ``ctvol upsample`` or :func:`ctvol.write`.
    output : path
        Output folder (created): ``<key>.nii.gz`` or ``<key>/`` per series and
        a ``<key>.json`` sidecar (``docs/export.md``).
    format : {"nifti", "dicom"}
    series : sequence of str, optional
        Only these keys; default every complete series.
    progress : bool, default False
        Print a line per series.

    Returns
    -------
    pandas.DataFrame
        One row per series: ``key``, ``status`` (``exported``, ``unchanged``
        or ``failed``), ``path``, ``slices``, ``generated``, ``seconds``,
        ``error`` (the reason a series failed).

    Raises
    ------
    ValueError
        An unknown format (the choices are listed).
    StoreError
        ``output`` is a file, a Zarr store or the input store.
    StoreWriteError
        The output cannot take writes (disk full, permission denied); series
        already exported stay complete, a re-run resumes.

    See Also
    --------
    to_nifti, to_dicom : one volume.

    Examples
    --------
    >>> import numpy as np, xarray as xr, ctvol
    >>> tmp = getfixture("tmp_path")
    >>> ds = xr.Dataset({"hu": (("z", "y", "x"), np.zeros((3, 4, 4), "int16"))},
    ...                 coords={"z": [0.0, 1.0, 2.0], "y": np.arange(4.0), "x": np.arange(4.0)})
    >>> ctvol.write(ds, tmp / "c.zarr", "s1")
    's1'
    >>> ctvol.export(tmp / "c.zarr", tmp / "nii", "nifti")[["key", "status"]].values.tolist()
    [['s1', 'exported']]
    >>> ctvol.export(tmp / "c.zarr", tmp / "nii", "nifti")["status"].tolist()  # resumable
    ['unchanged']
    >>> sorted(p.name for p in (tmp / "nii").iterdir())
    ['s1.json', 's1.nii.gz']
    """
    import pandas as pd

    from .io.store import list_series, open_series

    if format not in FORMATS:
        raise OptionError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    if format == "nifti":  # before anything is written: no series can be exported without it
        require("nibabel", "NIfTI export")
    out = pathlib.Path(output).expanduser()
    _check_output(out, os.fspath(store))
    keys = list(series) if series else list_series(store, storage_options=storage_options)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, key in enumerate(keys, 1):
        target = out / FORMATS[format].format(key=key)
        row: dict[str, Any] = {"key": key, "status": "failed", "path": str(target),
                               "slices": 0, "generated": 0, "seconds": 0.0, "error": ""}
        t0 = time.perf_counter()
        try:
            ds = open_series(store, key, storage_options=storage_options)
            row["slices"] = int(ds.sizes["z"])
            if "generated" in ds.coords:
                row["generated"] = int(ds["generated"].values.sum())
            row["status"] = _export_one(ds, key, out, target, format, __version__)
        except OSError as exc:
            if exc.errno in _FATAL_ERRNOS:
                raise StoreWriteError(
                    f"cannot write series {key} into {out}: {exc.strerror or exc}. Series "
                    "already exported are complete (their .json sidecar is written last); "
                    "free space or fix the permissions and re-run: they are skipped"
                ) from exc
            row["error"] = str(exc)
        except (ValueError, KeyError, CtvolError) as exc:
            row["error"] = str(exc)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
        if progress:
            what = (f"{row['status']} -> {target} ({row['slices']} slices, "
                    f"{row['generated']} generated, {row['seconds']:.1f} s)"
                    if row["status"] != "failed" else f"failed: {row['error']}")
            print(f"[{n}/{len(keys)}] {key}: {what}", flush=True)
    return pd.DataFrame(rows, columns=["key", "status", "path", "slices", "generated",
                                       "seconds", "error"])


def _export_one(ds: Any, key: str, out: pathlib.Path, target: pathlib.Path, format: str,
                version: str) -> str:
    """Write one series unless its sidecar records the same fingerprint; the status."""
    from .io import _grid
    from .io.dicom_write import to_dicom
    from .io.nifti import to_nifti, write_sidecar

    fingerprint = _grid.content_digest(ds, format, EXPORT_VERSION)
    sidecar = _sidecar(out, key)
    recorded = _recorded(sidecar) if sidecar.exists() else None
    if recorded is not None and recorded.get("fingerprint") == fingerprint \
            and target.exists():
        return "unchanged"
    if target.exists() and recorded is None and not _written_by_ctvol(target):
        raise OutputExistsError(
            f"series {key}: {target} exists but was not written by ctvol (no "
            f"{sidecar.name} sidecar, no ctvol mark in it); move it away or export to "
            "another folder"
        )
    if sidecar.exists():  # a re-export: the old one stops counting as complete first
        sidecar.unlink()
    if format == "nifti":
        to_nifti(ds, target, sidecar=False)
    else:
        to_dicom(ds, target, overwrite=True)
    info = _grid.provenance(ds)
    info["ctvol"]["export"] = {"format": format, "fingerprint": fingerprint,
                               "key": key, "path": target.name, "ctvol_version": version,
                               "export_version": EXPORT_VERSION}
    write_sidecar(info, sidecar)  # last: the series counts as exported
    return "exported"
