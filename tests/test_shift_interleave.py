"""ctvol.shift_interleave: interleave order, coordinates, fusion, halos, laziness, errors."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

import ctvol
from ctvol import _predictor as predictors
from ctvol._refine_block import _fuse
from ctvol.errors import GeometryError, PredictError
from ctvol.intensity import to_unit
from ctvol.models import SegmentModel, _runtime, load_segmenter, save_segmenter, seg_net
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
    last = out.attrs["ctvol_history"][-1]
    assert last["op"] == "shift_interleave"
    assert last["params"]["factor"] == [5] and last["params"]["axis"] == ["z"]
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
    own = _fuse(np.array([2, 0, 1], dtype=np.int8), [0], [3], "vote", np.dtype(np.int8))
    assert own.tolist() == [2, 0, 1]
    # k = 5: the window of sample 2 in [3, 3, 1, 2, 2] counts 3:2, 2:2, 1:1; its own
    # label (1) is not tied, so the smallest tied label (2) wins.
    out = _fuse(np.array([3, 3, 1, 2, 2], dtype=np.int8), [0], [5], "vote",
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
    real = predictors.load_segment

    def counting(path: str):
        loads.append(path)
        return real(path)

    monkeypatch.setattr(predictors, "load_segment", counting)
    monkeypatch.setattr(_runtime, "_CACHE", {})
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


@pytest.mark.slow
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


# --------------------------------------------------------------------------
# Models on a device: SegmentModel runs where ResliceModel runs
# --------------------------------------------------------------------------


def tiny_segmenter(seed: int = 0) -> SegmentModel:
    import torch

    torch.manual_seed(seed)
    return SegmentModel(seg_net(depth=1, base=4), batch_size=3)


def test_segment_model_predict_on_cpu() -> None:
    import torch

    model = tiny_segmenter().to("cpu")
    assert model.device == "cpu" and "on cpu" in repr(model)
    # Weights are channels-last (a convolution with several input channels tells).
    conv = [m for m in model.net.modules()
            if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1][0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    seen: list[bool] = []
    model.net.register_forward_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    hu = head_phantom((7, 20, 18), seed=1)
    out = model.predict(hu)
    assert seen == [True, True, True]  # 7 slices in batches of 3, all in inference mode
    with torch.no_grad():  # the definition: sigmoid of the logits of the windowed slices
        ref = torch.sigmoid(model.net(torch.from_numpy(to_unit(hu)[:, None])))[:, 0].numpy()
    assert out.shape == hu.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-6)
    np.testing.assert_allclose(model.predict(hu, batch_size=7), out, atol=1e-6)
    np.testing.assert_array_equal(model.predict(hu, amp=True), out)  # autocast: CUDA only
    np.testing.assert_array_equal(model(hu), out)
    assert model.digest == model.digest and len(model.digest) == 64
    with pytest.raises(ValueError, match=r"takes \(n, H, W\) blocks, got shape \(20, 18\)"):
        model.predict(hu[0])


def test_cuda_flag_builds_lazily_and_device_resolution(tmp_path: pathlib.Path) -> None:
    """The GPU path is a flag away: the graph builds for device='cuda' on any machine."""
    import torch

    from ctvol.inference import resolve_device

    model = tiny_segmenter()
    save_segmenter(tiny_segmenter(1), tmp_path / "seg")
    ds = _volume(chunks=3)
    with raise_if_dask_computes():
        out = ctvol.shift_interleave(ds, model, 3, device="cuda", amp=True)
        by_path = ctvol.shift_interleave(ds, tmp_path / "seg", 3, device="cuda:0")
    assert out.sizes["z"] == 25 and by_path.sizes["z"] == 25
    assert out.attrs["shift_interleave"]["device"] == "cuda"
    assert out.attrs["shift_interleave"]["amp"] is True
    assert out.attrs["shift_interleave"]["model_digest"] == model.digest
    assert model.device == "cpu"  # the caller's model is never moved
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    # device=None resolves on the worker: here, the CPU (no GPU in CI)
    if not torch.cuda.is_available():
        auto = ctvol.shift_interleave(ds, model, 3).values
        np.testing.assert_array_equal(auto, ctvol.shift_interleave(ds, model, 3,
                                                                   device="cpu").values)
    with pytest.raises(ValueError, match="device must be a torch device .* got 'gpu0'"):
        ctvol.shift_interleave(ds, model, 3, device="gpu0")
    with pytest.raises(ValueError, match="device, amp and labels apply to ctvol models"):
        ctvol.shift_interleave(ds, bone, 3, device="cuda")


@pytest.mark.gpu
def test_cuda_matches_cpu_closely(tmp_path: pathlib.Path) -> None:
    save_segmenter(tiny_segmenter(), tmp_path / "seg")
    ds = _volume(chunks=3)
    cpu = ctvol.shift_interleave(ds, tmp_path / "seg", 3, device="cpu").values
    gpu = ctvol.shift_interleave(ds, tmp_path / "seg", 3, device="cuda").values
    bf16 = ctvol.shift_interleave(ds, tmp_path / "seg", 3, device="cuda", amp=True).values
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
    np.testing.assert_allclose(bf16, cpu, atol=2e-2)


def test_model_tasks_ask_for_a_gpu_on_a_gpu_cluster(tmp_path: pathlib.Path,
                                                    gpu_cluster: tuple[object, str]) -> None:
    """Only the worker that declares GPU=1 runs the model's blocks (as ctvol.reslice's)."""
    from distributed import get_task_stream

    from ctvol._compute import compute
    from ctvol.io._write import write_group

    save_segmenter(tiny_segmenter(), tmp_path / "seg")
    ds = _volume(n=9, chunks=2)
    _, gpu = gpu_cluster
    with get_task_stream() as ts:
        (out,) = compute([ctvol.shift_interleave(ds, str(tmp_path / "seg"), 3, device="cpu")])
        # The CLI's writer keeps the annotation too (to_zarr's graph would not).
        fine = ctvol.shift_interleave(ds, str(tmp_path / "seg"), 2, device="cpu")
        write_group(fine.to_dataset(), tmp_path / "p.zarr", "k")
    ran_on = [t["worker"] for t in ts.data if "shift-interleave" in str(t["key"])]
    assert len(ran_on) == 10  # one task per z-block, twice
    assert set(ran_on) == {gpu}
    ref = ctvol.shift_interleave(ds, str(tmp_path / "seg"), 3, device="cpu").values
    np.testing.assert_array_equal(out.values, ref)
    back = xr.open_zarr(tmp_path / "p.zarr", group="k", consolidated=False)
    np.testing.assert_array_equal(back.prediction.values, fine.values)


# --------------------------------------------------------------------------
# Per-slice predictors: (n, H, W) -> (n,) or (n, C), refined along z
# --------------------------------------------------------------------------


def slice_mean(block: np.ndarray) -> np.ndarray:
    """One value per slice: its mean."""
    return block.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)


def mean_and_bright(block: np.ndarray) -> np.ndarray:
    """A row of two per slice: the mean and the fraction of pixels above 300 HU."""
    bright = (block > 300).mean(axis=(1, 2))
    return np.stack([slice_mean(block), bright], axis=1).astype(np.float32)


def tiny_slice_model(seed: int = 0):
    import torch

    from ctvol.curation import SliceModel, slice_net

    torch.manual_seed(seed)
    return SliceModel(slice_net(2, widths=(4, 8)), task="classify", classes=["blank", "body"],
                      input_size=16)


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("extend", [False, True])
def test_per_slice_interleave_order_is_the_definition(k: int, extend: bool) -> None:
    ds = _volume(chunks=3)
    out = ctvol.shift_interleave(ds, slice_mean, k, per_slice=True, extend=extend)
    expected = _by_hand(ds.hu.values, slice_mean, k, extend)  # copy n % k, sample n // k
    assert out.dims == ("z",) and out.dtype == np.float32
    np.testing.assert_array_equal(out.values, expected)
    block = ctvol.shift_interleave(ds, lambda b: b, k, extend=extend)
    np.testing.assert_array_equal(out.z.values, block.z.values)
    np.testing.assert_array_equal(out.z_shift.values, block.z_shift.values)
    assert set(out.coords) == {"z", "z_shift"}  # y, x and sop_uid have no place here
    assert out.attrs["spacing"] == [5.0 / k, 0.45, 0.45]
    assert out.attrs["shift_interleave"]["per_slice"] is True
    assert out.attrs["ctvol_history"][-1]["params"]["per_slice"] is True


def test_per_slice_k1_is_the_predictor_and_constant_stays_constant() -> None:
    ds = _volume(chunks=2)
    one = ctvol.shift_interleave(ds, mean_and_bright, 1, classes=["mean", "bright"])
    assert one.dims == ("z", "class") and one["class"].values.tolist() == ["mean", "bright"]
    np.testing.assert_array_equal(one.values, mean_and_bright(ds.hu.values.astype(np.float32)))
    np.testing.assert_array_equal(one.z.values, ds.z.values)
    unnamed = ctvol.shift_interleave(ds, mean_and_bright, 1, classes=2)
    assert unnamed.dims == ("z", "class") and "class" not in unnamed.coords
    flat = np.full((6, 5, 4), 437, dtype=np.int16)
    const = xr.Dataset({"hu": (("z", "y", "x"), flat)}, coords={"z": 2.0 * np.arange(6)})
    for fuse in (None, "mean"):
        out = ctvol.shift_interleave(const.chunk({"z": 2}), mean_and_bright, 4, fuse=fuse,
                                     classes=["mean", "bright"]).values
        assert out.shape == (21, 2)
        np.testing.assert_array_equal(out, [[437.0, 1.0]] * 21)


def test_slice_model_as_predictor(tmp_path: pathlib.Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from ctvol.curation import save_slice_model

    model = tiny_slice_model()
    ds = _volume(n=5, chunks=2)
    out = ctvol.shift_interleave(ds, model, 4)
    assert out.dims == ("z", "class") and out.shape == (17, 2)
    assert out["class"].values.tolist() == ["blank", "body"]
    probs = out.values
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert (probs >= 0).all() and out.attrs["shift_interleave"]["model_digest"] == model.digest
    np.testing.assert_allclose(out.z.values, 700.25 + 1.25 * np.arange(17))
    # Kept positions (n % k == 0) are the model on the input slices themselves.
    np.testing.assert_allclose(probs[::4], model.predict(ds.hu.values), atol=1e-6)
    # A checkpoint path: the same, loaded once per process (shared cache).
    save_slice_model(model, tmp_path / "cls")
    loads: list[str] = []
    real = predictors.load_slice
    monkeypatch.setattr(predictors, "load_slice", lambda p: loads.append(p) or real(p))
    monkeypatch.setattr(_runtime, "_CACHE", {})
    np.testing.assert_allclose(ctvol.shift_interleave(ds, tmp_path / "cls", 4).values, probs,
                               atol=1e-6)
    ctvol.shift_interleave(ds, str(tmp_path / "cls"), 2).values  # noqa: B018
    assert loads == [str(tmp_path / "cls")]
    # Labels: the most probable class per generated slice, CF flags as classify_slices.
    lab = ctvol.shift_interleave(ds, model, 4, labels=True)
    assert lab.dims == ("z",) and lab.dtype == np.uint8
    np.testing.assert_array_equal(lab.values, probs.argmax(axis=1))
    assert lab.attrs["flag_meanings"] == "blank body" and lab.attrs["flag_values"] == [0, 1]
    voted = ctvol.shift_interleave(ds, model, 4, labels=True, fuse="vote")
    assert voted.dims == ("z",) and set(np.unique(voted.values)) <= {0, 1}


def test_per_slice_is_lazy(tmp_path: pathlib.Path) -> None:
    from ctvol.curation import save_slice_model

    save_slice_model(tiny_slice_model(), tmp_path / "cls")
    ds = _volume(chunks=2)
    in_memory = ds.compute()
    with raise_if_dask_computes():
        outs = [ctvol.shift_interleave(ds, slice_mean, 5, per_slice=True),
                ctvol.shift_interleave(ds, mean_and_bright, 3, classes=2, fuse="mean"),
                ctvol.shift_interleave(ds, tiny_slice_model(), 3),
                ctvol.shift_interleave(in_memory, tmp_path / "cls", 3, labels=True)]
    assert all(out.chunks is not None for out in outs)


@pytest.mark.parametrize("chunks", [{"z": 1}, {"z": 2, "y": 5}, {"z": 4, "x": 3}])
@pytest.mark.parametrize("fuse", [None, "vote", "mean"])
@pytest.mark.parametrize("extend", [False, True])
def test_per_slice_chunked_equals_unchunked(chunks, fuse: str | None, extend: bool) -> None:
    ds = _volume(n=9, chunks=None, seed=4)
    if fuse == "vote":
        kw = {"per_slice": True, "dtype": np.uint8}
        predict = lambda b: (slice_mean(b) > 0).astype(np.uint8)  # noqa: E731
    else:
        kw, predict = {"classes": ["mean", "bright"]}, mean_and_bright
    whole = ctvol.shift_interleave(ds.chunk(-1), predict, 3, fuse=fuse, extend=extend, **kw)
    parts = ctvol.shift_interleave(ds.chunk(chunks), predict, 3, fuse=fuse, extend=extend, **kw)
    assert len(parts.data.chunks[0]) > 1
    np.testing.assert_array_equal(whole.values, parts.values)


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"predict": slice_mean, "per_slice": True, "axis": "y"}, ValueError,
     r"per-slice predictor .* refines along 'z' only.*got axis='y' on dims \('z', 'y', 'x'\) "
     r"of shape \(9, 18, 16\)"),
    ({"predict": slice_mean, "per_slice": True, "factor": (2, 2), "axis": ("z", "x")},
     ValueError, "refines along 'z' only"),
    ({"predict": slice_mean, "per_slice": True, "predict_depth": {"y": 1}}, ValueError,
     "sees whole slices; give predict_depth along 'z' only"),
    ({"predict": mean_and_bright, "per_slice": False, "classes": 2}, ValueError,
     "classes describe per-slice outputs: pass per_slice=True"),
    ({"predict": mean_and_bright, "classes": "ab"}, ValueError, "classes must be a count"),
    ({"predict": mean_and_bright, "classes": ["a", "a"]}, ValueError, "distinct classes"),
    ({"predict": bone, "labels": True}, ValueError, "apply to ctvol models"),
    ({"predict": "tiny-cls", "classes": ["x", "y"]}, ValueError, "names its classes"),
    ({"predict": "tiny-cls", "per_slice": False}, ValueError, "gives one row per slice"),
    ({"predict": "tiny-seg", "per_slice": True}, ValueError, "per_slice and classes do not"),
    ({"predict": "tiny-seg", "fuse": "vote"}, ValueError,
     "fuse='vote' counts equal labels, but the segmenter .* outputs probabilities: pass "
     "labels=True"),
    ({"predict": "nowhere"}, FileNotFoundError, "no model checkpoint at .*nowhere"),
])
def test_predictor_option_errors(tmp_path: pathlib.Path, kwargs: dict[str, object],
                                 exc: type[Exception], match: str) -> None:
    from ctvol.curation import save_slice_model

    save_slice_model(tiny_slice_model(), tmp_path / "tiny-cls")
    save_segmenter(tiny_segmenter(), tmp_path / "tiny-seg")
    if isinstance(kwargs["predict"], str):
        kwargs = {**kwargs, "predict": str(tmp_path / str(kwargs["predict"]))}
    with pytest.raises(exc, match=match):
        ctvol.shift_interleave(_volume(), **kwargs)  # type: ignore[arg-type]


def test_a_reslice_checkpoint_is_refused(tmp_path: pathlib.Path) -> None:
    from ctvol.models import ResliceModel, save_model
    from ctvol.models.unet import UNet

    save_model(ResliceModel(UNet(3, depth=1, base=2)), tmp_path / "r")
    with pytest.raises(ValueError, match="holds a 'ctvol-reslice-model' checkpoint.*use "
                                         "ctvol.reslice"):
        ctvol.shift_interleave(_volume(), tmp_path / "r", 3)


def test_per_slice_shape_errors_surface_at_compute() -> None:
    ds = _volume()
    with pytest.raises(PredictError, match=r"predict returned a block of shape \(\d+,\) for an "
                                           r"input block of shape .* pass per_slice=True"):
        ctvol.shift_interleave(ds, slice_mean, 3).values  # noqa: B018
    with pytest.raises(PredictError, match=r"per_slice=True expects \(\d+, 3\), one row of 3 "):
        ctvol.shift_interleave(ds, mean_and_bright, 3, classes=3).values  # noqa: B018
    with pytest.raises(PredictError, match="a block -> block predictor"):
        ctvol.shift_interleave(ds, soft, 3, per_slice=True).values  # noqa: B018


# --------------------------------------------------------------------------
# ctvol shift-interleave STORE KEY --model PATH --factor K -o OUT.zarr
# --------------------------------------------------------------------------


@pytest.fixture
def cli_inputs(tmp_path: pathlib.Path) -> dict[str, str]:
    from ctvol.curation import save_slice_model

    store = str(tmp_path / "c.zarr")
    ctvol.write(_volume(n=6, chunks=None).drop_vars("sop_uid"), store, "s1")
    save_segmenter(tiny_segmenter(), tmp_path / "seg")
    save_slice_model(tiny_slice_model(), tmp_path / "cls")
    return {"store": store, "seg": str(tmp_path / "seg"), "cls": str(tmp_path / "cls"),
            "out": str(tmp_path / "pred.zarr")}


def test_cli_shift_interleave(cli_inputs: dict[str, str],
                              capsys: pytest.CaptureFixture[str]) -> None:
    from ctvol.cli import main

    store, seg, cls, out = (cli_inputs[k] for k in ("store", "seg", "cls", "out"))
    assert main(["shift-interleave", store, "s1", "--model", seg, "--factor", "5", "-o", out,
                 "--scheduler", "threads"]) == 0
    text = capsys.readouterr().out
    assert f"s1: 6 x 18 x 16 -> 26 z x 18 y x 16 x (segmenter {seg}, 5 runs per block)" in text
    assert f"written to {out} (group s1)" in text
    back = xr.open_zarr(out, group="s1", consolidated=False)
    ref = ctvol.shift_interleave(ctvol.open_series(store, "s1"), seg, 5)
    np.testing.assert_array_equal(back.prediction.values, ref.values)
    for c in ("z", "z_shift", "y", "x"):
        np.testing.assert_array_equal(back[c].values, ref[c].values)
    info = back.attrs["shift_interleave"]
    assert info["factor"] == [5] and info["axis"] == ["z"] and info["fuse"] is None
    assert info["model_digest"] == load_segmenter(seg).digest
    last = back.attrs["ctvol_history"][-1]
    assert last["op"] == "shift_interleave" and last["params"]["factor"] == [5]
    assert back.attrs["complete"] is True and back.attrs["spacing"] == [1.0, 0.45, 0.45]
    assert back.attrs["source"] == {"store": store, "key": "s1"}
    assert back.prediction.attrs == {"long_name": "probability", "units": "1"}
    # A slice classifier: per-slice class probabilities, then voted labels (the
    # group is replaced).
    assert main(["shift-interleave", store, "s1", "--model", cls, "--factor", "5",
                 "--fuse", "mean", "-o", out, "--scheduler", "threads", "-q"]) == 0
    probs = xr.open_zarr(out, group="s1", consolidated=False)
    assert probs.prediction.dims == ("z", "class") and probs.prediction.shape == (26, 2)
    assert probs["class"].values.tolist() == ["blank", "body"]
    np.testing.assert_allclose(probs.prediction.values.sum(axis=1), 1.0, rtol=1e-6)
    assert main(["shift-interleave", store, "s1", "--model", cls, "--factor", "5",
                 "--fuse", "vote", "-o", out, "--scheduler", "threads", "-q"]) == 0
    votes = xr.open_zarr(out, group="s1", consolidated=False)
    assert set(votes.data_vars) == {"prediction"} and "class" not in votes.coords
    assert votes.prediction.dtype == np.uint8 and votes.prediction.dims == ("z",)
    assert votes.prediction.attrs["flag_meanings"] == "blank body"
    assert votes.attrs["shift_interleave"]["labels"] is True


@pytest.mark.parametrize(("change", "message"), [
    ({"--model": "nowhere"}, "no model checkpoint at '.*nowhere'"),
    ({"key": "s9"}, r"no complete series 's9' in .*c.zarr; complete series: s1"),
    ({"--factor": "0"}, r"series s1: factor must be an integer >= 1"),
    ({"--model": "cls", "--axis": "y"}, "series s1: .*refines along 'z' only"),
    ({"--model": "reslice"}, "holds a 'ctvol-reslice-model' checkpoint.*use ctvol.reslice"),
    ({"-o": "store"}, "is the input store: write predictions to another Zarr store"),
])
def test_cli_shift_interleave_errors(cli_inputs: dict[str, str], tmp_path: pathlib.Path,
                                     capsys: pytest.CaptureFixture[str],
                                     change: dict[str, str], message: str) -> None:
    from ctvol.cli import main
    from ctvol.models import ResliceModel, save_model
    from ctvol.models.unet import UNet

    save_model(ResliceModel(UNet(3, depth=1, base=2)), tmp_path / "reslice")
    names = {**cli_inputs, "nowhere": str(tmp_path / "nowhere"),
             "reslice": str(tmp_path / "reslice")}
    opts = {"key": "s1", "--model": "seg", "--factor": "3", "-o": "out", **change}
    argv = ["shift-interleave", cli_inputs["store"], opts.pop("key")]
    for flag, value in opts.items():
        argv += [flag, names.get(value, value)]
    assert main([*argv, "--scheduler", "threads", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ctvol shift-interleave: error: ")
    assert __import__("re").search(message, err), err
    assert not pathlib.Path(cli_inputs["out"]).exists()
