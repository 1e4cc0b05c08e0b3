"""ctvol.reslice: semantics, the linear baseline, U-net inference, plans, errors."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import xarray as xr

import ctvol
from ctvol.errors import GeometryError
from ctvol.models import load_model, save_model
from ctvol.testing import head_phantom, raise_if_dask_computes, tiny_model


def _volume(n: int = 7, dz: float = 3.0, shape: tuple[int, int] = (24, 20),
            chunks: int | None = 2, seed: int = 0) -> xr.Dataset:
    hu = head_phantom((n, *shape), seed=seed)
    ds = xr.Dataset(
        {"hu": (("z", "y", "x"), hu, {"units": "HU"})},
        coords={"z": 100.0 + dz * np.arange(n), "y": 0.5 * np.arange(shape[0]),
                "x": 0.5 * np.arange(shape[1])},
        attrs={"spacing": [dz, 0.5, 0.5], "series_uid": "1.2.3", "complete": True,
               "ctvol_history": ["ingest"]},
    )
    return ds.chunk({"z": chunks}) if chunks else ds


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("chunks", [1, 2, 32])
def test_semantics_linear(k: int, chunks: int) -> None:
    ds = _volume(chunks=chunks)
    out = ctvol.reslice(ds, k, method="linear")
    n = ds.sizes["z"]
    assert out.sizes["z"] == (n - 1) * k + 1
    hu = out.hu.values
    np.testing.assert_array_equal(hu[::k], ds.hu.values)  # acquired slices bit for bit
    assert out.generated.values.tolist() == [i % k != 0 for i in range(out.sizes["z"])]
    assert out.acquired_index.values[::k].tolist() == list(range(n))
    assert (out.acquired_index.values[out.generated.values] == -1).all()
    np.testing.assert_allclose(np.diff(out.z.values), 3.0 / k)
    np.testing.assert_array_equal(out.z.values[::k], ds.z.values)
    assert out.attrs["spacing"] == pytest.approx([3.0 / k, 0.5, 0.5])
    assert "complete" not in out.attrs
    assert out.attrs["ctvol_history"][0] == "ingest"
    last = out.attrs["ctvol_history"][-1]
    assert last["op"] == "reslice"
    assert last["params"] == {"factor": k, "keep_every": 1, "method": "linear"}
    assert hu.dtype == np.int16


def test_chunked_equals_unchunked() -> None:
    a = ctvol.reslice(_volume(chunks=None), 3, method="linear").hu.values
    b = ctvol.reslice(_volume(chunks=3), 3, method="linear").hu.values
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_linear_matches_np_interp(k: int) -> None:
    ds = _volume(n=5, chunks=2, seed=4)
    out = ctvol.reslice(ds, k, method="linear")
    z_in, z_out = ds.z.values, out.z.values
    vol = ds.hu.values.astype(np.float64)
    ref = np.apply_along_axis(lambda v: np.interp(z_out, z_in, v), 0, vol)
    got = out.hu.values.astype(np.float64)
    # Rounded once to whole HU: never more than half a HU away from the exact value,
    # and equal to its rounding wherever the value is not (within float error) a tie.
    assert np.max(np.abs(got - ref)) <= 0.5 + 1e-4
    frac = np.abs(ref - np.floor(ref) - 0.5)
    clear = frac > 1e-4
    np.testing.assert_array_equal(got[clear], np.rint(ref)[clear])


def test_reslice_is_lazy(tmp_path: pathlib.Path) -> None:
    ds = _volume(chunks=2)
    with raise_if_dask_computes():
        out = ctvol.reslice(ds, 3, method="linear")
        out2 = ctvol.reslice(ds, 3, method="unet", model=tiny_model(3))
    assert out.hu.chunks is not None and out2.hu.chunks is not None


@pytest.mark.parametrize(("dz", "target", "factors", "plan"), [
    (4.0, 2.0, (3, 4, 5), (4, 2)),  # the paper's example
    (5.0, 1.0, (3, 4, 5), (5, 1)),
    (3.0, 1.0, (3, 4, 5), (3, 1)),
    (6.0, 2.0, None, (3, 1)),
])
def test_spacing_plans(dz: float, target: float, factors: tuple[int, ...] | None,
                       plan: tuple[int, int]) -> None:
    assert ctvol._reslice.plan_factor(dz, spacing=target, factors=factors) == plan


def test_spacing_target_keeps_every_mth() -> None:
    ds = _volume(n=4, dz=4.0)
    out = ctvol.reslice(ds, spacing=2.0, method="linear")
    assert out.attrs["reslice"]["factor"] == 2  # linear: the smallest factor that works
    np.testing.assert_allclose(np.diff(out.z.values), 2.0)
    np.testing.assert_array_equal(out.hu.values[::2], ds.hu.values)
    with_model = ctvol.reslice(ds, spacing=2.0, method="unet", model=tiny_model(4))
    assert with_model.attrs["reslice"]["factor"] == 4
    assert with_model.attrs["reslice"]["keep_every"] == 2
    np.testing.assert_allclose(np.diff(with_model.z.values), 2.0)
    np.testing.assert_array_equal(with_model.hu.values[::2], ds.hu.values)


@pytest.mark.parametrize("method", ["linear", "unet"])
def test_series_already_at_the_target_spacing_passes_through(method: str) -> None:
    ds = _volume(n=5, dz=1.0)
    with raise_if_dask_computes():
        out = ctvol.reslice(ds, spacing=1.0, method=method)  # unet: no model is needed
    assert not out["generated"].values.any()
    np.testing.assert_array_equal(out["acquired_index"].values, np.arange(5))
    np.testing.assert_array_equal(out.z.values, ds.z.values)
    np.testing.assert_array_equal(out.hu.values, ds.hu.values)
    assert out.attrs["reslice"]["unchanged"] is True and out.attrs["reslice"]["factor"] == 1
    assert out.attrs["spacing"] == [1.0, 0.5, 0.5]
    assert "complete" not in out.attrs
    assert out.attrs["ctvol_history"][:-1] == ["ingest"]
    assert out.attrs["ctvol_history"][-1]["params"] == {"method": method, "unchanged": True,
                                                        "spacing_mm": 1.0}


def test_target_coarser_than_the_series_is_refused() -> None:
    with pytest.raises(GeometryError, match=r"at 1 mm, finer than the target spacing 2 mm: .*"
                                            r"never drops acquired slices"):
        ctvol.reslice(_volume(n=5, dz=1.0), spacing=2.0, method="linear")


def test_unreachable_spacing_lists_reachable() -> None:
    with pytest.raises(ValueError, match=r"1.5 mm is not reachable .* reachable spacings are "
                                         r"2, 1.33333, 1, 0.8 mm"):
        ctvol._reslice.plan_factor(4.0, spacing=1.5, factors=(3, 4, 5))


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"factor": 1}, ValueError, "factor must be an integer >= 2"),
    ({"factor": 2.5}, ValueError, "factor must be an integer >= 2"),
    ({"factor": True}, ValueError, "factor must be an integer >= 2"),
    ({"factor": 3, "method": "cubic"}, ValueError,
     r"method must be one of \['auto', 'unet', 'linear'\]"),
    ({"factor": 3, "method": "linear", "batch_size": 0}, ValueError, "batch_size"),
    ({"factor": 3, "spacing": 1.0}, ValueError, "exactly one of"),
    ({"factor": 2, "method": "unet"}, FileNotFoundError,
     "no bundled U-net for factor 2 .*unet-x4 .* method='linear'"),
])
def test_errors(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        ctvol.reslice(_volume(), **kwargs)  # type: ignore[arg-type]


def test_model_factor_mismatch() -> None:
    with pytest.raises(ValueError, match="generates factor 4, but factor 3 was asked"):
        ctvol.reslice(_volume(), 3, method="unet", model=tiny_model(4))


def test_too_few_slices_and_uneven_spacing() -> None:
    with pytest.raises(GeometryError, match="at least 2"):
        ctvol.reslice(_volume(n=1), 3, method="linear")
    ds = _volume(n=5)
    ds = ds.assign_coords(z=[0.0, 2.0, 4.0, 8.0, 10.0])
    with pytest.raises(GeometryError, match=r"uneven slice spacing: a 4 mm step .* split_gaps"):
        ctvol.reslice(ds, 3, method="linear")


@pytest.mark.parametrize("output", ["sigmoid", "residual"])
def test_unet_keeps_acquired_slices_and_maps_back_to_hu(output: str) -> None:
    ds = _volume(n=4, shape=(30, 22))  # not a multiple of the network's 4: padded, cropped
    out = ctvol.reslice(ds, 3, method="unet", model=tiny_model(3, output=output))
    hu = out.hu.values
    assert hu.shape == (10, 30, 22)
    np.testing.assert_array_equal(hu[::3], ds.hu.values)
    generated = hu[out.generated.values]
    assert generated.min() >= -1024 and generated.max() <= 1024  # the model's window


def test_checkpoint_round_trip(tmp_path: pathlib.Path) -> None:
    model = tiny_model(5, seed=3)
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json",
                                                                  "model.safetensors"]
    loaded = load_model(tmp_path / "m")
    assert loaded.factor == 5 and loaded.digest == model.digest
    ds = _volume(n=3)
    a = ctvol.reslice(ds, 5, method="unet", model=model).hu.values
    b = ctvol.reslice(ds, 5, method="unet", model=str(tmp_path / "m")).hu.values
    np.testing.assert_array_equal(a, b)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"format": "other"}')
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a ctvol reslice model"):
        load_model(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match=r"Bundled models: unet-x3 \(x3\), unet-x4"):
        load_model(tmp_path / "nothing")


def test_threads_and_processes_give_identical_output(tmp_path: pathlib.Path) -> None:
    import dask
    from distributed import Client, LocalCluster

    save_model(tiny_model(3, seed=7), tmp_path / "m")
    ds = _volume(n=9, chunks=4)
    with dask.config.set(scheduler="threads"):
        threads = ctvol.reslice(ds, 3, method="unet", model=str(tmp_path / "m")).hu.values
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                     dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        procs = ctvol.reslice(ds, 3, method="unet", model=str(tmp_path / "m")).hu.values
        in_memory = ctvol.reslice(ds, 3, method="unet", model=tiny_model(3, seed=7)).hu.values
    np.testing.assert_array_equal(threads, procs)
    np.testing.assert_array_equal(threads, in_memory)


def test_write_and_reopen(tmp_path: pathlib.Path) -> None:
    ds = _volume(n=12, chunks=5)
    out = ctvol.reslice(ds, 4, method="linear")
    ctvol.write(out, tmp_path / "fine.zarr", "s1")
    back = ctvol.open_series(tmp_path / "fine.zarr", "s1")
    np.testing.assert_array_equal(back.hu.values, out.hu.values)
    assert back.generated.values.tolist() == out.generated.values.tolist()
    assert back.attrs["complete"] is True and back.attrs["reslice"]["factor"] == 4


def test_sop_uid_and_position_carried_over() -> None:
    """Acquired slices keep their SOPInstanceUID and position; generated slices get
    "" and positions on the line between their neighbours (sheared like a tilted
    series: positions advance 3 mm along the normal and 1 mm along y per slice)."""
    n, k = 5, 3
    ds = _volume(n=n, chunks=2)
    pos = np.stack([np.zeros(n), 10.0 + np.arange(n), 100.0 + 3.0 * np.arange(n)], axis=1)
    ds = ds.assign_coords(sop_uid=("z", np.array([f"1.2.{i}" for i in range(n)], object)),
                          position=(("z", "xyz"), pos))
    # coordinates as a store opens them (dask-backed): carried over lazily
    ds = ds.assign_coords(sop_uid=ds.sop_uid.chunk(2), position=ds.position.chunk(2))
    with raise_if_dask_computes():
        full = ctvol.reslice(ds, k, method="linear")
    gen = full.generated.values
    assert full.sop_uid.values[~gen].tolist() == [f"1.2.{i}" for i in range(n)]
    assert set(full.sop_uid.values[gen]) == {""}
    np.testing.assert_array_equal(full.position.values[~gen], pos)
    i = np.arange(full.sizes["z"])
    np.testing.assert_allclose(full.position.values,
                               np.stack([0 * i, 10.0 + i / k, 100.0 + i], axis=1))
    np.testing.assert_allclose(full.position.values[:, 2], full.z.values)


def test_cli_reslice(sample_store: str, tmp_path: pathlib.Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    from ctvol.cli import main

    out = str(tmp_path / "fine.zarr")
    assert main(["reslice", sample_store, "-o", out, "--factor", "3", "--method", "linear",
                 "--scheduler", "threads", "-q"]) == 0
    (key,) = ctvol.list_series(out)
    src = ctvol.open_series(sample_store, key)
    fine = ctvol.open_series(out, key)
    assert fine.sizes["z"] == (src.sizes["z"] - 1) * 3 + 1
    np.testing.assert_array_equal(fine.hu.values[::3], src.hu.values)
    assert main(["info", out]) == 0
    assert "88 slices (58 generated) of 512x512, spacing 0.3333" in capsys.readouterr().out
    # --method unet without a bundled U-net for 2: a usage error, before any series is touched
    assert main(["reslice", sample_store, "-o", str(tmp_path / "x2.zarr"), "--factor", "2",
                 "--method", "unet", "--scheduler", "threads", "-q"]) == 2
    assert "no bundled U-net for factor 2" in capsys.readouterr().err
    assert not (tmp_path / "x2.zarr").exists()
    auto_out = str(tmp_path / "auto.zarr")  # the default, auto: linear, and says why
    assert main(["reslice", sample_store, "-o", auto_out, "--factor", "2", "--scheduler",
                 "threads"]) == 0
    assert "auto -> linear: no U-net for factor 2" in capsys.readouterr().out
    assert main(["info", auto_out]) == 0
    assert "auto -> linear: no U-net for factor 2" in capsys.readouterr().out


def test_gpu_resource_requested_and_kept_through_write(tmp_path: pathlib.Path,
                                                       gpu_cluster: tuple[object, str]) -> None:
    """Only the worker that declares GPU=1 runs U-net blocks (dask/dask#7036 guard)."""
    from distributed import get_task_stream

    save_model(tiny_model(3), tmp_path / "m")
    _, gpu = gpu_cluster
    with get_task_stream() as ts:
        out = ctvol.reslice(_volume(n=9, chunks=2), 3, method="unet",
                            model=str(tmp_path / "m"),
                            device="cpu")
        ctvol.write(out, tmp_path / "o.zarr", "k")
    ran_on = [t["worker"] for t in ts.data if "reslice-unet" in str(t["key"])]
    assert len(ran_on) == 5  # one task per z-block
    assert set(ran_on) == {gpu}
    back = ctvol.open_series(tmp_path / "o.zarr", "k").hu.values
    np.testing.assert_array_equal(back[::3], _volume(n=9).hu.values)


def test_cuda_flag_builds_lazily_and_device_resolution() -> None:
    """The GPU path is a flag away: the graph builds for device='cuda' on any machine."""
    from ctvol.inference import resolve_device

    out = ctvol.reslice(_volume(n=3), 3, method="unet", model=tiny_model(3), device="cuda",
                        amp=True)
    assert out.sizes["z"] == 7
    assert resolve_device("cpu") == "cpu"
    import torch

    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.gpu
def test_cuda_matches_cpu_closely() -> None:
    ds = _volume(n=3)
    model = tiny_model(3)
    cpu = ctvol.reslice(ds, 3, method="unet", model=model, device="cpu").hu.values.astype(int)
    gpu = ctvol.reslice(ds, 3, method="unet", model=tiny_model(3),
                        device="cuda").hu.values.astype(int)
    assert np.abs(cpu - gpu).max() <= 1


def test_untrained_residual_unet_is_the_linear_baseline() -> None:
    from ctvol.models import ResliceModel
    from ctvol.models.unet import UNet

    ds = _volume(n=4)
    fresh = ResliceModel(UNet(3, depth=2, base=4, output="residual"))
    unet = ctvol.reslice(ds, 3, method="unet", model=fresh).hu.values.astype(int)
    lin = ctvol.reslice(ds, 3, method="linear").hu.values.astype(int)
    # Same formula, one through [0, 1] in float32: at most 1 HU of rounding apart
    # (inside the [-1024, 1024] window that the model sees).
    inside = (lin > -1024) & (lin < 1024)
    assert np.abs(unet - lin)[inside].max() <= 1



def _bundled() -> dict[str, int]:
    from ctvol.models import bundled_models

    return bundled_models()


@pytest.mark.parametrize("name", sorted(_bundled()))
def test_bundled_models_meet_the_shipping_bar_on_test_blocks(name: str) -> None:
    """A bundled model beats linear in mean PSNR and SSIM on every test block of every
    series it records (issue 13), and no slice it trained on or was selected on lies
    in a test block."""
    model = load_model(name)
    k = _bundled()[name]
    assert model.factor == k and model.config["architecture"]["output"] == "residual"
    prov = model.provenance
    assert len(prov["test"]) == 3  # phantom, chest, whole body
    for key, res in prov["test"].items():
        assert res["unet"]["psnr"] > res["linear"]["psnr"], key
        assert res["unet"]["ssim"] > res["linear"]["ssim"], key
        assert 0 <= res["unet - linear"]["p_psnr"] <= 1  # reported with the means
        tests = prov["test_slices"][key]
        for role in ("training_slices", "selection_slices"):
            for span in prov[role][key]:
                for t in tests:
                    assert span["z_mm"][1] < t["z_mm"][0] or span["z_mm"][0] > t["z_mm"][1]
    ds = _volume(n=3, shape=(32, 32))
    out = ctvol.reslice(ds, k, method="unet")  # the bundled model for k
    assert out.attrs["reslice"]["model_digest"] == model.digest
    np.testing.assert_array_equal(out.hu.values[::k], ds.hu.values)


def test_spacing_plan_with_bundled_models() -> None:
    ds = _volume(n=3, dz=4.0, shape=(32, 32))
    out = ctvol.reslice(ds, spacing=2.0, method="unet")  # the paper's example: x4, every 2nd
    assert (out.attrs["reslice"]["factor"], out.attrs["reslice"]["keep_every"]) == (4, 2)


def test_path_checkpoint_loaded_once_on_threads(tmp_path: pathlib.Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """reslice loads the checkpoint to check its factor; tasks on the threaded
    scheduler reuse that copy instead of reading the file again."""
    import dask

    from ctvol.models import _checkpoint

    save_model(tiny_model(3, seed=11), tmp_path / "m")
    calls: list[str] = []
    real = _checkpoint.load_weights
    monkeypatch.setattr(_checkpoint, "load_weights",
                        lambda p: calls.append(str(p)) or real(p))
    with dask.config.set(scheduler="threads"):
        a = ctvol.reslice(_volume(n=9, chunks=2), 3, method="unet",
                          model=str(tmp_path / "m")).hu.values
    assert len(calls) == 1, calls
    # Rewritten in place (a new training run): loaded again, not served stale.
    save_model(tiny_model(3, seed=12), tmp_path / "m")
    with dask.config.set(scheduler="threads"):
        b = ctvol.reslice(_volume(n=9, chunks=2), 3, method="unet",
                          model=str(tmp_path / "m")).hu.values
    assert len(calls) == 2
    expected = ctvol.reslice(_volume(n=9, chunks=2), 3, method="unet",
                             model=tiny_model(3, seed=12)).hu.values
    np.testing.assert_array_equal(b, expected)
    assert not np.array_equal(a, b)


def test_in_memory_model_graph_key_is_its_digest() -> None:
    """An in-memory model is one graph key named by its weights digest: the same
    model gives the same graph (so results cache and a Client ships it once),
    other weights give another."""
    ds = _volume(n=5, chunks=2)
    m = tiny_model(3, seed=1)
    g1 = ctvol.reslice(ds, 3, method="unet", model=m).hu.data
    g2 = ctvol.reslice(ds, 3, method="unet", model=tiny_model(3, seed=1)).hu.data
    g3 = ctvol.reslice(ds, 3, method="unet", model=tiny_model(3, seed=2)).hu.data
    assert g1.name == g2.name and g1.name != g3.name
    keys = {str(k) for k in dict(g1.__dask_graph__())}
    assert f"reslice-model-{m.digest}" in keys


def _torch_threads_in_worker() -> tuple[int, int]:
    import torch

    from ctvol.models._runtime import _configure_torch_threads

    _configure_torch_threads()
    return torch.get_num_threads(), os.cpu_count() or 1


@pytest.mark.slow
def test_worker_torch_threads_split_the_host_between_all_its_workers() -> None:
    """Two single-threaded worker processes on one host get half the cores each
    (not all of them each: 2 x cores intra-op threads would oversubscribe)."""
    from distributed import Client, LocalCluster

    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                       dashboard_address=":0") as cluster, Client(cluster) as client):
        got = [client.submit(_torch_threads_in_worker, workers=[w], pure=False).result()
               for w in client.scheduler_info()["workers"]]
    assert [n for n, _ in got] == [max(1, cores // 2) for _, cores in got]


def _offset_model(k: int, hu: float) -> object:
    """A residual U-net whose head adds a constant ``hu`` to linear interpolation."""
    import torch

    from ctvol.models import ResliceModel
    from ctvol.models.unet import UNet

    net = UNet(k, depth=2, base=4, output="residual")  # zero head: exactly linear
    with torch.no_grad():
        net.head.bias.fill_(hu / 2048.0)  # [-1024, 1024] HU -> [0, 1]
    return ResliceModel(net, provenance={"trained": False, "offset_hu": hu})


def _bright_between(n: int = 13, k: int = 3) -> xr.Dataset:
    """Every k-th slice is the phantom; the slices between are 100 HU brighter, so
    linear interpolation of the k-th slices misses by 100 HU and a model adding
    100 HU is exact."""
    ds = _volume(n=n, dz=1.0, shape=(32, 32), chunks=4)
    hu = np.repeat(head_phantom((1, 32, 32), seed=1), n, axis=0).astype(np.int16)
    hu[np.arange(n) % k != 0] += 100
    return ds.copy(data={"hu": hu}).chunk({"z": 4})


@pytest.mark.parametrize(("offset", "chosen"), [(100.0, "unet"), (-150.0, "linear")])
def test_auto_picks_the_better_method_per_series(offset: float, chosen: str) -> None:
    ds = _bright_between()
    model = _offset_model(3, offset)
    out = ctvol.reslice(ds, 3, model=model)  # method="auto" is the default
    rec = out.attrs["reslice"]
    assert rec["method"] == chosen and rec["auto"]["method"] == chosen
    auto = rec["auto"]
    # self-check: pairs (0, 3), (3, 6), ... (9, 12) predict the 8 slices between
    assert auto["slices"] == 8
    if chosen == "unet":
        assert auto["psnr_unet"] > auto["psnr_linear"] and auto["ssim_unet"] > auto["ssim_linear"]
        assert rec["model_digest"] == model.digest
    else:
        assert auto["psnr_unet"] < auto["psnr_linear"]
        assert rec["model_digest"] is None
    params = out.attrs["ctvol_history"][-1]["params"]
    assert params["method"] == "auto" and params["chosen"] == chosen
    assert f"{auto['psnr_linear']:.2f}" in params["decision"]
    forced = ctvol.reslice(ds, 3, method=chosen, model=model)
    np.testing.assert_array_equal(out.hu.values, forced.hu.values)
    np.testing.assert_array_equal(out.hu.values[::3], ds.hu.values)


def test_auto_on_a_series_too_short_falls_back_to_linear_with_reason() -> None:
    ds = _volume(n=3, dz=3.0, shape=(32, 32))
    out = ctvol.reslice(ds, 3, model=_offset_model(3, 100.0))
    auto = out.attrs["reslice"]["auto"]
    assert out.attrs["reslice"]["method"] == "linear" and auto["slices"] == 0
    assert "too short for the self-check: 3 slice(s), factor 3 needs at least 4" \
        in auto["reason"]


def test_auto_without_a_model_for_the_factor_is_linear() -> None:
    ds = _volume(n=13, dz=2.0, shape=(32, 32))
    out = ctvol.reslice(ds, 2)  # no bundled x2 U-net
    assert out.attrs["reslice"]["method"] == "linear"
    assert out.attrs["reslice"]["auto"]["reason"] == "no U-net for factor 2"


def test_auto_computes_only_the_self_check_then_is_lazy() -> None:
    ds = _bright_between()
    out = ctvol.reslice(ds, 3, model=_offset_model(3, 100.0))
    assert out.hu.chunks is not None  # the output itself is still a graph
    with raise_if_dask_computes():
        ctvol.reslice(ds, 3, method="unet", model=_offset_model(3, 100.0))


def test_auto_decision_in_the_output_store_catalog(tmp_path: pathlib.Path) -> None:
    ds = _bright_between()
    store = str(tmp_path / "fine.zarr")
    ctvol.write(ctvol.reslice(ds, 3, model=_offset_model(3, 100.0)), store, "good")
    ctvol.write(ctvol.reslice(ds, 3, model=_offset_model(3, -150.0)), store, "bad")
    ctvol.write(ctvol.reslice(ds, 3, method="linear"), store, "forced")
    cat = ctvol.catalog(store).set_index("key")
    assert cat.loc["good", "method"] == "unet" and cat.loc["bad", "method"] == "linear"
    assert cat.loc["good", "selfcheck_psnr_unet"] > cat.loc["good", "selfcheck_psnr_linear"]
    assert cat.loc["bad", "selfcheck_psnr_unet"] < cat.loc["bad", "selfcheck_psnr_linear"]
    assert not cat.loc["forced", "auto"] and cat.loc["good", "auto"]
    assert (cat["n_slices"] == 37).all() and (cat["factor"] == 3).all()
    reopened = ctvol.open_series(store, "bad")
    assert reopened.attrs["reslice"]["auto"]["method"] == "linear"
    assert reopened.attrs["ctvol_history"][-1]["params"]["chosen"] == "linear"


def test_reopened_output_opens_without_chunk_warnings(tmp_path: pathlib.Path) -> None:
    """Per-slice coordinates of a written volume (z, and (z, 3) positions) are stored
    in shard-sized z-chunks, so open_series' chunks never split a stored chunk."""
    import warnings

    ds = _volume(n=20, chunks=4)
    ds = ds.assign_coords(position=(("z", "xyz"), np.zeros((20, 3))))
    ctvol.write(ctvol.reslice(ds, 3, method="linear"), tmp_path / "f.zarr", "k")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ctvol.open_series(tmp_path / "f.zarr", "k")
    assert out.sizes["z"] == 58 and out["position"].shape == (58, 3)


def test_unet_block_window_and_hu_conversions_match_the_public_functions() -> None:
    """reslice_block's in-place windowing and HU conversion give exactly what
    to_unit / from_unit / to_hu_int16 give (the engine's fast path changes nothing)."""
    from ctvol.inference import hu_from_unit_into, window_into
    from ctvol.intensity import from_unit, to_hu_int16, to_unit

    rng = np.random.default_rng(0)
    hu = rng.integers(-3024, 3072, size=(3, 17, 19)).astype(np.int16)
    y = rng.uniform(-0.2, 1.2, size=(3, 2, 17, 19)).astype(np.float32)
    for window in [(-1024.0, 1024.0), (-160.5, 240.25), (-1000.0, 3000.0)]:
        np.testing.assert_array_equal(window_into(hu.astype(np.float32), window),
                                      to_unit(hu, window))
        np.testing.assert_array_equal(hu_from_unit_into(y.copy(), window),
                                      to_hu_int16(from_unit(y, window)))
