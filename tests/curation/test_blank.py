"""The rule-based blank-slice detector and classify_slices' Dask map, on phantoms and real CT."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import xarray as xr

import ctvol
from ctvol.curation import body_fraction, classify_slices
from ctvol.testing import head_phantom, raise_if_dask_computes

PX = 1.5  # mm: a 128^2 phantom covers 192 mm, head-sized


def volume(hu: np.ndarray, *, px: float = PX, chunks: int | None = 4) -> xr.Dataset:
    n = hu.shape[0]
    ds = xr.Dataset({"hu": (("z", "y", "x"), hu)},
                    coords={"z": 2.0 * np.arange(n), "y": px * np.arange(hu.shape[1]),
                            "x": px * np.arange(hu.shape[2])},
                    attrs={"spacing": [2.0, px, px], "series_uid": "1.2.3"})
    return ds.chunk({"z": chunks}) if chunks else ds


def fov_circle(shape: tuple[int, int], radius_frac: float = 0.48) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    c = (np.array(shape) - 1) / 2
    return np.hypot(yy - c[0], xx - c[1]) <= radius_frac * min(shape)


def blank_slices(n: int = 128) -> dict[str, np.ndarray]:
    """Slices with no body: air, FOV padding, a table plate, a thin head holder, noise."""
    rng = np.random.default_rng(0)
    air = np.full((n, n), -1000, np.int16)
    padded = air.copy()
    padded[~fov_circle((n, n))] = -3024
    padded2048 = air.copy()
    padded2048[~fov_circle((n, n))] = -2048
    table = padded.copy()
    table[int(0.8 * n) : int(0.8 * n) + 3, 10:-10] = 0  # a 4.5 mm plate at PX = 1.5 mm
    holder = air.copy()
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - n / 2, xx - n / 2)
    holder[(np.abs(r - 0.4 * n) < 1.5) & (yy > n / 2)] = 300  # a ~3 mm shell
    noisy = (air + rng.normal(0, 60, air.shape)).astype(np.int16)  # streaky air
    return {"air": air, "padding -3024": padded, "padding -2048": padded2048,
            "table": table, "holder": holder, "noise": noisy}


@pytest.mark.parametrize("name", list(blank_slices()))
def test_blank_slices_are_blank(name: str) -> None:
    sl = blank_slices()[name]
    assert body_fraction(sl[None], (PX, PX))[0] < 0.002


def test_phantom_with_added_blank_slices() -> None:
    head = head_phantom((6, 128, 128), seed=1)
    blanks = np.stack(list(blank_slices().values()))
    hu = np.concatenate([blanks[:3], head, blanks[3:]])
    ds = volume(hu)
    with raise_if_dask_computes():
        labels = classify_slices(ds)
    assert labels.chunks is not None and labels.dtype == np.int8
    got = labels.compute()
    assert got.attrs["classes"] == ["blank", "body"]
    assert got.values.tolist() == [0] * 3 + [1] * 6 + [0] * 3
    assert (got.body_fraction.values[3:9] > 0.2).all()  # a head fills much of the FOV
    np.testing.assert_array_equal(got.p_body.values, got.values)
    np.testing.assert_array_equal(got.z.values, ds.z.values)


def test_padding_outside_fov_changes_nothing_but_the_denominator() -> None:
    head = head_phantom((2, 128, 128), seed=2)
    padded = head.copy()
    padded[:, ~fov_circle((128, 128), 0.49)] = -3024  # the head lies inside the circle
    f_open, f_pad = body_fraction(head, (PX, PX)), body_fraction(padded, (PX, PX))
    fov_share = fov_circle((128, 128), 0.49).mean()
    np.testing.assert_allclose(f_pad * fov_share, f_open, rtol=0.02)


def test_chunked_equals_unchunked_and_thresholds_matter() -> None:
    hu = np.concatenate([head_phantom((5, 64, 64), seed=3), blank_slices(64)["holder"][None]])
    a = classify_slices(volume(hu, chunks=None)).values
    b = classify_slices(volume(hu, chunks=2)).values
    np.testing.assert_array_equal(a, b)
    assert a.tolist() == [1] * 5 + [0]
    # The opening is what removes the holder: without it, the shell counts as body.
    assert classify_slices(volume(hu), min_thickness_mm=0).values[-1] == 1
    # An absurd min_fraction makes everything blank.
    assert classify_slices(volume(hu), min_fraction=0.99).values.tolist() == [0] * 6


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"min_fraction": 1.5}, "min_fraction must be in"),
    ({"min_thickness_mm": -1}, "min_thickness_mm must be"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"model": 3}, "model must be a SliceModel or a checkpoint"),
])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        classify_slices(volume(head_phantom((2, 32, 32))), **kwargs)


def test_not_a_volume() -> None:
    with pytest.raises(ValueError, match="'hu' with dims"):
        classify_slices(xr.Dataset({"hu": (("y", "x"), np.zeros((4, 4)))}))


def test_real_slices_have_a_body(sample_store: str) -> None:
    (key,) = ctvol.list_series(sample_store)
    ds = ctvol.open_series(sample_store, key)
    with raise_if_dask_computes():
        labels = classify_slices(ds)
    got = labels.compute()
    assert got.values.tolist() == [1] * 30  # every bundled slice goes through the phantom
    assert got.body_fraction.values.min() > 0.03
    assert "pixel_mm=(0.4512, 0.4512)" in got.attrs["method"]


def test_real_air_rows_and_padding(sample_store: str) -> None:
    (key,) = ctvol.list_series(sample_store)
    real = ctvol.open_series(sample_store, key).hu[:3].values
    px = (0.4512, 0.4512)
    # The top rows of the real slices are air (with the scanner's noise): tiled, no body.
    air_rows = np.tile(real[:, :24], (1, 512 // 24 + 1, 1))[:, :512]
    assert (body_fraction(air_rows, px) < 0.002).all()
    padded = np.where(fov_circle((512, 512)), air_rows, -3024)
    assert (body_fraction(padded, px) < 0.002).all()
    # The real slices with their outside-FOV corners padded still hold a body.
    assert (body_fraction(np.where(fov_circle((512, 512)), real, -2048), px) > 0.03).all()


@pytest.mark.realdata
def test_real_series_top_slices_are_blank(shared_dir: pathlib.Path) -> None:
    """S2020's last 6 slices (z >= 828.21 mm) are above the skull: only the head holder."""
    from ctvol.io.dicom import decode_hu

    files = [f for f in (shared_dir / "S21570" / "S2020").iterdir() if f.name.startswith("I")]
    import pydicom

    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
         for f in files]
    order = np.argsort(z)[-20:]  # the top 20 slices
    hu = np.stack([decode_hu(str(files[i]))[0] for i in order])
    ds = volume(hu, px=0.451, chunks=8).assign_coords(z=np.sort(z)[-20:])
    got = classify_slices(ds).compute()
    assert got.values.tolist() == [1] * 14 + [0] * 6
    frac = got.body_fraction.values
    assert frac[13] > 0.005  # the last sliver of the vertex: 0.74 % measured
    assert frac[14:].max() < 0.001  # holder and cushion only: 0.01 % measured
