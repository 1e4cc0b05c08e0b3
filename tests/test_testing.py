"""Tests for ctvol.testing: the phantom, the DICOM writer and the helpers."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest

from ctvol.testing import (
    head_phantom,
    raise_if_dask_computes,
    truncate_file,
    write_dicom_series,
    write_dicomdir,
    write_non_dicom,
)

pydicom = pytest.importorskip("pydicom")

SHAPE = (4, 32, 32)


@pytest.fixture(scope="module")
def hu() -> np.ndarray:
    return head_phantom(SHAPE)


def read_hu(paths: list[pathlib.Path]) -> np.ndarray:
    """Read a series back as HU, in the order given."""
    from pydicom.pixels import apply_modality_lut

    slices = []
    for p in paths:
        ds = pydicom.dcmread(p)
        slices.append(apply_modality_lut(ds.pixel_array, ds))
    return np.stack(slices)


def positions_and_normal(paths: list[pathlib.Path]) -> tuple[np.ndarray, np.ndarray]:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    iop = np.array(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([h.ImagePositionPatient for h in headers], dtype=float)
    return positions, normal


# ---- phantom ----------------------------------------------------------------


def test_phantom_is_deterministic_int16(hu: np.ndarray) -> None:
    assert hu.shape == SHAPE
    assert hu.dtype == np.int16
    np.testing.assert_array_equal(head_phantom(SHAPE, seed=0), hu)
    assert not np.array_equal(head_phantom(SHAPE, seed=1), hu)


def test_phantom_hu_ranges() -> None:
    vol = head_phantom((16, 64, 64))
    # Air is exactly -1000 HU and fills the corners.
    assert (vol[:, :3, :3] == -1000).all()
    assert vol.min() == -1000
    # Bone reaches ~+1000 HU (noise sd 5 HU); nothing exceeds it by much.
    assert 990 <= vol.max() <= 1040
    # Brain ~ +40 HU and the ventricle ~ +5 HU dominate the soft-tissue range.
    soft = vol[(vol > -100) & (vol < 100)]
    assert soft.size > 0.15 * vol.size
    brain = vol[(vol > 25) & (vol < 60)]
    assert abs(np.median(brain) - 40) < 3
    assert ((vol > -10) & (vol < 20)).sum() > 50  # the ventricle
    assert ((vol > 250) & (vol < 350)).sum() > 0  # the bright spot
    assert 3 < np.std(brain) < 8  # ~5 HU noise


def test_phantom_slices_differ_but_are_related() -> None:
    vol = head_phantom((16, 64, 64)).astype(float)
    step = np.abs(np.diff(vol, axis=0)).mean(axis=(1, 2))
    assert (step > 0).all()
    # Neighbours are closer than slices far apart: interpolation is meaningful.
    assert np.abs(vol[0] - vol[1]).mean() < np.abs(vol[0] - vol[-1]).mean()
    # The head shrinks along z.
    head_area = (vol > -500).sum(axis=(1, 2))
    assert head_area[0] > head_area[-1]


@pytest.mark.parametrize("shape", [(3, 16, 15), (3, 15, 16), (0, 32, 32), (32, 32)])
def test_phantom_rejects_small_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        head_phantom(shape)  # type: ignore[arg-type]


def test_phantom_minimal_shape() -> None:
    vol = head_phantom((1, 16, 16))
    assert vol.shape == (1, 16, 16)
    assert vol.max() > 500  # the skull ring is resolved


# ---- writer round trip --------------------------------------------------------


@pytest.mark.parametrize("transfer_syntax", ["explicit", "implicit", "jpeg2000", "rle"])
@pytest.mark.parametrize(
    ("pixel_representation", "bits_stored", "slope", "intercept"),
    [
        (0, 12, 1.0, -1024.0),
        (0, 16, 0.5, -1024.0),
        (1, 16, 1.0, 0.0),
        (1, 13, 0.5, -1024.0),
    ],
)
def test_round_trip(
    tmp_path: pathlib.Path,
    hu: np.ndarray,
    transfer_syntax: str,
    pixel_representation: int,
    bits_stored: int,
    slope: float,
    intercept: float,
) -> None:
    paths = write_dicom_series(
        tmp_path,
        hu,
        transfer_syntax=transfer_syntax,
        pixel_representation=pixel_representation,
        bits_stored=bits_stored,
        slope=slope,
        intercept=intercept,
    )
    assert len(paths) == SHAPE[0]
    np.testing.assert_array_equal(read_hu(paths), hu)

    ds = pydicom.dcmread(paths[0])
    expected_stored = np.round((hu[0] - intercept) / slope)
    np.testing.assert_array_equal(ds.pixel_array, expected_stored)
    assert ds.pixel_array.dtype == (np.int16 if pixel_representation else np.uint16)
    expected_syntax = {
        "explicit": pydicom.uid.ExplicitVRLittleEndian,
        "implicit": pydicom.uid.ImplicitVRLittleEndian,
        "jpeg2000": pydicom.uid.JPEG2000Lossless,
        "rle": pydicom.uid.RLELossless,
    }[transfer_syntax]
    assert ds.file_meta.TransferSyntaxUID == expected_syntax
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, bits_stored, bits_stored - 1)
    assert ds.PixelRepresentation == pixel_representation
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (slope, intercept)
    assert ds.RescaleType == "HU"


def test_dataset_attributes(tmp_path: pathlib.Path, hu: np.ndarray) -> None:
    paths = write_dicom_series(
        tmp_path, hu, spacing=(2.5, 0.6, 0.4), series_number=7, patient_id="P1"
    )
    headers = [pydicom.dcmread(p) for p in paths]
    ds = headers[0]
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.CTImageStorage
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert len({h.SOPInstanceUID for h in headers}) == len(headers)
    for attr in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({h[attr].value for h in headers}) == 1
    assert [h.InstanceNumber for h in headers] == [1, 2, 3, 4]
    assert (ds.Modality, ds.PatientID, ds.SeriesNumber) == ("CT", "P1", 7)
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert (ds.Manufacturer, ds.ConvolutionKernel) == ("ctvol-testing", "STANDARD")
    assert [float(v) for v in ds.PixelSpacing] == [0.6, 0.4]
    assert float(ds.SliceThickness) == 2.5
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (32, 32, 1)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert "PixelPaddingValue" not in ds
    # Names carry no order, yet the returned list is in spatial order.
    assert all(p.name.startswith("IM") for p in paths)
    assert [p.name for p in paths] != sorted(p.name for p in paths)
    positions, normal = positions_and_normal(paths)
    assert (np.diff(positions @ normal) > 0).all()


def test_options(tmp_path: pathlib.Path, hu: np.ndarray) -> None:
    hu = hu.copy()
    hu[:, 0, 0] = -2000  # raw stored value -2000 - (-1024) = -976
    study = pydicom.uid.generate_uid()
    paths = write_dicom_series(
        tmp_path / "a",
        hu,
        pixel_representation=1,
        padding_value=-976,
        instance_numbers=[4, 3, 2, 1],
        shuffle_names=False,
        sop_class="sc",
        study_uid=study,
        series_uid="1.2.3.4",
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    assert [p.name for p in paths] == [f"slice_{k:04d}.dcm" for k in range(4)]
    headers = [pydicom.dcmread(p) for p in paths]
    ds = headers[0]
    assert [h.InstanceNumber for h in headers] == [4, 3, 2, 1]
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (study, "1.2.3.4")
    assert ds["PixelPaddingValue"].VR == "SS"
    assert ds.PixelPaddingValue == -976
    assert ds.pixel_array[0, 0] == -976
    assert ds.ImageType[2] == "LOCALIZER"
    # Series written with the same study UID share the frame of reference.
    other = write_dicom_series(
        tmp_path / "b", hu, pixel_representation=1, study_uid=study, series_number=2
    )
    assert pydicom.dcmread(other[0]).FrameOfReferenceUID == ds.FrameOfReferenceUID


# ---- geometry ---------------------------------------------------------------


@pytest.mark.parametrize(
    "orientation",
    [
        (1, 0, 0, 0, 1, 0),  # axial
        (0, 1, 0, 0, 0, -1),  # sagittal
        (math.cos(0.3), math.sin(0.3), 0, 0, 0, -1),  # oblique
    ],
)
def test_positions_are_spaced_dz_along_normal(
    tmp_path: pathlib.Path, hu: np.ndarray, orientation: tuple[float, ...]
) -> None:
    paths = write_dicom_series(
        tmp_path, hu, spacing=(1.25, 0.5, 0.5), origin=(10.0, -20.0, 30.5), orientation=orientation
    )
    positions, normal = positions_and_normal(paths)
    np.testing.assert_allclose(positions[0], (10.0, -20.0, 30.5))
    np.testing.assert_allclose(np.diff(positions @ normal), 1.25, atol=1e-9)
    # No in-plane drift: positions move only along the normal.
    drift = positions - positions[0] - np.outer(positions @ normal - positions[0] @ normal, normal)
    np.testing.assert_allclose(drift, 0, atol=1e-9)


def test_philips_gantry_tilt(tmp_path: pathlib.Path, hu: np.ndarray) -> None:
    # Reference: ../shared/data/dcm_qa_ct_philips/S21610/S2010 (STEREOTAXIS),
    # ImageOrientationPatient 1\0\0\0\0.9483237\-0.3173047, GantryDetectorTilt
    # -18.5, positions 2.5 mm apart in z and 2.371 mm apart along the normal.
    dz = 2.5 * math.cos(math.radians(18.5))
    paths = write_dicom_series(tmp_path, hu, spacing=(dz, 0.5, 0.5), tilt_deg=-18.5)
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    np.testing.assert_allclose(
        [float(v) for v in ds.ImageOrientationPatient],
        [1, 0, 0, 0, 0.9483237, -0.3173047],
        atol=1e-7,
    )
    assert float(ds.GantryDetectorTilt) == -18.5
    positions, normal = positions_and_normal(paths)
    np.testing.assert_allclose(np.diff(positions @ normal), dz, atol=1e-9)
    np.testing.assert_allclose(np.diff(positions, axis=0), [[0, 0, 2.5]] * 3, atol=1e-9)
    np.testing.assert_array_equal(read_hu(paths), hu)


# ---- bad options ------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset_hu", "kwargs", "message"),
    [
        (3000, {}, r"span \[3024, .*hold \[0, 4095\]"),
        (0, {"intercept": 0.0}, r"span \[-1000, .*hold \[0, 4095\]"),
        (
            0,
            {"pixel_representation": 1, "bits_stored": 10, "intercept": 0.0},
            r"hold \[-512, 511\]",
        ),
        (0, {"transfer_syntax": "jpegls"}, "transfer_syntax must be one of"),
        (0, {"sop_class": "mr"}, "sop_class must be one of"),
        (0, {"orientation": (1, 0, 0, 1, 0, 0)}, "orthogonal unit vectors"),
        (0, {"instance_numbers": [1, 2]}, "one value per slice"),
        (0, {"padding_value": -1}, "padding_value"),
    ],
)
def test_bad_options_raise(
    tmp_path: pathlib.Path, hu: np.ndarray, offset_hu: int, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_dicom_series(tmp_path, hu + offset_hu, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing written


def test_refuses_to_overwrite(tmp_path: pathlib.Path, hu: np.ndarray) -> None:
    write_dicom_series(tmp_path, hu)
    with pytest.raises(FileExistsError, match="already exist"):
        write_dicom_series(tmp_path, hu)
    write_dicom_series(tmp_path, hu, series_number=2)  # other names


# ---- bad and non-image inputs -------------------------------------------------


def test_write_non_dicom(tmp_path: pathlib.Path) -> None:
    path = write_non_dicom(tmp_path / "sub" / "README")
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(path)


@pytest.mark.parametrize("transfer_syntax", ["explicit", "implicit"])
def test_truncate_file(tmp_path: pathlib.Path, hu: np.ndarray, transfer_syntax: str) -> None:
    path = write_dicom_series(tmp_path, hu, transfer_syntax=transfer_syntax)[0]
    size = path.stat().st_size
    assert truncate_file(path) == path
    assert path.stat().st_size < size - 1000  # about half the 2048 pixel bytes cut
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert header.Rows == 32
    with pytest.raises(ValueError, match="less than expected"):
        _ = pydicom.dcmread(path).pixel_array


def test_truncate_file_rejects_bad_fraction(tmp_path: pathlib.Path, hu: np.ndarray) -> None:
    path = write_dicom_series(tmp_path, hu)[0]
    with pytest.raises(ValueError, match="keep_fraction"):
        truncate_file(path, keep_fraction=1.0)


def test_write_dicomdir(tmp_path: pathlib.Path) -> None:
    path = write_dicomdir(tmp_path)
    assert path == tmp_path / "DICOMDIR"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.MediaStorageDirectoryStorage
    assert "PixelData" not in ds
    assert "SOPClassUID" not in ds


# ---- laziness guard -----------------------------------------------------------


def test_raise_if_dask_computes() -> None:
    da = pytest.importorskip("dask.array")
    with raise_if_dask_computes() as scheduler:
        lazy = (da.ones((4, 4), chunks=2) + 1).sum()  # building a graph is fine
        with pytest.raises(RuntimeError, match=r"Too many computes. Total: 1 > 0"):
            lazy.compute()
    assert scheduler.total_computes == 1

    with raise_if_dask_computes(max_computes=1):
        assert int(lazy.compute()) == 32
        with pytest.raises(RuntimeError, match=r"Total: 2 > 1"):
            np.asarray(lazy)

    assert int(lazy.compute()) == 32  # the default scheduler is back
