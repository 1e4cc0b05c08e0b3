"""``ctvol.evaluate``: the paper's hold-out protocol, metrics reduced as Dask aggregations.

For factor k and each series: keep every k-th acquired slice, generate the
slices between with each method (:func:`ctvol.reslice`), and compare every
generated slice with the real slice it replaces. Intensities are normalised
as the paper does (clip to [-1024, 1024] HU, map to [0, 1]) and compared with
data range 1.0 (:mod:`ctvol.metrics`). ``docs/evaluation.md`` states the
conventions.

Series are evaluated in windows of :data:`SERIES_WINDOW`: a window's graph
(reading, re-slicing, per-slice metrics in Dask tasks -- one per z-block,
every method at once -- and its series' statistics) is built only when a
window in flight finishes (two are in flight), computed on the active
scheduler, and dropped; only its per-slice metrics (24 bytes per slice and
method) come back. Every number in the report is a Dask reduction over them
(sums, counts, min/max, two-pass variance). No process holds the slices or
graphs of more than two windows, whatever the size of the cohort; persisting
the metrics on the workers instead would keep every window's graph on the
scheduler (the lineage to recompute them from), growing with the cohort.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
#: Series whose graphs are built and submitted together (at least the Client's
#: worker threads); two windows are in flight at a time.
SERIES_WINDOW = 8


@dataclass(frozen=True)
class _Source:
    """A series to evaluate, opened only when its window is built (and for figures)."""

    key: str
    store: str | None        # the cohort store, or None for an in-memory volume
    data: Any = None         # the volume itself when store is None
    zsel: slice | None = None  # the contiguous slice range asked for
    storage_options: Mapping[str, Any] | None = None  # fsspec options for a URL store

    def open(self) -> tuple[xr.Dataset, int]:
        """The (selected) series, lazy, and the index of its first slice."""
        from .io.store import open_series

        ds = self.data if self.store is None else open_series(
            self.store, self.key, storage_options=self.storage_options)
        if self.zsel is None:
            return ds, 0
        start, stop, _ = self.zsel.indices(ds.sizes["z"])
        return ds.isel(z=slice(start, stop)), start


def _compared(ds: xr.Dataset, stride: int, m: int) -> xr.Dataset:
    """The slices compared at a stride: every ``stride``-th, the first ``m``."""
    return ds.isel(z=slice(None, None, stride)).isel(z=slice(0, m))


@dataclass(eq=False)
class _Case:
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
    source: _Source
    metrics: Any             # dask (slices, methods, 3) float64
    #: per-series report rows' statistics: (labels, names, paired, moments)
    stats: list[tuple[dict[str, Any], Sequence[str], bool, dict[str, np.ndarray]]] = field(
        default_factory=list)
    #: method="auto": its self-check's decision and scores (attrs["reslice"]["auto"])
    auto: dict[str, Any] | None = None

    @property
    def block(self) -> xr.Dataset:
        """The compared slices (lazy)."""
        return _compared(self.source.open()[0], self.stride, self.index.size)

    @property
    def kept(self) -> xr.Dataset:
        """Every k-th compared slice: the input of the methods (lazy)."""
        return self.block.isel(z=slice(None, None, self.factor))


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
        ``psnr``, ``ssim``, ``mse`` on (slice, algorithm), Dask-backed (the
        computed values, in the chunks that computed them), with coordinates
        factor, stride, series,
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

    def save(self, path: str | os.PathLike[str], *, figures: bool = True,
             storage_options: Mapping[str, Any] | None = None) -> Any:
        """Write ``report.json``, ``report.md`` and ``figures/*.png`` into ``path``.

        ``path`` may be an fsspec URL (``s3://bucket/report``, with
        ``storage_options``). Returns the folder (``pathlib.Path``; a URL as given).
        """
        from ._report import save

        return save(self, path, figures=figures, storage_options=storage_options)


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
    from .models import bundled_models

    if "unet" not in methods and "auto" not in methods:
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
            if "unet" not in methods and k not in bundled_models().values():
                continue  # auto alone: linear for this factor, with its reason
            out[k] = _load(_bundled_for(k))
        else:
            raise ValueError(
                f"no model for factor {k}: the model(s) given generate factor(s) "
                f"{sorted(given)}; pass model={{factor: path, ...}} or drop factor {k}"
            )
        if out[k].factor != k:
            raise ValueError(f"model {out[k]!r} generates factor {out[k].factor}, not {k}")
    return out


def _sources(data: Any, series: Any, storage_options: Mapping[str, Any] | None = None
             ) -> tuple[list[_Source], str | None]:
    """The series to evaluate (checked, not opened) and the store path."""
    import xarray as xr

    from .io.store import list_series, open_series

    if isinstance(data, xr.Dataset):
        key = str(data.attrs.get("series_uid", "series"))
        sel = {key: series} if isinstance(series, slice) else {}
        found = [_Source(key, None, data)]
        store = None
    else:
        store = os.fspath(data)
        keys = list_series(store, storage_options=storage_options)
        if isinstance(series, Mapping):
            sel = dict(series)
            wanted = list(sel)
        elif series is None:
            sel, wanted = {}, keys
        else:
            wanted = [series] if isinstance(series, str) else list(series)
            sel = {}
        known = set(keys)
        for k in wanted:
            if k not in known:
                # raises, naming the key and the ones that exist
                open_series(store, k, storage_options=storage_options)
        found = [_Source(k, store, storage_options=storage_options) for k in wanted]
        if not found:
            raise ValueError(f"{store} holds no complete series to evaluate")
    out = []
    for src in found:
        zsel = sel.get(src.key)
        if zsel is None:
            out.append(src)
            continue
        if not isinstance(zsel, slice) or zsel.step not in (None, 1):
            raise ValueError(f"series {src.key!r}: give a contiguous slice(start, stop), "
                             f"got {zsel!r}")
        out.append(_Source(src.key, src.store, src.data, zsel, src.storage_options))
    return out, store


def _case(src: _Source, ds: Any, offset: int, k: int, stride: int, methods: Sequence[str],
          models: dict[int, Any], batch_size: int, device: str | None,
          window: tuple[float, float]) -> _Case | str:
    """Build one case's lazy metrics, or return why the series is skipped."""
    from ._reslice import reslice
    from .metrics import map_slice_metrics

    n = ds.isel(z=slice(None, None, stride)).sizes["z"]
    if n < k + 1:
        return (f"too short: {n} slice(s) at stride {stride}, factor {k} needs at least "
                f"{k + 1} (one pair and the {k - 1} slice(s) between)")
    m = (n - 1) // k * k + 1  # whole groups of k; the tail that cannot be bracketed is left
    block = _compared(ds, stride, m)
    kept = block.isel(z=slice(None, None, k))
    try:
        model = models.get(k)
        outs = [reslice(kept, k, method=meth, batch_size=batch_size, device=device,
                        model=(model.path or model) if meth != "linear" and model else None)
                for meth in methods]
    except GeometryError as e:
        return f"not evaluable: {e}"
    auto = next((o.attrs["reslice"].get("auto") for o in outs
                 if "auto" in o.attrs["reslice"]), None)
    metrics = map_slice_metrics(block["hu"].data, *(o["hu"].data for o in outs), window=window)
    return _Case(factor=k, stride=stride, key=src.key,
                 index=offset + stride * np.arange(m), z=np.asarray(block["z"].values),
                 generated=np.asarray(outs[0]["generated"].values, dtype=bool),
                 series_uid=ds.attrs.get("series_uid"), source=src, metrics=metrics,
                 auto=auto)


def _series_window() -> int:
    from ._compute import active_client

    client = active_client()
    threads = sum(client.nthreads().values()) if client is not None else 0
    return max(SERIES_WINDOW, threads)


def evaluate(
    data: Any,
    factor: int | Iterable[int] = 3,
    *,
    methods: str | Sequence[str] | None = None,
    model: Any = None,
    series: Any = None,
    strides: int | Iterable[int] = (1,),
    batch_size: int = 16,
    device: str | None = None,
    window: tuple[float, float] = HU_WINDOW,
    storage_options: Mapping[str, Any] | None = None,
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
    methods : str or sequence, optional
        Default ``("linear", "unet", "auto")``; without ``model``, ``"unet"``
        is left out when a factor has no bundled U-net (``"auto"`` then
        shows linear for it, with that reason).
        Methods of :func:`ctvol.reslice`; each other method is paired-t-tested
        against ``"linear"`` (the baseline) when both are given. ``"auto"``
        runs its self-check on the kept slices of each case (what a user
        holding only those slices would get); its decision per case is in
        ``info["data"]["evaluated"][...]["runs"][...]["auto"]``.
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
    storage_options : mapping, optional
        fsspec options for a store given as a URL (``s3://...``), as for
        :func:`ctvol.open_series`.
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
    Series are computed in windows of :data:`SERIES_WINDOW` (or the
    Client's worker threads, if more) on the active scheduler, two windows
    at a time, so memory does not grow with the cohort's graphs; per-slice
    metrics are reduced with Dask; the paired t-tests are computed from the
    aggregated moments of the paired differences (n, mean, sd), which gives
    scipy's ``ttest_rel`` exactly.
    Series too short for a factor or unevenly spaced are skipped and listed
    in ``info["skipped"]`` with the reason.
    """
    import dask.array as da

    from . import _report
    from ._compute import compute_bounded

    factors = _ints(factor, "factors", 2)
    strides_ = _ints(strides, "strides", 1)
    if methods is None:
        from .models import bundled_models

        have = set(bundled_models().values())
        methods = METHODS if model is not None or set(factors) <= have \
            else tuple(m for m in METHODS if m != "unet")
    methods = _check_methods(methods)
    models = _resolve_models(model, factors, methods)
    sources, store = _sources(data, series, storage_options)
    size = _series_window()
    # Cases and skips are numbered (factor, stride, series) so that, built
    # window by window, the report lists them in that order.
    numbered: list[tuple[tuple[int, int, int], _Case]] = []
    skipped_: list[tuple[tuple[int, int, int], dict[str, Any]]] = []
    described: list[dict[str, Any]] = []
    windows: list[list[_Case]] = []

    def graphs() -> Iterator[Any]:
        for w0 in range(0, len(sources), size):
            built = []
            for si, src in enumerate(sources[w0:w0 + size], start=w0):
                ds, offset = src.open()
                described.append(_report.describe_source(src.key, ds, offset))
                for ki, k in enumerate(factors):
                    for ti, s in enumerate(strides_):
                        c = _case(src, ds, offset, k, s, methods, models, batch_size, device,
                                  window)
                        if isinstance(c, str):
                            skipped_.append(((ki, ti, si), {"series": src.key, "factor": k,
                                                            "stride": s, "reason": c}))
                        else:
                            built.append(((ki, ti, si), c))
            if built:
                numbered.extend(built)
                windows.append([c for _, c in built])
                yield _report.window_results(windows[-1], methods)

    for i, (values, stats_) in compute_bounded(
            graphs(), in_flight=2, progress=progress, total=-(-len(sources) // size),
            what=f"ctvol evaluate: windows of {size} series"):
        for c, v, st in zip(windows[i], values, stats_, strict=True):
            # The per-slice values (24 bytes per slice and method) replace the
            # graph, in the same chunks, so the cohort's reductions add up
            # exactly as over the graph's blocks.
            c.metrics = da.from_array(v, chunks=c.metrics.chunks)
            c.stats = st
    cases = [c for _, c in sorted(numbered, key=lambda t: t[0])]
    skipped = [d for _, d in sorted(skipped_, key=lambda t: t[0])]
    leaks = _training_overlap(cases, models)
    for text in leaks:
        warnings.warn(text, EvaluationWarning, stacklevel=2)
    if not cases:
        why = "; ".join(f"{d['series']} x{d['factor']}: {d['reason']}" for d in skipped)
        raise ValueError(f"no series could be evaluated: {why}")
    table, figure_data = _report.aggregate(cases, methods)
    info = _report.info(store=store, factors=factors, strides=strides_, methods=methods,
                        models=models, sources=described, cases=cases, skipped=skipped,
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
    spans = [(key, rng) for key, value in used.items()
             for rng in (value if isinstance(value, list) else [value])]
    for key, rng in spans:
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
