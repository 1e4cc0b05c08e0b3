"""Bone morphometry: BA/TA per slice (blur + threshold) and Bland–Altman agreement."""

from __future__ import annotations

import math
import pathlib

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import ctvol
from ctvol.morphometry import ba_ta, bland_altman
from ctvol.testing import head_phantom, raise_if_dask_computes


def _gauss_by_hand(img: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Separable Gaussian written out: kernel exp(-x²/2σ²)/sum, radius ⌊truncate·σ + 0.5⌋,
    borders extended by half-sample symmetry (d c b a | a b c d, scipy's "reflect")."""
    r = int(truncate * sigma + 0.5)
    w = np.array([math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(-r, r + 1)])
    w /= w.sum()
    out = img.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="symmetric")
        acc = np.zeros_like(out)
        for k in range(2 * r + 1):
            sl = [slice(None), slice(None)]
            sl[axis] = slice(k, k + out.shape[axis])
            acc += w[k] * p[tuple(sl)]
        out = acc
    return out


def _volume() -> np.ndarray:
    rng = np.random.default_rng(7)
    hu = np.full((3, 12, 10), -1000, np.int16)
    hu[:, 2:10, 2:8] = 40            # tissue
    hu[0, 3:6, 3:6] = 1200           # a bone block
    hu[1, 2:10, 2:4] = 900           # a bone strip
    hu += rng.integers(-30, 30, size=hu.shape).astype(np.int16)
    return hu


def test_ba_ta_equals_blur_and_threshold_by_hand() -> None:
    hu = _volume()
    got = ba_ta(hu, sigma=1.2, threshold=300.0, tissue=-500.0).values
    expected = []
    for s in hu:
        b = _gauss_by_hand(s, 1.2)
        expected.append(np.count_nonzero(b >= 300.0) / np.count_nonzero(b >= -500.0))
    np.testing.assert_array_equal(got, expected)
    assert got[0] > 0 and got[1] > 0 and got[2] == 0.0  # slice 2 has no bone


def test_ba_ta_whole_slice_is_the_default_ta() -> None:
    hu = _volume()
    got = ba_ta(hu, sigma=0, threshold=300.0).values
    np.testing.assert_array_equal(got, (hu >= 300).sum(axis=(1, 2)) / (12 * 10))


def test_ba_ta_grey_units_use_the_volume_range() -> None:
    hu = _volume()
    lo, hi = float(hu.min()), float(hu.max())
    got = ba_ta(hu, sigma=1.0, threshold=0.6, units="grey").values
    expected = [np.count_nonzero(_gauss_by_hand((s - lo) / (hi - lo), 1.0) >= 0.6) / s.size
                for s in hu.astype(np.float64)]
    np.testing.assert_array_equal(got, expected)
    fixed = ba_ta(hu, sigma=1.0, threshold=0.5, units="grey", value_range=(-1000, 1000)).values
    expected = [np.count_nonzero(_gauss_by_hand((s + 1000) / 2000, 1.0) >= 0.5) / s.size
                for s in hu.astype(np.float64)]
    np.testing.assert_array_equal(fixed, expected)


def test_ba_ta_keeps_z_coords_and_is_lazy() -> None:
    hu = head_phantom((6, 32, 32))
    ds = xr.Dataset({"hu": (("z", "y", "x"), hu)},
                    coords={"z": 2.0 * np.arange(6), "sop_uid": ("z", list("abcdef"))})
    ds = ds.chunk({"z": 4})
    with raise_if_dask_computes():
        r = ba_ta(ds, sigma=1.2, threshold=300.0)
        g = ba_ta(ds, sigma=1.2, threshold=0.5, units="grey")
    assert isinstance(r.data, da.Array) and isinstance(g.data, da.Array)
    assert r.dims == ("z",) and list(r.sop_uid.values) == list("abcdef")
    assert r.attrs["sigma_px"] == 1.2 and r.attrs["units_threshold"] == "HU"
    np.testing.assert_array_equal(r.values, ba_ta(hu, sigma=1.2, threshold=300.0).values)
    assert ((r.values > 0.05) & (r.values < 0.6)).all()  # the skull ring


def test_ba_ta_nan_when_no_tissue() -> None:
    hu = np.full((1, 8, 8), -1000, np.int16)
    assert np.isnan(ba_ta(hu, sigma=1.0, threshold=300, tissue=-500).values[0])


@pytest.mark.parametrize(("kw", "msg"), [
    ({"units": "mgHA"}, r"units must be one of \['HU', 'grey'\]"),
    ({"sigma": -1}, "sigma must be a number >= 0"),
    ({"units": "grey", "threshold": 300}, "normalised"),
    ({"value_range": (0, 1)}, "value_range= applies to units='grey' only"),
])
def test_ba_ta_bad_arguments(kw: dict, msg: str) -> None:
    kw = {"threshold": 300.0, **kw}
    with pytest.raises(ValueError, match=msg):
        ba_ta(_volume(), **kw)


def test_bland_altman_equals_the_formulas() -> None:
    test = np.array([1.0, 3.0, 5.0, 7.0])
    ref = np.array([0.0, 1.0, 2.0, 3.0])        # differences 1, 2, 3, 4
    r = bland_altman(test, ref)
    sd = math.sqrt(5.0 / 3.0)                    # sum of squared deviations 5, n - 1 = 3
    assert r.n == 4 and r.mean_diff == 2.5
    assert r.sd == pytest.approx(sd, rel=1e-15)
    assert r.loa_low == pytest.approx(2.5 - 1.96 * sd) and r.loa_high == pytest.approx(
        2.5 + 1.96 * sd)
    t = 3.182446305284263                        # t(0.975, 3), statistical tables: 3.182
    lo, hi = r.ci["mean_diff"]
    assert lo == pytest.approx(2.5 - t * sd / 2) and hi == pytest.approx(2.5 + t * sd / 2)
    lo, hi = r.ci["loa_high"]
    assert hi - lo == pytest.approx(2 * t * sd * math.sqrt(3 / 4))
    np.testing.assert_array_equal(r.means, [0.5, 2.0, 3.5, 5.0])
    np.testing.assert_array_equal(r.diffs, [1, 2, 3, 4])
    assert r.as_dict()["loa_high"] == r.loa_high


def test_bland_altman_drops_nan_pairs_and_refuses_bad_input() -> None:
    r = bland_altman([1.0, np.nan, 2.0, 4.0], [1.0, 5.0, np.nan, 3.0])
    assert r.n == 2 and r.mean_diff == 0.5
    with pytest.raises(ValueError, match="at least 2 pairs"):
        bland_altman([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="1-D of one length"):
        bland_altman([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="lazy .* compute it first"):
        bland_altman(da.ones(3, chunks=1), np.ones(3))
    lazy = ba_ta(_volume(), sigma=1, threshold=300)
    with pytest.raises(TypeError, match="lazy"):
        bland_altman(lazy, lazy)


def test_bland_altman_figure(tmp_path: pathlib.Path) -> None:
    from matplotlib.figure import Figure

    r = bland_altman([1.0, 3.0, 5.0, 7.0], [0.0, 1.0, 2.0, 3.0])
    fig = r.figure(title="t")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    levels = sorted(line.get_ydata()[0] for line in ax.get_lines())
    assert levels == pytest.approx(sorted([0.0, r.loa_low, r.mean_diff, r.loa_high]))
    r.plot(tmp_path / "ba.png")
    assert (tmp_path / "ba.png").stat().st_size > 1000


def test_public_access() -> None:
    assert ctvol.morphometry.bland_altman is bland_altman
    assert "morphometry" in dir(ctvol)


def test_cli_upsample(sample_store: str, tmp_path: pathlib.Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    from ctvol.cli import main

    key = ctvol.list_series(sample_store)[0]
    out = tmp_path / "up.zarr"
    assert main(["upsample", sample_store, "-o", str(out), "--method", "bilinear",
                 "--scheduler", "threads", "-q"]) == 0
    assert "1 series upsampled in-plane" in capsys.readouterr().out
    up = ctvol.open_series(out, key)
    src = ctvol.open_series(sample_store, key)
    assert (up.sizes["z"], up.sizes["y"], up.sizes["x"]) == (src.sizes["z"], 1024, 1024)
    assert up.attrs["inplane"]["method"] == "bilinear"
    assert up.attrs["spacing"][1] == pytest.approx(src.attrs["spacing"][1] / 2)
    np.testing.assert_array_equal(
        up.hu[:2].values,
        ctvol.upsample_inplane(src.isel(z=slice(0, 2)), 2, method="bilinear").hu.values)
    assert main(["upsample", sample_store, "-o", str(tmp_path / "x.zarr"), "--factor", "3",
                 "--scheduler", "threads", "-q"]) == 2  # no bundled x3 model: a usage error
    assert not (tmp_path / "x.zarr").exists()
    assert "no bundled in-plane U-net for factor 3" in capsys.readouterr().err
