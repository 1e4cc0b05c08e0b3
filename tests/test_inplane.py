"""In-plane super-resolution: grids, bilinear, the U-net path, checkpoints, training."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
import xarray as xr

import ctvol
from ctvol._inplane import area_downsample, bilinear, bilinear_hu, inplane_block, normalise
from ctvol.errors import GeometryError, SeriesNotFoundError
from ctvol.models.inplane import InplaneModel, save_inplane_model
from ctvol.models.inplane_unet import InplaneUNet
from ctvol.testing import head_phantom, raise_if_dask_computes, write_dicom_series
from ctvol.training.inplane import InplanePairs


def _volume(hu: np.ndarray, chunk: int = 4) -> xr.Dataset:
    """A volume as ingest writes it: mm coords, geometry attrs, a position per slice."""
    nz, ny, nx = hu.shape
    origin = np.array([-20.0, 10.0, 100.0])
    z = 100.0 + 2.0 * np.arange(nz)
    pos = origin + np.outer(2.0 * np.arange(nz), [0, 0, 1])
    return xr.Dataset(
        {"hu": (("z", "y", "x"), hu, {"units": "HU"})},
        coords={"z": ("z", z, {"units": "mm"}), "y": ("y", 10.0 + 0.5 * np.arange(ny)),
                "x": ("x", -20.0 + 0.5 * np.arange(nx)),
                "sop_uid": ("z", np.array([f"1.2.{i}" for i in range(nz)], dtype=object)),
                "position": (("z", "xyz"), pos)},
        attrs={"spacing": [2.0, 0.5, 0.5], "origin": origin.tolist(),
               "orientation": [1.0, 0, 0, 0, 1.0, 0], "series_uid": "1.2.3",
               "sop_digest": "abc", "ctvol_history": ["ingest"]},
    ).chunk({"z": chunk})


@pytest.fixture(scope="module")
def vol() -> xr.Dataset:
    return _volume(head_phantom((6, 32, 32), seed=3))


def _tiny(output: str = "residual", seed: int = 0, **kw: object) -> InplaneModel:
    torch.manual_seed(seed)
    net = InplaneUNet(2, depth=2, base=4, output=output)
    if output == "residual":  # move away from the identity start, so outputs differ
        with torch.no_grad():
            net.head.weight.normal_(0, 0.05)
            net.head.bias.fill_(0.01)
    return InplaneModel(net, **kw)  # type: ignore[arg-type]


# -- grids and the bilinear path --------------------------------------------------------


def test_coordinates_spacing_and_geometry_follow_align_corners_false(vol: xr.Dataset) -> None:
    up = ctvol.upsample_inplane(vol, 2, method="bilinear")
    assert up.hu.shape == (6, 64, 64) and up.hu.dtype == np.int16
    # New centres: y0 - dy/2 + (j + 0.5) dy/f, i.e. 9.875, 10.125, ... (field of view kept)
    np.testing.assert_array_equal(up.y.values, 9.75 + 0.125 + 0.25 * np.arange(64))
    np.testing.assert_array_equal(up.x.values, -20.25 + 0.125 + 0.25 * np.arange(64))
    assert up.y.values[0] - 0.125 == vol.y.values[0] - 0.25  # same outer edge
    assert up.attrs["spacing"] == [2.0, 0.25, 0.25]
    assert up.attrs["origin"] == [-20.125, 9.875, 100.0]
    np.testing.assert_array_equal(up.position.values[:, :2],
                                  np.tile([-20.125, 9.875], (6, 1)))
    np.testing.assert_array_equal(up.z.values, vol.z.values)
    assert list(up.sop_uid.values) == list(vol.sop_uid.values)
    assert up.attrs["inplane"]["generated"] is True and up.attrs["inplane"]["factor"] == 2
    assert up.attrs["ctvol_history"][0] == "ingest"
    assert up.attrs["ctvol_history"][-1]["op"] == "upsample_inplane"
    assert up.attrs["ctvol_history"][-1]["params"] == {"factor": 2, "method": "bilinear"}
    assert "sop_digest" not in up.attrs
    assert vol.attrs["spacing"] == [2.0, 0.5, 0.5]  # the input is untouched
    assert up.hu.chunks[0] == vol.hu.chunks[0]


def test_factor_3_grid() -> None:
    ds = _volume(np.zeros((2, 4, 6), np.int16), chunk=2)
    up = ctvol.upsample_inplane(ds, 3, method="bilinear")
    np.testing.assert_allclose(up.x.values, -20.25 + (np.arange(18) + 0.5) * 0.5 / 3)
    np.testing.assert_allclose(up.attrs["spacing"], [2.0, 0.5 / 3, 0.5 / 3])


def test_downsample_then_upsample_returns_the_original_grid(vol: xr.Dataset) -> None:
    low = ctvol.downsample_inplane(vol, 2)
    np.testing.assert_array_equal(low.y.values, 10.25 + np.arange(16))
    assert low.attrs["spacing"] == [2.0, 1.0, 1.0]
    assert low.attrs["origin"] == [-19.75, 10.25, 100.0]
    back = ctvol.upsample_inplane(low, 2, method="bilinear")
    np.testing.assert_array_equal(back.y.values, vol.y.values)
    np.testing.assert_array_equal(back.x.values, vol.x.values)
    assert back.attrs["origin"] == vol.attrs["origin"]
    assert back.attrs["spacing"] == vol.attrs["spacing"]


def test_area_downsample_is_the_rounded_block_mean(vol: xr.Dataset) -> None:
    hu = vol.hu.values.astype(np.float64)
    expected = np.rint((hu[:, 0::2, 0::2] + hu[:, 1::2, 0::2] + hu[:, 0::2, 1::2]
                        + hu[:, 1::2, 1::2]) / 4)
    np.testing.assert_array_equal(ctvol.downsample_inplane(vol, 2).hu.values, expected)


def test_bilinear_equals_scipy_zoom_grid_mode(vol: xr.Dataset) -> None:
    """An independent implementation of the same convention (pixel areas, edge clamp)."""
    from scipy import ndimage

    hu = vol.hu.values
    for f in (2, 3):
        ref = np.stack([ndimage.zoom(s.astype(np.float64), f, order=1, grid_mode=True,
                                     mode="nearest") for s in hu])
        got = bilinear(hu, f)
        # float32 source coordinates (1/3 is inexact) on 2000-HU edges: ~1e-6 relative
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-2)
        out = ctvol.upsample_inplane(vol, f, method="bilinear").hu.values
        assert np.abs(out - ref).max() <= 0.5 + 1e-2  # rounded to whole HU
        np.testing.assert_array_equal(out, np.rint(got))
        np.testing.assert_array_equal(bilinear_hu(hu, f, batch=4), np.rint(got))


def test_bilinear_by_hand() -> None:
    # Row [0, 100] at factor 2: centres at -0.25, 0.25, 0.75, 1.25 input pixels.
    hu = np.array([[[0, 100], [200, 300]]], np.int16)
    np.testing.assert_allclose(bilinear(hu, 2)[0], [[0, 25, 75, 100], [50, 75, 125, 150],
                                                    [150, 175, 225, 250], [200, 225, 275, 300]])


def test_chunked_equals_unchunked(vol: xr.Dataset) -> None:
    a = ctvol.upsample_inplane(vol.chunk({"z": 1}), 2, method="bilinear").hu.values
    b = ctvol.upsample_inplane(vol.chunk({"z": -1}), 2, method="bilinear").hu.values
    c = ctvol.upsample_inplane(vol.compute(), 2, method="bilinear").hu.values  # numpy in
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


BAD = [
    ({"factor": 1}, ValueError, "integer >= 2, got 1"),
    ({"factor": 2.0}, ValueError, "integer >= 2, got 2.0"),
    ({"factor": True}, ValueError, "integer >= 2, got True"),
    ({"factor": "2"}, ValueError, "integer >= 2"),
    ({"method": "bicubic"}, ValueError, r"method must be one of \['unet', 'bilinear'\]"),
    ({"method": "bilinear", "batch_size": 0}, ValueError, "batch_size must be a positive"),
    ({"factor": 3}, FileNotFoundError, "no bundled in-plane U-net for factor 3"),
    ({"model": "/nowhere/x2"}, FileNotFoundError, "no in-plane model '/nowhere/x2'"),
]


@pytest.mark.parametrize(("kw", "exc", "msg"), BAD)
def test_bad_arguments(vol: xr.Dataset, kw: dict, exc: type, msg: str) -> None:
    kw = {"factor": 2, **kw}
    with pytest.raises(exc, match=msg):
        ctvol.upsample_inplane(vol, kw.pop("factor"), **kw)


def test_model_factor_mismatch(vol: xr.Dataset) -> None:
    with pytest.raises(ValueError, match="upsamples by 2, but factor 3 was asked"):
        ctvol.upsample_inplane(vol, 3, model=_tiny())


def test_bad_volumes(vol: xr.Dataset) -> None:
    with pytest.raises(GeometryError, match="33 x 32 pixels, not divisible by factor 2"):
        ctvol.downsample_inplane(_volume(np.zeros((2, 33, 32), np.int16)), 2)
    with pytest.raises(ValueError, match="'hu' with dims"):
        ctvol.upsample_inplane(vol.rename({"hu": "grey"}), 2, method="bilinear")
    with pytest.raises(ValueError, match="'hu' with dims"):
        ctvol.downsample_inplane(vol.transpose("y", "z", "x", ...), 2)


def test_lazy(vol: xr.Dataset) -> None:
    minmax = _tiny(normalisation="minmax")
    with raise_if_dask_computes():
        ctvol.upsample_inplane(vol, 2, method="bilinear")
        ctvol.upsample_inplane(vol, 2, model=_tiny())
        ctvol.upsample_inplane(vol, 2, model=minmax)
        ctvol.downsample_inplane(vol, 2)


# -- the U-net path -----------------------------------------------------------------------


def test_untrained_residual_model_is_bilinear(vol: xr.Dataset) -> None:
    """Identity-like sanity: the residual head starts at zero, so output == bilinear."""
    torch.manual_seed(0)
    model = InplaneModel(InplaneUNet(2, depth=2, base=4))
    a = ctvol.upsample_inplane(vol, 2, model=model).hu.values
    b = ctvol.upsample_inplane(vol, 2, method="bilinear").hu.values
    np.testing.assert_array_equal(a, b)


def _direct(model: InplaneModel, hu: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The U-net step written out by hand: bilinear, normalise, forward, back to HU."""
    up = torch.nn.functional.interpolate(torch.from_numpy(hu.astype(np.float32))[:, None],
                                         scale_factor=2, mode="bilinear", align_corners=False)
    x = ((up.clamp(lo, hi) - lo) / (hi - lo))
    with torch.inference_mode():
        y = model.net.eval()(x)
    if model.residual:
        out = up + (y - x) * (hi - lo)
    else:
        out = y.clamp(0, 1) * (hi - lo) + lo
    return np.rint(out[:, 0].numpy()).astype(np.int16)


