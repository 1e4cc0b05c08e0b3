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

import numbers
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._compute import active_client
from .._deps import available
from .._reslice import reslice
from ..errors import DataError, EvaluationWarning, GeometryError, ModelError, OptionError
from ..intensity import HU_WINDOW
from ..io.store import list_series, open_series
from ..metrics import METRICS, map_slice_metrics
from ..models import as_model, bundled_models, bundled_name
from ._report import EvaluationReport
from ._types import CONVENTIONS, METHODS, Case, Source, compared, paired_t

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["CONVENTIONS", "EvaluationReport", "evaluate", "paired_t"]

#: Series whose graphs are built and submitted together (at least the Client's
#: worker threads); two windows are in flight at a time.
SERIES_WINDOW = 8


def _check_methods(methods: Any) -> tuple[str, ...]:
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise OptionError(f"unknown method(s) {bad or methods!r}: valid methods are "
                          f"{list(METHODS)}")
    if len(set(methods)) != len(methods):
        raise OptionError(f"methods repeat: {methods!r}")
    return methods


def _ints(values: Any, what: str, low: int) -> list[int]:
    vals = [values] if isinstance(values, numbers.Integral) else list(values)
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
            raise OptionError(f"{what} must be integers >= {low}, got {v!r}")
    if not vals:
        raise OptionError(f"give at least one {what[:-1]}")
    return sorted({int(v) for v in vals})


def _resolve_models(model: Any, factors: list[int], methods: Sequence[str]) -> dict[int, Any]:
    """A ResliceModel per factor for the U-net method (bundled by default)."""
    if "unet" not in methods and "auto" not in methods:
        return {}
    if isinstance(model, Mapping):
        given = {int(k): as_model(v) for k, v in model.items()}
    elif model is not None:
        m = as_model(model)
        given = {m.factor: m}
    else:
        given = {}
    out = {}
    for k in factors:
        if k in given:
            out[k] = given[k]
        elif model is None:
            if "unet" not in methods and (k not in bundled_models().values()
                                          or not available("torch")):
                continue  # auto alone: linear for this factor, with its reason
            out[k] = as_model(bundled_name(k))
        else:
            raise ModelError(
                f"no model for factor {k}: the model(s) given generate factor(s) "
                f"{sorted(given)}; pass model={{factor: path, ...}} or drop factor {k}"
            )
        if out[k].factor != k:
            raise ModelError(f"model {out[k]!r} generates factor {out[k].factor}, not {k}")
    return out


def _sources(data: Any, series: Any, storage_options: Mapping[str, Any] | None = None
             ) -> tuple[list[Source], str | None]:
    """The series to evaluate (checked, not opened) and the store path."""
    import xarray as xr

    if isinstance(data, xr.Dataset):
        key = str(data.attrs.get("series_uid", "series"))
        sel = {key: series} if isinstance(series, slice) else {}
        found = [Source(key, None, data)]
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
        found = [Source(k, store, storage_options=storage_options) for k in wanted]
        if not found:
            raise DataError(f"{store} holds no complete series to evaluate")
    out = []
    for src in found:
        zsel = sel.get(src.key)
        if zsel is None:
            out.append(src)
            continue
        if not isinstance(zsel, slice) or zsel.step not in (None, 1):
            raise OptionError(f"series {src.key!r}: give a contiguous slice(start, stop), "
                              f"got {zsel!r}")
        out.append(Source(src.key, src.store, src.data, zsel, src.storage_options))
    return out, store


def _case(src: Source, ds: Any, offset: int, k: int, stride: int, methods: Sequence[str],
          models: dict[int, Any], batch_size: int, device: str | None,
          window: tuple[float, float]) -> Case | str:
    """Build one case's lazy metrics, or return why the series is skipped."""
    n = ds.isel(z=slice(None, None, stride)).sizes["z"]
    if n < k + 1:
        return (f"too short: {n} slice(s) at stride {stride}, factor {k} needs at least "
                f"{k + 1} (one pair and the {k - 1} slice(s) between)")
    m = (n - 1) // k * k + 1  # whole groups of k; the tail that cannot be bracketed is left
    block = compared(ds, stride, m)
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
    return Case(factor=k, stride=stride, key=src.key,
                index=offset + stride * np.arange(m), z=np.asarray(block["z"].values),
                generated=np.asarray(outs[0]["generated"].values, dtype=bool),
                series_uid=ds.attrs.get("series_uid"), source=src, metrics=metrics,
                auto=auto)


def _series_window() -> int:
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

    from .._compute import compute_bounded
    from . import _report

    factors = _ints(factor, "factors", 2)
    strides_ = _ints(strides, "strides", 1)
    if methods is None:
        # Without torch (an install without the [torch] extra) no U-net runs:
        # linear, and auto falling back to linear with that reason.
        have = set(bundled_models().values()) if available("torch") else set()
        methods = METHODS if model is not None or set(factors) <= have \
            else tuple(m for m in METHODS if m != "unet")
    methods = _check_methods(methods)
    models = _resolve_models(model, factors, methods)
    sources, store = _sources(data, series, storage_options)
    size = _series_window()
    # Cases and skips are numbered (factor, stride, series) so that, built
    # window by window, the report lists them in that order.
    numbered: list[tuple[tuple[int, int, int], Case]] = []
    skipped_: list[tuple[tuple[int, int, int], dict[str, Any]]] = []
    described: list[dict[str, Any]] = []
    windows: list[list[Case]] = []

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
        raise DataError(f"no series could be evaluated: {why}")
    table, figure_data = _report.aggregate(cases, methods)
    info = _report.info(store=store, factors=factors, strides=strides_, methods=methods,
                        models=models, sources=described, cases=cases, skipped=skipped,
                        window=window)
    info["warnings"] = leaks
    return EvaluationReport(table=table, per_slice=_per_slice(cases, methods), info=info,
                            figure_data=figure_data, _cases=cases, _models=models)


def _training_overlap(cases: list[Case], models: dict[int, Any]) -> list[str]:
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


def _overlaps(c: Case, model: Any, used: Mapping[str, Any], role: str,
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


def _per_slice(cases: list[Case], methods: Sequence[str]) -> xr.Dataset:
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
