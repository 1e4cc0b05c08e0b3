"""The slice localizer: landmark interpolation, partitions, training, localize, match_slices."""

from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
import pytest
import xarray as xr

import ctvol
from ctvol.curation import LANDMARKS, landmark_locations, load_slice_model
from ctvol.curation._localizer import nearest
from ctvol.errors import LabelError
from ctvol.testing import head_phantom, raise_if_dask_computes, write_dicom_series


def coords_only(n: int = 6, dz: float = 5.0) -> xr.Dataset:
    sops = [f"1.{i}" for i in range(n)]
    return xr.Dataset(coords={"z": dz * np.arange(n), "sop_uid": ("z", sops)},
                      attrs={"series_uid": "9.9"})


def test_interpolation_and_linear_extrapolation(tmp_path: pathlib.Path) -> None:
    ds = coords_only()  # z = 0, 5, ..., 25 mm; z increases towards the head
    marks = {"top of head": "1.4", "C1": "1.2", "T1": "1.1"}  # z 20 -> 0, 10 -> .1, 5 -> .16
    got = landmark_locations(ds, marks).values
    # Inside: np.interp over the landmarks; outside: the end segments extended.
    inside = np.interp([5, 10, 15, 20], [5, 10, 20], [0.16, 0.1, 0.0])
    np.testing.assert_allclose(got[1:5], inside)
    np.testing.assert_allclose(got[0], 0.16 + (0.16 - 0.1))  # below T1, slope of T1..C1
    np.testing.assert_allclose(got[5], 0.0 - 0.05)  # above the top of the head: < 0
    path = tmp_path / "marks.json"
    path.write_text(json.dumps(marks))
    np.testing.assert_array_equal(landmark_locations(ds, path).values, got)


def test_the_methods_table() -> None:
    assert LANDMARKS["top of head"] == 0 and LANDMARKS["head of femur"] == 0.5
    assert LANDMARKS["tracheal bifurcation"] == 0.225 and len(LANDMARKS) == 12
    assert list(LANDMARKS.values()) == sorted(LANDMARKS.values())


@pytest.mark.parametrize(("marks", "match"), [
    ({"C1": "1.1", "nose": "1.2"}, r"unknown landmark name\(s\) \['nose'\]"),
    ({"C1": "1.1", "C7": "7.7"}, r"landmark slice\(s\) not in 9.9: \{'C7': '7.7'\}"),
    ({"C1": "1.1"}, "need at least two landmarks"),
    ({"C1": "1.1", "C7": "1.1"}, "need at least two landmarks on different slices"),
    ({"C1": "1.1", "C7": "1.3", "T1": "1.2"}, "do not follow z monotonically"),
])
def test_bad_annotations(marks: dict, match: str) -> None:
    with pytest.raises(LabelError, match=match):
        landmark_locations(coords_only(), marks)


def test_partition_of_is_sha256_mod_10() -> None:
    uids = [f"1.2.826.0.1.{i}" for i in range(5000)]
    parts = [ctvol.partition_of(u) for u in uids]
    for u, p in zip(uids[:50], parts[:50], strict=True):
        r = int(hashlib.sha256(u.encode()).hexdigest(), 16) % 10
        assert p == ("train" if r < 7 else "val" if r < 9 else "test")
    share = {p: parts.count(p) / len(parts) for p in ("train", "val", "test")}
    assert share == pytest.approx({"train": 0.7, "val": 0.2, "test": 0.1}, abs=0.02)
    with pytest.raises(TypeError, match="non-empty string"):
        ctvol.partition_of("")


def test_nearest() -> None:
    idx, dist = nearest(np.array([0.0, 0.1, 0.26, 0.9]), np.array([0.3, 0.1, 0.25]), 0.05)
    assert idx.tolist() == [-1, 1, 2, -1]
    np.testing.assert_allclose(dist, [0.1, 0.0, 0.01, 0.6])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, object, pathlib.Path]:
    """Two phantom series annotated from the femur (first slice) to the head top (last):
    the head shrinks along z, so location is learnable from one slice."""
    tmp = tmp_path_factory.mktemp("loc")
    for s in range(2):
        write_dicom_series(tmp / f"in{s}", head_phantom((14, 32, 32), seed=s),
                           series_number=s + 1, seed=s)
    store = ctvol.ingest([tmp / f"in{s}" for s in range(2)], tmp / "c.zarr").store
    ann = {}
    for key in ctvol.list_series(store):
        sop = ctvol.open_series(store, key).sop_uid.values
        ann[key] = {"head of femur": str(sop[0]), "top of head": str(sop[-1])}
    model = ctvol.train_localizer(
        store, ann, out=tmp / "loc", epochs=12, batch_size=8, input_size=32, lr=3e-3,
        architecture={"widths": (8, 16)}, augment=False,  # zoom would hide the size cue
        train_on=("train", "val", "test"), validate_on=())
    return store, ann, model, tmp / "loc"


def test_localizer_learns(trained) -> None:  # noqa: ANN001
    store, ann, model, out = trained
    log = np.genfromtxt(out / "log.csv", delimiter=",", names=True)
    assert log["train_loss"][-1] < log["train_loss"][0] / 5
    for key, marks in ann.items():
        ds = ctvol.open_series(store, key)
        with raise_if_dask_computes():
            pred = ctvol.localize(ds, model)
        truth = landmark_locations(ds, marks).values
        got = pred.values
        assert got.dtype == np.float32 and ((got >= 0) & (got <= 1)).all()
        assert np.corrcoef(got, truth)[0, 1] > 0.95  # measured ~1.0, MAE ~0.01
        assert np.abs(got - truth).mean() < 0.05


def test_checkpoint_round_trip_and_chunking(trained) -> None:  # noqa: ANN001
    store, _, model, out = trained
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "ctvol-slice-model" and cfg["task"] == "localize"
    loaded = load_slice_model(out)
    ds = ctvol.open_series(store, ctvol.list_series(store)[0])
    a = ctvol.localize(ds, loaded).values
    b = ctvol.localize(ds.chunk({"z": 3}), str(out)).values
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_array_equal(a, ctvol.localize(ds, model).values)


def test_match_slices(trained) -> None:  # noqa: ANN001
    store, _, model, _ = trained
    a = ctvol.open_series(store, ctvol.list_series(store)[0])
    b = a.isel(z=slice(4, 12))
    m = ctvol.match_slices(a, b, model, tolerance=0.01)
    assert m.index_b.values[4:12].tolist() == list(range(8))  # the same slices
    np.testing.assert_array_equal(m.z_b.values[4:12], b.z.values)
    assert (m.distance.values[4:12] == 0).all()
    assert (m.index_b.values[[0, 1, 13]] == -1).all()  # far outside b
    assert np.isnan(m.z_b.values[0])


def test_localize_errors(trained) -> None:  # noqa: ANN001
    store, _, model, _ = trained
    ds = ctvol.open_series(store, ctvol.list_series(store)[0])
    with pytest.raises(ValueError, match="localize needs model="):
        ctvol.localize(ds, None)
    with pytest.raises(ValueError, match="is a 'localize' model, but a 'classify' model"):
        ctvol.classify_slices(ds, model)
    with pytest.raises(LabelError, match="'nope' is not in the store"):
        ctvol.train_localizer(store, {"nope": {}}, out=store + "-x")
