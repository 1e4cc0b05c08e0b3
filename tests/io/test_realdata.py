"""Ingest of real scanner output (Philips head phantom, ../shared/data README).

The bundled sample (data/sample) is always there; the full export is used
when present. The reference comparison converts the same files with Debian's
dcm2niix, an independent implementation, and compares voxels and spacing.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import ctvol
from ctvol.errors import GeometryWarning

#: conftest.dcm2niix_parity: (store, key, dicom folder, tmp_path) -> None, asserts parity.
Parity = Callable[..., None]

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


def test_sample_matches_dcm2niix(sample_store: str, sample_dir: pathlib.Path,
                                 tmp_path: pathlib.Path, dcm2niix_parity: Parity) -> None:
    (key,) = ctvol.list_series(sample_store)
    dcm2niix_parity(sample_store, key, sample_dir / "S21570" / "S2020", tmp_path)


def _real_dir(shared_dir: pathlib.Path, series: str) -> pathlib.Path:
    d = shared_dir.parent / series if series.startswith("human_ct/") else shared_dir / series
    if not d.is_dir():
        pytest.skip(f"real patient series not found at {d} (set CTVOL_SHARED_DATA)")
    return d


#: Every real series the project has (../shared/data README): folder -> whether
#: ingest warns (tilt). The human_ct series are JPEG 2000 lossless.
REAL_SERIES = {
    "S21570/S2020": None,  # STD BRAIN 1MM, 140 slices
    "S21570/S2010": None,  # STD BRAIN 5MM, 28 slices
    "S21610/S2010": GeometryWarning,  # STEREOTAXIS, gantry tilt -18.5 deg
    "human_ct/lidc_idri_0314": None,  # chest, 275 slices
    "human_ct/tcga_de_a4ma": None,  # skull to thigh, 269 slices
}


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("series", list(REAL_SERIES))
def test_real_series_match_dcm2niix(series: str, shared_dir: pathlib.Path,
                                    tmp_path: pathlib.Path, dcm2niix_parity: Parity) -> None:
    src = _real_dir(shared_dir, series)
    warns = REAL_SERIES[series]
    if warns is not None:
        with pytest.warns(warns):
            report = ctvol.ingest(src, tmp_path / "c.zarr")
    else:
        report = ctvol.ingest(src, tmp_path / "c.zarr")
    (key,) = report.written
    dcm2niix_parity(report.store, key, src, tmp_path)
