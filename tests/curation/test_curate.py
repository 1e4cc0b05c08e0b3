"""ctvol.curate: blank trimming, runs, records, laziness, gaps reported and filled."""

from __future__ import annotations

import os
import pathlib

import dask.array as da
import numpy as np
import pydicom
import pytest
import xarray as xr

import ctvol
from ctvol.errors import CurationError, GeometryError, GeometryWarning
from ctvol.inference import generate_linear
from ctvol.testing import head_phantom, raise_if_dask_computes

AIR = -1000


def volume(hu: np.ndarray, *, px: float = 1.5, chunks: int | None = 4) -> xr.Dataset:
    n = hu.shape[0]
    ds = xr.Dataset({"hu": (("z", "y", "x"), hu)},
                    coords={"z": 2.0 * np.arange(n), "y": px * np.arange(hu.shape[1]),
                            "x": px * np.arange(hu.shape[2])},
                    attrs={"spacing": [2.0, px, px], "series_uid": "1.2.3"})
    return ds.chunk({"z": chunks}) if chunks else ds


def phantom_with_blanks(blank_at: list[int], n: int = 12) -> xr.Dataset:
    hu = head_phantom((n, 64, 64), seed=4)
    hu[blank_at] = AIR
    return volume(hu, chunks=5)


def test_trims_ends_and_keeps_the_longest_run() -> None:
    ds = phantom_with_blanks([0, 1, 5, 11])  # body runs 2-4 (3) and 6-10 (5)
    with raise_if_dask_computes(max_computes=1):  # the labels, once
        out = ctvol.curate(ds)
    assert isinstance(out.hu.data, da.Array)  # pixels stay lazy
    np.testing.assert_array_equal(out.z.values, ds.z.values[6:11])
    np.testing.assert_array_equal(out.hu.values, ds.hu.values[6:11])
    cur = out.attrs["curation"]
    assert cur["kept"] == {"z0": 12.0, "z1": 20.0, "n": 5, "generated": 0}
    assert [(d["z0"], d["n"], d["reason"]) for d in cur["dropped"]] == [
        (0.0, 2, "blank"), (4.0, 3, "shorter-run"), (10.0, 1, "blank"), (22.0, 1, "blank")]
    assert cur["input_slices"] == 12 and cur["labels"].startswith("rule(")
    last = out.attrs["ctvol_history"][-1]
    assert last["op"] == "curate" and last["params"]["split"] is False


def test_split_returns_every_run() -> None:
    runs = ctvol.curate(phantom_with_blanks([0, 1, 5, 11]), split=True)
    assert [r.z.values.tolist() for r in runs] == [[4.0, 6.0, 8.0],
                                                   [12.0, 14.0, 16.0, 18.0, 20.0]]
    assert all(d["reason"] == "blank" for d in runs[0].attrs["curation"]["dropped"])


def test_min_slices_drops_short_runs() -> None:
    out = ctvol.curate(phantom_with_blanks([0, 2, 5]), split=True, min_slices=3)
    assert [r.sizes["z"] for r in out] == [6]
    reasons = {d["z0"]: d["reason"] for d in out[0].attrs["curation"]["dropped"]}
    assert reasons[2.0] == "short-run" and reasons[6.0] == "short-run"


def test_stored_labels_are_used_and_pixels_never_computed() -> None:
    ds = phantom_with_blanks([0, 11])
    codes = np.ones(12, np.int8)
    codes[[0, 1, 11]] = 0  # slice 1 is labelled blank although it holds the phantom

    def boom(block: np.ndarray) -> np.ndarray:
        raise AssertionError("curate computed the pixels")

    ds = ds.assign(hu=(ds.hu.dims, ds.hu.data.map_blocks(boom, dtype=np.int16)),
                   label=("z", codes, {"classes": ["blank", "body"], "method": "stored"}))
    out = ctvol.curate(ds)
    assert out.z.values.tolist() == (2.0 * np.arange(2, 11)).tolist()
    assert out.attrs["curation"]["labels"] == "stored"


def test_labels_argument_and_custom_blank_classes() -> None:
    ds = phantom_with_blanks([])
    lab = xr.DataArray(np.array([2, 2, 0, 0, 0, 1, 1, 0, 0, 0, 0, 2], np.int8), dims="z",
                       coords={"z": ds.z}, attrs={"classes": ["head", "neck", "air"]})
    out = ctvol.curate(ds, labels=lab, blank=("air",))
    assert out.z.values.tolist() == (2.0 * np.arange(2, 11)).tolist()
    with pytest.raises(ValueError, match="names no class"):
        ctvol.curate(ds, labels=lab)


