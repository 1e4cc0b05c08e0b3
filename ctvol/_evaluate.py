"""``ctvol.evaluate``: the paper's hold-out protocol, metrics reduced as Dask aggregations.

For factor k and each series: keep every k-th acquired slice, generate the
slices between with each method (:func:`ctvol.reslice`), and compare every
generated slice with the real slice it replaces. Intensities are normalised
as the paper does (clip to [-1024, 1024] HU, map to [0, 1]) and compared with
data range 1.0 (:mod:`ctvol.metrics`). ``docs/evaluation.md`` states the
conventions.

Per-slice metrics are computed inside Dask tasks (one task per z-block, every
method at once) and persisted where they are computed (on the workers of a
distributed Client); every number in the report is a Dask reduction over
them (sums, counts, min/max, two-pass variance), so no process ever holds all
slices or all per-slice values of a cohort.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import EvaluationWarning, GeometryError
from .intensity import HU_WINDOW
from .metrics import METRICS

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

__all__ = ["CONVENTIONS", "EvaluationReport", "evaluate", "paired_t"]

METHODS = ("linear", "unet")
BASELINE = "linear"
#: The two conventions every report carries, primary first.
CONVENTIONS = {
    "generated": "per-slice metrics over generated slices only, averaged over slices "
                 "(the paper's Table 2; primary)",
    "volume": "per-series metrics over the whole reconstructed volume, kept slices "
              "included (MSE over all voxels, PSNR from that MSE, SSIM averaged over all "
              "slices), then averaged over series",
}
COLUMNS = ["factor", "stride", "convention", "series", "method", "metric", "n", "n_exact",
           "mean", "sd", "ci_low", "ci_high", "min", "max", "t", "p"]


@dataclass
class _Case:
    """One (factor, stride, series) evaluated: metadata in memory, metrics lazy."""

    factor: int
    stride: int
    key: str
    index: np.ndarray        # slice index in the series, per compared slice
    z: np.ndarray            # z (mm) per compared slice
    generated: np.ndarray    # True where the slice was generated (not kept)
    series_uid: str | None   # SeriesInstanceUID from the series' attrs
    block: Any               # the compared slices (xr.Dataset, lazy)
    kept: Any                # every k-th of them: the input (xr.Dataset, lazy)
    metrics: Any             # dask (slices, methods, 3) float64


@dataclass
class EvaluationReport:
    """What :func:`evaluate` returns: numbers, lazy per-slice metrics, report files.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (factor, stride, convention, series or "all", method,
        metric) with n, mean, sd, 95 % CI, min, max; rows whose method reads
        ``"unet - linear"`` are paired t-tests on the differences (mean, sd
        and CI of the difference, t, p). ``n_exact`` counts slices with MSE 0
        (PSNR +inf), which PSNR statistics exclude and report separately.
    per_slice : xarray.Dataset
        ``psnr``, ``ssim``, ``mse`` on (slice, algorithm), Dask-backed
        (persisted where computed), with coordinates factor, stride, series,
        index, z and generated per slice. (The dimension is not called
        "method" because ``.sel(method=...)`` is xarray's matching keyword.)
    info : dict
        Store, factors, strides, methods, models (path, digest, provenance),
        evaluated and skipped series with reasons, versions.
    """

    table: pd.DataFrame
    per_slice: xr.Dataset
    info: dict[str, Any]
    figure_data: dict[str, Any] = field(default_factory=dict, repr=False)
    _cases: list[_Case] = field(default_factory=list, repr=False)
    _models: dict[int, Any] = field(default_factory=dict, repr=False)

    def summary(self, convention: str = "generated", stride: int = 1) -> pd.DataFrame:
        """The paper's Table 2 layout: rows metric, columns (factor, method), cohort means."""
        from ._report import summary

        return summary(self, convention=convention, stride=stride)

    def to_markdown(self) -> str:
        """``report.md``: Table 2 layout per convention with p-values, then per-series rows."""
        from ._report import markdown

        return markdown(self)

    def save(self, path: str | os.PathLike[str], *, figures: bool = True) -> Any:
        """Write ``report.json``, ``report.md`` and ``figures/*.png`` into ``path``.

        Returns the folder (``pathlib.Path``).
        """
        from ._report import save

        return save(self, path, figures=figures)


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


def _check_methods(methods: Any) -> tuple[str, ...]:
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"unknown method(s) {bad or methods!r}: valid methods are "
                         f"{list(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods repeat: {methods!r}")
    return methods


