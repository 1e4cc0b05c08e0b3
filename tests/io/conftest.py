"""Fixtures for the io tests: the parity check against dcm2niix."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from collections.abc import Callable

import numpy as np
import pytest

import ctvol

#: ``parity(store, key, dicom_folder, tmp_path)``: asserts the series matches dcm2niix.
Parity = Callable[[str, str, pathlib.Path, pathlib.Path], None]


@pytest.fixture
def dcm2niix_parity() -> Parity:
    """The comparison with dcm2niix (skips the test when dcm2niix is absent)."""
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix not installed (apt-get install dcm2niix)")
    return _compare_with_dcm2niix


def _dcm2niix(src: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """dcm2niix's one volume of ``src`` (its tilt-corrected copy, '_Tilt_', is ignored:
    ctvol keeps tilted series as acquired)."""
    out.mkdir()
    subprocess.run(["dcm2niix", "-o", str(out), "-f", "%s", "-z", "n", "-b", "n", str(src)],
                   check=True, capture_output=True)
    niis = [p for p in out.glob("*.nii") if "Tilt" not in p.name]
    assert len(niis) == 1, niis  # the same number of volumes as ctvol's one series
    return niis[0]


def _as_canonical_nifti(ds: object) -> object:
    """Our Dataset as a NIfTI image with its RAS affine (for orientation matching).

    The slice axis follows the positions (``position[-1] - position[0]`` over
    n - 1 slices), as dcm2niix's affine does: for a tilted series it is the
    sheared direction, whose component along the normal is dz.
    """
    import nibabel as nib

    a = ds.attrs  # type: ignore[attr-defined]
    o = np.asarray(a["orientation"])
    dz, dy, dx = a["spacing"]
    pos = ds.position.values  # type: ignore[attr-defined]
    affine = np.eye(4)
    affine[:3, 0] = o[:3] * dx  # voxel axis 0 = x (columns) along the row cosine
    affine[:3, 1] = o[3:] * dy  # voxel axis 1 = y (rows) along the column cosine
    affine[:3, 2] = (pos[-1] - pos[0]) / (len(pos) - 1)
    affine[:3, 3] = pos[0]
    affine[:2] *= -1  # LPS (DICOM) -> RAS (NIfTI)
    data = ds.hu.values.transpose(2, 1, 0)  # type: ignore[attr-defined]
    return nib.as_closest_canonical(nib.Nifti1Image(data, affine))


def _compare_with_dcm2niix(store: str, key: str, src: pathlib.Path,
                           tmp: pathlib.Path) -> None:
    """Same volume count (one each), shape, voxels, spacing and affine as dcm2niix,
    after canonical (RAS) reorientation of both.

    A tilted series is the one exception, by design: dcm2niix's uncorrected
    volume has pixdim (dx, dy, dz along the normal), like ours, but an
    affine that sends slice k to ``k * dz * cos(tilt)`` along z, not to its
    ImagePositionPatient; ours follows the positions exactly (the slices are
    sheared). There, the voxels, the pixdims, the origin and the in-plane row
    axis are compared, and our slice axis is checked against the positions.
    """
    import nibabel as nib

    raw = nib.load(_dcm2niix(src, tmp / "nii"))
    ref = nib.as_closest_canonical(raw)
    ds = ctvol.open_series(store, key)
    ours = _as_canonical_nifti(ds)
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(np.asanyarray(ours.dataobj), ref.get_fdata())
    dz, dy, dx = ds.attrs["spacing"]
    np.testing.assert_allclose(raw.header.get_zooms(), (dx, dy, dz), atol=1e-4)
    if abs(ds.attrs["tilt_deg"]) == 0.0:
        np.testing.assert_allclose(ours.header.get_zooms(), ref.header.get_zooms(), atol=1e-4)
        np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)
        return
    np.testing.assert_allclose(ours.affine[:, [0, 3]], ref.affine[:, [0, 3]], atol=1e-3)
    pos = ds.position.values
    step = (pos[-1] - pos[0]) / (len(pos) - 1)
    np.testing.assert_allclose(np.diff(pos, axis=0), np.broadcast_to(step, (len(pos) - 1, 3)),
                               atol=1e-3)
    assert float(step @ np.asarray(ds.attrs["normal"])) == pytest.approx(dz, abs=1e-4)