@pytest.mark.parametrize("norm", ["window", "minmax"])
@pytest.mark.parametrize("output", ["residual", "sigmoid"])
def test_unet_through_dask_equals_a_direct_call(vol: xr.Dataset, norm: str,
                                                output: str) -> None:
    model = _tiny(output, normalisation=norm)
    got = ctvol.upsample_inplane(vol.chunk({"z": 2}), 2, model=model, batch_size=3).hu.values
    hu = vol.hu.values
    lo, hi = (-1024.0, 1024.0) if norm == "window" else (float(hu.min()), float(hu.max()))
    expected = _direct(model, hu, lo, hi)
    diff = np.abs(got.astype(int) - expected)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999  # float32 rounding ties only
    assert not np.array_equal(got, ctvol.upsample_inplane(vol, 2, method="bilinear").hu.values)
    up = ctvol.upsample_inplane(vol, 2, model=model)
    assert up.attrs["inplane"]["model_digest"] == model.digest
    assert up.attrs["inplane"]["normalisation"]["kind"] == norm


def test_residual_keeps_values_beyond_the_window() -> None:
    hu = np.full((1, 8, 8), 3000, np.int16)
    hu[0, :, :4] = -1000
    torch.manual_seed(0)
    model = InplaneModel(InplaneUNet(2, depth=1, base=2))  # identity start
    out = inplane_block(hu, factor=2, method="unet", model=model)
    assert out.max() == 3000 and out.min() == -1000  # not clipped to 1024 HU


