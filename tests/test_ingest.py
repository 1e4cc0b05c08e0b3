"""ctvol.ingest: every input file gets a fate; bad input gets a clear message."""

from __future__ import annotations

import pathlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import ctvol
from ctvol.errors import GeometryWarning, NoInputError, StoreError
from ctvol.io._series import REASONS
from ctvol.io.store import FILE_COLUMNS, SERIES_COLUMNS
from ctvol.testing import (
    head_phantom,
    truncate_file,
    write_dicom_series,
    write_dicomdir,
    write_non_dicom,
)

# --------------------------------------------------------------------------- helpers


def _series(d: pathlib.Path, **kw: object) -> list[pathlib.Path]:
    hu = kw.pop("hu", None)
    if hu is None:
        hu = head_phantom((6, 32, 32), seed=int(kw.get("seed", 0)))  # type: ignore[call-overload]
    return write_dicom_series(d, hu, **kw)  # type: ignore[arg-type]


def _edit(path: pathlib.Path, fn: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    fn(ds)
    ds.save_as(path)


def _lut(path: pathlib.Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return apply_modality_lut(ds.pixel_array, ds)


def _stored_hu(store: str, key: str) -> np.ndarray:
    return ctvol.open_series(store, key).hu.values


def _check_nothing_lost(report: ctvol.IngestReport, inputs: pathlib.Path) -> None:
    on_disk = sorted(str(p) for p in inputs.rglob("*") if p.is_file())
    assert sorted(report.files["path"]) == on_disk
    assert set(report.files["status"]) <= {"stored", "excluded"}
    excluded = report.files[report.files["status"] == "excluded"]
    assert (excluded["reason"] != "").all() and (excluded["detail"] != "").all()
    assert set(excluded["reason"]) <= set(REASONS)  # every code is documented
    stored = report.files[report.files["status"] == "stored"]
    for key, n in stored.groupby("key").size().items():
        assert ctvol.open_series(report.store, key).sizes["z"] == n


# --------------------------------------------------------------------------- table


@dataclass
class Fate:
    """Expected outcome for one file (by name) or for the run."""

    file: str | None  # file name whose fate is checked (None: only series checks)
    status: str
    reason: str = ""
    match: str = ""
    n_series: int | None = None  # complete series expected in the store
    warns: type[Warning] | None = None


@dataclass
class Raises:
    exc: type[BaseException]
    match: str


def _truncated(d: pathlib.Path) -> None:
    paths = _series(d, shuffle_names=False)
    truncate_file(paths[3])


def _truncated_compressed(d: pathlib.Path) -> None:
    paths = _series(d, shuffle_names=False, transfer_syntax="jpeg2000")
    truncate_file(paths[-1], keep_fraction=0.7)


def _unreadable(d: pathlib.Path) -> None:
    paths = _series(d, shuffle_names=False)
    raw = paths[-1].read_bytes()
    # Keep the preamble and "DICM", then garbage where the meta group should be.
    paths[-1].write_bytes(raw[:132] + b"\x02\x00\x10\x00UI\xff\xff" + b"\x00" * 16)


def _non_dicom(d: pathlib.Path) -> None:
    _series(d, shuffle_names=False)
    write_non_dicom(d / "notes.txt")


def _missing_ipp(d: pathlib.Path) -> None:
    paths = _series(d, shuffle_names=False)
    _edit(paths[-1], lambda ds: delattr(ds, "ImagePositionPatient"))


def _missing_pixels(d: pathlib.Path) -> None:
    paths = _series(d, shuffle_names=False)
    _edit(paths[-1], lambda ds: delattr(ds, "PixelData"))


def _duplicate_copy(d: pathlib.Path) -> None:
    paths = _series(d, shuffle_names=False)
    shutil.copy(paths[2], d / "zz_copy.dcm")


def _copy_with_other_pixels(d: pathlib.Path, name: str, *, new_sop_uid: bool) -> None:
    """Copy slice 2 of a fresh series to ``name``, changing one pixel."""
    paths = _series(d, shuffle_names=False)
    shutil.copy(paths[2], d / name)

    def change(ds: pydicom.Dataset) -> None:
        arr = ds.pixel_array.copy()
        arr[5, 5] += 7
        ds.PixelData = arr.tobytes()
        if new_sop_uid:
            ds.SOPInstanceUID = pydicom.uid.generate_uid()

    _edit(d / name, change)


def _duplicate_sop_conflict(d: pathlib.Path) -> None:
    _copy_with_other_pixels(d, "zz_conflict.dcm", new_sop_uid=False)


def _same_position_other_pixels(d: pathlib.Path) -> None:
    _copy_with_other_pixels(d, "zz_extra.dcm", new_sop_uid=True)


def _missing_slice(d: pathlib.Path) -> None:
    paths = _series(d, shuffle_names=False)
    paths[3].unlink()


def _mixed_matrix(d: pathlib.Path) -> None:
    uid = pydicom.uid.generate_uid()
    _series(d / "a", series_uid=uid)
    _series(d / "b", series_uid=uid, hu=head_phantom((4, 24, 24)), seed=1)


def _empty(d: pathlib.Path) -> None:
    d.mkdir(parents=True, exist_ok=True)


def _localizer(d: pathlib.Path) -> None:
    _series(d)
    _series(d / "scout", hu=head_phantom((1, 32, 32)), image_type=("ORIGINAL", "PRIMARY",
            "LOCALIZER"), series_number=9, orientation=(0, 1, 0, 0, 0, -1))


def _secondary_capture(d: pathlib.Path) -> None:
    _series(d)
    _series(d / "sc", hu=head_phantom((2, 32, 32)), sop_class="sc", series_number=7,
            image_type=("DERIVED", "SECONDARY"))


def _dicomdir(d: pathlib.Path) -> None:
    _series(d)
    write_dicomdir(d)


def _mr(d: pathlib.Path) -> None:
    _series(d, modality="MR", shuffle_names=False)


def _single_slice(d: pathlib.Path) -> None:
    _series(d, hu=head_phantom((1, 32, 32)), shuffle_names=False)


def _out_of_range(d: pathlib.Path) -> None:
    # Stored values fit uint16, but slope 2 puts them far beyond int16 HU.
    hu = np.full((3, 16, 16), 60000.0)
    _series(d, hu=hu, slope=2.0, intercept=0.0, bits_stored=16, shuffle_names=False)


CASES: dict[str, tuple[Callable[[pathlib.Path], None], Fate | Raises]] = {
    "truncated file": (_truncated, Fate("slice_0003.dcm", "excluded", "truncated",
                                        "truncated: PixelData declares", 2, GeometryWarning)),
    "truncated compressed file": (_truncated_compressed, Fate(
        "slice_0005.dcm", "excluded", "truncated", "no sequence delimiter", 1)),
    "corrupt header": (_unreadable, Fate("slice_0005.dcm", "excluded", "unreadable",
                                         "cannot parse DICOM", 1)),
    "non-DICOM file": (_non_dicom, Fate("notes.txt", "excluded", "not-dicom",
                                        "not a DICOM file", 1)),
    "missing ImagePositionPatient": (_missing_ipp, Fate(
        "slice_0005.dcm", "excluded", "missing-tag", r"ImagePositionPatient \(0020,0032\)", 1)),
    "missing pixel data": (_missing_pixels, Fate("slice_0005.dcm", "excluded", "no-pixel-data",
                                                 "no PixelData", 1)),
    "duplicate SOPInstanceUID (copy)": (_duplicate_copy, Fate(
        "zz_copy.dcm", "excluded", "duplicate", "same SOPInstanceUID .* and pixels as .*"
        "slice_0002.dcm", 1)),
    "duplicate SOPInstanceUID (conflict)": (_duplicate_sop_conflict, Fate(
        "zz_conflict.dcm", "excluded", "series-refused", "share SOPInstanceUID .* differ", 0)),
    "same position, different pixels": (_same_position_other_pixels, Fate(
        "zz_extra.dcm", "excluded", "series-refused", "same position z=.* different pixel",
        0)),
    "one missing slice": (_missing_slice, Fate(None, "stored", n_series=2,
                                               warns=GeometryWarning)),
    "mixed matrix sizes": (_mixed_matrix, Fate(None, "stored", n_series=2,
                                               warns=GeometryWarning)),
    "localizer": (_localizer, Fate(None, "stored", "", "", 1)),
    "secondary capture": (_secondary_capture, Fate(None, "stored", "", "", 1)),
    "DICOMDIR": (_dicomdir, Fate("DICOMDIR", "excluded", "no-pixel-data", "media directory", 1)),
    "non-CT modality": (_mr, Fate("slice_0000.dcm", "excluded", "modality",
                                  r"Modality MR is not in \['CT'\]", 0)),
    "single slice": (_single_slice, Fate("slice_0000.dcm", "excluded", "single-slice",
                                         "a single slice at z=", 0)),
    "HU out of int16": (_out_of_range, Fate("slice_0000.dcm", "excluded", "decode-failed",
                                            "do not fit int16", 0)),
    "empty folder": (_empty, Raises(NoInputError, "no files found")),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input(case: str, tmp_path: pathlib.Path) -> None:
    build, expect = CASES[case]
    inputs = tmp_path / "in"
    build(inputs)
    store = str(tmp_path / "cohort.zarr")
    if isinstance(expect, Raises):
        with pytest.raises(expect.exc, match=expect.match):
            ctvol.ingest(inputs, store)
        return
    if expect.warns:
        with pytest.warns(expect.warns):
            report = ctvol.ingest(inputs, store)
    else:
        report = ctvol.ingest(inputs, store)
    _check_nothing_lost(report, inputs)
    if expect.file is not None:
        row = report.files[report.files["path"].str.endswith("/" + expect.file)].iloc[0]
        assert (row["status"], row["reason"]) == (expect.status, expect.reason)
        assert re.search(expect.match, row["detail"]), row["detail"]
        assert expect.file in row["detail"] or row["path"].endswith(expect.file)
    if expect.n_series is not None:
        assert len(ctvol.list_series(store)) == expect.n_series
    # The catalog in the store says the same as the report.
    assert sorted(ctvol.catalog(store, level="files")["path"]) == sorted(report.files["path"])


def test_missing_slice_split_into_runs_with_gap_recorded(tmp_path: pathlib.Path) -> None:
    _missing_slice(tmp_path / "in")
    with pytest.warns(GeometryWarning, match=r"uneven spacing .* 4 mm step between"):
        report = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr")
    ok = report.series[report.series["status"] == "ok"].sort_values("key")
    assert ok["key"].str[-3:].tolist() == ["_r1", "_r2"]
    assert ok["n_slices"].tolist() == [3, 2]
    assert ok["dz"].tolist() == [2.0, 2.0]
    first = ctvol.open_series(report.store, ok["key"].iloc[0])
    assert "split into 2 runs" in first.attrs["warnings"][0]


def test_refuse_gaps_when_asked(tmp_path: pathlib.Path) -> None:
    _missing_slice(tmp_path / "in")
    report = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr", split_gaps=False)
    assert ctvol.list_series(report.store) == []
    row = report.series.iloc[0]
    assert row["status"] == "refused" and "split_gaps=True" in row["detail"]


def test_mixed_matrix_split_into_parts(tmp_path: pathlib.Path) -> None:
    _mixed_matrix(tmp_path / "in")
    with pytest.warns(GeometryWarning, match="mixes matrix size"):
        report = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr")
    shapes = {k: ctvol.open_series(report.store, k).hu.shape for k in report.written}
    assert sorted(shapes.values()) == [(4, 24, 24), (6, 32, 32)]
    assert sorted(k[-3:] for k in shapes) == ["_p1", "_p2"]


def test_output_is_existing_non_zarr_directory(tmp_path: pathlib.Path) -> None:
    _series(tmp_path / "in")
    out = tmp_path / "not_a_store"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a Zarr store .*precious.txt.* new output path"):
        ctvol.ingest(tmp_path / "in", out)
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me"


def test_output_is_foreign_zarr_group(tmp_path: pathlib.Path) -> None:
    import zarr

    _series(tmp_path / "in")
    zarr.create_array(str(tmp_path / "other.zarr"), shape=(2,), dtype="i2")
    with pytest.raises(StoreError, match="not a ctvol cohort store"):
        ctvol.ingest(tmp_path / "in", tmp_path / "other.zarr")


def test_missing_input_path(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ctvol.ingest(tmp_path / "nope", tmp_path / "c.zarr")


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "kw",
    [
        {"pixel_representation": 0, "intercept": -1024.0},
        {"pixel_representation": 1, "intercept": 0.0, "bits_stored": 16},
        {"slope": 0.5, "intercept": -1024.0, "bits_stored": 16},
        {"transfer_syntax": "jpeg2000"},
        {"transfer_syntax": "rle", "pixel_representation": 1, "intercept": 0.0},
        {"transfer_syntax": "implicit"},
    ],
    ids=["unsigned+intercept", "signed", "slope0.5", "jpeg2000", "rle-signed", "implicit"],
)
def test_stored_hu_equals_pydicom_modality_lut(
    kw: dict[str, object], tmp_path: pathlib.Path
) -> None:
    hu = head_phantom((5, 32, 32), seed=1).astype(np.float64)
    if kw.get("slope") == 0.5:
        hu = hu + 0.5 * (np.arange(hu.size).reshape(hu.shape) % 2)  # fractional HU
    paths = write_dicom_series(tmp_path / "in", hu, **kw)  # type: ignore[arg-type]
    report = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr")
    (key,) = report.written
    ds = ctvol.open_series(report.store, key)
    stored = ds.hu.values
    expected = np.stack([_lut(p) for p in paths])  # paths are in z order
    assert stored.dtype == np.int16
    np.testing.assert_array_equal(stored, np.rint(expected).astype(np.int16))
    max_round = float(np.max(np.abs(np.rint(expected) - expected)))
    assert ds.attrs["max_rounding_error_hu"] == pytest.approx(max_round)
    assert (max_round == 0.5) == (kw.get("slope") == 0.5)


def test_pixel_padding_filled(tmp_path: pathlib.Path) -> None:
    hu = head_phantom((3, 32, 32)).astype(np.float64)
    hu[:, :4, :4] = -3024.0  # raw 0 with intercept -3024: the padding value
    write_dicom_series(tmp_path / "in", hu, intercept=-3024.0, padding_value=0)
    key = ctvol.ingest(tmp_path / "in", tmp_path / "a.zarr").written[0]
    filled = _stored_hu(str(tmp_path / "a.zarr"), key)
    assert (filled[:, :4, :4] == -1024).all()
    np.testing.assert_array_equal(filled[:, 4:, 4:], hu[:, 4:, 4:])
    kept = ctvol.ingest(tmp_path / "in", tmp_path / "b.zarr", padding_fill=None).written[0]
    assert (_stored_hu(str(tmp_path / "b.zarr"), kept)[:, :4, :4] == -3024).all()


def test_instance_number_order_warning(tmp_path: pathlib.Path) -> None:
    _series(tmp_path / "in", instance_numbers=[3, 1, 2, 6, 5, 4])
    with pytest.warns(GeometryWarning, match="InstanceNumber order disagrees"):
        report = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr")
    assert "InstanceNumber" in report.series.iloc[0]["warnings"]


def test_reversed_instance_numbers_are_fine(tmp_path: pathlib.Path) -> None:
    _series(tmp_path / "in", instance_numbers=[6, 5, 4, 3, 2, 1])
    report = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr")  # no warning (errors if any)
    assert report.series.iloc[0]["warnings"] == ""


# --------------------------------------------------------------------------- re-runs


def test_rerun_skips_complete_and_never_duplicates(tmp_path: pathlib.Path) -> None:
    _series(tmp_path / "in")
    first = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr")
    assert ctvol.catalog(first.store)["last_run"].tolist() == ["written"]
    again = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr")
    assert again.written == [] and again.unchanged == first.written
    assert ctvol.list_series(first.store) == first.written
    files = ctvol.catalog(first.store, level="files")
    assert len(files) == 6 and files["path"].is_unique
    series = ctvol.catalog(first.store)
    assert series["key"].tolist() == first.written
    # the status stays; what the re-run did is recorded in last_run
    assert series["status"].tolist() == ["ok"]
    assert series["last_run"].tolist() == ["unchanged"]
    assert list(series.columns) == SERIES_COLUMNS
    assert list(files.columns) == FILE_COLUMNS
    assert ctvol.catalog(first.store, level="files").columns[0] == "path"


def test_rerun_with_more_inputs_merges_catalog(tmp_path: pathlib.Path) -> None:
    _series(tmp_path / "a", series_number=1)
    _series(tmp_path / "b", series_number=2, seed=1)
    one = ctvol.ingest(tmp_path / "a", tmp_path / "c.zarr")
    two = ctvol.ingest(tmp_path / "b", tmp_path / "c.zarr")
    assert sorted(ctvol.list_series(one.store)) == sorted(one.written + two.written)
    assert len(ctvol.catalog(one.store, level="files")) == 12
    assert len(ctvol.catalog(one.store)) == 2


def test_changed_series_is_rewritten(tmp_path: pathlib.Path) -> None:
    uid = pydicom.uid.generate_uid()
    _series(tmp_path / "a", series_uid=uid)
    first = ctvol.ingest(tmp_path / "a", tmp_path / "c.zarr")
    # Two more slices of the same series arrive later (contiguous above).
    write_dicom_series(tmp_path / "a", head_phantom((2, 32, 32), seed=5), series_uid=uid,
                       origin=(-16.0, -16.0, 12.0), seed=9)
    second = ctvol.ingest(tmp_path / "a", tmp_path / "c.zarr")
    assert second.written == first.written
    assert ctvol.open_series(second.store, first.written[0]).sizes["z"] == 8


# --------------------------------------------------------------------------- properties

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ORIENTATIONS = [
    (1, 0, 0, 0, 1, 0),  # axial, feet-first or head-first
    (1, 0, 0, 0, -1, 0),  # axial, normal towards the feet
    (-1, 0, 0, 0, 1, 0),
    (0, 1, 0, -1, 0, 0),  # axial, rotated in plane
]


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(2, 9),
    dz=st.sampled_from([0.625, 1.0, 1.25, 2.5, 3.0, 5.0]),
    pixel=st.tuples(st.floats(0.3, 1.0), st.floats(0.3, 1.0)),
    origin=st.tuples(st.floats(-300, 300), st.floats(-300, 300), st.floats(-1500, 1500)),
    orientation=st.sampled_from(ORIENTATIONS),
    tilt=st.sampled_from([0.0, 0.0, -18.5, 12.0]),
    seed=st.integers(0, 1000),
)
def test_ingest_round_trips_hu_and_geometry(
    tmp_path_factory: pytest.TempPathFactory, n: int, dz: float, pixel: tuple[float, float],
    origin: tuple[float, float, float], orientation: tuple[int, ...], tilt: float, seed: int,
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    hu = head_phantom((n, 16, 20), seed=seed)
    write_dicom_series(tmp / "in", hu, spacing=(dz, *pixel), origin=origin,
                       orientation=orientation, tilt_deg=tilt, seed=seed)
    if tilt:
        with pytest.warns(GeometryWarning, match="gantry tilt"):
            report = ctvol.ingest(tmp / "in", tmp / "c.zarr")
    else:
        report = ctvol.ingest(tmp / "in", tmp / "c.zarr")
    (key,) = report.written
    ds = ctvol.open_series(report.store, key)
    np.testing.assert_array_equal(ds.hu.values, hu)
    np.testing.assert_allclose(np.diff(ds.z.values), dz, rtol=1e-6)
    np.testing.assert_allclose(np.diff(ds.y.values), pixel[0], rtol=1e-6)
    np.testing.assert_allclose(np.diff(ds.x.values), pixel[1], rtol=1e-6)
    assert ds.attrs["spacing"] == pytest.approx([dz, *pixel], rel=1e-6)
    np.testing.assert_allclose(ds.position.values[0], origin, atol=1e-4)
    assert ds.attrs["tilt_deg"] == pytest.approx(tilt, abs=0.01)


# --------------------------------------------------------------------------- symlinks


def _same_store(a: str, b: str) -> None:
    """Both stores hold the same series: keys, HU, coordinates and geometry attrs."""
    assert ctvol.list_series(a) == ctvol.list_series(b)
    for key in ctvol.list_series(a):
        da, db = ctvol.open_series(a, key), ctvol.open_series(b, key)
        np.testing.assert_array_equal(da.hu.values, db.hu.values)
        for name in ("z", "y", "x", "sop_uid", "instance_number", "position"):
            np.testing.assert_array_equal(da[name].values, db[name].values)
        skip = {"ctvol_history"}
        assert {k: v for k, v in da.attrs.items() if k not in skip} == \
            {k: v for k, v in db.attrs.items() if k not in skip}


def test_symlinked_series_folder_and_files(tmp_path: pathlib.Path) -> None:
    real = tmp_path / "real"
    paths = _series(real / "s1", shuffle_names=False)
    _series(real / "s2", seed=1, series_number=2)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "linked_series").symlink_to(real / "s1", target_is_directory=True)
    (tree / "files").mkdir()
    for p in sorted((real / "s2").iterdir()):
        (tree / "files" / p.name).symlink_to(p)
    report = ctvol.ingest(tree, tmp_path / "links.zarr")
    assert (report.files["status"] == "stored").all()
    # Paths as the user's tree shows them: through the links, not resolved.
    assert set(report.files["path"]) == (
        {str(tree / "linked_series" / p.name) for p in paths}
        | {str(tree / "files" / p.name) for p in (real / "s2").iterdir()})
    ctvol.ingest(real, tmp_path / "targets.zarr")
    _same_store(str(tmp_path / "links.zarr"), str(tmp_path / "targets.zarr"))
    # Re-run: the link target is the same, so the series are unchanged.
    again = ctvol.ingest(tree, tmp_path / "links.zarr")
    assert again.written == [] and len(again.unchanged) == 2


def test_dangling_link_has_its_own_reason(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "in"
    _series(d)
    (d / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    (d / "loop_a").symlink_to(d / "loop_b")
    (d / "loop_b").symlink_to(d / "loop_a")
    report = ctvol.ingest(d, tmp_path / "c.zarr")
    files = report.files.set_index("path")
    for name in ("gone.dcm", "loop_a", "loop_b"):
        row = files.loc[str(d / name)]
        assert row["reason"] == "dangling-link", (name, row["detail"])
        assert str(d / name) in row["detail"]
    assert "nowhere.dcm" in files.loc[str(d / "gone.dcm"), "detail"]
    assert (files["status"] == "stored").sum() == 6
    # A dangling link given by name is an input with a fate, not a missing input.
    one = ctvol.ingest([d / "gone.dcm", *sorted(d.glob("slice_*"))], tmp_path / "c2.zarr")
    assert one.files.set_index("path").loc[str(d / "gone.dcm"), "reason"] == "dangling-link"


def test_link_cycle_and_link_back_are_walked_once(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "in"
    paths = _series(d / "series", shuffle_names=False)
    (d / "series" / "cycle").symlink_to(d, target_is_directory=True)  # in -> ... -> in
    (d / "again").symlink_to(d / "series", target_is_directory=True)  # a second name
    report = ctvol.ingest(d, tmp_path / "c.zarr")
    # Each file once, under the first name in sorted order ("again" < "series").
    assert sorted(report.files["path"]) == sorted(str(d / "again" / p.name) for p in paths)
    assert (report.files["status"] == "stored").all()
    assert len(ctvol.list_series(tmp_path / "c.zarr")) == 1


def test_symlinked_real_sample_same_store(sample_store: str, sample_dir: pathlib.Path,
                                          tmp_path: pathlib.Path) -> None:
    links = tmp_path / "links"
    for p in sample_dir.rglob("*"):
        if p.is_file():
            (links / p.parent.relative_to(sample_dir)).mkdir(parents=True, exist_ok=True)
            (links / p.relative_to(sample_dir)).symlink_to(p)
    report = ctvol.ingest(links, tmp_path / "c.zarr")
    _same_store(report.store, sample_store)
    assert sorted(report.files["reason"]) == sorted(
        ctvol.catalog(sample_store, level="files")["reason"])


def test_catalog_of_an_older_store_gains_the_new_columns(tmp_path: pathlib.Path) -> None:
    from ctvol.io.store import write_catalog

    _series(tmp_path / "a")
    store = str(tmp_path / "c.zarr")
    ctvol.ingest(tmp_path / "a", store)
    old = ["frame", "transfer_syntax", "lossy"]
    files = ctvol.catalog(store, level="files").drop(columns=old)
    series = ctvol.catalog(store).drop(columns=["transfer_syntax", "lossy"])
    write_catalog(store, files, series, summary={})  # as a store written before them
    _series(tmp_path / "b", seed=1)
    ctvol.ingest(tmp_path / "b", store)
    files = ctvol.catalog(store, level="files")
    assert len(files) == 12 and files["frame"].tolist() == [0] * 12
    assert files["lossy"].tolist() == [False] * 12
    assert sorted(set(files["transfer_syntax"])) == ["", "1.2.840.10008.1.2.1"]


def test_hidden_files_and_folders_are_read(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "in"
    _series(d / ".hidden_series")
    write_non_dicom(d / ".DS_Store")
    report = ctvol.ingest(d, tmp_path / "c.zarr")
    files = report.files.set_index("path")
    assert files.loc[str(d / ".DS_Store"), "reason"] == "not-dicom"
    assert (files["status"] == "stored").sum() == 6


def test_disk_full_while_writing_pixels_names_the_series_and_a_rerun_completes(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC on the threads scheduler (tests/test_run_faults.py raises it inside
    worker processes): StoreWriteError naming the store, the series and the path;
    the series stays invisible; a re-run writes it."""
    import errno

    import zarr.storage

    from ctvol.errors import StoreWriteError

    hu = head_phantom((8, 32, 32), seed=7)
    write_dicom_series(tmp_path / "d", hu)
    store = tmp_path / "c.zarr"
    original = zarr.storage.LocalStore.set

    async def full(self: object, key: str, value: object) -> None:
        if "/hu/c/" in key:
            raise OSError(errno.ENOSPC, "No space left on device", f"{store}/{key}")
        await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full)
    with pytest.raises(StoreWriteError, match=r"cannot write series (\S+) into .*c\.zarr: No "
                                              r"space left on device \(.*/series/\1/hu/c/"):
        ctvol.ingest(tmp_path / "d", store)
    monkeypatch.setattr(zarr.storage.LocalStore, "set", original)
    assert ctvol.list_series(store) == []
    report = ctvol.ingest(tmp_path / "d", store)
    np.testing.assert_array_equal(ctvol.open_series(store, report.written[0]).hu.values, hu)
