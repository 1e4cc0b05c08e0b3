"""Bone morphometry on slices: BA/TA per slice (a Dask map) and Bland–Altman agreement.

BA/TA, the bone area fraction of the microCT study: each 2-D slice is blurred
with a Gaussian (``scipy.ndimage.gaussian_filter``, σ in pixels, mode
"reflect"), then pixels at or above a fixed lower threshold count as bone.
BA/TA = bone pixels / tissue pixels, where the tissue area TA is the whole
slice (the study's region of interest) or, with ``tissue=``, the pixels whose
blurred value is at or above that lower threshold (e.g. the head, not the air
around it).

Thresholds are in the stored units (``units="HU"``), or (``units="grey"``) on
the [0, 1] grey scale of the volume min-max normalised, as microCT grey values
are in the study (the range is one lazy reduction over the whole volume, or
``value_range=``).

Bland–Altman (Bland & Altman, Lancet 1986; CIs from Bland & Altman, Stat
Methods Med Res 1999): differences ``test - reference``, their mean (the
bias), their SD (n - 1), and the 95 % limits of agreement bias ± 1.96 SD.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from ._deps import require
from .errors import OptionError, OptionTypeError, VolumeError

__all__ = ["BlandAltman", "ba_ta", "bland_altman", "ba_ta_block"]

UNITS = ("HU", "grey")


def ba_ta_block(hu: np.ndarray, *, sigma: float, threshold: float,
                tissue: float | None = None, value_range: Any = None) -> np.ndarray:
    """BA/TA of each slice of a (n, H, W) block → (n,) float64 (NaN where TA = 0).

    ``value_range=(lo, hi)`` first maps values to [0, 1] (``(v - lo)/(hi - lo)``).
    """
    from scipy.ndimage import gaussian_filter

    out = np.empty(hu.shape[0], dtype=np.float64)
    for i, s in enumerate(hu):
        v = s.astype(np.float64)
        if value_range is not None:
            lo, hi = float(value_range[0]), float(value_range[1])
            v = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
        b = gaussian_filter(v, sigma) if sigma > 0 else v
        bone = np.count_nonzero(b >= threshold)
        ta = b.size if tissue is None else np.count_nonzero(b >= tissue)
        out[i] = bone / ta if ta else np.nan
    return out


def _block(hu: np.ndarray, rng: Any, **kw: Any) -> np.ndarray:
    return ba_ta_block(hu, value_range=rng, **kw)


def ba_ta(data: Any, *, sigma: float = 1.2, threshold: float, units: str = "HU",
          tissue: float | None = None, value_range: tuple[float, float] | None = None) -> Any:
    """Bone area fraction of every slice, lazily (one Dask task per z-block).

    Parameters
    ----------
    data : xarray.Dataset, xarray.DataArray or array (z, y, x)
        A volume (its ``hu``), dask-backed or in memory.
    sigma : float, default 1.2
        Gaussian σ in pixels of this volume (the study's 1.2 at its HR pixel
        size; halve it for a 2x coarser volume to blur the same distance).
    threshold : float
        Lower bone threshold: HU (``units="HU"``) or normalised grey value in
        [0, 1] (``units="grey"``).
    units : {"HU", "grey"}, default "HU"
    tissue : float, optional
        Lower threshold of the tissue area, in the same units; default: the
        whole slice is TA.
    value_range : (lo, hi), optional
        For ``units="grey"``: the grey values mapped to 0 and 1; default the
        volume's own min and max (a lazy reduction).

    Returns
    -------
    xarray.DataArray (z,) float64
        Lazy; ``z`` and the other z coordinates of the input are kept, attrs
        record sigma, thresholds and units. NaN where TA is 0.

    Examples
    --------
    >>> import numpy as np
    >>> from ctvol.morphometry import ba_ta
    >>> hu = np.full((2, 8, 8), -1000, "int16"); hu[0, :4] = 1000   # half the slice bone
    >>> ba_ta(hu, sigma=0, threshold=300).values.tolist()
    [0.5, 0.0]
    """
    import dask.array as da
    import xarray as xr

    if units not in UNITS:
        raise OptionError(f"units must be one of {list(UNITS)}, got {units!r}")
    if not (isinstance(sigma, int | float) and sigma >= 0):
        raise OptionError(f"sigma must be a number >= 0 (pixels), got {sigma!r}")
    if units == "grey" and not 0.0 <= float(threshold) <= 1.0:
        raise OptionError(f"a grey threshold is on the normalised [0, 1] scale, got {threshold!r};"
                          " use units='HU' for a threshold in stored units")
    if value_range is not None and units != "grey":
        raise OptionError("value_range= applies to units='grey' only")
    if isinstance(data, xr.Dataset):
        if "hu" not in data:
            raise VolumeError("the Dataset has no 'hu' variable (docs/storage.md)")
        data = data["hu"]
    coords: dict[str, Any] = {}
    if isinstance(data, xr.DataArray):
        if data.dims != ("z", "y", "x"):
            raise VolumeError(f"expected dims ('z', 'y', 'x'), got {data.dims}")
        coords = {str(n): c for n, c in data.coords.items() if c.dims == ("z",)}
        arr = data.data
    else:
        arr = data
    if not isinstance(arr, da.Array):
        arr = np.asarray(arr)
        if arr.ndim != 3:
            raise VolumeError(f"expected a (z, y, x) volume, got {arr.ndim} dimensions")
        arr = da.from_array(arr, chunks=(32, -1, -1))
    if arr.ndim != 3:
        raise VolumeError(f"expected a (z, y, x) volume, got {arr.ndim} dimensions")
    arr = arr.rechunk({1: -1, 2: -1})
    rng: Any = None
    if units == "grey":
        if value_range is not None:
            rng = (float(value_range[0]), float(value_range[1]))
        else:
            stack = da.stack([arr.min(), arr.max()]).astype(np.float64).rechunk(-1)
            rng = stack.to_delayed().ravel()[0]
    out = da.blockwise(
        _block, "z", arr, "zyx", rng, None, sigma=float(sigma), threshold=float(threshold),
        tissue=None if tissue is None else float(tissue), concatenate=True,
        dtype=np.float64, meta=np.empty((0,), dtype=np.float64),
        token=f"ba-ta-{da.core.tokenize(arr, rng, sigma, threshold, tissue)}",
    )
    attrs = {"long_name": "bone area fraction BA/TA", "sigma_px": float(sigma),
             "threshold": float(threshold), "units_threshold": units,
             "tissue_threshold": tissue,
             "value_range": list(value_range) if value_range is not None else None}
    return xr.DataArray(out, dims=("z",), coords=coords, name="ba_ta", attrs=attrs)


@dataclasses.dataclass(frozen=True)
class BlandAltman:
    """Bland–Altman agreement of a test method with a reference.

    Attributes
    ----------
    n : int
        Pairs used (pairs with a NaN on either side are dropped).
    mean_diff : float
        Bias: mean of ``test - reference``.
    sd : float
        SD of the differences (ddof = 1).
    loa_low, loa_high : float
        95 % limits of agreement, ``mean_diff ∓ 1.96 sd``.
    ci : dict
        95 % confidence intervals (t distribution, n - 1 degrees of freedom)
        of the bias (SE = sd/√n) and of each limit (SE ≈ sd·√(3/n)).
    means, diffs : ndarray
        Per-pair ``(test + reference)/2`` and ``test - reference``.
    """

    n: int
    mean_diff: float
    sd: float
    loa_low: float
    loa_high: float
    ci: dict[str, tuple[float, float]]
    means: np.ndarray
    diffs: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        """The statistics (no per-pair arrays), JSON-ready."""
        return {"n": self.n, "mean_diff": self.mean_diff, "sd": self.sd,
                "loa_low": self.loa_low, "loa_high": self.loa_high,
                "ci": {k: list(v) for k, v in self.ci.items()}}

    def figure(self, *, title: str | None = None, xlabel: str = "mean of test and reference",
               ylabel: str = "test − reference") -> Any:
        """The Bland–Altman plot as a :class:`matplotlib.figure.Figure` (no pyplot)."""
        Figure = require("matplotlib.figure", "the Bland–Altman plot").Figure

        fig = Figure(figsize=(5.5, 4.0), layout="constrained")
        ax = fig.add_subplot()
        ax.scatter(self.means, self.diffs, s=14, alpha=0.75, color="tab:blue")
        for y, style, label in ((self.mean_diff, "-", f"bias {self.mean_diff:.4g}"),
                                (self.loa_high, "--", f"+1.96 SD {self.loa_high:.4g}"),
                                (self.loa_low, "--", f"−1.96 SD {self.loa_low:.4g}")):
            ax.axhline(y, color="tab:red" if style == "-" else "0.35", linestyle=style,
                       linewidth=1.2, label=label)
        ax.axhline(0.0, color="0.75", linewidth=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title or f"Bland–Altman (n = {self.n})")
        ax.legend(fontsize="small", loc="best")
        return fig

    def plot(self, path: str | os.PathLike[str], **kw: Any) -> None:
        """Save :meth:`figure` to ``path`` (format from the suffix)."""
        self.figure(**kw).savefig(path, dpi=120)


def bland_altman(test: Any, reference: Any) -> BlandAltman:
    """Bland–Altman statistics of paired measurements (e.g. BA/TA per slice).

    Parameters
    ----------
    test, reference : array-like (n,), in memory
        Paired values; a dask-backed input is refused (compute it first, e.g.
        ``dask.compute(a, b)``), so the statistics never trigger a hidden compute.

    Returns
    -------
    BlandAltman

    Raises
    ------
    ValueError
        Shapes differ, or fewer than 2 pairs without NaN.
    TypeError
        A lazy (dask-backed) input.

    Examples
    --------
    >>> from ctvol.morphometry import bland_altman
    >>> r = bland_altman([1.0, 2.0, 3.0], [1.5, 2.0, 2.5])
    >>> r.mean_diff, round(r.sd, 6), round(r.loa_high, 4)
    (0.0, 0.5, 0.98)
    """
    from scipy import stats

    a, b = _in_memory(test, "test"), _in_memory(reference, "reference")
    if a.shape != b.shape or a.ndim != 1:
        raise OptionError(f"test and reference must be 1-D of one length, got {a.shape} and "
                          f"{b.shape}")
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    n = int(a.size)
    if n < 2:
        raise OptionError(f"Bland–Altman needs at least 2 pairs without NaN, got {n}")
    d = a - b
    bias = float(d.mean())
    sd = float(d.std(ddof=1))
    lo, hi = bias - 1.96 * sd, bias + 1.96 * sd
    t = float(stats.t.ppf(0.975, n - 1))
    se_bias, se_loa = sd / np.sqrt(n), sd * np.sqrt(3.0 / n)
    ci = {"mean_diff": (bias - t * se_bias, bias + t * se_bias),
          "loa_low": (lo - t * se_loa, lo + t * se_loa),
          "loa_high": (hi - t * se_loa, hi + t * se_loa)}
    return BlandAltman(n=n, mean_diff=bias, sd=sd, loa_low=lo, loa_high=hi,
                       ci={k: (float(v[0]), float(v[1])) for k, v in ci.items()},
                       means=(a + b) / 2.0, diffs=d)


def _in_memory(v: Any, name: str) -> np.ndarray:
    data = getattr(v, "data", v)  # DataArray -> its array
    if hasattr(data, "dask") or type(data).__module__.startswith("dask"):
        raise OptionTypeError(f"{name} is lazy (dask-backed): compute it first, e.g. "
                              "a, b = dask.compute(a, b); bland_altman never computes for you")
    return np.asarray(data, dtype=np.float64)