def _ints(values: Any, what: str, low: int) -> list[int]:
    vals = [values] if isinstance(values, numbers.Integral) else list(values)
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
            raise ValueError(f"{what} must be integers >= {low}, got {v!r}")
    if not vals:
        raise ValueError(f"give at least one {what[:-1]}")
    return sorted({int(v) for v in vals})


def _resolve_models(model: Any, factors: list[int], methods: Sequence[str]) -> dict[int, Any]:
    """A ResliceModel per factor for the U-net method (bundled by default)."""
    from ._reslice import _bundled_for, _load

    if "unet" not in methods:
        return {}
    if isinstance(model, Mapping):
        given = {int(k): _load(v) for k, v in model.items()}
    elif model is not None:
        m = _load(model)
        given = {m.factor: m}
    else:
        given = {}
    out = {}
    for k in factors:
        if k in given:
            out[k] = given[k]
        elif model is None:
            out[k] = _load(_bundled_for(k))
        else:
            raise ValueError(
                f"no model for factor {k}: the model(s) given generate factor(s) "
                f"{sorted(given)}; pass model={{factor: path, ...}} or drop factor {k}"
            )
        if out[k].factor != k:
            raise ValueError(f"model {out[k]!r} generates factor {out[k].factor}, not {k}")
    return out


def _sources(data: Any, series: Any) -> tuple[list[tuple[str, Any, int]], str | None]:
    """(key, dataset, first slice index) per series to evaluate, and the store path."""
    import xarray as xr

    from .io.store import list_series, open_series

    if isinstance(data, xr.Dataset):
        key = str(data.attrs.get("series_uid", "series"))
        sel = {key: series} if isinstance(series, slice) else {}
        found = [(key, data)]
        store = None
    else:
        store = os.fspath(data)
        keys = list_series(store)
        if isinstance(series, Mapping):
            sel = dict(series)
            wanted = list(sel)
        elif series is None:
            sel, wanted = {}, keys
        else:
            wanted = [series] if isinstance(series, str) else list(series)
            sel = {}
        found = [(k, open_series(store, k)) for k in wanted]  # unknown keys raise, naming them
        if not found:
            raise ValueError(f"{store} holds no complete series to evaluate")
    out = []
    for key, ds in found:
        zsel = sel.get(key)
        if zsel is None:
            out.append((key, ds, 0))
            continue
        if not isinstance(zsel, slice) or zsel.step not in (None, 1):
            raise ValueError(f"series {key!r}: give a contiguous slice(start, stop), got {zsel!r}")
        start, stop, _ = zsel.indices(ds.sizes["z"])
        out.append((key, ds.isel(z=slice(start, stop)), start))
    return out, store


