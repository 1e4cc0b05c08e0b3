"""to_nifti / to_dicom on phantom series: geometry from the DICOM files themselves
(read back with pydicom, not through ctvol), voxels, derivation marks, errors."""

from __future__ import annotations

import gzip
import pathlib
import sys
import warnings

import numpy as np
import pydicom
import pytest
import xarray as xr

import ctvol
from ctvol.errors import (
    ExportError,
    GeometryError,
    GeometryWarning,
    HounsfieldRangeError,
    OutputExistsError,
)
from ctvol.testing import head_phantom, write_dicom_series

nib = pytest.importorskip("nibabel")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _ingested(tmp: pathlib.Path, tilt: float = 0.0, orientation=(1, 0, 0, 0, 1, 0),
              n: int = 6) -> tuple[xr.Dataset, list[pydicom.Dataset]]:
    hu = head_phantom((n, 24, 32), seed=1)
    paths = write_dicom_series(tmp / "dcm", hu, spacing=(2.5, 0.6, 0.7), tilt_deg=tilt,
                               orientation=orientation, origin=(-10.0, 20.0, 50.0),
                               patient_id="PAT-7", series_description="phantom")
    with warnings.catch_warnings():  # the tilt warning: tested in test_ingest
        warnings.simplefilter("ignore", GeometryWarning)
        report = ctvol.ingest(tmp / "dcm", tmp / "c.zarr")
    (key,) = report.written
    files = [pydicom.dcmread(p) for p in paths]  # in spatial order
    return ctvol.open_series(report.store, key), files


@pytest.mark.parametrize("tilt", [0.0, -18.5])
def test_nifti_affine_places_every_slice_at_its_dicom_position(
        tmp_path: pathlib.Path, tilt: float) -> None:
    """sform: voxel (i, j, k) -> RAS of IPP_k + i·dx·row + j·dy·col, from the files."""
    ds, files = _ingested(tmp_path, tilt)
    if tilt:
        assert ds.attrs["tilt_deg"] == pytest.approx(tilt, abs=0.01)
    img = nib.load(ctvol.to_nifti(ds, tmp_path / "v.nii.gz"))
    assert img.shape == (32, 24, 6) and img.get_data_dtype() == np.int16
    hdr = nib.Nifti1Header.from_fileobj(gzip.open(tmp_path / "v.nii.gz"))
    assert (float(hdr["scl_slope"]), float(hdr["scl_inter"])) == (1.0, 0.0)
    assert int(hdr["qform_code"]) == int(hdr["sform_code"]) == 1
    sform = img.header.get_sform()
    for k, f in enumerate(files):
        ipp = np.array(f.ImagePositionPatient, dtype=float)
        iop = np.array(f.ImageOrientationPatient, dtype=float)
        dy, dx = (float(v) for v in f.PixelSpacing)
        for i, j in ((0, 0), (31, 0), (0, 23), (5, 7)):
            lps = ipp + i * dx * iop[:3] + j * dy * iop[3:]
            np.testing.assert_allclose(sform @ [i, j, k, 1], [*(LPS_TO_RAS @ lps), 1],
                                       atol=1e-4)
        # NIfTI voxel (i, j, k) is pixel (row j, column i) of slice k
        np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, k].T,
                                      f.pixel_array.astype(int) + int(f.RescaleIntercept))
    qform = img.header.get_qform()
    np.testing.assert_allclose(qform[:3, :2], sform[:3, :2], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(qform[:3, 2]), ds.attrs["spacing"][0], atol=1e-4)
    side = (tmp_path / "v.json").read_text()
    assert "SeriesInstanceUID" in side and "PAT-7" not in side  # no patient identifiers


