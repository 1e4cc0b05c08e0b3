"""Where every voxel of a volume lies, for the writers of other formats.

The data model (``docs/storage.md``) keeps the patient-space geometry of a
volume as coordinates (``z``, ``y``, ``x`` in mm along the slice normal,
column cosine and row cosine), the ``orientation`` attribute and, for
ingested series, the ``position`` of every slice. The exporters
(:func:`ctvol.to_nifti`, :func:`ctvol.to_dicom`) need the same facts as an
affine and as one ImagePositionPatient per slice; this module derives both,
once, so the two formats cannot disagree (``docs/export.md``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .._version import __version__
from .._volume import uneven_step
from ..errors import GeometryError, HounsfieldRangeError, VolumeError
from ..geometry import slice_normal, step_tolerance

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "IDENTITY",
    "LPS_TO_RAS",
    "as_int16",
    "block_size",
    "check_volume",
    "content_digest",
    "iter_blocks",
    "lps_affine",
    "orientation",
    "provenance",
    "series_name",
    "slice_positions",
    "spacing",
]

#: ImageOrientationPatient of an axial slice with the identity orientation
#: (row cosine +x, column cosine +y, patient LPS): what a Dataset without an
#: ``orientation`` attribute is taken to have (docs/storage.md).
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: DICOM's patient frame is LPS, NIfTI's is RAS: negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Slices read per block when streaming a volume out (one storage shard).
block_size = 32


def series_name(ds: xr.Dataset) -> str:
    """The name errors give a volume: its SeriesInstanceUID, or "the volume"."""
    return str(ds.attrs.get("series_uid") or "the volume")


def check_volume(ds: xr.Dataset) -> None:
    """Refuse anything that is not ``hu`` on (z, y, x) (docs/storage.md)."""
    if "hu" not in ds or ds["hu"].dims != ("z", "y", "x"):
        raise VolumeError(f"series {series_name(ds)}: ds must hold 'hu' with dims "
                          "('z', 'y', 'x') (docs/storage.md); open it with ctvol.open_series")


def orientation(ds: xr.Dataset) -> np.ndarray:
    """The 6 direction cosines (row, then column; patient LPS) of the slices."""
    o = ds.attrs.get("orientation")
    o = np.asarray(IDENTITY if o is None else o, dtype=np.float64)
    if o.shape != (6,):
        raise GeometryError(f"series {series_name(ds)}: attrs['orientation'] must hold 6 "
                            f"direction cosines, got {o.tolist()}; re-ingest the series")
    slice_normal(o)  # raises on parallel or zero cosines
    return o


def _axis_step(ds: xr.Dataset, dim: str, index: int) -> float:
    """Spacing along ``dim`` in mm: from the coordinate (docs/storage.md), else attrs."""
    if dim in ds.coords and ds.sizes[dim] > 1:
        c = np.asarray(ds[dim].values, dtype=np.float64)
        # the even-grid check of every verb (steps against their median), then the
        # mean step: the affine that best fits every slice (lps_affine checks each)
        step = float((c[-1] - c[0]) / (c.size - 1))
        if uneven_step(c)[1] is not None:
            raise GeometryError(
                f"series {series_name(ds)}: the {dim} coordinate is not evenly increasing "
                f"(mean step {step:.4g} mm); NIfTI and DICOM need a regular grid: ingest with "
                "split_gaps=True (contiguous runs _r1, _r2, ...) and export each run"
            )
        return step
    sp = ds.attrs.get("spacing")
    if sp is not None and len(sp) == 3 and np.isfinite(sp[index]) and sp[index] > 0:
        return float(sp[index])
    raise GeometryError(
        f"series {series_name(ds)}: no spacing along {dim} (one sample and no "
        "attrs['spacing']); give the Dataset a coordinate in mm or attrs['spacing'] = "
        "[dz, dy, dx]"
    )


def spacing(ds: xr.Dataset) -> tuple[float, float, float]:
    """``(dz, dy, dx)`` in mm, from the coordinates (dz along the slice normal)."""
    return _axis_step(ds, "z", 0), _axis_step(ds, "y", 1), _axis_step(ds, "x", 2)


def _first(ds: xr.Dataset, dim: str) -> float:
    return float(ds[dim].values[0]) if dim in ds.coords else 0.0


def slice_positions(ds: xr.Dataset) -> np.ndarray:
    """ImagePositionPatient of every slice, (n, 3) in mm, patient LPS.

    The ``position`` coordinate when the Dataset has one (ingested and
    in-plane upsampled series). Otherwise (a reslice output) positions are
    rebuilt from the coordinates: the first pixel of slice i lies at
    ``x0·row + y0·col + z_i·normal``, plus, for a series acquired with gantry
    tilt, the shear of the acquisition, ``(z_i − z_0)·tan(tilt_deg)·col``
    (slices of a tilted series advance along the table, not along their
    normal; docs/storage.md rule 6; gantry tilt rotates the slice about the
    row direction, so the shear is along the column cosine).
    """
    n = ds.sizes["z"]
    if "position" in ds.coords and ds["position"].shape == (n, 3):
        return np.asarray(ds["position"].values, dtype=np.float64)
    o = orientation(ds)
    row, col, normal = o[:3], o[3:], slice_normal(o)
    z = (np.asarray(ds["z"].values, dtype=np.float64) if "z" in ds.coords
         else spacing(ds)[0] * np.arange(n))
    base = _first(ds, "x") * row + _first(ds, "y") * col
    pos = base + z[:, None] * normal
    tilt = float(ds.attrs.get("tilt_deg") or 0.0)
    if tilt:
        pos = pos + (z - z[0])[:, None] * np.tan(np.radians(tilt)) * col
    return pos


def lps_affine(ds: xr.Dataset) -> np.ndarray:
    """4×4 affine from voxel indices (column i, row j, slice k) to patient LPS, mm.

    Columns: ``row·dx``, ``col·dy``, the step from one slice's position to the
    next (``normal·dz`` without tilt; sheared with tilt), and the position of
    slice 0.

    Raises
    ------
    GeometryError
        The slice positions are not evenly spaced along one line (a NIfTI
        affine and a DICOM grid need a regular grid).
    """
    o = orientation(ds)
    dz, dy, dx = spacing(ds)
    pos = slice_positions(ds)
    n = pos.shape[0]
    if n > 1:
        step = (pos[-1] - pos[0]) / (n - 1)
        off = np.linalg.norm(pos - (pos[0] + np.arange(n)[:, None] * step), axis=1)
        worst = int(np.argmax(off))
        length = float(np.linalg.norm(step))
        if off[worst] > step_tolerance(length):
            raise GeometryError(
                f"series {series_name(ds)}: slice {worst} lies {off[worst]:.3g} mm off the "
                f"regular grid of its positions (step {length:.4g} mm); NIfTI and DICOM "
                "exports need evenly spaced slices: ingest with split_gaps=True (runs _r1, "
                "_r2, ...) and export each run"
            )
    else:
        step = slice_normal(o) * dz
    affine = np.eye(4)
    affine[:3, 0] = o[:3] * dx
    affine[:3, 1] = o[3:] * dy
    affine[:3, 2] = step
    affine[:3, 3] = pos[0]
    return affine


def content_digest(ds: xr.Dataset, *extra: Any) -> str:
    """SHA-1 of what identifies a volume's content without reading its pixels.

    Attributes (history, geometry, ``sop_digest``), shape, the z/y/x
    coordinates and the slice provenance (``sop_uid``, ``generated``), plus
    ``extra`` (export options). A store re-written with other pixels under
    identical metadata is not detected: ctvol writes history with each output.
    """
    h = hashlib.sha1()
    h.update(json.dumps(dict(ds.attrs), sort_keys=True, default=str).encode())
    h.update(json.dumps([list(ds["hu"].shape), str(ds["hu"].dtype), list(extra)],
                        default=str).encode())
    for name in ("z", "y", "x", "generated", "sop_uid", "acquired_index"):
        if name in ds.coords:
            values = np.asarray(ds[name].values)
            h.update(name.encode())
            h.update("\n".join(map(str, values.tolist())).encode() if values.dtype == object
                     else np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def iter_blocks(ds: xr.Dataset, size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(z0, hu[z0:z0+size])`` as int16 numpy blocks, computed one at a time.

    Memory stays bounded by one block whatever the series length; a dask-backed
    ``hu`` is computed on the active scheduler.
    """
    size = size or block_size
    hu = ds["hu"].data
    n = ds.sizes["z"]
    for z0 in range(0, n, size):
        block = hu[z0 : z0 + size]
        if hasattr(block, "compute"):
            block = block.compute()
        yield z0, as_int16(np.asarray(block), ds, z0)


