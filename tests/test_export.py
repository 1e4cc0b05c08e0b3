"""ctvol.export and `ctvol export`: every series, failures isolated, resumable."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
import xarray as xr

import ctvol
from ctvol.cli import main
from ctvol.errors import StoreError
from ctvol.testing import head_phantom

nib = pytest.importorskip("nibabel")


def _ds(n: int, seed: int, dz: float = 2.0) -> xr.Dataset:
    hu = head_phantom((n, 16, 20), seed=seed)
    return xr.Dataset({"hu": (("z", "y", "x"), hu)},
                      coords={"z": dz * np.arange(n), "y": 0.5 * np.arange(16),
                              "x": 0.5 * np.arange(20)},
                      attrs={"series_uid": f"1.2.{seed}", "ctvol_history": ["test"]})


@pytest.fixture
def store(tmp_path: pathlib.Path) -> str:
    path = str(tmp_path / "c.zarr")
    ctvol.write(_ds(5, 0), path, "a")
    ctvol.write(_ds(4, 1), path, "b")
    return path


def test_every_series_then_unchanged_then_changed_ones_only(store: str,
                                                            tmp_path: pathlib.Path) -> None:
    out = tmp_path / "nii"
    t = ctvol.export(store, out, "nifti")
    assert t["status"].tolist() == ["exported", "exported"]
    for key in ("a", "b"):
        img = nib.load(out / f"{key}.nii.gz")
        np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0),
                                      ctvol.open_series(store, key).hu.values)
        info = json.loads((out / f"{key}.json").read_text())
        assert info["ctvol"]["export"]["format"] == "nifti"
    stamp = os.stat(out / "a.nii.gz").st_mtime_ns
    assert ctvol.export(store, out, "nifti")["status"].tolist() == ["unchanged", "unchanged"]
    assert os.stat(out / "a.nii.gz").st_mtime_ns == stamp
    ctvol.write(_ds(6, 2), store, "b")  # b changes
    assert ctvol.export(store, out, "nifti")["status"].tolist() == ["unchanged", "exported"]
    assert nib.load(out / "b.nii.gz").shape == (20, 16, 6)
    # an interrupted export: the sidecar (written last) is missing -> redone
    (out / "a.json").unlink()
    assert ctvol.export(store, out, "nifti", series=["a"])["status"].tolist() == ["exported"]
    # ... but a file ctvol did not write is left alone
    (out / "b.json").unlink()
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), out / "b.nii.gz")
    t = ctvol.export(store, out, "nifti")
    assert t["status"].tolist() == ["unchanged", "failed"]
    assert "b.nii.gz exists but was not written by ctvol" in t["error"][1]


def test_failures_are_isolated_and_named(store: str, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "dcm"
    out.mkdir()
    (out / "a").mkdir()
    (out / "a" / "notes.txt").write_text("someone else's")
    ctvol.write(_ds(3, 3).assign_coords(z=[0.0, 1.0, 3.0]), store, "uneven")
    t = ctvol.export(store, out, "dicom", series=["a", "b", "uneven", "nope"]).set_index("key")
    assert t["status"].to_dict() == {"a": "failed", "b": "exported", "uneven": "failed",
                                     "nope": "failed"}
    assert "not written by ctvol (no a.json sidecar" in t.loc["a", "error"]
    assert "series 1.2.3: the z coordinate is not evenly" in t.loc["uneven", "error"]
    assert "split_gaps=True" in t.loc["uneven", "error"]
    assert "no complete series 'nope'" in t.loc["nope", "error"]
    assert (out / "a" / "notes.txt").exists() and not (out / "uneven").exists()
    assert len(list((out / "b").iterdir())) == 4


def test_refuses_bad_outputs_and_formats(store: str, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=r"format must be one of \['dicom', 'nifti'\]"):
        ctvol.export(store, tmp_path / "o", "nrrd")
    with pytest.raises(StoreError, match="is the input store"):
        ctvol.export(store, store + "/", "nifti")
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        ctvol.export(store, tmp_path / "f", "nifti")


def test_cli(store: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "o")
    assert main(["export", store, "-o", out, "--format", "nifti"]) == 0
    text = capsys.readouterr().out
    assert "[1/2] a: exported" in text and "2 series exported as nifti" in text
    assert main(["export", store, "-o", out, "--format", "nifti", "-q"]) == 0
    assert "0 series exported as nifti into" in capsys.readouterr().out
    assert main(["export", store, "-o", out, "--format", "nifti", "--series", "a", "zz",
                 "-q"]) == 3
    captured = capsys.readouterr()
    assert "skipped zz: no complete series 'zz'" in captured.err
    assert "1 unchanged (skipped); 1 failed" in captured.out
    assert main(["export", store, "-o", store, "--format", "dicom"]) == 1
    assert "ctvol export: error: -o" in capsys.readouterr().err
