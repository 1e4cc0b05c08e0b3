"""Property tests of the invariants STYLE.md names: reslice keeps acquired slices
bit-exact and places generated slices evenly between them, and plan_factor's plans
are exact. (Ingest → open round-trips: tests/test_ingest.py.)"""

from __future__ import annotations

import numpy as np
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ctvol
from ctvol._reslice import RTOL, plan_factor
from ctvol.testing import tiny_model


def _ds(hu: np.ndarray, dz: float, chunk: int) -> xr.Dataset:
    n, ny, nx = hu.shape
    return xr.Dataset(
        {"hu": (("z", "y", "x"), hu, {"units": "HU"})},
        coords={"z": -50.0 + dz * np.arange(n), "y": 0.7 * np.arange(ny),
                "x": 0.7 * np.arange(nx)},
        attrs={"spacing": [dz, 0.7, 0.7], "series_uid": "1.2.3", "ctvol_history": []},
    ).chunk({"z": chunk})


volumes = st.integers(2, 7).flatmap(lambda n: arrays(
    np.int16, (n, 8, 9), elements=st.integers(-3024, 3071)))


@settings(max_examples=40, deadline=None)
@given(hu=volumes, k=st.integers(2, 5), dz=st.sampled_from([0.5, 1.0, 2.5, 3.0, 5.0]),
       chunk=st.integers(1, 4))
def test_linear_reslice_keeps_acquired_slices_and_spaces_generated_ones(
        hu: np.ndarray, k: int, dz: float, chunk: int) -> None:
    out = ctvol.reslice(_ds(hu, dz, chunk), k, method="linear")
    got = out.hu.values
    n = hu.shape[0]
    assert got.shape == ((n - 1) * k + 1, *hu.shape[1:])
    np.testing.assert_array_equal(got[::k], hu)  # bit for bit, whatever the chunks
    z = out.z.values
    np.testing.assert_allclose(np.diff(z), dz / k, rtol=1e-9)
    np.testing.assert_array_equal(z[::k], -50.0 + dz * np.arange(n))
    # generated slices lie between their neighbours' values (linear, rounded)
    lo = np.minimum(hu[:-1], hu[1:]).astype(np.int32)
    hi = np.maximum(hu[:-1], hu[1:]).astype(np.int32)
    for j in range(1, k):
        g = got[j::k][: n - 1].astype(np.int32)
        assert np.all(g >= lo) and np.all(g <= hi)


@settings(max_examples=8, deadline=None)
@given(hu=volumes, chunk=st.integers(1, 3), seed=st.integers(0, 3))
def test_unet_reslice_keeps_acquired_slices(hu: np.ndarray, chunk: int, seed: int) -> None:
    out = ctvol.reslice(_ds(hu, 3.0, chunk), 3, method="unet",
                        model=tiny_model(3, seed=seed, output="sigmoid"))
    np.testing.assert_array_equal(out.hu.values[::3], hu)


@settings(max_examples=200, deadline=None)
@given(dz=st.floats(0.3, 10.0), k=st.integers(2, 10), m=st.integers(1, 10))
def test_plan_factor_is_exact_and_keeps_acquired_slices(dz: float, k: int, m: int) -> None:
    if k % m or m >= k:
        return
    target = dz * m / k
    kk, mm = plan_factor(dz, spacing=target)
    assert kk % mm == 0 and mm < kk                      # acquired slices are kept
    assert abs(dz * mm / kk - target) <= RTOL * target   # the spacing asked for
    assert kk <= k                                       # the smallest such k
    assert plan_factor(dz, factor=k) == (k, 1)