def _case(key: str, ds: Any, offset: int, k: int, stride: int, methods: Sequence[str],
          models: dict[int, Any], batch_size: int, device: str | None,
          window: tuple[float, float]) -> _Case | str:
    """Build one case's lazy metrics, or return why the series is skipped."""
    from ._reslice import reslice
    from .metrics import map_slice_metrics

    sub = ds.isel(z=slice(None, None, stride))
    n = sub.sizes["z"]
    if n < k + 1:
        return (f"too short: {n} slice(s) at stride {stride}, factor {k} needs at least "
                f"{k + 1} (one pair and the {k - 1} slice(s) between)")
    m = (n - 1) // k * k + 1  # whole groups of k; the tail that cannot be bracketed is left
    block = sub.isel(z=slice(0, m))
    kept = block.isel(z=slice(None, None, k))
    try:
        outs = [reslice(kept, k, method=meth, batch_size=batch_size, device=device,
                        model=(models[k].path or models[k]) if meth == "unet" else None)
                for meth in methods]
    except GeometryError as e:
        return f"not evaluable: {e}"
    metrics = map_slice_metrics(block["hu"].data, *(o["hu"].data for o in outs), window=window)
    return _Case(factor=k, stride=stride, key=key,
                 index=offset + stride * np.arange(m), z=np.asarray(block["z"].values),
                 generated=np.asarray(outs[0]["generated"].values, dtype=bool),
                 series_uid=ds.attrs.get("series_uid"), block=block, kept=kept,
                 metrics=metrics)


def evaluate(
    data: Any,
    factor: int | Iterable[int] = 3,
    *,
    methods: str | Sequence[str] = METHODS,
    model: Any = None,
    series: Any = None,
    strides: int | Iterable[int] = (1,),
    batch_size: int = 16,
    device: str | None = None,
    window: tuple[float, float] = HU_WINDOW,
    progress: bool = False,
) -> EvaluationReport:
    """Evaluate inter-slice generation against the real slices it replaces.

    Parameters
    ----------
    data : path, URL or xarray.Dataset
        A cohort store (every complete series, or ``series``), or one volume.
    factor : int or iterable of int, default 3
        Re-slice factor(s) k: every k-th slice is kept, the k-1 between are
        generated and compared.
    methods : str or sequence, default ("linear", "unet")
        Methods of :func:`ctvol.reslice`; each other method is paired-t-tested
        against ``"linear"`` (the baseline) when both are given.
    model : path, name, ResliceModel or {factor: model}, optional
        U-net checkpoint(s); default the bundled model of each factor.
    series : key, list of keys or {key: slice(start, stop)}, optional
        Series to evaluate, optionally restricted to a slice range (e.g. the
        z-block a model never saw). For a Dataset, a ``slice``.
    strides : int or iterable, default (1,)
        1: pairs (i, i+k) as in the paper; 2 adds its doubled-stride sets
        (pairs (i, i+2k), compared at every second slice).
    batch_size, device
        Passed to :func:`ctvol.reslice`.
    window : (low, high), default (-1024, 1024)
        HU window mapped to [0, 1]; metrics use data range 1.0.
    progress : bool, default False
        Progress bar while per-slice metrics are computed.

    Returns
    -------
    EvaluationReport

    Raises
    ------
    ValueError
        Unknown method (lists the valid ones), bad factor/stride, a model
        whose factor is not asked, or no series evaluable (with the reasons).
    FileNotFoundError
        ``"unet"`` without a model for a factor (lists the bundled ones).

    Notes
    -----
    Per-slice metrics are persisted (on the cluster's workers when a
    ``distributed.Client`` is active) and reduced with Dask; the paired
    t-tests are computed from the aggregated moments of the paired
    differences (n, mean, sd), which gives scipy's ``ttest_rel`` exactly.
    Series too short for a factor or unevenly spaced are skipped and listed
    in ``info["skipped"]`` with the reason.
    """
    from . import _report
    from ._compute import persist

    factors = _ints(factor, "factors", 2)
    strides_ = _ints(strides, "strides", 1)
    methods = _check_methods(methods)
    models = _resolve_models(model, factors, methods)
    sources, store = _sources(data, series)
    cases: list[_Case] = []
    skipped: list[dict[str, Any]] = []
    for k in factors:
        for s in strides_:
            for key, ds, offset in sources:
                c = _case(key, ds, offset, k, s, methods, models, batch_size, device, window)
                if isinstance(c, str):
                    skipped.append({"series": key, "factor": k, "stride": s, "reason": c})
                else:
                    cases.append(c)
    leaks = _training_overlap(cases, models)
    for text in leaks:
        warnings.warn(text, EvaluationWarning, stacklevel=2)
    if not cases:
        why = "; ".join(f"{d['series']} x{d['factor']}: {d['reason']}" for d in skipped)
        raise ValueError(f"no series could be evaluated: {why}")
    persisted = persist([c.metrics for c in cases], progress=progress)
    for c, p in zip(cases, persisted, strict=True):
        c.metrics = p
    table, figure_data = _report.aggregate(cases, methods)
    info = _report.info(store=store, factors=factors, strides=strides_, methods=methods,
                        models=models, sources=sources, cases=cases, skipped=skipped,
                        window=window)
    info["warnings"] = leaks
    return EvaluationReport(table=table, per_slice=_per_slice(cases, methods), info=info,
                            figure_data=figure_data, _cases=cases, _models=models)