@pytest.mark.parametrize(("make", "kwargs", "exc", "match"), [
    (lambda: phantom_with_blanks(list(range(12))), {}, CurationError,
     "nothing to keep .* 12 of 12 slices are blank.*largest thick-tissue fraction is 0.000%"),
    (lambda: volume(head_phantom((1, 32, 32))), {}, GeometryError, "1 slice: curation keeps"),
    (lambda: phantom_with_blanks([]), {"fill_gaps": "cubic"}, ValueError,
     r"fill_gaps must be one of \[None, 'linear', 'unet'\]"),
    (lambda: phantom_with_blanks([]), {"min_slices": 0}, ValueError, "min_slices must be"),
    (lambda: phantom_with_blanks([]),
     {"labels": xr.DataArray(np.ones(3, np.int8), dims="z", attrs={"classes": ["blank"]})},
     ValueError, "labels do not match the volume: 3 labels for 12 slices"),
    (lambda: [phantom_with_blanks([]), phantom_with_blanks([])], {}, GeometryError, "overlap"),
    (lambda: [phantom_with_blanks([]), phantom_with_blanks([]).assign_attrs(series_uid="9")],
     {}, GeometryError, "runs of different series"),
])
def test_bad_input(make, kwargs, exc, match) -> None:  # noqa: ANN001
    with pytest.raises(exc, match=match):
        ctvol.curate(make(), **kwargs)


def runs_of(hu: np.ndarray, cut: list[int]) -> list[xr.Dataset]:
    """The runs ingest would make of a 1 mm series with the slices in ``cut`` removed."""
    keep = np.setdiff1d(np.arange(hu.shape[0]), cut)
    ds = volume(hu, px=1.0, chunks=4).assign_coords(z=np.arange(hu.shape[0], dtype=float))
    breaks = np.flatnonzero(np.diff(keep) > 1) + 1
    return [ds.isel(z=idx) for idx in np.split(keep, breaks)]


def test_gaps_are_reported_without_filling() -> None:
    hu = head_phantom((16, 32, 32), seed=5)
    runs = runs_of(hu, [6, 7])
    out = ctvol.curate(runs[::-1])  # any order
    assert out.z.values.tolist() == list(np.arange(8.0, 16.0))  # the longer run
    (gap,) = out.attrs["curation"]["gaps"]
    assert (gap["z0"], gap["z1"], gap["missing"], gap["fillable"], gap["filled"]) == (
        5.0, 8.0, 2, True, None)
    assert out.attrs["curation"]["dropped"] == [
        {"z0": 0.0, "z1": 5.0, "n": 6, "reason": "shorter-run"}]


def test_unfillable_gap_reasons() -> None:
    hu = head_phantom((10, 32, 32), seed=5)
    a, b = runs_of(hu, [4])
    b = b.assign_coords(z=b.z + 0.4)  # a 2.4 mm step at 1 mm spacing
    (gap,) = ctvol.curation.find_gaps([a, b])
    assert not gap["fillable"] and "not a whole number" in gap["reason"]
    out = ctvol.curate([a, b], fill_gaps="linear")  # nothing to fill: runs stay apart
    assert out.attrs["curation"]["kept"]["generated"] == 0


def test_fill_linear_on_phantom_is_lazy_and_exact() -> None:
    hu = head_phantom((14, 32, 32), seed=6)
    runs = runs_of(hu, [5, 6, 7])  # k = 4
    with raise_if_dask_computes(max_computes=1):
        out = ctvol.curate(runs, fill_gaps="linear")
    assert out.sizes["z"] == 14
    np.testing.assert_allclose(out.z.values, np.arange(14.0))
    assert out.generated.values.tolist() == [i in (5, 6, 7) for i in range(14)]
    got = out.hu.values
    keep = [i for i in range(14) if i not in (5, 6, 7)]
    np.testing.assert_array_equal(got[keep], hu[keep])  # acquired slices bit for bit
    expected = np.rint(generate_linear(hu[4], hu[8], 4)).astype(np.int16)
    np.testing.assert_array_equal(got[5:8], expected)
    assert out.attrs["curation"]["gaps"][0]["filled"] == "linear"


