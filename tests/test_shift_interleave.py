"""ctvol.shift_interleave: interleave order, coordinates, fusion, halos, laziness, errors."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

import ctvol
from ctvol import _shift_interleave as si
from ctvol.errors import GeometryError, PredictError
from ctvol.intensity import to_unit
from ctvol.models import SegmentModel, load_segmenter, save_segmenter, seg_net
from ctvol.testing import head_phantom, raise_if_dask_computes


def _volume(n: int = 9, dz: float = 5.0, shape: tuple[int, int] = (18, 16),
            chunks: int | None = 2, seed: int = 0) -> xr.Dataset:
    hu = head_phantom((n, *shape), seed=seed)
    ds = xr.Dataset(
        {"hu": (("z", "y", "x"), hu, {"units": "HU"})},
        coords={"z": 700.25 + dz * np.arange(n), "y": -2.0 + 0.45 * np.arange(shape[0]),
                "x": 0.45 * np.arange(shape[1]), "sop_uid": ("z", [f"1.2.{i}" for i in range(n)])},
        attrs={"spacing": [dz, 0.45, 0.45], "series_uid": "1.2.3", "complete": True,
               "ctvol_history": ["ingest"]},
    )
    return ds.chunk({"z": chunks}) if chunks else ds


def bone(block: np.ndarray) -> np.ndarray:
    """A pointwise label predictor."""
    return (block > 300).astype(np.uint8)


def soft(block: np.ndarray) -> np.ndarray:
    """A nonlinear pointwise probability predictor."""
    return (1.0 / (1.0 + np.exp(-(block - 100.0) / 200.0))).astype(np.float32)


def zmax(block: np.ndarray) -> np.ndarray:
    """A predictor that reads one neighbour on each side along z (predict_depth=1)."""
    return ndimage.maximum_filter(soft(block), size=(3, 1, 1), mode="nearest")


def _by_hand(hu: np.ndarray, predict, k: int, extend: bool = False) -> np.ndarray:
    """The definition written out: copy j samples z at i + j/k; output n = copy n%k at n//k."""
    copies = [predict(ndimage.shift(hu.astype(np.float32), (-j / k, 0, 0), output=np.float32,
                                    order=1, mode="nearest")) for j in range(k)]
    n_in = hu.shape[0]
    n_out = n_in * k if extend else (n_in - 1) * k + 1
    return np.stack([copies[n % k][n // k] for n in range(n_out)])


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("extend", [False, True])
def test_interleave_order_is_the_definition(k: int, extend: bool) -> None:
    ds = _volume(chunks=3)
    out = ctvol.shift_interleave(ds, soft, factor=k, axis="z", extend=extend)
    expected = _by_hand(ds.hu.values, soft, k, extend)
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out.values, expected)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_the_shift_each_sample_came_from(k: int) -> None:
    # On the ramp hu[i] = i, copy j holds i + j/k: a predictor returning the
    # fractional part reads back the shift, so output n must hold (n % k) / k,
    # and the identity must hold the sample's position n / k (sign convention).
    n = 6
    hu = np.broadcast_to(np.arange(n, dtype=np.float64)[:, None, None], (n, 3, 2)).copy()
    ds = xr.Dataset({"hu": (("z", "y", "x"), hu)}, coords={"z": 10.0 * np.arange(n)})
    frac = ctvol.shift_interleave(ds.chunk({"z": 2}), lambda b: b - np.floor(b + 1e-4),
                                  factor=k)
    idx = np.arange((n - 1) * k + 1)
    np.testing.assert_allclose(frac.values[:, 0, 0], (idx % k) / k, atol=1e-5)
    np.testing.assert_array_equal(frac.z_shift.values, idx % k)
    pos = ctvol.shift_interleave(ds.chunk({"z": 2}), lambda b: b, factor=k)
    np.testing.assert_allclose(pos.values[:, 1, 1], idx / k, atol=1e-5)
    np.testing.assert_allclose(pos.z.values, 10.0 * idx / k)


def test_k1_is_the_predictor_itself() -> None:
    ds = _volume(chunks=2)
    out = ctvol.shift_interleave(ds, bone, factor=1, axis="z", dtype=np.uint8)
    np.testing.assert_array_equal(out.values, bone(ds.hu.values))
    np.testing.assert_array_equal(out.z.values, ds.z.values)
    assert out.z_shift.values.tolist() == [0] * ds.sizes["z"]
    assert out.dtype == np.uint8
    ident = ctvol.shift_interleave(ds, lambda b: b, factor=1, axis=("z", "x"))
    np.testing.assert_array_equal(ident.values, ds.hu.values.astype(np.float32))


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("fuse", [None, "mean"])
def test_constant_volume_is_unchanged(order: int, fuse: str | None) -> None:
    hu = np.full((5, 6, 7), 437, dtype=np.int16)
    ds = xr.Dataset({"hu": (("z", "y", "x"), hu)}, coords={"z": np.arange(5.0)})
    out = ctvol.shift_interleave(ds.chunk({"z": 2, "y": 3}), lambda b: b, factor=(3, 2),
                                 axis=("z", "y"), order=order, fuse=fuse).values
    assert out.shape == (13, 11, 7)
    if order <= 1:
        np.testing.assert_array_equal(out, 437.0)
    else:  # spline evaluation in floating point
        np.testing.assert_allclose(out, 437.0, rtol=1e-6)


def test_coordinates_and_attrs() -> None:
    ds = _volume(n=5, dz=5.0, chunks=2)
    out = ctvol.shift_interleave(ds, bone, factor=5, axis="z", dtype=np.uint8)
    n = np.arange(21)
    z0, dz = ds.z.values[0], 5.0
    expected = z0 + n * (dz / 5)
    expected[::5] = ds.z.values  # input positions are kept exactly
    np.testing.assert_array_equal(out.z.values, expected)
    np.testing.assert_allclose(out.z.values, z0 + n * dz / 5, rtol=0, atol=1e-9)
    assert out.z_shift.values.tolist() == (n % 5).tolist()
    np.testing.assert_array_equal(out.y.values, ds.y.values)
    assert "sop_uid" not in out.coords  # a per-input-slice coordinate cannot be refined
    assert out.dims == ("z", "y", "x") and out.name == "prediction"
    assert out.attrs["spacing"] == [1.0, 0.45, 0.45]
    assert out.attrs["sub_voxel_prediction"] is True
    assert out.attrs["shift_interleave"]["runs"] == 5
    assert out.attrs["ctvol_history"][0] == "ingest"
    assert "shift_interleave(factor=[5], axis=['z']" in out.attrs["ctvol_history"][-1]
    assert "complete" not in out.attrs
    ext = ctvol.shift_interleave(ds, bone, factor=5, extend=True, dtype=np.uint8)
    np.testing.assert_allclose(ext.z.values, z0 + np.arange(25) * 1.0, atol=1e-9)
    two = ctvol.shift_interleave(ds, bone, factor=(2, 3), axis=("x", "y"), dtype=np.uint8)
    assert two.shape == (5, 52, 31)
    np.testing.assert_allclose(two.x.values, 0.45 * np.arange(31) / 2)
    np.testing.assert_allclose(two.y.values, -2.0 + 0.45 * np.arange(52) / 3)
    assert two.attrs["spacing"] == pytest.approx([5.0, 0.15, 0.225])
    np.testing.assert_array_equal(two.z.values, ds.z.values)


# A hand example on a 2 x 2 (z, y) grid, factor 2 along both. Input [[0, 4], [8, 12]];
# the copies, interleaved, sample it (bilinear, edges repeated) at (n/2, m/2):
#   s = [[0, 2, 4, 4], [4, 6, 8, 8], [8, 10, 12, 12], [8, 10, 12, 12]]
# (the last row/column read past the last sample and only enter fusion windows).
HAND = np.array([[0.0, 4.0], [8.0, 12.0]])
S = np.array([[0, 2, 4, 4], [4, 6, 8, 8], [8, 10, 12, 12], [8, 10, 12, 12]], dtype=float)


def _hand(predict, **kw) -> np.ndarray:
    da_ = xr.DataArray(HAND, dims=("z", "y"), coords={"z": [0.0, 1.0], "y": [0.0, 1.0]})
    return ctvol.shift_interleave(da_, predict, factor=(2, 2), axis=("z", "y"), **kw).values


def test_multi_axis_runs_every_combination_once() -> None:
    import dask

    calls: list[tuple[int, ...]] = []

    def counting(b: np.ndarray) -> np.ndarray:
        calls.append(b.shape)
        return b

    with dask.config.set(scheduler="synchronous"):
        out = _hand(counting)
    assert len(calls) == 4  # one block, 2 x 2 combinations of shifts
    np.testing.assert_array_equal(out, S[:3, :3])
    calls.clear()
    hu = np.zeros((4, 6, 6))
    arr = xr.DataArray(hu, dims=("z", "y", "x"))
    with dask.config.set(scheduler="synchronous"):
        ctvol.shift_interleave(arr, counting, factor=(2, 3, 2), axis=("z", "y", "x")).values  # noqa: B018
    assert len(calls) == 12


def test_fusion_vote_and_mean_on_a_hand_example() -> None:
    labels = _hand(lambda b: (b > 5).astype(np.uint8), dtype=np.uint8)
    np.testing.assert_array_equal(labels, [[0, 0, 0], [0, 1, 1], [1, 1, 1]])  # pure interleave
    # Vote: window {n, n+1} x {m, m+1} (k = 2). (1, 0) sees 0,1,1,1 -> 1; (0, 1) sees
    # 0,0,1,1, a tie that goes to its own prediction (0).
    vote = _hand(lambda b: (b > 5).astype(np.uint8), dtype=np.uint8, fuse="vote")
    np.testing.assert_array_equal(vote, [[0, 0, 0], [1, 1, 1], [1, 1, 1]])
    assert vote.dtype == np.uint8
    mean = _hand(lambda b: (b / 12).astype(np.float32), fuse="mean")
    expected = np.array([[S[n:n + 2, m:m + 2].mean() / 12 for m in range(3)] for n in range(3)])
    np.testing.assert_allclose(mean, expected, rtol=1e-6)
    assert mean[0, 0] == pytest.approx(0.25)  # (0 + 2 + 4 + 6) / 4 / 12


def test_vote_tie_rules() -> None:
    # k = 3: windows n-1..n+1 (truncated at the ends) of [2, 0, 1]: every count ties,
    # and each sample's own prediction is among the tied labels, so it is kept.
    own = si._fuse(np.array([2, 0, 1], dtype=np.int8), [0], [3], "vote", np.dtype(np.int8))
    assert own.tolist() == [2, 0, 1]
    # k = 5: the window of sample 2 in [3, 3, 1, 2, 2] counts 3:2, 2:2, 1:1; its own
    # label (1) is not tied, so the smallest tied label (2) wins.
    out = si._fuse(np.array([3, 3, 1, 2, 2], dtype=np.int8), [0], [5], "vote",
                   np.dtype(np.int8))
    assert out[2] == 2
    assert out.tolist() == [3, 3, 2, 2, 2]


@pytest.mark.parametrize(("axis", "factor", "chunks"), [
    ("z", 3, {"z": 1}), ("z", 3, {"z": 2}), ("z", 4, {"z": 3}),
    (("z", "y"), (2, 3), {"z": 2, "y": 4}), (("y", "x"), 2, {"z": 4, "y": 3, "x": 4}),
])
@pytest.mark.parametrize("fuse", [None, "vote", "mean"])
@pytest.mark.parametrize("extend", [False, True])
def test_chunked_equals_unchunked(axis, factor, chunks, fuse: str | None, extend: bool) -> None:
    ds = _volume(n=9, chunks=None, seed=2)
    predict, dtype = (bone, np.uint8) if fuse == "vote" else (soft, np.float32)
    kw = {"fuse": fuse, "extend": extend, "dtype": dtype}
    whole = ctvol.shift_interleave(ds.chunk(-1), predict, factor, axis, **kw)
    parts = ctvol.shift_interleave(ds.chunk(chunks), predict, factor, axis, **kw)
    assert len(parts.data.chunks[0]) > 1 or len(parts.data.chunks[1]) > 1
    np.testing.assert_array_equal(whole.values, parts.values)


@pytest.mark.parametrize("fuse", [None, "mean"])
def test_predict_depth_gives_the_predictor_its_context(fuse: str | None) -> None:
    ds = _volume(n=10, chunks=None, seed=5)
    whole = ctvol.shift_interleave(ds.chunk(-1), zmax, 3, predict_depth=1, fuse=fuse).values
    parts = ctvol.shift_interleave(ds.chunk({"z": 2}), zmax, 3, predict_depth={"z": 1},
                                   fuse=fuse).values
    np.testing.assert_array_equal(whole, parts)
    if fuse is None:  # (fusion's own one-sample halo happens to cover zmax's context)
        short = ctvol.shift_interleave(ds.chunk({"z": 2}), zmax, 3).values
        assert not np.array_equal(whole, short)  # without the context, block edges differ


def test_spline_order_3_chunked_matches_closely() -> None:
    ds = _volume(n=12, chunks=None, seed=1)
    whole = ctvol.shift_interleave(ds.chunk(-1), lambda b: b, 3, order=3).values
    parts = ctvol.shift_interleave(ds.chunk({"z": 3}), lambda b: b, 3, order=3).values
    span = float(np.ptp(ds.hu.values))
    assert np.max(np.abs(whole - parts)) <= 1e-4 * span
    np.testing.assert_array_equal(whole[::3], ds.hu.values.astype(np.float32))


def test_is_lazy(tmp_path: pathlib.Path) -> None:
    ds = _volume(chunks=2)
    save_segmenter(SegmentModel(seg_net(depth=1, base=2)), tmp_path / "seg")
    in_memory = ds.compute()
    with raise_if_dask_computes():
        a = ctvol.shift_interleave(ds, bone, 5, dtype=np.uint8)
        b = ctvol.shift_interleave(ds, soft, (2, 2, 2), ("z", "y", "x"), fuse="mean")
        c = ctvol.shift_interleave(in_memory, str(tmp_path / "seg"), 3)  # numpy in
        d = ctvol.shift_interleave(ds, bone, 2, fuse="vote", dtype=np.uint8)
    for out in (a, b, c, d):
        assert out.chunks is not None


def test_numpy_input_and_dataarray_input() -> None:
    ds = _volume(chunks=None)
    a = ctvol.shift_interleave(ds, soft, 3).values
    b = ctvol.shift_interleave(ds.hu, soft, 3).values
    c = ctvol.shift_interleave(ds.chunk({"z": 4}), soft, 3).values
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_segmenter_checkpoint_loaded_once_per_process(tmp_path: pathlib.Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    torch.manual_seed(0)
    model = SegmentModel(seg_net(depth=1, base=4), provenance={"seed": 0})
    save_segmenter(model, tmp_path / "seg")
    loaded = load_segmenter(tmp_path / "seg")
    assert loaded.digest == model.digest and loaded.provenance == {"seed": 0}
    loads: list[str] = []
    real = si._load_path

    def counting(path: str):
        loads.append(path)
        return real(path)

    monkeypatch.setattr(si, "_load_path", counting)
    monkeypatch.setattr(si, "_CACHE", {})
    ds = _volume(chunks=2)
    by_path = ctvol.shift_interleave(ds, str(tmp_path / "seg"), 3).values
    again = ctvol.shift_interleave(ds, tmp_path / "seg", 3).values
    assert loads == [str(tmp_path / "seg")]  # 5 blocks x 2 computes, one load
    in_memory = ctvol.shift_interleave(ds, model, 3).values
    np.testing.assert_array_equal(by_path, again)
    np.testing.assert_array_equal(by_path, in_memory)
    assert by_path.min() >= 0 and by_path.max() <= 1
    with pytest.raises(FileNotFoundError, match="no segmenter checkpoint"):
        load_segmenter(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"format": "ctvol-reslice-model"}')
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a ctvol segmenter config"):
        load_segmenter(tmp_path / "bad")


def test_threads_and_processes_give_identical_output(tmp_path: pathlib.Path) -> None:
    import dask
    import torch
    from distributed import Client, LocalCluster

    torch.manual_seed(3)
    model = SegmentModel(seg_net(depth=1, base=4))
    save_segmenter(model, tmp_path / "seg")
    ds = _volume(n=9, chunks=3)
    runs = {
        "path": lambda: ctvol.shift_interleave(ds, str(tmp_path / "seg"), 3).values,
        "model": lambda: ctvol.shift_interleave(ds, model, (2, 2), ("z", "y"),
                                                fuse="mean").values,
        "function": lambda: ctvol.shift_interleave(ds, to_unit, 4, predict_depth=1).values,
    }
    with dask.config.set(scheduler="threads"):
        threads = {k: run() for k, run in runs.items()}
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                     dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        procs = {k: run() for k, run in runs.items()}
    for k in runs:
        np.testing.assert_array_equal(threads[k], procs[k])


def _bad_shape(b: np.ndarray) -> np.ndarray:
    return b[:, :-1]


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"factor": 0}, ValueError, "factor must be an integer >= 1"),
    ({"factor": 2.5}, ValueError, "factor must be an integer >= 1"),
    ({"factor": True}, ValueError, "factor must be an integer >= 1"),
    ({"factor": (2, 3)}, ValueError, r"factor \(2, 3\) has 2 entries but axis \('z',\) has 1"),
    ({"factor": (2, 2, 2), "axis": ("z", "y")}, ValueError, "has 3 entries but axis"),
    ({"axis": "t"}, ValueError, r"axis 't' is not a dimension of the data: dims are "
                                r"\('z', 'y', 'x'\)"),
    ({"axis": ("z", "z")}, ValueError, "names a dimension twice"),
    ({"axis": ()}, ValueError, "at least one dimension"),
    ({"fuse": "median"}, ValueError, r"fuse must be one of \[None, 'vote', 'mean'\]"),
    ({"order": 6}, ValueError, "order must be an integer spline order 0-5"),
    ({"predict_depth": -1}, ValueError, "predict_depth must be an integer >= 0"),
    ({"predict_depth": {"t": 1}}, ValueError, r"predict_depth names \['t'\]"),
    ({"fuse": "mean", "dtype": np.uint8}, ValueError, "dtype must be a float dtype"),
    ({"var": "label"}, ValueError, r"ds has no variable 'label': it has \['hu'\]"),
    ({"predict": 3}, TypeError, "predict must be a callable"),
])
def test_errors(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    kw = {"predict": bone, **kwargs}
    with pytest.raises(exc, match=match):
        ctvol.shift_interleave(_volume(), **kw)  # type: ignore[arg-type]


def test_uneven_coordinates_refused() -> None:
    ds = _volume(n=5).assign_coords(z=[0.0, 5.0, 10.0, 20.0, 25.0])
    with pytest.raises(GeometryError, match=r"uneven 'z' spacing: a 10 step at z=10"):
        ctvol.shift_interleave(ds, bone, 5)
    ok = ctvol.shift_interleave(ds, bone, 2, axis="x", dtype=np.uint8)  # z is not refined
    assert ok.sizes["z"] == 5


def test_predict_errors_surface_at_compute() -> None:
    ds = _volume()
    lazy = ctvol.shift_interleave(ds, _bad_shape, 3)  # building never calls predict
    with pytest.raises(PredictError, match=r"predict returned a block of shape \(\d+, 17, 16\) "
                                           r"for an input block of shape \(\d+, 18, 16\)"):
        lazy.values  # noqa: B018
    with pytest.raises(PredictError, match="float32 values, which do not cast safely to the "
                                           "output dtype uint8; pass dtype='float32'"):
        ctvol.shift_interleave(ds, soft, 3, dtype=np.uint8).values  # noqa: B018