def as_int16(block: np.ndarray, ds: xr.Dataset, z0: int = 0) -> np.ndarray:
    """``block`` as int16 HU: integers checked against the range, floats rounded first."""
    if block.dtype == np.int16:
        return block
    values = np.rint(block) if block.dtype.kind == "f" else block
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    info = np.iinfo(np.int16)
    if not (np.isfinite([lo, hi]).all() and info.min <= lo and hi <= info.max):
        raise HounsfieldRangeError(
            f"series {series_name(ds)}: slices from {z0} hold values {lo:g} .. {hi:g} HU, "
            "outside int16; clip the volume to the HU range you need before exporting"
        )
    return values.astype(np.int16)


def provenance(ds: xr.Dataset) -> dict[str, Any]:
    """A JSON-ready description of a volume: source series, history, generated slices.

    Keys follow the BIDS sidecar names dcm2niix writes where one exists
    (``Modality``, ``SeriesDescription``, ...); ctvol's own facts are under
    ``"ctvol"``. Patient identifiers are left out (as dcm2niix does).
    """
    a = ds.attrs
    out: dict[str, Any] = {}
    for bids, attr in (("Modality", "modality"), ("Manufacturer", "manufacturer"),
                       ("ManufacturerModelName", "model"), ("ConvolutionKernel", "kernel"),
                       ("SeriesDescription", "series_description"),
                       ("SeriesNumber", "series_number"), ("SeriesInstanceUID", "series_uid"),
                       ("StudyInstanceUID", "study_uid"), ("SliceThickness", "slice_thickness"),
                       ("GantryDetectorTilt", "gantry_detector_tilt"),
                       ("ImageType", "image_type")):
        if a.get(attr) not in (None, ""):
            out[bids] = a[attr]
    dz, dy, dx = spacing(ds)
    out["SpacingBetweenSlices"] = dz
    info: dict[str, Any] = {
        "version": __version__,
        "spacing_mm": [dz, dy, dx],
        "tilt_deg": float(a.get("tilt_deg") or 0.0),
        "history": list(a.get("ctvol_history", [])),
    }
    if "generated" in ds.coords:
        gen = np.asarray(ds["generated"].values, dtype=bool)
        info["generated_slices"] = np.flatnonzero(gen).tolist()
        info["n_generated"] = int(gen.sum())
    for key in ("reslice", "inplane"):
        if key in a:
            info[key] = a[key]
    out["ctvol"] = json.loads(json.dumps(info, default=_plain))
    return json.loads(json.dumps(out, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
