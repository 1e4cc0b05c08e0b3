"""What evaluation's modules share (a leaf module: it imports nothing of theirs):
method and convention names, the table's columns, a series to evaluate, one
evaluated case, and the paired t-test."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io.store import open_series

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["BASELINE", "COLUMNS", "CONVENTIONS", "METHODS", "Case", "Source", "compared",
           "paired_t"]


METHODS = ("linear", "unet", "auto")


BASELINE = "linear"


#: The two conventions every report carries, primary first.
CONVENTIONS = {
    "generated": "per-slice metrics over generated slices only, averaged over slices "
                 "(Table 2 of Nishimoto et al., 2024; primary)",
    "volume": "per-series metrics over the whole reconstructed volume, kept slices "
              "included (MSE over all voxels, PSNR from that MSE, SSIM averaged over all "
              "slices), then averaged over series",
}


COLUMNS = ["factor", "stride", "convention", "series", "method", "metric", "n", "n_exact",
           "mean", "sd", "ci_low", "ci_high", "min", "max", "t", "p"]


@dataclass(frozen=True)
class Source:
    """A series to evaluate, opened only when its window is built (and for figures)."""

    key: str
    store: str | None        # the cohort store, or None for an in-memory volume
    data: Any = None         # the volume itself when store is None
    zsel: slice | None = None  # the contiguous slice range asked for
    storage_options: Mapping[str, Any] | None = None  # fsspec options for a URL store

    def open(self) -> tuple[xr.Dataset, int]:
        """The (selected) series, lazy, and the index of its first slice."""
        ds = self.data if self.store is None else open_series(
            self.store, self.key, storage_options=self.storage_options)
        if self.zsel is None:
            return ds, 0
        start, stop, _ = self.zsel.indices(ds.sizes["z"])
        return ds.isel(z=slice(start, stop)), start


def compared(ds: xr.Dataset, stride: int, m: int) -> xr.Dataset:
    """The slices compared at a stride: every ``stride``-th, the first ``m``."""
    return ds.isel(z=slice(None, None, stride)).isel(z=slice(0, m))


@dataclass(eq=False)
class Case:
    """One (factor, stride, series) evaluated: metadata in memory, metrics lazy.

    The volumes are not kept (a cohort of them would grow the driver): the
    figures re-open the few they show from ``source``.
    """

    factor: int
    stride: int
    key: str
    index: np.ndarray        # slice index in the series, per compared slice
    z: np.ndarray            # z (mm) per compared slice
    generated: np.ndarray    # True where the slice was generated (not kept)
    series_uid: str | None   # SeriesInstanceUID from the series' attrs
    source: Source
    metrics: Any             # dask (slices, methods, 3) float64
    #: per-series report rows' statistics: (labels, names, paired, moments)
    stats: list[tuple[dict[str, Any], Sequence[str], bool, dict[str, np.ndarray]]] = field(
        default_factory=list)
    #: method="auto": its self-check's decision and scores (attrs["reslice"]["auto"])
    auto: dict[str, Any] | None = None

    @property
    def block(self) -> xr.Dataset:
        """The compared slices (lazy)."""
        return compared(self.source.open()[0], self.stride, self.index.size)

    @property
    def kept(self) -> xr.Dataset:
        """Every k-th compared slice: the input of the methods (lazy)."""
        return self.block.isel(z=slice(None, None, self.factor))


def paired_t(n: int, mean: float, sd: float) -> tuple[float | None, float | None]:
    """Paired t statistic and two-sided p from the differences' moments.

    Equals ``scipy.stats.ttest_rel(a, b)`` when n, mean and sd (ddof=1) are
    those of ``a - b``; None where the test is undefined (n < 2, or every
    difference equal).

    Examples
    --------
    >>> t, p = paired_t(10, 0.5, 1.0)
    >>> round(t, 4), round(p, 4)
    (1.5811, 0.1483)
    """
    from scipy import stats

    if n < 2 or not sd > 0:
        return None, None
    t = mean / (sd / math.sqrt(n))
    return float(t), float(2 * stats.t.sf(abs(t), n - 1))
