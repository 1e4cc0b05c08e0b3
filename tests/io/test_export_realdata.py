"""NIfTI and DICOM exports of real CT checked by independent readers.

dcm2niix (Debian's, an independent DICOM → NIfTI converter) and pydicom read
the same source files and our outputs; nibabel's ``as_closest_canonical``
brings both NIfTI images to RAS voxel order before comparing. The reference
image of a store is built here by hand from its attrs (not through ctvol's
exporter), as in ``test_realdata.py``.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import warnings

import numpy as np
import pydicom
import pytest

import ctvol
from ctvol.cli import main
from ctvol.errors import GeometryWarning

nib = pytest.importorskip("nibabel")

needs_dcm2niix = pytest.mark.skipif(shutil.which("dcm2niix") is None,
                                    reason="dcm2niix not installed (apt-get install dcm2niix)")


@pytest.fixture(scope="session")
def human_dir(shared_dir: pathlib.Path) -> pathlib.Path:
    path = shared_dir.parent / "human_ct"
    if not (path / "lidc_idri_0314").is_dir():
        pytest.skip(f"human CT series not found at {path} (../shared/data/README.md)")
    return path


def _dcm2niix(src: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    out.mkdir()
    done = subprocess.run(["dcm2niix", "-o", str(out), "-f", "%s", "-z", "n", "-b", "n",
                           str(src)], check=True, capture_output=True, text=True)
    niis = [p for p in out.glob("*.nii") if "Tilt" not in p.name]
    assert len(niis) == 1, (niis, done.stdout)
    return niis[0]


def _reference(ds: object) -> object:
    """The store's volume as a canonical NIfTI image, affine built from its attrs."""
    a = ds.attrs  # type: ignore[attr-defined]
    o = np.asarray(a["orientation"])
    z, y, x = (ds[d].values for d in "zyx")  # type: ignore[index]
    affine = np.eye(4)
    affine[:3, 0] = o[:3] * (x[-1] - x[0]) / (len(x) - 1)
    affine[:3, 1] = o[3:] * (y[-1] - y[0]) / (len(y) - 1)
    affine[:3, 2] = np.cross(o[:3], o[3:]) * (z[-1] - z[0]) / (len(z) - 1)
    affine[:3, 3] = ds.position.values[0]  # type: ignore[attr-defined]
    affine[:2] *= -1  # LPS -> RAS
    data = ds.hu.values.transpose(2, 1, 0)  # type: ignore[attr-defined]
    return nib.as_closest_canonical(nib.Nifti1Image(data, affine))


def _same(img: object, ref: object) -> None:
    img = nib.as_closest_canonical(img)
    assert img.shape == ref.shape
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-3)
    np.testing.assert_array_equal(img.get_fdata(), np.asanyarray(ref.dataobj))


def _nifti_matches_dcm2niix(store: str, src: pathlib.Path, tmp: pathlib.Path) -> None:
    (key,) = ctvol.list_series(store)
    assert main(["export", store, "-o", str(tmp / "nii"), "--format", "nifti", "-q"]) == 0
    ours = nib.load(tmp / "nii" / f"{key}.nii.gz")
    ref = nib.load(_dcm2niix(src, tmp / "ref"))
    _same(ours, nib.as_closest_canonical(ref))
    _same(ours, _reference(ctvol.open_series(store, key)))
    assert ours.get_data_dtype() == np.int16


@needs_dcm2niix
@pytest.mark.slow
def test_sample_nifti_matches_dcm2niix(sample_store: str, sample_dir: pathlib.Path,
                                       tmp_path: pathlib.Path) -> None:
    _nifti_matches_dcm2niix(sample_store, sample_dir / "S21570" / "S2020", tmp_path)


@needs_dcm2niix
@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("series", ["dcm_qa_ct_philips/S21570/S2020",
                                    "human_ct/lidc_idri_0314", "human_ct/tcga_de_a4ma"])
def test_full_series_nifti_matches_dcm2niix(series: str, human_dir: pathlib.Path,
                                            tmp_path: pathlib.Path) -> None:
    src = human_dir.parent / series
    _nifti_matches_dcm2niix(ctvol.ingest(src, tmp_path / "c.zarr").store, src, tmp_path)


