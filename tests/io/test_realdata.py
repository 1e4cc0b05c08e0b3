"""Ingest of real scanner output (Philips head phantom, ../shared/data README).

The bundled sample (data/sample) is always there; the full export is used
when present. The reference comparison converts the same files with Debian's
dcm2niix, an independent implementation, and compares voxels and spacing.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import ctvol
from ctvol.errors import GeometryWarning

PIXEL = 0.451171875  # PixelSpacing of S2020 / S2010 (mm)


def _rows(report: ctvol.IngestReport, status: str) -> dict[str, dict]:
    s = report.series
    return {r["key"]: r for r in s[s["status"] == status].to_dict("records")}


def test_sample_ingest(sample_store: str, sample_dir: pathlib.Path) -> None:
    (key,) = ctvol.list_series(sample_store)
    ds = ctvol.open_series(sample_store, key)
    assert ds.hu.shape == (30, 512, 512)
    np.testing.assert_allclose(np.diff(ds.z.values), 1.0, atol=1e-6)
    assert ds.attrs["spacing"] == pytest.approx([1.0, PIXEL, PIXEL])
    assert ds.attrs["manufacturer"] == "Philips" and ds.attrs["kernel"] == "UB"
    assert ds.attrs["series_description"] == "STD BRAIN 1MM, iDose"
    files = ctvol.catalog(sample_store, level="files").set_index("path")
    reason = {p.relative_to(sample_dir).as_posix(): files.loc[str(p), "reason"]
              for p in sample_dir.rglob("*") if p.is_file()}
    assert reason["S21570/S1000/I10"] == "localizer"
    assert reason["S21570/S4010/I10"] == "secondary-capture"
    assert reason["S21570/S2020/DIRFILE"] == "no-pixel-data"
    assert sum(r == "" for r in reason.values()) == 30


def test_sample_hu_equals_pydicom_on_every_voxel(sample_store: str) -> None:
    (key,) = ctvol.list_series(sample_store)
    ds = ctvol.open_series(sample_store, key)
    hu = ds.hu.values
    for k, path in enumerate(ds.source.values):
        f = pydicom.dcmread(path)
        assert str(f.SOPInstanceUID) == ds.sop_uid.values[k]
        assert float(f.ImagePositionPatient[2]) == pytest.approx(ds.z.values[k])
        np.testing.assert_array_equal(hu[k], apply_modality_lut(f.pixel_array, f))


@pytest.mark.realdata
def test_full_export(shared_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with pytest.warns(GeometryWarning, match=r"gantry tilt -18\.50 deg.*2\.371 mm"):
        report = ctvol.ingest(shared_dir, tmp_path / "c.zarr")
    ok = sorted(_rows(report, "ok").values(), key=lambda r: -r["n_slices"])
    assert [(r["description"], r["n_slices"]) for r in ok] == [
        ("STD BRAIN 1MM, iDose", 140), ("STEREOTAXIS", 54), ("STD BRAIN 5MM", 28)]
    thin, tilted, thick = ok
    assert thin["dz"] == pytest.approx(1.0) and thick["dz"] == pytest.approx(5.0)
    assert (thin["rows"], thin["cols"], thin["dy"]) == (512, 512, PIXEL)
    assert tilted["tilt_deg"] == pytest.approx(-18.5, abs=0.01)
    assert tilted["dz"] == pytest.approx(2.371, abs=5e-4)
    assert thin["tilt_deg"] == 0.0 and thin["warnings"] == ""
    ds = ctvol.open_series(report.store, tilted["key"])
    assert ds.attrs["gantry_detector_tilt"] == -18.5
    assert "not resampled" in ds.attrs["warnings"][0]

    files = report.files.set_index("path")
    def reason(rel: str) -> str:
        return files.loc[str(shared_dir / rel), "reason"]
    assert reason("S21570/S1000/I10") == reason("S21610/S1000/I10") == "localizer"
    assert {reason(f"S21570/S4010/I{i}0") for i in range(1, 7)} == {"secondary-capture"}
    assert {reason(f"S21610/S4010/I{i}0") for i in range(1, 6)} == {"secondary-capture"}
    assert reason("DICOMDIR") == "no-pixel-data"
    dirfiles = [p for p in shared_dir.rglob("DIRFILE")]
    assert len(dirfiles) == 9 and {reason(str(p.relative_to(shared_dir)))
                                   for p in dirfiles} == {"no-pixel-data"}
    # Distinct reasons, each with its own sentence.
    excluded = report.files[report.files["status"] == "excluded"]
    assert excluded.groupby("reason").size().to_dict() == {
        "localizer": 2, "no-pixel-data": 10, "secondary-capture": 11}
    assert len(report.files) == sum(1 for p in shared_dir.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- dcm2niix


def _dcm2niix(src: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    out.mkdir()
    subprocess.run(["dcm2niix", "-o", str(out), "-f", "%s", "-z", "n", "-b", "n", str(src)],
                   check=True, capture_output=True)
    niis = [p for p in out.glob("*.nii") if "Tilt" not in p.name]
    assert len(niis) == 1, niis
    return niis[0]


def _as_canonical_nifti(ds: object) -> object:
    """Our Dataset as a NIfTI image with its RAS affine (for orientation matching)."""
    import nibabel as nib

    a = ds.attrs  # type: ignore[attr-defined]
    o = np.asarray(a["orientation"])
    dz, dy, dx = a["spacing"]
    affine = np.eye(4)
    affine[:3, 0] = o[:3] * dx  # voxel axis 0 = x (columns) along the row cosine
    affine[:3, 1] = o[3:] * dy  # voxel axis 1 = y (rows) along the column cosine
    affine[:3, 2] = np.asarray(a["normal"]) * dz
    affine[:3, 3] = ds.position.values[0]  # type: ignore[attr-defined]
    affine[:2] *= -1  # LPS (DICOM) -> RAS (NIfTI)
    data = ds.hu.values.transpose(2, 1, 0)  # type: ignore[attr-defined]
    return nib.as_closest_canonical(nib.Nifti1Image(data, affine))


def _compare_with_dcm2niix(store: str, key: str, src: pathlib.Path,
                           tmp: pathlib.Path) -> None:
    import nibabel as nib

    ref = nib.as_closest_canonical(nib.load(_dcm2niix(src, tmp / "nii")))
    ours = _as_canonical_nifti(ctvol.open_series(store, key))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.header.get_zooms(), ref.header.get_zooms(), atol=1e-4)
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asanyarray(ours.dataobj), ref.get_fdata())


needs_dcm2niix = pytest.mark.skipif(shutil.which("dcm2niix") is None,
                                    reason="dcm2niix not installed (apt-get install dcm2niix)")


@needs_dcm2niix
def test_sample_matches_dcm2niix(sample_store: str, sample_dir: pathlib.Path,
                                 tmp_path: pathlib.Path) -> None:
    (key,) = ctvol.list_series(sample_store)
    _compare_with_dcm2niix(sample_store, key, sample_dir / "S21570" / "S2020", tmp_path)


@needs_dcm2niix
@pytest.mark.realdata
@pytest.mark.parametrize("series", ["S21570/S2020", "S21570/S2010"])
def test_full_series_match_dcm2niix(series: str, shared_dir: pathlib.Path,
                                    tmp_path: pathlib.Path) -> None:
    report = ctvol.ingest(shared_dir / series, tmp_path / "c.zarr")
    (key,) = report.written
    _compare_with_dcm2niix(report.store, key, shared_dir / series, tmp_path)
