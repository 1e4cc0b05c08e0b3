"""Slice geometry: normals, slice order, measured spacing, gaps and gantry tilt.

The rules (see ``docs/storage.md``):

- slice order and z come from ImagePositionPatient projected on the normal
  of ImageOrientationPatient, never from InstanceNumber or file names;
- dz is measured from positions, never read from SliceThickness;
- a step that differs from the series' typical step by more than the spacing
  tolerance is a gap: the stack is split there, never resampled;
- gantry tilt is the angle between the direction the slice positions advance
  in and the slice normal; the spacing along the normal is the true dz.

Everything here works on header values (plain numpy), never on pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import GeometryError

__all__ = [
    "SPACING_RTOL",
    "SPACING_ATOL_MM",
    "TILT_TOLERANCE_DEG",
    "StackGeometry",
    "plan_stack",
    "slice_normal",
    "step_tolerance",
]

# The one tolerance of every even-grid check: a step (or, for export, a slice's
# distance from the regular grid) agrees when it is within
# max(SPACING_ATOL_MM, SPACING_RTOL * |step|) of the typical step. Ingest's gap split,
# reslice, shift-and-interleave and export all use it (``_volume.uneven_step``,
# ``io/_grid``), so a run ingest keeps as one series is one that reslice and export
# accept: headers write ImagePositionPatient as decimal strings, commonly to 1e-3 mm,
# so a 0.6255 mm series is stored with steps of 0.625 and 0.626 mm (0.16 % apart),
# which a 0.1 % check refused (tests/test_volume.py).
#: Relative tolerance on a step between neighbouring slices (1 % of dz).
SPACING_RTOL = 0.01
#: Absolute tolerance on a step, in mm: positions written to 1e-3 mm, and the 1 %
#: term alone would be tighter than that rounding for sub-millimetre slices.
SPACING_ATOL_MM = 0.005
#: Angles between the slice advance and the normal below this are not tilt (degrees).
TILT_TOLERANCE_DEG = 0.5


def slice_normal(orientation: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """Unit normal of a slice from its ImageOrientationPatient.

    Parameters
    ----------
    orientation : sequence of 6 floats
        Row direction cosine then column direction cosine (DICOM
        ImageOrientationPatient, patient LPS frame).

    Returns
    -------
    numpy.ndarray
        ``cross(row, column)`` normalised, shape (3,).
    """
    o = np.asarray(orientation, dtype=np.float64)
    n = np.cross(o[:3], o[3:6])
    norm = np.linalg.norm(n)
    if not np.isfinite(norm) or norm < 1e-6:
        raise GeometryError(f"ImageOrientationPatient {list(o)} has parallel or zero cosines")
    return n / norm


@dataclass
class StackGeometry:
    """Where the slices of one stack lie, as measured from their positions.

    Attributes
    ----------
    order : numpy.ndarray
        Indices into the input that sort the slices by z (ascending).
    z : numpy.ndarray
        Position of each sorted slice along the normal, in mm.
    runs : list of numpy.ndarray
        Evenly spaced runs without gaps, each as indices into the sorted
        slices (``order[run]`` indexes the input).
    gaps : list of dict
        Every irregular step: ``{"z0", "z1", "step", "expected"}`` in mm.
    duplicates : list of tuple of int
        Groups of sorted indices that share a position.
    tilt_deg : float
        Angle between the slice advance and the normal, in degrees, signed
        like DICOM GantryDetectorTilt (0 when the stack is orthogonal).
    """

    order: np.ndarray
    z: np.ndarray
    runs: list[np.ndarray] = field(default_factory=list)
    gaps: list[dict[str, float]] = field(default_factory=list)
    duplicates: list[tuple[int, ...]] = field(default_factory=list)
    tilt_deg: float = 0.0


def _typical_step(steps: np.ndarray) -> float:
    return float(np.median(steps)) if steps.size else float("nan")


def step_tolerance(step: float) -> float:
    """How far (mm) a step may differ from ``step`` and still count as even:
    ``max(SPACING_ATOL_MM, SPACING_RTOL * |step|)``, for every even-grid check."""
    return max(SPACING_ATOL_MM, SPACING_RTOL * abs(step))


def _steps_agree(a: np.ndarray | float, b: float) -> np.ndarray:
    return np.abs(np.asarray(a) - b) <= step_tolerance(b)


def plan_stack(positions: np.ndarray, orientation: tuple[float, ...]) -> StackGeometry:
    """Sort slices along their normal and find duplicates, gaps and tilt.

    Parameters
    ----------
    positions : (n, 3) array
        ImagePositionPatient of each slice, in mm.
    orientation : sequence of 6 floats
        ImageOrientationPatient shared by the slices.

    Returns
    -------
    StackGeometry
        ``runs`` cover the de-duplicated slices; positions that coincide
        (closer than the spacing tolerance) are reported in ``duplicates`` and
        only the first of each group appears in a run.
    """
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    normal = slice_normal(orientation)
    z_all = pos @ normal
    order = np.argsort(z_all, kind="stable")
    z = z_all[order]
    geo = StackGeometry(order=order, z=z)
    if len(z) == 0:
        return geo

    # Duplicate positions: steps of (almost) zero.
    steps = np.diff(z)
    dup = steps <= SPACING_ATOL_MM
    keep = np.ones(len(z), dtype=bool)
    keep[1:][dup] = False
    i = 0
    while i < len(z) - 1:
        if dup[i]:
            j = i
            while j < len(z) - 1 and dup[j]:
                j += 1
            geo.duplicates.append(tuple(range(i, j + 1)))
            i = j
        i += 1

    kept = np.flatnonzero(keep)
    if len(kept) < 2:
        geo.runs = [np.array([k]) for k in kept]
        return geo

    kz = z[kept]
    ksteps = np.diff(kz)
    expected = _typical_step(ksteps)
    regular = _steps_agree(ksteps, expected)
    # Runs are maximal stretches of regular steps, expressed as index lists
    # into the sorted order (duplicates removed).
    runs: list[list[int]] = [[int(kept[0])]]
    for s, ok in enumerate(regular):
        nxt = int(kept[s + 1])
        if ok:
            runs[-1].append(nxt)
        else:
            geo.gaps.append(
                {"z0": float(kz[s]), "z1": float(kz[s + 1]), "step": float(ksteps[s]),
                 "expected": expected}
            )
            runs.append([nxt])
    geo.runs = [np.asarray(r, dtype=np.intp) for r in runs]

    # Tilt: the direction in which positions advance versus the normal.
    first, last = pos[order[kept[0]]], pos[order[kept[-1]]]
    advance = last - first
    length = float(np.linalg.norm(advance))
    if length > 0:
        along = float(advance @ normal)
        o = np.asarray(orientation, dtype=np.float64)
        across_row, across_col = float(advance @ o[:3]), float(advance @ o[3:6])
        # Signed like DICOM GantryDetectorTilt on the usual (column-axis) tilt:
        # Philips' -18.5 deg series advances against its column cosine.
        across = across_col if abs(across_col) >= abs(across_row) else across_row
        angle = float(np.degrees(np.arctan2(abs(across), abs(along))))
        if angle > TILT_TOLERANCE_DEG:
            geo.tilt_deg = float(np.copysign(angle, across * np.sign(along or 1.0)))
    return geo

