"""What real exports contain: anonymised UIDs, multi-frame CT, every codec a PACS emits.

Every case starts from the bundled real sample (Philips head CT, data/sample),
rewritten to ``tmp_path`` with pydicom, and must ingest to the HU pydicom
computes from the same files.
"""

from __future__ import annotations

import copy
import pathlib
import re
import warnings
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import ctvol
from ctvol.errors import IngestWarning

N_SLICES = 8  # of the sample's 30: enough for a volume, cheap to rewrite and decode


def _sample_slices(sample_dir: pathlib.Path, n: int = N_SLICES) -> list[pathlib.Path]:
    files = sorted((sample_dir / "S21570" / "S2020").glob("I*"),
                   key=lambda p: int(p.name[1:]))
    return files[:n]


def _copy(sample_dir: pathlib.Path, out: pathlib.Path,
          edit: Callable[[pydicom.Dataset], None] | None = None,
          n: int = N_SLICES) -> list[pathlib.Path]:
    """Copies of the first ``n`` sample slices in ``out``, each passed through ``edit``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for src in _sample_slices(sample_dir, n):
        ds = pydicom.dcmread(src)
        if edit is not None:
            edit(ds)
        if ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRBigEndian:
            pydicom.dcmwrite(out / src.name, ds, implicit_vr=False, little_endian=False,
                             force_encoding=True)
        else:
            ds.save_as(out / src.name, enforce_file_format=True)
        paths.append(out / src.name)
    return paths


def _reference(sample_dir: pathlib.Path, n: int = N_SLICES) -> tuple[np.ndarray, np.ndarray]:
    """pydicom's HU and z of the source slices, in z order."""
    dss = [pydicom.dcmread(p) for p in _sample_slices(sample_dir, n)]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack([apply_modality_lut(d.pixel_array, d) for d in dss])
    return hu, np.array([float(d.ImagePositionPatient[2]) for d in dss])


def _only_series(report: ctvol.IngestReport) -> str:
    (key,) = ctvol.list_series(report.store)
    return key


# --------------------------------------------------------------------------- UIDs


def _drop(*names: str) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        for name in names:
            delattr(ds, name)
    return edit


def _blank(*names: str) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        for name in names:
            setattr(ds, name, "")
    return edit


UID_CASES = {
    "SeriesInstanceUID removed": (_drop("SeriesInstanceUID"), "no SeriesInstanceUID"),
    "SeriesInstanceUID blank": (_blank("SeriesInstanceUID"), "no SeriesInstanceUID"),
    "SOPInstanceUID removed": (_drop("SOPInstanceUID"), "no SOPInstanceUID"),
    "SOPInstanceUID blank": (_blank("SOPInstanceUID"), "no SOPInstanceUID"),
    "all UIDs blank": (_blank("SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID",
                              "FrameOfReferenceUID"), "no (?:SeriesInstanceUID|SOPInstanceUID)"),
}