def test_nifti_oblique_orientation_and_blocks(tmp_path: pathlib.Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotated (oblique) orientation; blocks smaller than the series (streaming)."""
    c, s = np.cos(0.3), np.sin(0.3)
    ds, files = _ingested(tmp_path, orientation=(c, s, 0, -s, c, 0), n=7)
    from ctvol.io import _grid

    monkeypatch.setattr(_grid, "block_size", 3)
    img = nib.load(ctvol.to_nifti(ds, tmp_path / "v.nii"))
    k = 6
    ipp = np.array(files[k].ImagePositionPatient, dtype=float)
    np.testing.assert_allclose(img.affine @ [0, 0, k, 1], [*(LPS_TO_RAS @ ipp), 1], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), ds.hu.values)


def test_reslice_output_positions_and_tilt(tmp_path: pathlib.Path) -> None:
    """A reslice output of a tilted series: acquired slices at their DICOM positions,
    generated ones on the sheared line between them (positions carried by reslice or,
    without them, rebuilt from z and tilt_deg: the same affine)."""
    ds, files = _ingested(tmp_path, -18.5)
    fine = ctvol.reslice(ds, 3, method="linear")
    img = nib.load(ctvol.to_nifti(fine, tmp_path / "f.nii.gz"))
    assert img.shape[2] == 16
    for k, f in enumerate(files):
        ipp = np.array(f.ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(img.affine @ [0, 0, 3 * k, 1], [*(LPS_TO_RAS @ ipp), 1],
                                   atol=1e-3)
    rebuilt = nib.load(ctvol.to_nifti(fine.drop_vars("position"), tmp_path / "g.nii.gz"))
    np.testing.assert_allclose(rebuilt.affine, img.affine, atol=1e-3)
    side = (tmp_path / "f.json").read_text()
    assert '"generated_slices"' in side and '"method": "linear"' in side


def test_inplane_upsampled_output_voxels_sit_at_their_coordinates(
        tmp_path: pathlib.Path) -> None:
    """An upsample output (new pixel centres, shifted positions): NIfTI voxel (i, j, k)
    lies at x[i] along the row cosine, y[j] along the column cosine, z[k] along the
    normal, and DICOM PixelSpacing is the new spacing."""
    ds, _ = _ingested(tmp_path, orientation=(0.8, 0.6, 0, -0.6, 0.8, 0))
    up = ctvol.upsample_inplane(ds, 2, method="bilinear")
    img = nib.load(ctvol.to_nifti(up, tmp_path / "u.nii.gz"))
    assert img.shape == (64, 48, 6)
    o = np.array(up.attrs["orientation"])
    for i, j, k in ((0, 0, 0), (63, 5, 2), (7, 47, 5)):
        lps = LPS_TO_RAS @ (img.affine @ [i, j, k, 1])[:3]
        assert lps @ o[:3] == pytest.approx(up.x.values[i], abs=1e-4)
        assert lps @ o[3:] == pytest.approx(up.y.values[j], abs=1e-4)
        assert lps @ np.cross(o[:3], o[3:]) == pytest.approx(up.z.values[k], abs=1e-4)
    f = pydicom.dcmread(sorted(ctvol.to_dicom(up, tmp_path / "d").iterdir())[0])
    assert [float(v) for v in f.PixelSpacing] == pytest.approx([0.3, 0.35])


def test_dicom_round_trip_through_ingest(tmp_path: pathlib.Path) -> None:
    """Export a reslice output; pydicom reads every file; ctvol ingest reads the series
    back with the same HU, positions and spacing, as one new series."""
    ds, files = _ingested(tmp_path, 0.0)
    fine = ctvol.reslice(ds, 3, method="linear")
    folder = ctvol.to_dicom(fine, tmp_path / "out")
    out = sorted(folder.iterdir())
    assert len(out) == 16
    read = [pydicom.dcmread(p) for p in out]
    src_sops = [str(f.SOPInstanceUID) for f in files]
    assert len({str(r.SOPInstanceUID) for r in read}) == 16
    assert {str(r.SeriesInstanceUID) for r in read} != {ds.attrs["series_uid"]}
    assert len({str(r.SeriesInstanceUID) for r in read}) == 1
    for i, r in enumerate(read):
        assert list(r.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert r.PatientID == "PAT-7" and r.StudyInstanceUID == ds.attrs["study_uid"]
        assert r.FrameOfReferenceUID == ds.attrs["frame_of_reference_uid"]
        assert (float(r.RescaleSlope), float(r.RescaleIntercept)) == (1.0, -1024.0)
        assert float(r.SpacingBetweenSlices) == pytest.approx(2.5 / 3)
        assert float(r.SliceThickness) == pytest.approx(2.5 / 3)
        np.testing.assert_array_equal(r.pixel_array.astype(int) - 1024, fine.hu.values[i])
        refs = [str(s.ReferencedSOPInstanceUID) for s in r.SourceImageSequence]
        if i % 3:
            assert r.DerivationDescription.startswith("GENERATED by ctvol")
            assert "method linear" in r.DerivationDescription
            assert refs == [src_sops[i // 3], src_sops[i // 3 + 1]]
        else:
            assert r.DerivationDescription.startswith(f"ACQUIRED slice {i // 3} ")
            # the last history record, rendered as a line
            assert r.DerivationDescription.endswith(
                f"history: ctvol {ctvol.__version__} reslice(factor=3, keep_every=1, "
                "method='linear')")
            assert refs == [src_sops[i // 3]]
            np.testing.assert_array_equal(r.ImagePositionPatient,
                                          files[i // 3].ImagePositionPatient)
    back = ctvol.ingest(folder, tmp_path / "back.zarr")
    (key,) = back.written
    again = ctvol.open_series(back.store, key)
    np.testing.assert_array_equal(again.hu.values, fine.hu.values)
    np.testing.assert_allclose(again.z.values, fine.z.values, atol=1e-4)
    np.testing.assert_allclose(again.attrs["spacing"], fine.attrs["spacing"], rtol=1e-5)
    # Same content, same UIDs: a re-export is the same DICOM instances.
    again_folder = ctvol.to_dicom(fine, tmp_path / "out2")
    assert [p.name for p in sorted(again_folder.iterdir())] == [p.name for p in out]
    assert pydicom.dcmread(sorted(again_folder.iterdir())[4]).SOPInstanceUID == \
        read[4].SOPInstanceUID


def test_dicom_copies_patient_and_study_from_a_given_header(tmp_path: pathlib.Path) -> None:
    ds, files = _ingested(tmp_path)
    folder = ctvol.to_dicom(ds, tmp_path / "out", header=files[0].filename)
    r = pydicom.dcmread(sorted(folder.iterdir())[0])
    assert r.PatientName == files[0].PatientName == "PAT-7"
    assert r.StudyInstanceUID == files[0].StudyInstanceUID
    assert r.SliceThickness == files[0].SliceThickness  # acquired grid: the header's
    plain = ctvol.to_dicom(ds, tmp_path / "plain")
    assert pydicom.dcmread(sorted(plain.iterdir())[0]).PatientName == ""


def _volume(z: list[float], hu: np.ndarray | None = None) -> xr.Dataset:
    hu = np.zeros((len(z), 4, 4), np.int16) if hu is None else hu
    return xr.Dataset({"hu": (("z", "y", "x"), hu)},
                      coords={"z": z, "y": np.arange(4.0), "x": np.arange(4.0)},
                      attrs={"series_uid": "1.2.3"})


@pytest.mark.parametrize("writer", ["to_nifti", "to_dicom"])
@pytest.mark.parametrize(("ds", "exc", "match"), [
    (_volume([0.0, 1.0, 3.0]), GeometryError, r"series 1\.2\.3: the z coordinate is not evenly"),
    (_volume([0.0, 1.0], np.full((2, 4, 4), 1e6)), HounsfieldRangeError,
     r"series 1\.2\.3: .*1e\+06 HU, outside int16; clip"),
    (_volume([0.0, 1.0]).rename({"z": "t"}), ValueError, r"dims \('z', 'y', 'x'\)"),
])
def test_errors_name_the_series_and_the_fix(tmp_path: pathlib.Path, writer: str,
                                            ds: xr.Dataset, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        getattr(ctvol, writer)(ds, tmp_path / ("v.nii.gz" if writer == "to_nifti" else "d"))
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_dicom_refuses_hu_beyond_the_stored_range_and_foreign_folders(
        tmp_path: pathlib.Path) -> None:
    hot = _volume([0.0, 1.0], np.full((2, 4, 4), 32000, np.int16))
    with pytest.raises(HounsfieldRangeError, match=r"reach 32000 HU.*at most 31743 HU"):
        ctvol.to_dicom(hot, tmp_path / "d")
    assert not list(tmp_path.iterdir())
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mine.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="exists and is not empty"):
        ctvol.to_dicom(_volume([0.0, 1.0]), tmp_path / "d")
    assert isinstance(OutputExistsError("x"), FileExistsError)
    pet = _volume([0.0, 1.0]).assign_attrs(modality="PT")
    with pytest.raises(ExportError, match=r"series 1\.2\.3 has modality 'PT'.*to_nifti"):
        ctvol.to_dicom(pet, tmp_path / "pet")
    assert isinstance(ExportError("x"), ValueError)


def test_nifti_without_nibabel_names_the_install(tmp_path: pathlib.Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(ImportError, match=r"pip install 'ctvol\[nifti\]'"):
        ctvol.to_nifti(_volume([0.0, 1.0]), tmp_path / "v.nii.gz")
