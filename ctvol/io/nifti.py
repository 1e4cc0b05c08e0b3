"""``ctvol.to_nifti``: one volume → one NIfTI-1 file, streamed slice block by block.

Conventions (``docs/export.md``): voxel axes i, j, k are the columns (x), rows
(y) and slices (z) of ``hu``; values are int16 HU with slope 1 and intercept
0; the sform is the exact DICOM geometry converted from LPS to RAS (sheared
for a series acquired with gantry tilt) and the qform its closest rigid frame.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

from .._deps import require
from .._version import __version__
from ..geometry import slice_normal
from . import _grid

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["to_nifti"]

#: NIfTI-1 single-file data offset: 348-byte header + 4-byte extension flag.
VOX_OFFSET = 352


def _nibabel() -> Any:
    return require("nibabel", "NIfTI export")  # an optional extra: ctvol[nifti]


def nifti_header(ds: xr.Dataset) -> Any:
    """The NIfTI-1 header of ``ds``: shape, int16, slope 1 / intercept 0, sform and qform.

    The sform maps voxel (i, j, k) = (column, row, slice) to patient RAS in mm
    exactly as the DICOM geometry does (:func:`ctvol.io._grid.lps_affine`,
    x and y negated). A qform cannot shear: for a tilted series it is the
    rigid frame whose third axis is the slice normal at the spacing dz (exact
    for slice 0 and for the in-plane geometry of every slice).
    """
    nib = _nibabel()

    nz, ny, nx = ds["hu"].shape
    lps = _grid.lps_affine(ds)
    dz = _grid.spacing(ds)[0]
    rigid = lps.copy()
    rigid[:3, 2] = slice_normal(_grid.orientation(ds)) * dz
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape((nx, ny, nz))
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_qform(_grid.LPS_TO_RAS @ rigid, code="scanner")
    hdr.set_sform(_grid.LPS_TO_RAS @ lps, code="scanner")
    hdr.set_slope_inter(1.0, 0.0)
    hdr.set_dim_info(slice=2)
    hdr.set_data_offset(VOX_OFFSET)
    hdr["descrip"] = f"ctvol {__version__} HU"[:79].encode()
    return hdr


def to_nifti(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    sidecar: bool = True,
    compresslevel: int = 1,
) -> pathlib.Path:
    """Write one volume as a NIfTI-1 file (``.nii.gz`` or ``.nii``).

    The pixels are read and written one block of 32 slices at a time, so
    memory stays bounded whatever the series length; the file appears under
    its name only once complete (written under a temporary name, then renamed).

    Parameters
    ----------
    ds : xarray.Dataset
        A volume (``docs/storage.md``): ``hu`` (z, y, x) in HU, coordinates in
        mm, geometry attrs (a Dataset without ``orientation`` is taken as
        axial with the identity orientation).
    path : path
        Output file; ``.gz`` compresses (gzip).
    sidecar : bool, default True
        Also write ``<name>.json`` beside it: the source series, the ctvol
        history and which slices were generated (``docs/export.md``).
    compresslevel : int, default 1
        gzip level (1: fast; the int16 HU compress about 2× at any level).

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    GeometryError
        Unevenly spaced slices (a NIfTI affine needs a regular grid).
    HounsfieldRangeError
        Values outside int16.
    ImportError
        nibabel is not installed (``pip install 'ctvol[nifti]'``).

    See Also
    --------
    to_dicom : the same volume as a derived DICOM series.
    export : every series of a store, resumable (``ctvol export``).

    Examples
    --------
    >>> import nibabel as nib, numpy as np, xarray as xr, ctvol
    >>> hu = np.arange(24, dtype="int16").reshape(2, 3, 4)
    >>> ds = xr.Dataset({"hu": (("z", "y", "x"), hu)},
    ...                 coords={"z": [0.0, 2.5], "y": [0.0, 0.5, 1.0], "x": [0.0, 0.5, 1.0, 1.5]})
    >>> img = nib.load(ctvol.to_nifti(ds, getfixture("tmp_path") / "v.nii.gz"))
    >>> img.shape, np.asarray(img.dataobj)[1, 2, 0] == hu[0, 2, 1]
    ((4, 3, 2), np.True_)
    >>> img.affine.diagonal().tolist()   # LPS -> RAS: x and y negated
    [-0.5, -0.5, 2.5, 1.0]
    """
    _grid.check_volume(ds)
    hdr = nifti_header(ds)  # validates geometry before any pixel is read
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    opener: Any = gzip.open if path.suffix == ".gz" else open
    kwargs = {"compresslevel": compresslevel} if path.suffix == ".gz" else {}
    try:
        with opener(tmp, "wb", **kwargs) as f:
            hdr.write_to(f)
            f.write(b"\0" * (VOX_OFFSET - f.tell()))
            for _, block in _grid.iter_blocks(ds):
                # (z, y, x) in C order is NIfTI's (i=x fastest, j=y, k=z) order.
                f.write(block.astype("<i2", copy=False).tobytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if sidecar:
        write_sidecar(_grid.provenance(ds), _sidecar_path(path))
    return path


def _sidecar_path(path: pathlib.Path) -> pathlib.Path:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    return path.with_name(name + ".json")


def write_sidecar(info: dict[str, Any], path: pathlib.Path) -> None:
    """Write a JSON sidecar atomically (a temporary name, then a rename)."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, path)