def test_checkpoint_round_trip(tmp_path: pathlib.Path, vol: xr.Dataset) -> None:
    model = _tiny(normalisation={"kind": "window", "window": [-500, 1500]}, loss="bce",
                  provenance={"note": "test"})
    digest = model.digest
    save_inplane_model(model, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["format"] == "ctvol-inplane-model" and cfg["factor"] == 2
    assert cfg["normalisation"] == {"kind": "window", "window": [-500.0, 1500.0]}
    assert cfg["loss"] == "bce" and cfg["provenance"] == {"note": "test"}
    back = ctvol.load_inplane_model(tmp_path / "m")
    assert back.digest == digest and back.path == str(tmp_path / "m")
    a = ctvol.upsample_inplane(vol, 2, model=model).hu.values
    b = ctvol.upsample_inplane(vol, 2, model=str(tmp_path / "m")).hu.values
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="in-plane model: load it with ctvol.load_inplane"):
        ctvol.load_model(tmp_path / "m")


def test_a_reslice_checkpoint_is_refused(tmp_path: pathlib.Path) -> None:
    from ctvol.models import ResliceModel, save_model
    from ctvol.models.unet import UNet

    save_model(ResliceModel(UNet(3, depth=1, base=2)), tmp_path / "r")
    with pytest.raises(ValueError, match="format 'ctvol-reslice-model', expected "
                                         "'ctvol-inplane-model'"):
        ctvol.load_inplane_model(tmp_path / "r")