@pytest.mark.parametrize("case", list(UID_CASES), ids=list(UID_CASES))
def test_missing_or_blank_uids_still_place_every_slice(
        case: str, sample_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    edit, message = UID_CASES[case]
    src = tmp_path / "in"
    _copy(sample_dir, src, edit)
    with pytest.warns(IngestWarning, match=message):
        report = ctvol.ingest(src, tmp_path / "a.zarr")
    key = _only_series(report)
    ds = ctvol.open_series(report.store, key)
    hu, z = _reference(sample_dir)
    np.testing.assert_array_equal(ds.hu.values, hu)
    np.testing.assert_allclose(ds.z.values, z)
    assert (report.files["status"] == "stored").all()
    assert report.files["detail"].str.contains(message).all()
    (row,) = report.series.to_dict("records")
    assert re.search(message, row["warnings"]) and re.search(message, ds.attrs["warnings"][0])
    if "SOP" in case:
        assert all(s.startswith("sha1:") for s in ds.sop_uid.values)
        assert len(set(ds.sop_uid.values)) == N_SLICES
    else:
        assert key.startswith("nouid-") and ds.attrs["series_uid"] == ""
    # The key is deterministic, and a re-run finds the series unchanged.
    with pytest.warns(IngestWarning, match=message):
        again = ctvol.ingest(src, tmp_path / "a.zarr")
    assert again.written == [] and again.unchanged == [key]
    with pytest.warns(IngestWarning, match=message):
        other = ctvol.ingest(src, tmp_path / "b.zarr")
    assert ctvol.list_series(other.store) == [key]


def test_series_without_uids_grouped_by_series_number(sample_dir: pathlib.Path,
                                                      tmp_path: pathlib.Path) -> None:
    def renumber(n: int) -> Callable[[pydicom.Dataset], None]:
        def edit(ds: pydicom.Dataset) -> None:
            _blank("SeriesInstanceUID", "SOPInstanceUID")(ds)
            ds.SeriesNumber = n
        return edit

    _copy(sample_dir, tmp_path / "in" / "a", renumber(7), n=4)
    _copy(sample_dir, tmp_path / "in" / "b", renumber(8), n=4)
    with pytest.warns(IngestWarning, match="no (?:SeriesInstanceUID|SOPInstanceUID)"):
        report = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr")
    keys = ctvol.list_series(report.store)
    assert [k.split("-")[1] for k in keys] == ["7", "8"]
    stored = report.files[report.files["status"] == "stored"]
    assert stored.groupby("key").size().to_dict() == {keys[0]: 4, keys[1]: 4}


# --------------------------------------------------------------------------- multi-frame


def _multiframe(sample_dir: pathlib.Path, out: pathlib.Path, *, n: int = N_SLICES,
                transfer_syntax: str | None = None,
                edit: Callable[[pydicom.Dataset], None] | None = None) -> pathlib.Path:
    """A Legacy Converted Enhanced CT (highdicom) of the first ``n`` sample slices."""
    hd = pytest.importorskip("highdicom", reason="pip install highdicom (test extra)")
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    dss = [pydicom.dcmread(p) for p in _sample_slices(sample_dir, n)]
    with warnings.catch_warnings():  # highdicom: the phantom's PatientName "HEAD"
        warnings.filterwarnings("ignore", "The string .* person name", UserWarning)
        mf = LegacyConvertedEnhancedCTImage(
            dss, series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(),
            instance_number=1, transfer_syntax_uid=transfer_syntax)
    if edit is not None:
        edit(mf)
    out.parent.mkdir(parents=True, exist_ok=True)
    mf.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize("ts", [None, pydicom.uid.JPEG2000Lossless],
                         ids=["native", "jpeg2000-lossless"])
def test_multiframe_equals_its_single_frame_source(ts: str | None, sample_dir: pathlib.Path,
                                                   tmp_path: pathlib.Path) -> None:
    path = _multiframe(sample_dir, tmp_path / "mf" / "enhanced.dcm", transfer_syntax=ts)
    mf = ctvol.ingest(path.parent, tmp_path / "mf.zarr")
    _copy(sample_dir, tmp_path / "sf")
    sf = ctvol.ingest(tmp_path / "sf", tmp_path / "sf.zarr")
    a = ctvol.open_series(mf.store, _only_series(mf))
    b = ctvol.open_series(sf.store, _only_series(sf))
    np.testing.assert_array_equal(a.hu.values, b.hu.values)
    for name in ("z", "y", "x", "position"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    for attr in ("spacing", "origin", "orientation", "normal", "tilt_deg"):
        assert a.attrs[attr] == b.attrs[attr], attr
    # Every frame accounted for: one catalog row per (file, frame).
    files = mf.files
    assert list(files["path"]) == [str(path)] * N_SLICES
    assert sorted(files["frame"]) == list(range(1, N_SLICES + 1))
    assert (files["status"] == "stored").all()
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    assert sorted(a.sop_uid.values) == sorted(f"{uid}#{k}" for k in range(1, N_SLICES + 1))
    again = ctvol.ingest(path.parent, tmp_path / "mf.zarr")
    assert again.written == [] and again.unchanged == [_only_series(mf)]


def test_enhanced_ct_with_per_frame_rescale(sample_dir: pathlib.Path,
                                            tmp_path: pathlib.Path) -> None:
    """Enhanced CT Image Storage with a rescale per frame: each frame's own
    Pixel Value Transformation is applied (frame 3's intercept is 10 HU lower
    and its stored values 10 higher, so its HU are unchanged only if it is)."""
    def enhanced(ds: pydicom.Dataset) -> None:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
        pvt = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
        del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
        for k, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
            frame.PixelValueTransformationSequence = copy.deepcopy(pvt)
            if k == 2:
                frame.PixelValueTransformationSequence[0].RescaleIntercept = \
                    float(pvt[0].RescaleIntercept) - 10
        arr = ds.pixel_array.copy()
        arr[2] += 10
        ds.PixelData = arr.tobytes()

    path = _multiframe(sample_dir, tmp_path / "in" / "enhanced.dcm", edit=enhanced)
    report = ctvol.ingest(path.parent, tmp_path / "c.zarr")
    ds = ctvol.open_series(report.store, _only_series(report))
    hu, z = _reference(sample_dir)
    np.testing.assert_array_equal(ds.hu.values, hu)
    np.testing.assert_allclose(ds.z.values, z)


def _shift_frames(first: int, dz: float) -> Callable[[pydicom.Dataset], None]:
    """Move frames ``first..`` ``dz`` mm further in the direction the frames advance
    (``dz=0``: frame ``first`` onto frame ``first - 1``)."""
    def edit(ds: pydicom.Dataset) -> None:
        frames = ds.PerFrameFunctionalGroupsSequence
        z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in frames]
        step = float(np.sign(z[first] - z[first - 1]))
        for k in range(first, len(frames)):
            pos = frames[k].PlanePositionSequence[0]
            x, y, _ = (float(v) for v in pos.ImagePositionPatient)
            pos.ImagePositionPatient = [x, y, z[first - 1] if dz == 0 and k == first
                                        else z[k] + step * dz]
    return edit


def test_multiframe_gap_is_split_into_runs(sample_dir: pathlib.Path,
                                           tmp_path: pathlib.Path) -> None:
    path = _multiframe(sample_dir, tmp_path / "in" / "mf.dcm", edit=_shift_frames(4, 3.0))
    with pytest.warns(ctvol.errors.GeometryWarning, match="uneven spacing"):
        report = ctvol.ingest(path.parent, tmp_path / "c.zarr")
    keys = ctvol.list_series(report.store)
    assert [k[-3:] for k in keys] == ["_r1", "_r2"]
    assert [ctvol.open_series(report.store, k).sizes["z"] for k in keys] == [4, 4]
    runs = report.files.groupby("key")["frame"].apply(sorted).to_dict()
    assert sorted(runs.values()) == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_multiframe_frames_at_one_position_refuse_the_series(
        sample_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    path = _multiframe(sample_dir, tmp_path / "in" / "mf.dcm", edit=_shift_frames(4, 0.0))
    report = ctvol.ingest(path.parent, tmp_path / "c.zarr")
    assert ctvol.list_series(report.store) == []
    assert set(report.files["reason"]) == {"series-refused"}
    assert report.files["detail"].str.contains("same position").all()
    assert sorted(report.files["frame"]) == list(range(1, N_SLICES + 1))


def test_multiframe_with_two_stacks_is_split(sample_dir: pathlib.Path,
                                             tmp_path: pathlib.Path) -> None:
    half = N_SLICES // 2

    def two_stacks(ds: pydicom.Dataset) -> None:
        # Frames half.. become a second stack at the positions of frames 0..half-1.
        frames = ds.PerFrameFunctionalGroupsSequence
        for k in range(half, N_SLICES):
            frames[k].FrameContentSequence[0].StackID = "2"
            frames[k].PlanePositionSequence[0].ImagePositionPatient = \
                frames[k - half].PlanePositionSequence[0].ImagePositionPatient

    path = _multiframe(sample_dir, tmp_path / "in" / "two.dcm", edit=two_stacks)
    with pytest.warns(ctvol.errors.GeometryWarning, match="mixes stack"):
        report = ctvol.ingest(path.parent, tmp_path / "c.zarr")
    keys = ctvol.list_series(report.store)
    assert [k[-3:] for k in keys] == ["_p1", "_p2"]
    assert [ctvol.open_series(report.store, k).sizes["z"] for k in keys] == [half, half]
    assert (report.files["status"] == "stored").all() and len(report.files) == N_SLICES


def test_multiframe_without_positions_is_refused(sample_dir: pathlib.Path,
                                                 tmp_path: pathlib.Path) -> None:
    def no_positions(ds: pydicom.Dataset) -> None:
        for item in ds.PerFrameFunctionalGroupsSequence:
            del item.PlanePositionSequence

    path = _multiframe(sample_dir, tmp_path / "in" / "mf.dcm", edit=no_positions, n=3)
    report = ctvol.ingest(path.parent, tmp_path / "c.zarr")
    (row,) = report.files.to_dict("records")
    assert (row["status"], row["reason"]) == ("excluded", "multi-frame")
    assert "frame 1 of 3 has no ImagePositionPatient" in row["detail"]


# --------------------------------------------------------------------------- codecs


def _encapsulate(ds: pydicom.Dataset, frame: bytes, uid: str) -> None:
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid


def _imagecodecs_jpeg(lossless: bool) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        ic = pytest.importorskip("imagecodecs", reason="pip install imagecodecs (test extra): "
                                 "the only pip JPEG encoder for 12-bit and lossless JPEG")
        arr = ds.pixel_array
        if lossless:  # process 14, selection value 1, 12-bit precision as stored
            data = ic.jpeg8_encode(arr, lossless=True, predictor=1, bitspersample=12)
            _encapsulate(ds, data, pydicom.uid.JPEGLosslessSV1)
        else:  # process 4: the lossy JPEG a PACS uses for 12-bit CT
            data = ic.jpeg8_encode(arr, level=90, bitspersample=12)
            _encapsulate(ds, data, pydicom.uid.JPEGExtended12Bit)
    return edit


def _compress(uid: str, **kw: object) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        ds.compress(uid, **kw)
    return edit


def _deflated(ds: pydicom.Dataset) -> None:
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian


def _big_endian(ds: pydicom.Dataset) -> None:
    # pydicom writes OW bytes as given: the pixels must be big-endian words.
    ds.PixelData = ds.pixel_array.astype(">u2").tobytes()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian


def _declared_lossy(edit: Callable[[pydicom.Dataset], None]) -> Callable[[pydicom.Dataset], None]:
    def both(ds: pydicom.Dataset) -> None:
        edit(ds)
        ds.LossyImageCompression = "01"
    return both


# (edit, lossless?) per transfer syntax; lossy ones must still ingest, flagged.
CODECS = {
    "JPEG lossless SV1": (_imagecodecs_jpeg(lossless=True), True),
    "JPEG-LS lossless": (_compress(pydicom.uid.JPEGLSLossless), True),
    "JPEG 2000 lossless": (_compress(pydicom.uid.JPEG2000Lossless), True),
    "RLE lossless": (_compress(pydicom.uid.RLELossless), True),
    "Deflated explicit LE": (_deflated, True),
    "Explicit VR big endian": (_big_endian, True),
    "JPEG extended 12-bit (lossy)": (_imagecodecs_jpeg(lossless=False), False),
    "JPEG-LS near-lossless": (_compress(pydicom.uid.JPEGLSNearLossless, jls_error=3), False),
    "JPEG 2000 (lossy)": (_compress(pydicom.uid.JPEG2000, j2k_cr=[20]), False),
    "JPEG 2000 (lossy), LossyImageCompression 01": (
        _declared_lossy(_compress(pydicom.uid.JPEG2000, j2k_cr=[20])), False),
}


@pytest.mark.parametrize("codec", list(CODECS), ids=list(CODECS))
def test_every_transfer_syntax_decodes_to_pydicom_hu(codec: str, sample_dir: pathlib.Path,
                                                     tmp_path: pathlib.Path) -> None:
    edit, lossless = CODECS[codec]
    paths = _copy(sample_dir, tmp_path / "in", edit, n=4)
    ts = str(pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert ts != pydicom.uid.ExplicitVRLittleEndian  # the file really was re-encoded
    report = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr")
    ds = ctvol.open_series(report.store, _only_series(report))
    # The HU pydicom decodes from the very same files, in z order.
    dss = sorted((pydicom.dcmread(p) for p in paths),
                 key=lambda d: float(d.ImagePositionPatient[2]))
    expected = np.stack([apply_modality_lut(d.pixel_array, d) for d in dss])
    np.testing.assert_array_equal(ds.hu.values, expected)
    source, _ = _reference(sample_dir, n=4)
    assert np.array_equal(ds.hu.values, source) == lossless  # lossy ones really are lossy
    files = report.files
    assert (files["status"] == "stored").all() and (files["transfer_syntax"] == ts).all()
    assert (files["lossy"] == (not lossless)).all()
    assert ds.attrs["lossy_compression"] == (not lossless)
    assert ds.attrs["transfer_syntax"] == ts
    assert list(report.series["lossy"]) == [not lossless]
    stored = ctvol.catalog(report.store, level="files")
    assert (stored["lossy"] == (not lossless)).all()


# --------------------------------------------------------------------------- dcm2niix parity


def _parity_multiframe(sample_dir: pathlib.Path, d: pathlib.Path) -> None:
    _multiframe(sample_dir, d / "enhanced.dcm", n=30)


def _parity_blank_uids(sample_dir: pathlib.Path, d: pathlib.Path) -> None:
    _copy(sample_dir, d, _blank("SeriesInstanceUID", "SOPInstanceUID"), n=30)


def _parity_no_series_uid(sample_dir: pathlib.Path, d: pathlib.Path) -> None:
    _copy(sample_dir, d, _drop("SeriesInstanceUID"), n=30)


PARITY_CASES = {
    "multi-frame (legacy converted enhanced CT)": (_parity_multiframe, None),
    "blank SeriesInstanceUID and SOPInstanceUID": (_parity_blank_uids, IngestWarning),
    "no SeriesInstanceUID": (_parity_no_series_uid, IngestWarning),
}


@pytest.mark.slow  # 30 slices of 512^2, built, ingested and converted: 7-25 s here
@pytest.mark.parametrize("case", list(PARITY_CASES), ids=list(PARITY_CASES))
def test_derived_cases_match_dcm2niix(case: str, sample_dir: pathlib.Path,
                                      tmp_path: pathlib.Path,
                                      dcm2niix_parity: Callable[..., None]) -> None:
    build, warns = PARITY_CASES[case]
    src = tmp_path / "in"
    build(sample_dir, src)
    if warns is not None:
        with pytest.warns(warns):
            report = ctvol.ingest(src, tmp_path / "c.zarr")
    else:
        report = ctvol.ingest(src, tmp_path / "c.zarr")
    dcm2niix_parity(report.store, _only_series(report), src, tmp_path)


# --------------------------------------------------------------------------- padding


def _padded(value_hu: int, *, flagged: bool) -> Callable[[pydicom.Dataset], None]:
    """Signed pixels with ``value_hu`` outside the reconstruction circle, as Siemens
    and GE export; ``flagged`` also declares it as PixelPaddingValue."""
    def edit(ds: pydicom.Dataset) -> None:
        raw = ds.pixel_array.astype(np.int16)
        yy, xx = np.mgrid[: ds.Rows, : ds.Columns]
        c = (ds.Rows - 1) / 2
        outside = (yy - c) ** 2 + (xx - c) ** 2 > (0.48 * ds.Rows) ** 2
        pad = value_hu - int(ds.RescaleIntercept)
        raw[outside] = pad
        ds.PixelRepresentation = 1
        ds.PixelData = raw.tobytes()
        if flagged:
            ds.add_new("PixelPaddingValue", "SS", pad)
    return edit


def test_padding_outside_the_fov_is_stored_as_is_and_read_consistently(
        sample_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    from ctvol.curation import body_fraction
    from ctvol.curation._blank import MIN_FRACTION
    from ctvol.metrics import slice_metrics

    vols = {}
    for name, value, flagged in (("-3024", -3024, False), ("-2048", -2048, False),
                                 ("flagged", -3024, True)):
        _copy(sample_dir, tmp_path / name, _padded(value, flagged=flagged), n=4)
        report = ctvol.ingest(tmp_path / name, tmp_path / f"{name}.zarr")
        vols[name] = ctvol.open_series(report.store, _only_series(report))
    a, b, c = (vols[k].hu.values for k in ("-3024", "-2048", "flagged"))
    outside = a == -3024
    assert 0.05 < outside.mean() < 0.5  # the ring outside the circle, not the phantom
    # Unflagged padding is stored as the modality LUT gives it (as dcm2niix does) ...
    assert (b[outside] == -2048).all() and (b[~outside] == a[~outside]).all()
    # ... PixelPaddingValue padding is filled with padding_fill (-1024, air).
    assert (c[outside] == -1024).all() and (c[~outside] == a[~outside]).all()
    # Metrics window to [-1024, 1024] HU: any padding value is air, identical.
    for other in (b, c):
        m = slice_metrics(a, other)
        assert np.isinf(m[:, 0]).all() and (m[:, 2] == 0).all()
    # The blank rule: padding below -1500 HU is outside the field of view,
    # whichever value; filled padding (-1024) counts as air inside it. The
    # fractions differ by the ring's share, the decisions do not.
    px = tuple(vols["-3024"].attrs["spacing"][1:])
    fa, fb, fc = (body_fraction(v, px) for v in (a, b, c))
    np.testing.assert_array_equal(fa, fb)
    assert (fc < fa).all()
    assert ((fa < MIN_FRACTION) == (fc < MIN_FRACTION)).all()
    # Linear reslice keeps padding where both neighbours are padding.
    fine = ctvol.reslice(vols["-3024"], 2, method="linear").hu.values
    assert (fine[1][outside[0] & outside[1]] == -3024).all()
