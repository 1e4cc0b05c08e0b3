"""`ctvol curate STORE`: labels written into the store, hu untouched, summary printed."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import ctvol
from ctvol.cli import EXIT_PARTIAL, main
from ctvol.testing import head_phantom, write_dicom_series


def test_curate_cli(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    hu = head_phantom((8, 64, 64), seed=7)
    hu[[0, 7]] = -1000
    write_dicom_series(tmp_path / "a", hu, spacing=(2.0, 1.5, 1.5), series_number=1)
    write_dicom_series(tmp_path / "b", np.full((3, 32, 32), -1000.0), series_number=2)
    store = ctvol.ingest([tmp_path / "a", tmp_path / "b"], tmp_path / "c.zarr").store
    before = {k: ctvol.open_series(store, k).hu.values for k in ctvol.list_series(store)}
    assert main(["curate", store, "--scheduler", "threads", "-q"]) == EXIT_PARTIAL
    out = capsys.readouterr().out
    assert "2 series classified" in out and "1 with no body at all" in out
    assert ctvol.list_series(store) == sorted(before)  # complete flags untouched
    kept = {}
    for key, hu_before in before.items():
        ds = ctvol.open_series(store, key)
        np.testing.assert_array_equal(ds.hu.values, hu_before)  # hu not rewritten
        assert ds.label.attrs["classes"] == ["blank", "body"]
        kept[hu_before.shape[0]] = (ds.label.values.tolist(), ds.attrs["curation"])
    assert kept[8][0] == [0, 1, 1, 1, 1, 1, 1, 0] and kept[8][1]["kept"]["n"] == 6
    assert kept[3][0] == [0, 0, 0] and "nothing to keep" in kept[3][1]["error"]
    # curate() now reads the stored labels instead of classifying again.
    key8 = next(k for k, v in before.items() if v.shape[0] == 8)
    clean = ctvol.curate(ctvol.open_series(store, key8))
    assert clean.sizes["z"] == 6 and clean.attrs["curation"]["labels"].startswith("rule(")
    assert main(["curate", store, "--series", key8, "--scheduler", "threads", "-q"]) == 0
