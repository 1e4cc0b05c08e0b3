"""Per-slice image-quality metrics, vectorised over a block of slices.

Definitions are scikit-image's (``skimage.metrics``), applied to each 2-D
slice of a (z, y, x) block at once instead of one slice per call:

- MSE: mean squared difference over the slice's pixels;
- PSNR: ``10 log10(data_range**2 / MSE)``, +inf for identical slices;
- SSIM: ``structural_similarity`` with its defaults — 7×7 uniform window
  (``scipy.ndimage.uniform_filter``, mode "reflect"), K1 = 0.01, K2 = 0.03,
  sample covariance, mean over the slice with a 3-pixel border cropped.

MSE and PSNR are computed in float64, SSIM's window moments in float32 with
a float64 mean; the results agree with scikit-image (float32 or float64
input) to better than 1e-6 (the tests check random and real slices).
CT slices are normalised as the paper does first (:func:`ctvol.intensity.to_unit`:
clip to [-1024, 1024] HU, map to [0, 1]) and compared with data range 1.0.
"""

from __future__ import annotations

import numpy as np

from .intensity import HU_WINDOW, to_unit

__all__ = ["METRICS", "mse", "psnr", "slice_metrics", "ssim"]

#: Metric names in the order :func:`slice_metrics` returns them.
METRICS = ("psnr", "ssim", "mse")

_WIN = 7
_K1, _K2 = 0.01, 0.03


def _as_blocks(a: np.ndarray, b: np.ndarray,
               dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=dtype)
    b = np.asarray(b, dtype=dtype)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[None], b[None]
    if a.ndim != 3:
        raise ValueError(f"expected (y, x) or (z, y, x) arrays, got {a.ndim} dimensions")
    return a, b


def mse(truth: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Mean squared error of every slice of a (z, y, x) block → (z,) float64."""
    a, b = _as_blocks(truth, test)
    d = a - b
    return np.einsum("zyx,zyx->z", d, d) / (d.shape[1] * d.shape[2])


def psnr_from_mse(m: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """PSNR in dB from MSE; +inf where the MSE is 0 (identical slices)."""
    m = np.asarray(m, dtype=np.float64)
    out = np.full(m.shape, np.inf)
    nz = m > 0
    out[nz] = 10.0 * np.log10(data_range**2 / m[nz])
    return out


def psnr(truth: np.ndarray, test: np.ndarray, *, data_range: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio of every slice (dB), +inf for identical slices."""
    return psnr_from_mse(mse(truth, test), data_range)


def _box7(a: np.ndarray) -> np.ndarray:
    """Mean over every 7×7 window fully inside the image ("valid" region), last two axes."""
    h, w = a.shape[-2:]
    rows = a[..., 0:h - 6, :].copy()
    for i in range(1, _WIN):
        rows += a[..., i:h - 6 + i, :]
    out = rows[..., 0:w - 6].copy()
    for i in range(1, _WIN):
        out += rows[..., i:w - 6 + i]
    out *= out.dtype.type(1.0 / _WIN**2)
    return out


def _ssim_slice(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    if np.array_equal(a, b):
        return 1.0  # exactly, by definition (round-off would give 1 ± 1e-8)
    f = np.float32
    st = np.empty((5, *a.shape), np.float32)
    st[0] = a
    st[1] = b
    np.multiply(st[0], st[0], out=st[2])
    np.multiply(st[1], st[1], out=st[3])
    np.multiply(st[0], st[1], out=st[4])
    ux, uy, uxx, uyy, uxy = _box7(st)
    cov_norm = f(_WIN**2 / (_WIN**2 - 1))
    c1, c2 = f((_K1 * data_range) ** 2), f((_K2 * data_range) ** 2)
    uxuy = ux * uy
    num = 2 * uxuy + c1
    t = uxy - uxuy
    t *= 2 * cov_norm
    t += c2
    num *= t                                           # (2 ux uy + C1)(2 vxy + C2)
    ux *= ux
    uy *= uy
    t = uxx - ux
    t += uyy
    t -= uy
    t *= cov_norm
    t += c2                                            # vx + vy + C2
    ux += uy
    ux += c1                                           # ux² + uy² + C1
    t *= ux
    num /= t
    return float(num.mean(dtype=np.float64))


def ssim(truth: np.ndarray, test: np.ndarray, *, data_range: float = 1.0) -> np.ndarray:
    """Mean structural similarity of every slice (scikit-image's defaults) → (z,).

    scikit-image filters the whole slice (mode "reflect") and then crops a
    3-pixel border before averaging; the cropped values depend on in-image
    pixels only, so this computes the 7×7 window means over the "valid"
    region directly. Moments are float32 (as scikit-image computes for
    float32 input) and the mean is float64; slices go one at a time, which
    keeps the five moment maps in cache.
    """
    a, b = _as_blocks(truth, test, np.float32)
    if min(a.shape[1:]) < _WIN:
        raise ValueError(f"slices of {a.shape[1:]} are smaller than the 7×7 SSIM window")
    return np.array([_ssim_slice(x, y, data_range) for x, y in zip(a, b, strict=True)],
                    dtype=np.float64)


def slice_metrics(truth_hu: np.ndarray, test_hu: np.ndarray, *,
                  window: tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """PSNR, SSIM, MSE of every slice of two HU blocks, on the paper's [0, 1] scale.

    Parameters
    ----------
    truth_hu, test_hu : ndarray (z, y, x)
        Reference and test slices in HU (any numeric dtype).
    window : (low, high), default (-1024, 1024)
        HU window clipped and mapped to [0, 1]; metrics use data range 1.0.

    Returns
    -------
    ndarray (z, 3) float64
        Columns in :data:`METRICS` order.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((2, 16, 16), "int16"); b = a.copy(); b[1] += 100
    >>> m = slice_metrics(a, b)
    >>> m[0].tolist()
    [inf, 1.0, 0.0]
    >>> round(float(m[1, 0]), 2)          # 100 HU of 2048 → MSE 0.00238
    26.23
    """
    a, b = _as_blocks(to_unit(np.asarray(truth_hu), window), to_unit(np.asarray(test_hu), window),
                      np.float32)
    m = mse(a, b)
    return np.stack([psnr_from_mse(m), ssim(a, b), m], axis=1)
