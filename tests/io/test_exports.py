"""What real exports contain: anonymised UIDs, multi-frame CT, every codec a PACS emits.

Every case starts from the bundled real sample (Philips head CT, data/sample),
rewritten to ``tmp_path`` with pydicom, and must ingest to the HU pydicom
computes from the same files.
"""

from __future__ import annotations

import pathlib
import re
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
