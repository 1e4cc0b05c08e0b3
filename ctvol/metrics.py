"""Per-slice image-quality metrics, vectorised over a block of slices.

Definitions are scikit-image's (``skimage.metrics``), applied to each 2-D
slice of a (z, y, x) block at once instead of one slice per call:

- MSE: mean squared difference over the slice's pixels;
- PSNR: ``10 log10(data_range**2 / MSE)``, +inf for identical slices;
- SSIM: ``structural_similarity`` with its defaults — 7×7 uniform window
  (``scipy.ndimage.uniform_filter``, mode "reflect"), K1 = 0.01, K2 = 0.03,
  sample covariance, mean over the slice with a 3-pixel border cropped.

Integer HU (the stored data) are compared on the window's integer levels
(HU + 1024, 0 … 2048): every sum of squares and every 7×7 window sum is then
exact in integers and only the final ratios round (float64), so the results
match scikit-image's float64 computation to ~1e-13 while running faster than
its per-slice loop. Float input goes through the same formulas in float64.
The tests check 1e-6 agreement on random and real slices.
CT slices are normalised as the paper does first (:func:`ctvol.intensity.to_unit`:
clip to [-1024, 1024] HU, map to [0, 1]) and compared with data range 1.0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import OptionError, VolumeError
from .intensity import HU_WINDOW

__all__ = ["METRICS", "map_slice_metrics", "mse", "psnr", "slice_metrics", "ssim"]

#: Metric names in the order :func:`slice_metrics` returns them.
METRICS = ("psnr", "ssim", "mse")

_WIN = 7
_K1, _K2 = 0.01, 0.03


def _as_blocks(a: np.ndarray, b: np.ndarray,
               dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=dtype)
    b = np.asarray(b, dtype=dtype)
    if a.shape != b.shape:
        raise VolumeError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[None], b[None]
    if a.ndim != 3:
        raise VolumeError(f"expected (y, x) or (z, y, x) arrays, got {a.ndim} dimensions")
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


def ssim(truth: np.ndarray, test: np.ndarray, *, data_range: float = 1.0) -> np.ndarray:
    """Mean structural similarity of every slice (scikit-image's defaults) → (z,).

    scikit-image filters the whole slice (mode "reflect") and then crops a
    3-pixel border before averaging; the cropped values depend on in-image
    pixels only, so this sums the 7×7 windows over the "valid" region
    directly (float64, :func:`_strip_metrics`). Identical slices give exactly 1.
    """
    a, b = _as_blocks(truth, test)
    if min(a.shape[1:]) < _WIN:
        raise VolumeError(f"slices of {a.shape[1:]} are smaller than the 7×7 SSIM window")
    return _strip_metrics(a, b, data_range=float(data_range))[:, 1]


#: Elements per moment map in one strip of the integer SSIM kernel (slices x
#: rows x columns: 4 slices x 32 rows at 512 columns). Strips keep the moment
#: maps and their float64 ratios in cache instead of streaming whole-slice
#: maps through memory; spanning several slices keeps each numpy call long
#: enough that two threads do not queue on the GIL between calls.
_STRIP_ELEMENTS = 65536
_STRIP_SLICES = 4


def _strip_metrics(t: np.ndarray, u: np.ndarray, *, data_range: float,
                   clip: tuple[int, int] | None = None) -> np.ndarray:
    """PSNR, SSIM, MSE of every slice pair, one pass in strips of rows of a few slices.

    Per strip: the two images (integer HU: clipped to ``clip`` = (lo, hi) and
    shifted to levels 0 … hi-lo, in int32; otherwise float64 as given), the
    squared differences (MSE), the five moment maps, their 7×7 window sums by
    shifted adds (rows, then columns) and scikit-image's SSIM ratio in
    float64. For integers every sum is exact (int32 holds 49·4096², float64
    the squared differences) and only the ratios round, so results equal
    scikit-image's float64 computation to ~1e-13 (its own filters round at
    ~1e-7). MSE is on the scale where ``data_range`` is 1 … for integers
    (levels / (hi-lo)), as given for floats.
    """
    integer = clip is not None
    lo, hi = clip if clip is not None else (0, 0)
    levels = float(hi - lo) if integer else float(data_range)
    work = np.int32 if integer else np.float64
    nz, h, w = t.shape
    out = np.empty((nz, 3))
    same = np.array([np.array_equal(a, b) for a, b in zip(t, u, strict=True)], dtype=bool)
    out[same] = (np.inf, 1.0, 0.0)
    todo = np.flatnonzero(~same)
    n = float(_WIN**2)
    cov = n / (n - 1)
    c1 = (_K1 * levels * n) ** 2
    c2 = (_K2 * levels * n) ** 2
    g = max(1, min(_STRIP_SLICES, todo.size))
    rows = max(1, min(h - 6, _STRIP_ELEMENTS // (g * w)))
    st = np.empty((5, g, rows + 6, w), work)            # x, y, xx, yy, xy
    rs = np.empty((5, g, rows, w), work)                # 7-row sums
    cs = np.empty((5, g, rows, w - 6), work)            # 7x7 window sums
    fl = np.empty((6, g, rows, w - 6), np.float64)
    dd = np.empty((g, rows + 6, w), np.float64)
    for z0 in range(0, todo.size, g):
        zs = todo[z0 : z0 + g]
        q = zs.size
        x, y = t[zs], u[zs]
        sq = np.zeros(q)
        ssum = np.zeros(q)
        for r0 in range(0, h - 6, rows):
            k = min(rows, h - 6 - r0)                   # output rows of this strip
            s = st[:, :q, : k + 6]
            if integer:
                np.clip(x[:, r0 : r0 + k + 6], lo, hi, out=s[0])
                np.clip(y[:, r0 : r0 + k + 6], lo, hi, out=s[1])
                s[0] -= lo
                s[1] -= lo
            else:
                np.copyto(s[0], x[:, r0 : r0 + k + 6])
                np.copyto(s[1], y[:, r0 : r0 + k + 6])
            # Squared differences of rows r0 … r0+k (the last strip: to the end).
            m = k + 6 if r0 + k >= h - 6 else k
            d = dd[:q, :m]
            np.subtract(s[0, :, :m], s[1, :, :m], out=d)
            sq += np.einsum("zyx,zyx->z", d, d)     # integers: exact below 2**53
            np.multiply(s[0], s[0], out=s[2])
            np.multiply(s[1], s[1], out=s[3])
            np.multiply(s[0], s[1], out=s[4])
            r = rs[:, :q, :k]
            np.add(s[:, :, 0:k], s[:, :, 1 : k + 1], out=r)
            for i in range(2, _WIN):
                r += s[:, :, i : k + i]
            c = cs[:, :q, :k]
            np.add(r[..., 0 : w - 6], r[..., 1 : w - 5], out=c)
            for i in range(2, _WIN):
                c += r[..., i : w - 6 + i]
            f = fl[:, :q, :k]
            np.copyto(f[:5], c)
            sa, sb, saa, sbb, sab, lum = f
            np.multiply(sa, sb, out=lum)                # A·B
            sab *= n
            sab -= lum
            sab *= 2 * cov
            sab += c2                                   # (2 vxy + C2)·N²
            lum *= 2
            lum += c1                                   # (2 ux uy + C1)·N²
            lum *= sab
            sa *= sa
            sb *= sb
            saa *= n
            saa -= sa
            sbb *= n
            saa += sbb
            saa -= sb
            saa *= cov
            saa += c2                                   # (vx + vy + C2)·N²
            sa += sb
            sa += c1                                    # (ux² + uy² + C1)·N²
            saa *= sa
            lum /= saa
            ssum += lum.sum(axis=(1, 2))
        out[zs, 2] = sq / (float(h * w) * (levels**2 if integer else 1.0))
        out[zs, 1] = ssum / ((h - 6) * (w - 6))
    out[:, 0] = psnr_from_mse(out[:, 2], 1.0 if integer else data_range)
    return out


def slice_metrics(truth_hu: np.ndarray, test_hu: np.ndarray, *,
                  window: tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """PSNR, SSIM, MSE of every slice of two HU blocks, on the paper's [0, 1] scale.

    Parameters
    ----------
    truth_hu, test_hu : ndarray (z, y, x) or (y, x)
        Reference and test slices in HU (integer HU take the exact path).
    window : (low, high), default (-1024, 1024)
        HU window clipped and mapped to [0, 1]; metrics use data range 1.0.

    Returns
    -------
    ndarray (z, 3) float64
        Columns in :data:`METRICS` order; PSNR +inf, SSIM 1, MSE 0 for
        identical slices.

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
    lo, hi = window
    t, u = np.asarray(truth_hu), np.asarray(test_hu)
    if (t.dtype.kind in "iu" and u.dtype.kind in "iu" and float(lo).is_integer()
            and float(hi).is_integer() and 0 < hi - lo <= 4096):
        if t.shape != u.shape:
            raise VolumeError(f"shapes differ: {t.shape} vs {u.shape}")
        # Unsigned or wide integers: into int32 first (clip takes lo < 0 and
        # writes int32 scratch); int8/16/32 are clipped straight from the input.
        t, u = (v if v.dtype.kind == "i" and v.dtype.itemsize <= 4
                else np.clip(v.astype(np.int64), lo, hi).astype(np.int32) for v in (t, u))
        a, b = (t[None], u[None]) if t.ndim == 2 else (t, u)
        if a.ndim != 3:
            raise VolumeError(f"expected (y, x) or (z, y, x) arrays, got {a.ndim} dimensions")
        if min(a.shape[1:]) < _WIN:
            raise VolumeError(f"slices of {a.shape[1:]} are smaller than the 7×7 SSIM window")
        return _strip_metrics(a, b, data_range=1.0, clip=(int(lo), int(hi)))
    a, b = _as_blocks((np.clip(t.astype(np.float64), lo, hi) - lo) / (hi - lo),
                      (np.clip(u.astype(np.float64), lo, hi) - lo) / (hi - lo))
    if min(a.shape[1:]) < _WIN:
        raise VolumeError(f"slices of {a.shape[1:]} are smaller than the 7×7 SSIM window")
    return _strip_metrics(a, b, data_range=1.0)


