"""ctvol.metrics against scikit-image's definitions (random, edge-case and real slices)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from ctvol.intensity import to_unit
from ctvol.metrics import METRICS, mse, psnr, slice_metrics, ssim


def _skimage(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    rows = []
    for x, y in zip(a, b, strict=True):
        m = mean_squared_error(x, y)
        rows.append((peak_signal_noise_ratio(x, y, data_range=1.0) if m > 0 else np.inf,
                     structural_similarity(x, y, data_range=1.0), m))
    return np.array(rows)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 7, 7), (2, 37, 90)])
def test_agrees_with_skimage_on_random_slices(dtype: type, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    a = rng.random(shape).astype(dtype)
    b = np.clip(a + rng.normal(0, 0.05, shape), 0, 1).astype(dtype)
    ours = np.stack([psnr(a, b), ssim(a, b), mse(a, b)], axis=1)
    np.testing.assert_allclose(ours, _skimage(a, b), rtol=0, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(7, 40), w=st.integers(7, 40), noise=st.floats(0.0, 0.5),
       seed=st.integers(0, 2**16))
def test_agrees_with_skimage_property(h: int, w: int, noise: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.random((1, h, w))
    b = np.clip(a + rng.normal(0, noise, a.shape), 0, 1)
    ours = np.stack([psnr(a, b), ssim(a, b), mse(a, b)], axis=1)
    np.testing.assert_allclose(ours, _skimage(a, b), rtol=0, atol=1e-6)


def test_agrees_with_skimage_on_real_slices(sample_store: str) -> None:
    import ctvol

    (key,) = ctvol.list_series(sample_store)
    hu = ctvol.open_series(sample_store, key).hu[10:16].values
    # neighbours as "predictions": real structure, real differences
    truth, test = hu[1:], hu[:-1]
    ours = slice_metrics(truth, test)
    ref = _skimage(to_unit(truth).astype(np.float64), to_unit(test).astype(np.float64))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    assert np.all(np.isfinite(ours)) and np.all(ours[:, 0] > 15)


def test_identical_slices_are_explicit() -> None:
    a = np.zeros((2, 16, 16), np.int16)
    a[1, 4:9, 4:9] = 700
    m = slice_metrics(a, a.copy())
    assert m.shape == (2, len(METRICS))
    assert np.all(np.isposinf(m[:, 0])) and np.all(m[:, 1] == 1.0) and np.all(m[:, 2] == 0)


def test_window_clips_before_comparing() -> None:
    a = np.full((1, 16, 16), 2000, np.int16)
    b = np.full((1, 16, 16), 3000, np.int16)  # both above 1024 HU: identical after clipping
    assert np.isposinf(slice_metrics(a, b)[0, 0])
    assert np.isfinite(slice_metrics(a, b, window=(-1024, 4000))[0, 0])


@pytest.mark.parametrize(("a", "b", "match"), [
    (np.zeros((1, 6, 6)), np.zeros((1, 6, 6)), "7×7"),
    (np.zeros((1, 8, 8)), np.zeros((1, 8, 9)), "shapes differ"),
    (np.zeros((8,)), np.zeros((8,)), "dimensions"),
])
def test_bad_shapes(a: np.ndarray, b: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ssim(a, b)


def test_integer_and_float_paths_agree() -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(-1500, 2500, (3, 40, 33)).astype(np.int16)
    b = (a + rng.integers(-60, 60, a.shape)).astype(np.int16)
    exact = slice_metrics(a, b)
    floats = slice_metrics(a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(exact, floats, rtol=1e-12, atol=1e-13)
    ref = _skimage(to_unit(a).astype(np.float64), to_unit(b).astype(np.float64))
    np.testing.assert_allclose(exact, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("shape", [(9, 7, 7), (6, 61, 29), (5, 130, 47)])
@pytest.mark.parametrize("strip", [(1, 64), (2, 300), (4, 65536)])
def test_integer_strips_cover_every_pixel_once(monkeypatch: pytest.MonkeyPatch,
                                               shape: tuple[int, int, int],
                                               strip: tuple[int, int]) -> None:
    """The integer kernel works on strips of rows of a few slices: any strip size,
    slice count and height (a last short strip, a single strip) gives the same
    numbers as the float path and scikit-image; identical slices mixed in are
    exact, unsigned input takes the same path."""
    import ctvol.metrics as m

    monkeypatch.setattr(m, "_STRIP_SLICES", strip[0])
    monkeypatch.setattr(m, "_STRIP_ELEMENTS", strip[1])
    rng = np.random.default_rng(shape[1])
    a = rng.integers(-1100, 1100, shape).astype(np.int16)
    b = (a + rng.integers(-80, 80, shape)).astype(np.int16)
    b[::3] = a[::3]  # identical slices inside the groups
    ours = slice_metrics(a, b)
    ref = _skimage(to_unit(a).astype(np.float64), to_unit(b).astype(np.float64))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
    assert np.all(np.isposinf(ours[::3, 0])) and np.all(ours[::3, 1] == 1.0)
    np.testing.assert_allclose(slice_metrics(a.astype(np.float64), b.astype(np.float64)),
                               ours, rtol=1e-12, atol=1e-13)
    # Unsigned stored values (e.g. raw uint16 + 1024 offset) clip the same way.
    ua, ub = ((np.clip(v, -1024, None).astype(np.int32) + 1024).astype(np.uint16)
              for v in (a, b))
    np.testing.assert_allclose(slice_metrics(ua, ub, window=(0, 2048)), ours, rtol=0, atol=1e-12)


def test_integer_path_errors() -> None:
    with pytest.raises(ValueError, match="7×7"):
        slice_metrics(np.zeros((1, 6, 9), np.int16), np.zeros((1, 6, 9), np.int16))
    with pytest.raises(ValueError, match="shapes differ"):
        slice_metrics(np.zeros((1, 8, 8), np.int16), np.zeros((1, 8, 9), np.int16))