def test_fill_unet_without_a_model_for_the_factor() -> None:
    runs = runs_of(head_phantom((8, 32, 32)), [3])  # k = 2: no bundled x2 U-net
    with pytest.raises(FileNotFoundError, match="no bundled U-net for factor 2"):
        ctvol.curate(runs, fill_gaps="unet")


def _ordered(folder: pathlib.Path) -> list[pathlib.Path]:
    files = [f for f in folder.iterdir() if f.name.startswith("I")]
    z = {f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
         for f in files}
    return sorted(files, key=z.__getitem__)


def _ingest_without(files: list[pathlib.Path], gone: list[pathlib.Path],
                    tmp: pathlib.Path) -> list[xr.Dataset]:
    (tmp / "in").mkdir()
    for f in files:
        if f not in gone:
            os.symlink(f.resolve(), tmp / "in" / f.name)
    with pytest.warns(GeometryWarning, match="uneven spacing"):
        store = ctvol.ingest(tmp / "in", tmp / "c.zarr").store
    return [ctvol.open_series(store, k) for k in ctvol.list_series(store)]


def _truth(gone: list[pathlib.Path]) -> np.ndarray:
    from ctvol.io.dicom import decode_hu

    return np.stack([decode_hu(str(f))[0] for f in gone]).astype(np.float64)


def test_fill_real_sample_gap(sample_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Three slices deleted from the real sample: ingest splits, curate fills them back
    (factor 4, the bundled x4 U-net). The sample is the phantom's test block: no
    bundled model trained on or was selected on it."""
    files = _ordered(sample_dir / "S21570" / "S2020")
    gone = files[12:15]
    runs = _ingest_without(files, gone, tmp_path)
    assert [r.sizes["z"] for r in runs] == [12, 15]
    truth = _truth(gone)
    errors = {}
    for method in ("linear", "unet"):
        out = ctvol.curate(runs, fill_gaps=method)
        assert out.sizes["z"] == 30 and out.generated.values.sum() == 3
        hu = out.hu.values
        np.testing.assert_allclose(out.z.values, 749.21 + np.arange(30), atol=1e-6)
        assert out.sop_uid.values[12] == "" and out.instance_number.values[14] == -1
        np.testing.assert_allclose(out.position.values[12:15, 2], [761.21, 762.21, 763.21],
                                   atol=1e-6)
        np.testing.assert_array_equal(hu[:12], runs[0].hu.values)
        np.testing.assert_array_equal(hu[15:], runs[1].hu.values)
        errors[method] = np.abs(hu[12:15] - truth).mean()
    # Measured (mean absolute error, HU): see the assertion's message when it fails.
    assert errors["unet"] < errors["linear"] < 25, errors


@pytest.mark.realdata
def test_fill_real_held_out_gaps_and_trim_blank_top(shared_dir: pathlib.Path,
                                                    tmp_path: pathlib.Path) -> None:
    """Gaps of 3 and 4 slices in S2020's block 96-139 (the bundled models' selection
    block: never trained on); curate fills them (factors 4, 5) and trims the blank top."""
    files = _ordered(shared_dir / "S21570" / "S2020")
    gone = {4: files[100:103], 5: files[110:114]}
    runs = _ingest_without(files, sum(gone.values(), []), tmp_path)
    assert [r.sizes["z"] for r in runs] == [100, 7, 26]
    out = ctvol.curate(runs, fill_gaps="unet")
    cur = out.attrs["curation"]
    assert [g["missing"] for g in cur["gaps"]] == [3, 4]
    assert cur["dropped"] == [{"z0": 828.21, "z1": 833.21, "n": 6, "reason": "blank"}]
    assert out.sizes["z"] == 134 and int(out.generated.sum()) == 7
    hu = out.hu.values.astype(np.float64)
    for k, lost in gone.items():
        idx = [files.index(f) for f in lost]
        assert out.generated.values[idx].all()
        truth = _truth(lost)
        lin = np.rint(generate_linear(hu[idx[0] - 1], hu[idx[-1] + 1], k))
        unet_err, lin_err = np.abs(hu[idx] - truth).mean(), np.abs(lin - truth).mean()
        assert unet_err < lin_err, (k, unet_err, lin_err)