def _block(truth: np.ndarray, *tests: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    return np.stack([slice_metrics(truth, t, window=window) for t in tests], axis=1)


def map_slice_metrics(truth: Any, *tests: Any,
                      window: tuple[float, float] = HU_WINDOW) -> Any:
    """:func:`slice_metrics` of each test volume against ``truth``, as a Dask map.

    Parameters
    ----------
    truth, *tests : dask or numpy arrays (z, y, x) of the same shape, in HU
        The tests are rechunked to the z-chunks of the first test (one task
        per z-block computes every test's metrics); y and x become single
        chunks.

    Returns
    -------
    dask.array.Array (z, len(tests), 3) float64
        Lazy; columns in :data:`METRICS` order.
    """
    import dask.array as da

    if not tests:
        raise OptionError("give at least one test volume")
    arrays = [a if isinstance(a, da.Array) else da.from_array(np.asarray(a), chunks=(32, -1, -1))
              for a in (truth, *tests)]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise VolumeError(f"volumes differ in shape: {sorted(shapes)}")
    zc = arrays[1].chunks[0]
    arrays = [a.rechunk((zc, -1, -1)) for a in arrays]
    return da.map_blocks(
        _block, *arrays, window=window, chunks=(zc, (len(tests),), (len(METRICS),)),
        dtype=np.float64, meta=np.empty((0, 0, 0), np.float64),
        name=f"slice-metrics-{da.core.tokenize(window, *arrays)}",
    )