@pytest.mark.parametrize(("kw", "msg"), [
    ({"normalisation": "zscore"}, r"normalisation must be one of \['window', 'minmax'\]"),
    ({"normalisation": {"kind": "window", "window": [5, 5]}}, "high > low"),
    ({"loss": "l2"}, r"loss must be one of \['l1', 'bce'\]"),
])
def test_bad_model_config(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        InplaneModel(InplaneUNet(2, depth=1, base=2), **kw)


# -- training -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("inplane")
    write_dicom_series(tmp / "in", head_phantom((20, 32, 32), seed=5), spacing=(1.0, 0.5, 0.5))
    store = ctvol.ingest(tmp / "in", tmp / "c.zarr").store
    key = ctvol.list_series(store)[0]
    ctvol.write(ctvol.downsample_inplane(ctvol.open_series(store, key), 2), store, "lowres")
    return store, key


def test_pairs_are_regions_of_the_whole_upsampled_slice(store: tuple[str, str]) -> None:
    path, key = store
    hu = ctvol.open_series(path, key).hu.values
    full = bilinear(area_downsample(hu, 2), 2)
    synthetic = InplanePairs(path, 2, hr=key, crop=16, split="all", seed=4)
    paired = InplanePairs(path, 2, hr=key, lr="lowres", crop=16, split="all", seed=4)
    corners = set()
    for i in range(len(synthetic)):
        x, y = synthetic[i]
        z = synthetic.items[i][1]
        rng = np.random.default_rng((4, 0, i))
        r0, c0 = int(rng.integers(0, 9)) * 2, int(rng.integers(0, 9)) * 2
        corners.add((r0 == 0 or r0 == 16) and (c0 == 0 or c0 == 16))
        np.testing.assert_allclose(x[0], normalise(full[z, r0:r0 + 16, c0:c0 + 16], -1024, 1024),
                                   rtol=0, atol=1e-6)
        np.testing.assert_array_equal(y[0], normalise(hu[z, r0:r0 + 16, c0:c0 + 16], -1024, 1024))
        xp, yp = paired[i]
        np.testing.assert_array_equal(xp, x)  # the stored LR series is the same downsample
        np.testing.assert_array_equal(yp, y)
    assert True in corners  # slice borders (edge replication) were exercised


def test_pairs_split_by_blocks_with_a_guard(store: tuple[str, str]) -> None:
    path, key = store
    tr = InplanePairs(path, 2, hr=key, crop=16)
    va = InplanePairs(path, 2, hr=key, crop=16, split="val")
    assert tr.ranges == {key: (0, 8)} and va.ranges == {key: (14, 20)}  # 20 slices, 6 guard
    assert [z for _, z in tr.items] == list(range(8))


def test_pairs_errors(store: tuple[str, str]) -> None:
    path, key = store
    with pytest.raises(ValueError, match="crop must be a positive multiple of factor 2"):
        InplanePairs(path, 2, hr=key, crop=15)
    with pytest.raises(SeriesNotFoundError, match="no complete series 'nope'"):
        InplanePairs(path, 2, hr="nope")
    with pytest.raises(GeometryError, match="low-resolution series lowres is"):
        InplanePairs(path, 4, hr=key, lr="lowres", crop=16)
    with pytest.raises(ValueError, match="lr= names 2 series but hr= names 1"):
        InplanePairs(path, 2, hr=key, lr=["lowres", "lowres"])


def test_minmax_pairs_use_the_lr_volume_range(store: tuple[str, str]) -> None:
    path, key = store
    p = InplanePairs(path, 2, hr=key, crop=None, normalisation="minmax", split="all")
    low = area_downsample(ctvol.open_series(path, key).hu.values, 2)
    assert p.window(key) == (float(low.min()), float(low.max()))
    x, y = p[0]
    assert x.shape == y.shape == (1, 32, 32) and 0 <= x.min() and x.max() <= 1


def _small(**kw: object) -> dict[str, object]:
    return {"crop": 16, "batch_size": 4, "architecture": {"depth": 2, "base": 4},
            "seed": 1, **kw}


def test_resume_continues_exactly(store: tuple[str, str], tmp_path: pathlib.Path) -> None:
    path, key = store
    ctvol.train_inplane(path, 2, hr=key, epochs=2, out=tmp_path / "a", **_small())
    ctvol.train_inplane(path, 2, hr=key, epochs=1, out=tmp_path / "b", **_small())
    resumed = ctvol.train_inplane(path, 2, hr=key, epochs=2, out=tmp_path / "b", resume=True,
                                  **_small())
    a = ctvol.load_inplane_model(tmp_path / "a" / "last").net.state_dict()
    b = resumed.net.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    log = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,train_loss,val_loss,val_psnr_unet") and len(log) == 3
    cfg = json.loads((tmp_path / "b" / "last" / "config.json").read_text())
    assert cfg["provenance"]["training_slices"] == {key: [0, 8]}
    assert cfg["provenance"]["lr_source"] == "area-downsampled HR"


@pytest.mark.parametrize("loss", ["l1", "bce"])
def test_training_lowers_the_loss(store: tuple[str, str], tmp_path: pathlib.Path,
                                  loss: str) -> None:
    path, key = store
    m = ctvol.train_inplane(path, 2, hr=key, lr="lowres", epochs=4, out=tmp_path / "m",
                            loss=loss, norm="minmax", learning_rate=3e-3, augment=False,
                            repeats=3, **_small(architecture={"depth": 2, "base": 4,
                                                              "output": "sigmoid"}))
    rows = (tmp_path / "m" / "log.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in rows]
    assert losses[-1] < losses[0]
    assert m.loss == loss and m.normalisation == {"kind": "minmax"}
    assert m.provenance["lr_source"] == "series"


def test_output_folder_errors(store: tuple[str, str], tmp_path: pathlib.Path) -> None:
    path, key = store
    ctvol.train_inplane(path, 2, hr=key, epochs=1, out=tmp_path / "m", **_small())
    with pytest.raises(ValueError, match="another kind or factor"):
        ctvol.train_inplane(path, 4, hr=key, epochs=1, out=tmp_path / "m", **_small())
    with pytest.raises(FileExistsError, match="resume=True"):
        ctvol.train_inplane(path, 2, hr=key, epochs=1, out=tmp_path / "m", **_small())
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        ctvol.train_inplane(path, 2, hr=key, epochs=1, out=tmp_path / "n", resume=True,
                            **_small())
    with pytest.raises(ValueError, match=r"loss must be one of \['l1', 'bce'\]"):
        ctvol.train_inplane(path, 2, hr=key, epochs=1, out=tmp_path / "k", loss="mse")


# -- real data --------------------------------------------------------------------------


def test_real_sample_bilinear_beats_pixel_repetition(sample_store: str) -> None:
    """On real CT, a half-pixel error in the grid convention would lose to plain repetition."""
    ds = ctvol.open_series(sample_store, ctvol.list_series(sample_store)[0]).isel(z=slice(0, 4))
    low = ctvol.downsample_inplane(ds, 2)
    up = ctvol.upsample_inplane(low, 2, method="bilinear")
    hr = ds.hu.values
    rep = np.repeat(np.repeat(low.hu.values, 2, axis=1), 2, axis=2)
    from ctvol.metrics import slice_metrics

    m_bil = slice_metrics(hr, up.hu.values)
    m_rep = slice_metrics(hr, rep)
    assert (m_bil[:, 0] > m_rep[:, 0]).all()  # PSNR
    assert (m_bil[:, 1] > m_rep[:, 1]).all()  # SSIM
    np.testing.assert_allclose(up.y.values, ds.y.values, rtol=0, atol=1e-9)
    assert up.attrs["spacing"][1] == pytest.approx(ds.attrs["spacing"][1])


@pytest.mark.slow
def test_threads_and_processes_give_identical_output(tmp_path: pathlib.Path,
                                                     vol: xr.Dataset) -> None:
    """Checkpoint paths and in-memory models on worker processes (minmax: a shared range)."""
    import dask
    from distributed import Client, LocalCluster

    save_inplane_model(_tiny(normalisation="minmax", seed=7), tmp_path / "m")
    with dask.config.set(scheduler="threads"):
        threads = ctvol.upsample_inplane(vol, 2, model=str(tmp_path / "m")).hu.values
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                     dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        procs = ctvol.upsample_inplane(vol, 2, model=str(tmp_path / "m")).hu.values
        in_memory = ctvol.upsample_inplane(
            vol, 2, model=_tiny(normalisation="minmax", seed=7)).hu.values
    np.testing.assert_array_equal(threads, procs)
    np.testing.assert_array_equal(threads, in_memory)


def test_write_and_reopen(tmp_path: pathlib.Path, vol: xr.Dataset) -> None:
    up = ctvol.upsample_inplane(vol, 2, method="bilinear")
    ctvol.write(up, tmp_path / "sr.zarr", "s1")
    back = ctvol.open_series(tmp_path / "sr.zarr", "s1")
    np.testing.assert_array_equal(back.hu.values, up.hu.values)
    np.testing.assert_array_equal(back.y.values, up.y.values)
    assert back.attrs["inplane"]["generated"] is True and back.attrs["complete"] is True


def test_bundled_model_is_the_default(sample_store: str) -> None:
    """A regression check, not a generalisation claim: the bundled sample's slices
    (S2020 indices 55-84) were in the model's training block (0-91)."""
    from ctvol.metrics import slice_metrics
    from ctvol.models import bundled_inplane_models

    assert bundled_inplane_models() == {"unet-inplane-x2": 2}
    model = ctvol.load_inplane_model("unet-inplane-x2")
    assert model.factor == 2 and model.residual and model.normalisation["kind"] == "window"
    hr = ctvol.open_series(sample_store, ctvol.list_series(sample_store)[0]).isel(z=[3, 20])
    low = ctvol.downsample_inplane(hr, 2)
    sr = ctvol.upsample_inplane(low, 2)
    assert sr.attrs["inplane"]["model_digest"] == model.digest
    lin = ctvol.upsample_inplane(low, 2, method="bilinear")
    m_sr, m_lin = slice_metrics(hr.hu.values, sr.hu.values), slice_metrics(hr.hu.values,
                                                                           lin.hu.values)
    assert (m_sr[:, 0] > m_lin[:, 0] + 5).all()  # PSNR, dB (held-out block: +17.9 dB)
