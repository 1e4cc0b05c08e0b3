"""Test utilities: seeded CT phantoms, synthetic DICOM series, bad inputs.

Everything here writes small, deterministic inputs for ctvol's own tests,
doctests and benchmarks, and for users who test code built on ctvol (in the
spirit of :mod:`xarray.testing`).

* :func:`head_phantom` -- a (z, y, x) head-like volume in HU.
* :func:`write_dicom_series` -- write a volume as a CT DICOM series, with the
  geometry, rescale, pixel encoding and transfer syntax under control
  (including a Philips-style gantry tilt).
* :func:`write_non_dicom`, :func:`truncate_file`, :func:`write_dicomdir` --
  the bad or non-image files that real exports contain.
* :func:`raise_if_dask_computes` -- a scheduler that fails on compute, to
  guard laziness.

pydicom and dask are imported inside the functions that need them, so
``import ctvol.testing`` stays cheap.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import OptionError, OutputExistsError, VolumeError

__all__ = [
    "head_phantom",
    "raise_if_dask_computes",
    "synthetic_cohort",
    "truncate_file",
    "write_dicom_series",
    "write_dicomdir",
    "write_non_dicom",
]

# Hounsfield units of the phantom's tissues (typical CT values).
_AIR_HU = -1000.0
_BONE_HU = 1000.0
_BRAIN_HU = 40.0
_VENTRICLE_HU = 5.0
_SPOT_HU = 300.0  # a calcification-like bright spot
_NOISE_SD_HU = 5.0

_TRANSFER_SYNTAXES = ("explicit", "implicit", "jpeg2000", "rle")
_SOP_CLASSES = ("ct", "sc")

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------
# Phantom
# --------------------------------------------------------------------------


def _ellipse_coverage(
    y: np.ndarray,
    x: np.ndarray,
    cy: float,
    cx: float,
    ay: float,
    ax: float,
) -> np.ndarray:
    """Fraction of each pixel inside an ellipse, anti-aliased over ~1 pixel.

    ``y``, ``x`` are pixel-centre coordinates and ``ay``, ``ax`` semi-axes, all
    in pixels. The signed distance to the boundary is approximated to first
    order by ``(1 - r) / |grad r|`` with ``r`` the normalised radius; a soft
    edge makes the volume band-limited like a reconstructed CT image.
    """
    if ay <= 0 or ax <= 0:
        return np.zeros(np.broadcast_shapes(y.shape, x.shape))
    u = (x - cx) / ax
    v = (y - cy) / ay
    r = np.hypot(u, v)
    grad = np.hypot(u / ax, v / ay) / np.maximum(r, 1e-12)
    # At the centre r == 0 and the gradient is undefined; any pixel within
    # half a semi-axis of the centre is fully inside anyway.
    grad = np.where(r > 1e-12, grad, 1.0 / max(min(ay, ax), 1e-12))
    distance = (1.0 - r) / grad
    return np.clip(distance + 0.5, 0.0, 1.0)


def head_phantom(shape: tuple[int, int, int] = (16, 64, 64), *, seed: int = 0) -> np.ndarray:
    """Return a seeded, head-like CT volume in Hounsfield units.

    An elliptical "head" in air: a skull ring of bone around brain tissue,
    with a ventricle and a small calcification-like bright spot. The head's
    semi-axes shrink smoothly from the first slice to the last (as when moving
    from mid-head towards the vertex), and the internal features are
    ellipsoids, so neighbouring slices differ but are related: interpolating
    between slices is meaningful and can be scored.

    ===================  ===========  ==========================================
    region               value (HU)   notes
    ===================  ===========  ==========================================
    air                  -1000        exactly, no noise
    skull (bone)         ~ +1000      ring of ~6 % of the in-plane size, >= 1.5 px
    brain                ~ +40
    ventricle            ~ +5         ellipsoid, largest near 40 % of the z range
    bright spot          ~ +300       small sphere right of centre, anterior
    ===================  ===========  ==========================================

    Gaussian noise with a standard deviation of 5 HU is added inside the head;
    boundaries are anti-aliased over about one pixel, so edge pixels take
    intermediate values.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(z, y, x)``: number of slices, rows and columns. ``y`` and ``x`` must
        be at least 16; ``z`` at least 1.
    seed : int, optional
        Seed of the noise. The same ``shape`` and ``seed`` give the same volume.

    Returns
    -------
    numpy.ndarray
        ``int16`` array of shape ``shape``, values in HU, dims ``(z, y, x)``.

    Raises
    ------
    ValueError
        If ``shape`` is not three positive integers with ``y, x >= 16``.

    See Also
    --------
    write_dicom_series : write the phantom as a DICOM series.

    Examples
    --------
    >>> from ctvol.testing import head_phantom
    >>> hu = head_phantom((4, 32, 32))
    >>> hu.shape, hu.dtype
    ((4, 32, 32), dtype('int16'))
    >>> int(hu[0, 0, 0])  # air in the corner
    -1000
    >>> bool((head_phantom((4, 32, 32)) == hu).all())  # deterministic
    True
    """
    if len(shape) != 3:
        raise VolumeError(f"shape must be (z, y, x), got {shape!r}")
    nz, ny, nx = (int(n) for n in shape)
    if nz < 1 or ny < 16 or nx < 16:
        raise OptionError(
            f"shape must have z >= 1 and y, x >= 16 so the skull and features are "
            f"resolved, got {tuple(shape)!r}"
        )

    y = np.arange(ny, dtype=np.float64)[:, None]
    x = np.arange(nx, dtype=np.float64)[None, :]
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    # Fraction of the way through the volume, 0 at the first slice, 1 at the last.
    ts = np.linspace(0.0, 1.0, nz) if nz > 1 else np.zeros(1)
    skull_px = max(1.5, 0.06 * min(ny, nx))
    spot_radius_px = max(1.5, 0.06 * min(ny, nx))

    hu = np.empty((nz, ny, nx), dtype=np.float64)
    head_masks = np.empty((nz, ny, nx), dtype=np.float64)
    for k, t in enumerate(ts):
        # The head is longer antero-posteriorly (y) than left-right (x) and
        # shrinks smoothly towards the last slice.
        shrink = 1.0 - 0.3 * t**2
        ay, ax = 0.44 * ny * shrink, 0.37 * nx * shrink
        head = _ellipse_coverage(y, x, cy, cx, ay, ax)
        brain = _ellipse_coverage(y, x, cy, cx, ay - skull_px, ax - skull_px)

        # Ventricle: an ellipsoid in (x, y, t), centred at t = 0.4.
        v_profile = math.sqrt(max(0.0, 1.0 - ((t - 0.4) / 0.6) ** 2))
        ventricle = _ellipse_coverage(
            y, x, cy - 0.05 * ny, cx, 0.16 * ny * v_profile, 0.07 * nx * v_profile
        )

        # Bright spot: a small sphere-like blob centred at t = 0.5.
        s_profile = math.sqrt(max(0.0, 1.0 - ((t - 0.5) / 0.3) ** 2))
        spot = _ellipse_coverage(
            y,
            x,
            cy - 0.2 * ny,
            cx + 0.15 * nx,
            spot_radius_px * s_profile,
            spot_radius_px * s_profile,
        )

        sl = _AIR_HU + (_BONE_HU - _AIR_HU) * head
        sl += (_BRAIN_HU - sl) * brain
        sl += (_VENTRICLE_HU - sl) * ventricle
        sl += (_SPOT_HU - sl) * spot
        hu[k] = sl
        head_masks[k] = head

    rng = np.random.default_rng(seed)
    hu += rng.normal(0.0, _NOISE_SD_HU, size=hu.shape) * head_masks
    return np.round(hu).astype(np.int16)


# --------------------------------------------------------------------------
# DICOM series
# --------------------------------------------------------------------------


def _format_ds(value: float) -> str:
    """Format a number as a DICOM decimal string (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    value = float(value)
    if value == 0.0:
        return "0"  # also turns -0.0 into "0"
    if value == round(value) and abs(value) < 1e15:
        return str(int(value))
    return format_number_as_ds(value)


def _stored_range(pixel_representation: int, bits_stored: int) -> tuple[int, int]:
    """Smallest and largest stored value representable."""
    if pixel_representation == 0:
        return 0, 2**bits_stored - 1
    return -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1


def _slice_geometry(
    n: int,
    spacing_z: float,
    origin: Sequence[float],
    orientation: Sequence[float],
    tilt_deg: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (row cosine, column cosine, positions of the n slices), in mm.

    Without tilt the slices step by ``spacing_z`` along the normal. With a
    tilt, the column cosine is rotated about the row axis by ``tilt_deg``
    (right-handed), and the slices step along the *untilted* normal (the table
    axis) by ``spacing_z / cos(tilt)``, as Philips scanners export tilted
    series, so the spacing measured along the tilted normal is ``spacing_z``.
    """
    row = np.asarray(orientation[:3], dtype=np.float64)
    col0 = np.asarray(orientation[3:], dtype=np.float64)
    normal0 = np.cross(row, col0)
    theta = math.radians(tilt_deg)
    # Rodrigues' rotation of col0 about row (row . col0 == 0).
    col = col0 * math.cos(theta) + normal0 * math.sin(theta)
    step = normal0 * (spacing_z / math.cos(theta))
    positions = np.asarray(origin, dtype=np.float64) + np.arange(n)[:, None] * step
    return row, col, positions


def _check_orientation(orientation: Sequence[float]) -> None:
    if len(orientation) != 6:
        raise OptionError(
            f"orientation must be 6 direction cosines (row then column), got {orientation!r}"
        )
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:], dtype=np.float64)
    if not (
        abs(np.linalg.norm(row) - 1) < 1e-6
        and abs(np.linalg.norm(col) - 1) < 1e-6
        and abs(row @ col) < 1e-6
    ):
        raise OptionError(
            f"orientation must hold two orthogonal unit vectors (row cosine, column "
            f"cosine), got {tuple(orientation)!r}"
        )


def write_dicom_series(
    directory: PathLike,
    hu: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (2.0, 0.5, 0.5),
    origin: tuple[float, float, float] = (-16.0, -16.0, 0.0),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    tilt_deg: float = 0.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    patient_id: str = "PHANTOM",
    series_number: int = 1,
    series_description: str = "phantom",
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    slope: float = 1.0,
    intercept: float = -1024.0,
    pixel_representation: int = 0,
    bits_stored: int = 12,
    transfer_syntax: str = "explicit",
    padding_value: int | None = None,
    instance_numbers: Sequence[int] | None = None,
    shuffle_names: bool = True,
    seed: int = 0,
    sop_class: str = "ct",
) -> list[pathlib.Path]:
    """Write a volume as a DICOM series, one CT image file per slice.

    Each file is a complete CT Image Storage instance (or Secondary Capture,
    ``sop_class="sc"``) with patient, study, series, frame of reference,
    equipment, image plane, image pixel and CT image attributes. Slice ``k``
    of ``hu`` is written at ``origin + k * spacing[0] * normal``, where
    ``normal`` is the cross product of the row and column cosines.

    Parameters
    ----------
    directory : str or os.PathLike
        Folder to write into; created if needed.
    hu : numpy.ndarray
        Values in HU, dims ``(z, y, x)``. They must lie on the grid
        ``intercept + slope * integer`` to round-trip exactly.
    spacing : tuple of float, optional
        ``(dz, dy, dx)`` in mm. ``dz`` is the distance between consecutive
        slice positions measured along the slice normal (also written as
        SliceThickness); ``dy`` is the row spacing (PixelSpacing[0]) and
        ``dx`` the column spacing (PixelSpacing[1]).
    origin : tuple of float, optional
        ImagePositionPatient of slice 0 in mm, patient (LPS) coordinates.
    orientation : sequence of float, optional
        ImageOrientationPatient before any tilt: row cosine then column cosine.
    tilt_deg : float, optional
        Gantry tilt in degrees, modelled as Philips exports it: the column
        cosine is rotated about the row axis by ``tilt_deg`` (so ``-18.5``
        with the default orientation gives ``(1, 0, 0, 0, 0.9483237,
        -0.3173047)``), the slice positions step along the untilted normal
        (the table axis) by ``dz / cos(tilt)`` so the spacing measured along
        the tilted normal is still ``dz``, and GantryDetectorTilt is
        ``tilt_deg``. SliceLocation is the position along the table axis, so
        it steps by ``dz / cos(tilt)``, as in the Philips files. Must be
        within (-80, 80) degrees.
    series_uid, study_uid : str, optional
        SeriesInstanceUID and StudyInstanceUID; new UIDs when None. The
        FrameOfReferenceUID is derived from ``study_uid`` when it is given
        (series written with one study UID share a frame of reference), and
        new otherwise.
    patient_id : str, optional
        PatientID (PatientName is the same).
    series_number : int, optional
        SeriesNumber.
    series_description : str, optional
        SeriesDescription.
    modality : str, optional
        Modality.
    image_type : sequence of str, optional
        ImageType values, e.g. ``("ORIGINAL", "PRIMARY", "LOCALIZER")``.
    slope, intercept : float, optional
        RescaleSlope and RescaleIntercept (RescaleType ``"HU"``); the stored
        values are ``round((hu - intercept) / slope)``.
    pixel_representation : {0, 1}, optional
        0 stores unsigned ``uint16`` pixels, 1 signed ``int16``.
    bits_stored : int, optional
        BitsStored, 8 to 16 (BitsAllocated is 16, HighBit ``bits_stored - 1``).
    transfer_syntax : {"explicit", "implicit", "jpeg2000", "rle"}, optional
        Explicit VR Little Endian, Implicit VR Little Endian, JPEG 2000
        Lossless (needs pylibjpeg-openjpeg) or RLE Lossless. All are lossless.
    padding_value : int, optional
        PixelPaddingValue as a raw stored value (same signedness as the
        pixels). Only the tag is written: put the value in the pixels by
        passing the HU that maps to it, ``intercept + slope * padding_value``.
    instance_numbers : sequence of int, optional
        InstanceNumber per slice in ``hu`` order; ``1 .. n`` when None. Pass
        e.g. ``range(n, 0, -1)`` for a scanner that numbers head to feet.
    shuffle_names : bool, optional
        If True, file names carry no order (``"IM"`` + 8 seeded random hex
        digits, no extension), like real exports; otherwise
        ``slice_0000.dcm``, ``slice_0001.dcm``, ... in ``hu`` order.
    seed : int, optional
        Seed of the shuffled file names (combined with ``series_number``).
    sop_class : {"ct", "sc"}, optional
        CT Image Storage or Secondary Capture Image Storage.

    Returns
    -------
    list of pathlib.Path
        The files written, in spatial (``hu``) order.

    Raises
    ------
    ValueError
        If the stored values do not fit ``pixel_representation`` and
        ``bits_stored``, or an option is invalid.
    FileExistsError
        If a file to write already exists in ``directory``.

    See Also
    --------
    head_phantom : a volume to write.

    Examples
    --------
    >>> import tempfile, pydicom
    >>> from ctvol.testing import head_phantom, write_dicom_series
    >>> hu = head_phantom((4, 32, 32))
    >>> paths = write_dicom_series(tempfile.mkdtemp(), hu, spacing=(2.5, 0.5, 0.5))
    >>> ds = pydicom.dcmread(paths[1])
    >>> [float(v) for v in ds.ImagePositionPatient]
    [-16.0, -16.0, 2.5]
    >>> int(ds.pixel_array[0, 0]) + int(ds.RescaleIntercept)
    -1000
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import (
        CTImageStorage,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        RLELossless,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    # ---- validate options before writing anything ------------------------
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise VolumeError(f"hu must be a 3-D (z, y, x) array, got shape {hu.shape}")
    if transfer_syntax not in _TRANSFER_SYNTAXES:
        raise OptionError(
            f"transfer_syntax must be one of {_TRANSFER_SYNTAXES}, got {transfer_syntax!r}"
        )
    if sop_class not in _SOP_CLASSES:
        raise OptionError(f"sop_class must be one of {_SOP_CLASSES}, got {sop_class!r}")
    if pixel_representation not in (0, 1):
        raise OptionError(
            f"pixel_representation must be 0 (unsigned) or 1 (signed), got {pixel_representation!r}"
        )
    if not 8 <= bits_stored <= 16:
        raise OptionError(f"bits_stored must be 8 to 16, got {bits_stored!r}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise OptionError(
            f"spacing must be three positive numbers (dz, dy, dx) in mm, got {spacing!r}"
        )
    if len(origin) != 3:
        raise OptionError(f"origin must be (x, y, z) in mm, got {origin!r}")
    _check_orientation(orientation)
    if not -80.0 < tilt_deg < 80.0:
        raise OptionError(f"tilt_deg must be within (-80, 80) degrees, got {tilt_deg!r}")
    if slope == 0 or not math.isfinite(slope) or not math.isfinite(intercept):
        raise OptionError(
            f"slope must be finite and non-zero and intercept finite, got slope={slope!r}, "
            f"intercept={intercept!r}"
        )
    n, rows, columns = hu.shape
    if n == 0 or rows == 0 or columns == 0:
        raise OptionError(f"hu must not be empty, got shape {hu.shape}")
    if instance_numbers is None:
        instance_numbers = range(1, n + 1)
    instance_numbers = [int(i) for i in instance_numbers]
    if len(instance_numbers) != n:
        raise OptionError(
            f"instance_numbers must have one value per slice ({n}), got {len(instance_numbers)}"
        )

    lo, hi = _stored_range(pixel_representation, bits_stored)
    kind = "signed" if pixel_representation else "unsigned"
    stored_f = np.round((hu.astype(np.float64) - intercept) / slope)
    if not np.isfinite(stored_f).all():
        raise OptionError("hu contains NaN or infinite values")
    smin, smax = float(stored_f.min()), float(stored_f.max())
    if smin < lo or smax > hi:
        raise OptionError(
            f"stored values (hu - intercept) / slope span [{smin:.0f}, {smax:.0f}] with "
            f"slope={slope}, intercept={intercept}, but {kind} pixels with "
            f"bits_stored={bits_stored} hold [{lo}, {hi}]. Change intercept or slope, "
            f"use pixel_representation={1 - pixel_representation} or more bits_stored, "
            f"or clip hu to [{intercept + slope * lo}, {intercept + slope * hi}] HU."
        )
    if padding_value is not None and not lo <= padding_value <= hi:
        raise OptionError(
            f"padding_value {padding_value} does not fit {kind} pixels with "
            f"bits_stored={bits_stored} ([{lo}, {hi}])"
        )
    stored = stored_f.astype("<i2" if pixel_representation else "<u2")

    # ---- geometry ---------------------------------------------------------
    dz, dy, dx = (float(s) for s in spacing)
    row, col, positions = _slice_geometry(n, dz, origin, orientation, tilt_deg)
    # SliceLocation along the table axis (the untilted normal), as Philips
    # writes it: it steps by dz / cos(tilt), not dz, in a tilted series.
    table_axis = np.cross(
        np.asarray(orientation[:3], dtype=np.float64), np.asarray(orientation[3:], dtype=np.float64)
    )

    # ---- names ------------------------------------------------------------
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if shuffle_names:
        rng = np.random.default_rng([seed, series_number])
        codes = np.asarray(rng.choice(16**8, size=n, replace=False)).tolist()
        names = [f"IM{c:08X}" for c in codes]
    else:
        names = [f"slice_{k:04d}.dcm" for k in range(n)]
    paths = [directory / name for name in names]
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise OutputExistsError(
            f"{len(existing)} file(s) already exist, e.g. {existing[0]}; write into an "
            f"empty directory or pass another seed/series_number"
        )

    # ---- shared attributes ------------------------------------------------
    syntax_uid = {
        "explicit": ExplicitVRLittleEndian,
        "implicit": ImplicitVRLittleEndian,
        "jpeg2000": ExplicitVRLittleEndian,  # compressed below
        "rle": ExplicitVRLittleEndian,  # compressed below
    }[transfer_syntax]
    compress_to = {"jpeg2000": JPEG2000Lossless, "rle": RLELossless}.get(transfer_syntax)
    sop_class_uid = CTImageStorage if sop_class == "ct" else SecondaryCaptureImageStorage
    series_uid = series_uid or generate_uid()
    if study_uid:
        frame_uid = generate_uid(entropy_srcs=[study_uid, "frame of reference"])
    else:
        study_uid = generate_uid()
        frame_uid = generate_uid()
    iop = [_format_ds(v) for v in (*row, *col)]
    pixel_spacing = [_format_ds(dy), _format_ds(dx)]
    date, time = "20190101", "120000"

    for k, path in enumerate(paths):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class_uid
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = syntax_uid
        meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID

        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = list(image_type)
        ds.SOPClassUID = sop_class_uid
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
        ds.AccessionNumber = ""
        ds.Modality = modality
        if sop_class == "sc":
            ds.ConversionType = "WSD"
        ds.Manufacturer = "ctvol-testing"
        ds.ReferringPhysicianName = ""
        ds.SeriesDescription = series_description
        ds.PatientName = patient_id
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.SliceThickness = _format_ds(dz)
        ds.KVP = "120"
        ds.GantryDetectorTilt = _format_ds(tilt_deg)
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = int(series_number)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = instance_numbers[k]
        ds.ImagePositionPatient = [_format_ds(v) for v in positions[k]]
        ds.ImageOrientationPatient = iop
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _format_ds(float(positions[k] @ table_axis))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.PixelSpacing = pixel_spacing
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = pixel_representation
        if padding_value is not None:
            # Tag (0028,0120) is "US or SS": give the VR explicitly so it is
            # written with the pixels' signedness under every transfer syntax.
            ds.add_new(0x00280120, "SS" if pixel_representation else "US", int(padding_value))
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = _format_ds(intercept)
        ds.RescaleSlope = _format_ds(slope)
        ds.RescaleType = "HU"
        ds.PixelData = stored[k].tobytes()
        ds["PixelData"].VR = "OW"
        if compress_to is not None:
            # Lossless, so the SOP Instance UID stays (pydicom would make a new one).
            ds.compress(compress_to, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
    return paths


# --------------------------------------------------------------------------
# Bad and non-image inputs
# --------------------------------------------------------------------------


def write_non_dicom(path: PathLike) -> pathlib.Path:
    """Write a small text file that is not DICOM (no preamble, no ``DICM``).

    Parameters
    ----------
    path : str or os.PathLike
        File to write; its folder is created if needed.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from ctvol.testing import write_non_dicom
    >>> p = write_non_dicom(pathlib.Path(tempfile.mkdtemp()) / "notes.txt")
    >>> p.read_bytes()[:7]
    b'This is'
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "This is not a DICOM file: exports often carry READMEs, logs and checksums.\n",
        encoding="ascii",
    )
    return path


def _pixel_data_offset(path: pathlib.Path) -> int:
    """Byte offset of the Pixel Data element (its tag) in a DICOM file."""
    import pydicom

    with path.open("rb") as f:
        # pydicom rewinds to the start of the element it stops before.
        pydicom.dcmread(f, stop_before_pixels=True)
        offset = f.tell()
        f.seek(offset)
        tag = f.read(4)
    if tag != b"\xe0\x7f\x10\x00":  # (7FE0,0010), little endian
        raise OptionError(f"{path} has no Pixel Data element to truncate")
    return offset


def truncate_file(path: PathLike, keep_fraction: float = 0.5) -> pathlib.Path:
    """Truncate a DICOM file in place, cutting its pixel data.

    The header is kept whole and only ``keep_fraction`` of the Pixel Data
    element survives, as after an interrupted copy or download: the header
    still parses, reading the pixels fails.

    Parameters
    ----------
    path : str or os.PathLike
        An existing DICOM file with pixel data.
    keep_fraction : float, optional
        Fraction of the Pixel Data element (tag, header and value) kept,
        in ``[0, 1)``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        If ``keep_fraction`` is outside ``[0, 1)`` or the file has no pixel data.
    """
    if not 0.0 <= keep_fraction < 1.0:
        raise OptionError(f"keep_fraction must be in [0, 1), got {keep_fraction!r}")
    path = pathlib.Path(path)
    offset = _pixel_data_offset(path)
    size = path.stat().st_size
    keep = offset + int((size - offset) * keep_fraction)
    with path.open("r+b") as f:
        f.truncate(keep)
    return path


def write_dicomdir(directory: PathLike) -> pathlib.Path:
    """Write a DICOMDIR: a media directory file with no pixel data.

    The file is a valid, empty DICOM File-set directory (Basic Directory IOD,
    readable by :class:`pydicom.fileset.FileSet`) whose
    MediaStorageSOPClassUID is Media Storage Directory Storage
    (1.2.840.10008.1.3.10), like the ``DICOMDIR`` that scanner exports put
    next to the images. An ingest must recognise and skip it.

    Parameters
    ----------
    directory : str or os.PathLike
        Folder to write ``DICOMDIR`` into; created if needed.

    Returns
    -------
    pathlib.Path
        The path of the ``DICOMDIR`` file.

    Examples
    --------
    >>> import tempfile, pydicom
    >>> from ctvol.testing import write_dicomdir
    >>> p = write_dicomdir(tempfile.mkdtemp())
    >>> p.name, pydicom.dcmread(p).file_meta.MediaStorageSOPClassUID
    ('DICOMDIR', '1.2.840.10008.1.3.10')
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        ExplicitVRLittleEndian,
        MediaStorageDirectoryStorage,
        generate_uid,
    )

    # Written by hand rather than with pydicom.fileset.FileSet.write, which
    # leaves a staging TemporaryDirectory to the garbage collector
    # (ResourceWarning) and copies any referenced images into its own layout.
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "DICOMDIR"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.FileSetID = "CTVOL"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = DicomSequence()
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------
# Laziness guard
# --------------------------------------------------------------------------


class _CountingScheduler:
    """A dask scheduler that counts computes and fails past a limit."""

    def __init__(self, max_computes: int) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk: Mapping[Any, Any], keys: Any, **kwargs: Any) -> Any:
        import dask

        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"Too many computes. Total: {self.total_computes} > {self.max_computes}."
            )
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[Callable[..., Any]]:
    """Fail if dask computes more than ``max_computes`` times in the block.

    Inside the block, dask uses a synchronous scheduler that counts compute
    calls (``.compute()``, ``.values``, ``np.asarray`` on a dask array, ...)
    and raises once there are more than ``max_computes``. Building graphs does
    not count. Adapted from ``xarray.tests.raise_if_dask_computes``.

    Parameters
    ----------
    max_computes : int, optional
        Number of computes allowed.

    Yields
    ------
    callable
        The scheduler; its ``total_computes`` attribute holds the count.

    Raises
    ------
    RuntimeError
        ``"Too many computes. Total: N > max_computes."`` on the compute that
        exceeds the limit.

    Examples
    --------
    >>> import dask.array as da
    >>> from ctvol.testing import raise_if_dask_computes
    >>> with raise_if_dask_computes():
    ...     lazy = da.ones((4, 4), chunks=2) + 1  # graph building is fine
    >>> with raise_if_dask_computes(max_computes=1) as scheduler:
    ...     total = int(lazy.sum().compute())
    >>> total, scheduler.total_computes
    (32, 1)
    """
    import dask

    scheduler = _CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler


def tiny_model(factor: int = 3, *, seed: int = 0, output: str = "residual") -> Any:
    """A tiny, seeded, untrained reslice U-net (depth 2, 4 base filters) for tests.

    Its outputs are deterministic but meaningless; it exercises the model,
    checkpoint and inference code paths on CPU in milliseconds.
    """
    import torch

    from .models import ResliceModel
    from .models.unet import UNet

    torch.manual_seed(seed)
    net = UNet(factor, depth=2, base=4, output=output)
    if output == "residual":  # a non-zero head, so the network's path is exercised
        torch.nn.init.normal_(net.head.weight, std=0.05)
    return ResliceModel(net, provenance={"trained": False, "seed": seed})


_VENDORS = (
    # (description, pixel representation, bits stored, intercept, transfer syntax)
    ("STD BRAIN, iDose", 0, 12, -1024.0, "explicit"),
    ("H30s HEAD", 1, 16, 0.0, "explicit"),
    ("STANDARD HEAD", 1, 16, -1024.0, "implicit"),
)


def synthetic_cohort(
    directory: PathLike,
    n_series: int = 4,
    n_slices: int = 40,
    shape: tuple[int, int] = (512, 512),
    *,
    spacings: Sequence[float] = (1.0, 2.5, 3.0, 5.0),
    localizers: int = 1,
    gaps: int = 1,
    tilted: int = 1,
    seed: int = 0,
) -> Any:
    """Write a cohort of realistic DICOM series for scale runs and pipeline tests.

    Anatomy comes from :func:`head_phantom`, made once per call at
    ``(n_slices, *shape)`` and varied per series (flips and in-plane shifts,
    so series differ but generating them stays fast at 512²). Series cycle
    through three vendor-like header styles (unsigned 12-bit with intercept
    -1024; signed 16-bit with intercept 0; implicit VR) and the given slice
    spacings; two series share each patient and study. The first
    ``localizers`` patients also get a one-image sagittal localizer, the first
    ``gaps`` series lose one slice in the middle (ingest splits them into two
    runs) and the last ``tilted`` series are written with a 15° gantry tilt.

    Parameters
    ----------
    directory : path
        Created if needed; one folder per series (``S001`` …), localizers in
        ``L001`` ….
    n_series, n_slices : int
        Series and slices per series (before a gap removes one).
    shape : (rows, cols)
    spacings : sequence of float
        Slice spacings in mm, cycled over the series.
    localizers, gaps, tilted : int
        How many of each special case to include.
    seed : int

    Returns
    -------
    pandas.DataFrame
        One row per series or localizer written: folder, series UID, kind
        (``axial``, ``gap``, ``tilted``, ``localizer``), files, dz (mm),
        tilt (deg), what ingest must make of it.
    """
    import pandas as pd

    root = pathlib.Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = head_phantom((n_slices, *shape), seed=seed)
    rows = []
    for i in range(n_series):
        desc, pixrep, bits, intercept, syntax = _VENDORS[i % len(_VENDORS)]
        dz = float(spacings[i % len(spacings)])
        hu = base[::-1] if i % 2 else base
        hu = np.roll(hu, (int(rng.integers(-8, 9)), int(rng.integers(-8, 9))), axis=(1, 2))
        kind = "tilted" if i >= n_series - tilted else ("gap" if i < gaps else "axial")
        uid = f"1.2.826.0.1.3680043.10.1511.{seed}.{i + 1}"
        patient = i // 2
        folder = root / f"S{i + 1:03d}"
        files = write_dicom_series(
            folder, hu, spacing=(dz, 0.45, 0.45), series_uid=uid,
            study_uid=f"1.2.826.0.1.3680043.10.1511.{seed}.9{patient:04d}",
            patient_id=f"SYN{patient:04d}", series_number=i + 1,
            series_description=f"{desc} {dz:g}MM", intercept=intercept,
            pixel_representation=pixrep, bits_stored=bits, transfer_syntax=syntax,
            tilt_deg=15.0 if kind == "tilted" else 0.0, seed=seed + i,
        )
        if kind == "gap":
            by_z = sorted(files, key=lambda p: _read_position(p))
            by_z[len(by_z) // 2].unlink()
        rows.append({"folder": folder.name, "series_uid": uid, "kind": kind,
                     "files": len(files) - (kind == "gap"), "dz": dz,
                     "tilt_deg": 15.0 if kind == "tilted" else 0.0,
                     "expect": {"axial": "one series",
                                "gap": "two runs (_r1, _r2): one slice missing",
                                "tilted": "one series, tilt recorded"}[kind]})
    for j in range(min(localizers, max(1, (n_series + 1) // 2))):
        folder = root / f"L{j + 1:03d}"
        write_dicom_series(
            folder, base[n_slices // 2][None], spacing=(1.0, 0.45, 0.45),
            orientation=(0, 1, 0, 0, 0, -1), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
            series_uid=f"1.2.826.0.1.3680043.10.1511.{seed}.8{j:04d}",
            study_uid=f"1.2.826.0.1.3680043.10.1511.{seed}.9{j:04d}",
            patient_id=f"SYN{j:04d}", series_number=1000 + j, series_description="SURVIEW",
            seed=seed + 1000 + j,
        )
        rows.append({"folder": folder.name, "series_uid": f"1.2.826.0.1.3680043.10.1511."
                     f"{seed}.8{j:04d}", "kind": "localizer", "files": 1, "dz": np.nan,
                     "tilt_deg": 0.0, "expect": "excluded: localizer"})
    return pd.DataFrame(rows)


def _read_position(path: pathlib.Path) -> float:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["ImagePositionPatient"])
    return float(ds.ImagePositionPatient[2])