def _training_overlap(cases: list[_Case], models: dict[int, Any]) -> list[str]:
    """Warnings for evaluated slices that a model's checkpoint says it was trained on.

    Training records each series' first/last z (mm) read; z positions, not
    indices, identify slices across stores (a subset of a series has other
    indices).
    """
    out = []
    for c in cases:
        model = models.get(c.factor)
        if model is None:
            continue
        prov = model.provenance or {}
        for field_, role, effect in (
                ("training_slices", "trained", "optimistic"),
                ("selection_slices", "chose the best epoch of", "somewhat optimistic")):
            out += _overlaps(c, model, prov.get(field_) or {}, role, effect)
    return out


def _overlaps(c: _Case, model: Any, used: Mapping[str, Any], role: str,
              effect: str) -> list[str]:
    out = []
    uid = str(c.series_uid or "")
    for key, rng in used.items():
        if key not in (c.key, uid) or not isinstance(rng, Mapping) or "z_mm" not in rng:
            continue
        lo, hi = sorted(float(v) for v in rng["z_mm"])
        inside = (c.z >= lo - 1e-3) & (c.z <= hi + 1e-3)
        if inside.any():
            idx = c.index[inside]
            out.append(
                f"series {c.key} x{c.factor} stride {c.stride}: {int(inside.sum())} of the "
                f"{c.index.size} slices evaluated (indices {int(idx[0])}-{int(idx[-1])}) lie "
                f"in z {lo:g}-{hi:g} mm, which {role} the x{c.factor} U-net "
                f"({model.path or model.digest[:12]}): its numbers there are {effect}; "
                "evaluate slices outside that range (series={key: slice(start, stop)}, "
                "CLI --series KEY:START:STOP) or other series"
            )
    return out


def _per_slice(cases: list[_Case], methods: Sequence[str]) -> xr.Dataset:
    import dask.array as da
    import xarray as xr

    allm = da.concatenate([c.metrics for c in cases], axis=0)
    coords = {
        # not "method": xarray's .sel(method=...) is its inexact-match keyword
        "algorithm": list(methods),
        "factor": ("slice", np.concatenate([np.full(c.index.size, c.factor) for c in cases])),
        "stride": ("slice", np.concatenate([np.full(c.index.size, c.stride) for c in cases])),
        "series": ("slice", np.concatenate([np.full(c.index.size, c.key, dtype=object)
                                            for c in cases])),
        "index": ("slice", np.concatenate([c.index for c in cases])),
        "z": ("slice", np.concatenate([c.z for c in cases]), {"units": "mm"}),
        "generated": ("slice", np.concatenate([c.generated for c in cases])),
    }
    units = {"psnr": {"units": "dB"}, "ssim": {}, "mse": {"data_range": 1.0}}
    return xr.Dataset(
        {name: (("slice", "algorithm"), allm[:, :, j], units[name])
         for j, name in enumerate(METRICS)},
        coords=coords,
        attrs={"conventions": "window [-1024, 1024] HU mapped to [0, 1], data range 1.0; "
                              "kept slices included (generated=False)"},
    )