@needs_dcm2niix
@pytest.mark.slow
def test_demo_x3_dicom_read_back_by_dcm2niix_and_pydicom(sample_store: str,
                                                         tmp_path: pathlib.Path) -> None:
    """The demo's x3 output exported as DICOM: dcm2niix reads one volume of
    (N-1)·3+1 slices at dz/3 whose voxels are the store's; pydicom reads each file."""
    fine = str(tmp_path / "fine.zarr")
    assert main(["reslice", sample_store, "-o", fine, "--factor", "3", "--method", "linear",
                 "--scheduler", "threads", "-q"]) == 0
    assert main(["export", fine, "-o", str(tmp_path / "dcm"), "--format", "dicom",
                 "-q"]) == 0
    (key,) = ctvol.list_series(fine)
    ds = ctvol.open_series(fine, key)
    n_src = ctvol.open_series(sample_store, key).sizes["z"]
    img = nib.load(_dcm2niix(tmp_path / "dcm" / key, tmp_path / "back"))
    assert img.shape == (512, 512, (n_src - 1) * 3 + 1)
    assert img.header.get_zooms()[2] == pytest.approx(1.0 / 3, abs=1e-4)
    _same(img, _reference(ds))
    files = sorted((tmp_path / "dcm" / key).glob("*.dcm"))
    hu = ds.hu.values
    for i, path in enumerate(files):
        f = pydicom.dcmread(path)
        np.testing.assert_array_equal(f.pixel_array.astype(np.int32) + int(f.RescaleIntercept),
                                      hu[i])
        assert ("GENERATED" in f.DerivationDescription) == bool(i % 3)


@needs_dcm2niix
@pytest.mark.slow
@pytest.mark.realdata
def test_jpeg2000_patient_dicom_round_trip(human_dir: pathlib.Path,
                                           tmp_path: pathlib.Path) -> None:
    """A patient series (JPEG 2000 source) exported as DICOM: dcm2niix converts our
    series to the same voxels and geometry as it converts the scanner's."""
    src = human_dir / "lidc_idri_0314"
    report = ctvol.ingest(src, tmp_path / "c.zarr")
    (key,) = report.written
    ds = ctvol.open_series(report.store, key)
    folder = ctvol.to_dicom(ds, tmp_path / "dcm")
    ours = nib.load(_dcm2niix(folder, tmp_path / "ours"))
    theirs = nib.as_closest_canonical(nib.load(_dcm2niix(src, tmp_path / "theirs")))
    _same(ours, theirs)
    _same(ours, _reference(ds))
    f = pydicom.dcmread(min(folder.iterdir()))
    assert f.PatientID == ds.attrs["patient_id"] and f.SeriesInstanceUID != key


@pytest.mark.slow
@pytest.mark.realdata
def test_tilted_series_geometry_from_the_files(shared_dir: pathlib.Path,
                                               tmp_path: pathlib.Path) -> None:
    """Philips STEREOTAXIS (gantry tilt -18.5 deg): the NIfTI sform puts every slice
    at its file's ImagePositionPatient (sheared); the DICOM export re-ingests with
    the same tilt, positions and HU. (dcm2niix's own geometry for tilted stacks is
    not the DICOM one, so the files are the reference here; docs/export.md.)"""
    src = shared_dir / "S21610" / "S2010"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        report = ctvol.ingest(src, tmp_path / "c.zarr")
        (key,) = report.written
        ds = ctvol.open_series(report.store, key)
        img = nib.load(ctvol.to_nifti(ds, tmp_path / "t.nii.gz"))
        folder = ctvol.to_dicom(ds, tmp_path / "dcm")
        back = ctvol.ingest(folder, tmp_path / "back.zarr")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in src.iterdir()
               if p.name != "DIRFILE"]
    by_sop = {str(h.SOPInstanceUID): h for h in headers}
    for k, sop in enumerate(ds.sop_uid.values):
        ipp = np.array(by_sop[sop].ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(img.affine @ [0, 0, k, 1], [-ipp[0], -ipp[1], ipp[2], 1],
                                   atol=1e-3)
    (again,) = back.written
    re = ctvol.open_series(back.store, again)
    assert re.attrs["tilt_deg"] == pytest.approx(ds.attrs["tilt_deg"], abs=1e-3)
    np.testing.assert_allclose(re.position.values, ds.position.values, atol=1e-3)
    np.testing.assert_array_equal(re.hu.values, ds.hu.values)
