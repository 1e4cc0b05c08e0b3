"""Aggregation, tables, files and figures of :func:`ctvol.evaluate` (private).

Every statistic is a Dask reduction over the per-slice metrics:
pass 1 computes counts, sums, min and max; pass 2 the sums of squared
deviations from the pass-1 means (a two-pass variance, numerically safe; both
passes are one graph, the means a task between them); pass 3 histograms and
the worst slices (``argtopk``). Non-finite values (PSNR +inf where a slice is
reproduced exactly) are excluded from the moments and counted in ``n_exact``.
Per-series statistics are computed with their window of series
(:func:`window_results`), the cohort's at the end (:func:`aggregate`).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .._deps import available
from .._version import __version__
from ..errors import DataError, EvaluationWarning
from ..metrics import METRICS
from ._figures import draw_all
from ._types import BASELINE, COLUMNS, CONVENTIONS, Case, paired_t

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr


_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "mse": "MSE"}
N_WORST = 4
N_BINS = 40


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
    _cases: list[Case] = field(default_factory=list, repr=False)
    _models: dict[int, Any] = field(default_factory=dict, repr=False)

    def summary(self, convention: str = "generated", stride: int = 1) -> pd.DataFrame:
        """The paper's Table 2 layout: rows metric, columns (factor, method), cohort means."""
        return summary(self, convention=convention, stride=stride)

    def to_markdown(self) -> str:
        """``report.md``: Table 2 layout per convention with p-values, then per-series rows."""
        return markdown(self)

    def save(self, path: str | os.PathLike[str], *, figures: bool = True,
             storage_options: Mapping[str, Any] | None = None) -> Any:
        """Write ``report.json``, ``report.md`` and ``figures/*.png`` into ``path``.

        ``path`` may be an fsspec URL (``s3://bucket/report``, with
        ``storage_options``). Returns the folder (``pathlib.Path``; a URL as given).
        """
        return save(self, path, figures=figures, storage_options=storage_options)


def _moment_graph(x: Any) -> tuple[Any, ...]:
    """Lazy column statistics (over axis 0) of a dask array: both passes in one graph."""
    import dask.array as da

    fin = da.isfinite(x)
    n = fin.sum(axis=0)
    s = da.where(fin, x, 0.0).sum(axis=0)
    mu = da.where(n > 0, s / da.maximum(n, 1), 0.0)  # the pass-1 means, as _finish has them
    ss = da.where(fin, (x - mu) ** 2, 0.0).sum(axis=0)
    return (n, (x == np.inf).sum(axis=0), s, da.where(fin, x, np.inf).min(axis=0),
            da.where(fin, x, -np.inf).max(axis=0), ss)


def _finish(raw: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    n, n_exact, s, mn, mx, ss = raw
    return {"n": np.asarray(n), "n_exact": np.asarray(n_exact),
            "mean": np.where(n > 0, s / np.maximum(n, 1), 0.0),
            "var": np.where(n > 1, ss / np.maximum(n - 1, 1), np.nan), "min": mn, "max": mx}


def _moments(arrays: list[Any]) -> list[dict[str, np.ndarray]]:
    """Column statistics (over axis 0) of each dask array, in two passes."""
    import dask

    return [_finish(raw) for raw in dask.compute(*[_moment_graph(x) for x in arrays])]


def _row(stat: dict[str, np.ndarray], idx: tuple[int, ...], paired: bool,
         **labels: Any) -> dict[str, Any]:
    from scipy import stats

    n = int(stat["n"][idx])
    mean = float(stat["mean"][idx]) if n else None
    sd = math.sqrt(float(stat["var"][idx])) if n > 1 else None
    ci: tuple[float | None, float | None] = (None, None)
    if sd is not None and mean is not None:
        h = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        ci = (mean - h, mean + h)
    t, p = paired_t(n, mean, sd) if paired and mean is not None and sd else (None, None)
    return {**labels, "n": n, "n_exact": int(stat["n_exact"][idx]), "mean": mean, "sd": sd,
            "ci_low": ci[0], "ci_high": ci[1],
            "min": float(stat["min"][idx]) if n else None,
            "max": float(stat["max"][idx]) if n else None, "t": t, "p": p}


def _volume(metrics: Any) -> Any:
    """Whole-volume metrics of one case → dask (methods, 3): PSNR from the volume MSE."""
    import dask.array as da

    vol_mse = metrics[:, :, 2].mean(axis=0)
    vol_ssim = metrics[:, :, 1].mean(axis=0)
    safe = da.where(vol_mse > 0, vol_mse, 1.0)
    vol_psnr = da.where(vol_mse > 0, 10.0 * da.log10(1.0 / safe), np.inf)
    return da.stack([vol_psnr, vol_ssim, vol_mse], axis=1)


def _series_jobs(c: Case, methods: Sequence[str]
                 ) -> list[tuple[dict[str, Any], Any, Sequence[str], bool]]:
    """One case's report rows: (labels, lazy per-slice values, names, paired)."""
    base = methods.index(BASELINE) if BASELINE in methods else None
    others = [i for i, m in enumerate(methods) if m != BASELINE]
    diffs = [f"{methods[i]} - {BASELINE}" for i in others] if base is not None else []
    lab = {"factor": c.factor, "stride": c.stride, "series": c.key}
    g = c.metrics[np.flatnonzero(c.generated)]
    jobs = [({**lab, "convention": "generated"}, g, methods, False)]
    if diffs:
        jobs.append(({**lab, "convention": "generated"}, g[:, others] - g[:, [base]], diffs,
                     True))
    jobs.append(({**lab, "convention": "volume"}, _volume(c.metrics)[None], methods, False))
    return jobs


def window_results(cases: list[Case], methods: Sequence[str]) -> Any:
    """A window of cases as one delayed object: their per-slice metrics and the
    statistics of their per-series rows.

    Its result is ``(values, stats)``: per case, the (slices, methods, 3)
    numpy array of its metrics, and what :func:`aggregate` expects in
    ``case.stats``.
    """
    import dask

    jobs = [_series_jobs(c, methods) for c in cases]
    raw = [[_moment_graph(x) for _, x, _, _ in js] for js in jobs]

    def finish(values: list[np.ndarray], computed: list[list[Sequence[np.ndarray]]]
               ) -> tuple[list[np.ndarray], list[list[Any]]]:
        stats = [[(labels, names, paired, _finish(r))
                  for (labels, _, names, paired), r in zip(js, rs, strict=True)]
                 for js, rs in zip(jobs, computed, strict=True)]
        return values, stats

    return dask.delayed(finish, pure=True)([c.metrics for c in cases], raw)


def aggregate(cases: list[Case], methods: Sequence[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The report table and the data behind the figures (small numpy arrays).

    Per-series rows come from ``case.stats`` (:func:`window_results`); the
    cohort rows ("all") are reduced here over every case's per-slice metrics.
    """
    import dask.array as da
    import pandas as pd

    base = methods.index(BASELINE) if BASELINE in methods else None
    others = [i for i, m in enumerate(methods) if m != BASELINE]
    diffs = [f"{methods[i]} - {BASELINE}" for i in others] if base is not None else []
    groups: dict[tuple[int, int], list[Case]] = defaultdict(list)
    for c in cases:
        groups[(c.factor, c.stride)].append(c)

    jobs: list[tuple[dict[str, Any], Any, Sequence[str], bool]] = []  # labels, x, names, paired
    cohort_diff: dict[tuple[int, int], Any] = {}
    cohort_gen: dict[tuple[int, int], Any] = {}
    for (k, s), cs in groups.items():
        allg = da.concatenate([c.metrics[np.flatnonzero(c.generated)] for c in cs], axis=0)
        allv = da.stack([_volume(c.metrics) for c in cs], axis=0)
        cohort_gen[(k, s)] = allg
        lab = {"factor": k, "stride": s, "series": "all"}
        jobs.append(({**lab, "convention": "generated"}, allg, methods, False))
        jobs.append(({**lab, "convention": "volume"}, allv, methods, False))
        if diffs:
            cohort_diff[(k, s)] = allg[:, others] - allg[:, [base]]
            jobs.append(({**lab, "convention": "generated"}, cohort_diff[(k, s)], diffs, True))
            jobs.append(({**lab, "convention": "volume"}, allv[:, others] - allv[:, [base]],
                         diffs, True))
    cohort = iter(zip(jobs, _moments([x for _, x, _, _ in jobs]), strict=True))

    rows = []

    def add(labels: dict[str, Any], names: Sequence[str], paired: bool,
            st: dict[str, np.ndarray]) -> None:
        for mi, meth in enumerate(names):
            for j, metric in enumerate(METRICS):
                rows.append(_row(st, (mi, j), paired, **labels, method=meth, metric=metric))

    for cs in groups.values():  # per group: its series' rows, then the cohort's
        for c in cs:
            for labels, names, paired, st in c.stats:
                add(labels, names, paired, st)
        for _ in range(4 if diffs else 2):
            (labels, _, names, paired), st = next(cohort)
            add(labels, names, paired, st)
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table, _figure_data(cases, groups, cohort_gen, cohort_diff, table, methods, diffs)


def _figure_data(cases: list[Case], groups: dict[tuple[int, int], list[Case]],
                 cohort_gen: dict[tuple[int, int], Any], cohort_diff: dict[tuple[int, int], Any],
                 table: pd.DataFrame, methods: Sequence[str], diffs: list[str]) -> dict[str, Any]:
    """Histograms of the paired differences and the worst slices, per factor (lowest stride)."""
    import dask
    import dask.array as da

    lowest = {k: min(st for kk, st in groups if kk == k) for k, _ in groups}
    lazy: dict[str, Any] = {}
    for k, s in lowest.items():
        tag = f"x{k}"
        if diffs:
            d = cohort_diff[(k, s)][:, 0]  # the first method against linear
            for j, metric in enumerate(METRICS):
                row = table[(table.factor == k) & (table.stride == s) & (table.series == "all")
                            & (table.convention == "generated") & (table.method == diffs[0])
                            & (table.metric == metric)].iloc[0]
                lo, hi = (row["min"], row["max"]) if row["n"] else (0.0, 0.0)
                if not hi > lo:
                    lo, hi = lo - 0.5, hi + 0.5
                lazy[f"{tag}/hist/{metric}"] = da.histogram(
                    da.where(da.isfinite(d[:, j]), d[:, j], np.nan), bins=N_BINS, range=(lo, hi))
            score = d[:, 0]  # PSNR gain over linear: the lowest are where the model loses
        else:
            score = cohort_gen[(k, s)][:, 0, 0]  # PSNR of the only method
        lazy[f"{tag}/worst"] = da.argtopk(da.where(da.isfinite(score), score, np.inf),
                                          -min(N_WORST, score.shape[0]))
    keys = list(lazy)
    out: dict[str, Any] = dict(zip(keys, dask.compute(*[lazy[key] for key in keys]), strict=True))
    # Worst slices → (case number, slice index in its block): metadata only.
    for k, s in lowest.items():
        cs = groups[(k, s)]
        bounds = np.cumsum([0, *(int(c.generated.sum()) for c in cs)])
        where = []
        for flat in np.asarray(out[f"x{k}/worst"]).tolist():
            ci = int(np.searchsorted(bounds, flat, side="right") - 1)
            gidx = int(np.flatnonzero(cs[ci].generated)[flat - bounds[ci]])
            where.append((cases.index(cs[ci]), gidx))
        out[f"x{k}/worst"] = where
        out[f"x{k}/stride"] = s
    return out


def summary(rep: EvaluationReport, *, convention: str = "generated",
            stride: int = 1) -> pd.DataFrame:
    """Table 2 layout: rows metric, columns (factor, method) → cohort mean, plus p."""
    import pandas as pd

    t = rep.table
    sel = t[(t.series == "all") & (t.convention == convention) & (t.stride == stride)]
    if sel.empty:
        raise DataError(f"no cohort rows for convention={convention!r}, stride={stride}; "
                        f"conventions: {sorted(set(t.convention))}, strides: "
                        f"{sorted(set(t.stride))}")
    cols = {}
    for (k, meth), g in sel.groupby(["factor", "method"], sort=False):
        g = g.set_index("metric")
        if " - " in meth:
            cols[(f"x{k}", f"{P_COLUMN} ({meth})")] = g["p"]
        else:
            cols[(f"x{k}", meth)] = g["mean"]
    out = pd.DataFrame(cols).reindex(list(METRICS))
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["factor", ""])
    return out


#: The name of the p-value column (CLI table, summary(), report.md) and what it means.
P_COLUMN = "paired t-test p"
P_EXPLAINED = ("paired t-test p: the two-sided p-value of a paired t-test on the per-slice "
               "differences (e.g. unet - linear) over the same generated slices "
               "(scipy.stats.ttest_rel); a small p (say < 0.05) says the mean difference is "
               "unlikely to be chance, its sign says which method is better (positive PSNR "
               "and SSIM, negative MSE: the first method)")
#: The method ctvol implements, cited in every report.
PAPER = ('Nishimoto et al., 2024, "Generating intermediate slices with U-nets in '
         'craniofacial CT images", preprint')


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v: Any, metric: str = "", *, exact: int = 0) -> str:
    if _missing(v):
        return "∞ (all exact)" if metric == "psnr" and exact else "—"
    if metric == "mse":
        return f"{v:.3g}"
    if metric == "ssim":
        return f"{v:.4f}"
    return f"{v:.2f}"


def _p(v: Any) -> str:
    return "—" if _missing(v) else f"{v:.2g}"


_TITLES = {"generated": "Generated slices only (primary)",
           "volume": "Whole volume, kept slices included"}


def _table2(sel: pd.DataFrame, factors: list[int], unit: str) -> list[str]:
    """The Table 2 layout of one convention and stride: rows metric, columns method per factor."""
    heads, cells = ["metric"], {m: [_LABELS[m]] for m in METRICS}
    ns = []
    for k in factors:
        sk = sel[sel.factor == k]
        if sk.empty:
            continue
        for meth in sk.method.unique():
            g = sk[sk.method == meth].set_index("metric")
            paired = " - " in meth
            heads.append(f"x{k} {P_COLUMN} ({meth})" if paired else f"x{k} {meth}")
            for m in METRICS:
                r = g.loc[m]
                if paired:
                    cells[m].append(_p(r["p"]))
                else:
                    sd = "" if _missing(r["sd"]) else f" ± {_fmt(r['sd'], m)}"
                    cells[m].append(_fmt(r["mean"], m, exact=int(r["n_exact"])) + sd)
        first = sk.iloc[0]
        ns.append(f"x{k}: n = {int(first['n']) + int(first['n_exact'])} {unit}")
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(cells[m]) + " |" for m in METRICS]
    lines += ["", "mean ± sd; " + "; ".join(ns)]
    if any(" - " in h for h in heads):
        lines += ["", f"_{P_EXPLAINED}_"]
    lines.append("")
    exact = sel[(sel.metric == "psnr") & (sel.n_exact > 0) & ~sel.method.str.contains(" - ")]
    for _, r in exact.iterrows():
        lines.append(f"- x{r['factor']} {r['method']}: {r['n_exact']} {unit} reproduced "
                     "exactly (MSE 0, PSNR +inf), excluded from the PSNR mean")
    return lines + ([""] if not exact.empty else [])


def _per_series(t: pd.DataFrame) -> list[str]:
    per = t[(t.series != "all") & (t.convention == "generated") & ~t.method.str.contains(" - ")]
    if per.empty:
        return []
    lines = ["## Per series (generated slices only)", "",
             "| series | factor | stride | method | n | PSNR (dB) | SSIM | MSE |",
             "|---|---|---|---|---|---|---|---|"]
    for (key, k, s, meth), g in per.groupby(["series", "factor", "stride", "method"], sort=False):
        g = g.set_index("metric")
        values = " | ".join(_fmt(g.loc[m, "mean"], m, exact=int(g.loc[m, "n_exact"]))
                            for m in METRICS)
        lines.append(f"| {key} | x{k} | {s} | {meth} | {int(g.loc['ssim', 'n'])} | {values} |")
    return [*lines, ""]


def markdown(rep: EvaluationReport) -> str:
    t = rep.table
    info = rep.info
    lines = ["# ctvol evaluation report", ""]
    lines += [f"- protocol: {PAPER} (Table 2 layout: generated slices compared with the "
              "real slices they replace)",
              f"- data: {info['store'] or 'an in-memory volume'}; "
              f"{len(info['data']['evaluated'])} series evaluated, "
              f"{len(info['data']['skipped'])} (series, factor) skipped",
              f"- methods: {', '.join(info['methods'])}; factors: "
              f"{', '.join(f'x{k}' for k in info['factors'])}; strides: {info['strides']}",
              f"- intensities: clipped to [{info['window'][0]:g}, {info['window'][1]:g}] HU, "
              "mapped to [0, 1], data range 1.0 (scikit-image's PSNR, SSIM, MSE)",
              f"- paired t-tests: {info['t_test']}"]
    for k, m in info["models"].items():
        lines.append(f"- U-net x{k}: `{m['path'] or 'in-memory'}` (sha256 {m['digest'][:12]}…)"
                     + (f"; trained on: {m['trained_on']}" if m.get("trained_on") else ""))
    lines.append("")
    if info.get("warnings"):
        lines += ["## Warnings", ""] + [f"- **{w}**" for w in info["warnings"]] + [""]
    for conv in ("generated", "volume"):
        for s in info["strides"]:
            sel = t[(t.series == "all") & (t.convention == conv) & (t.stride == s)]
            if sel.empty:
                continue
            pairs = "(i, i+k)" if s == 1 else f"(i, i+{s}·k)"
            lines += [f"## {_TITLES[conv]} — pairs {pairs}", "", f"_{CONVENTIONS[conv]}_", ""]
            lines += _table2(sel, info["factors"], "slices" if conv == "generated" else "series")
    lines += _per_series(t)
    if info["data"]["skipped"]:
        lines += ["## Skipped", ""]
        lines += [f"- {d['series']} x{d['factor']} stride {d['stride']}: {d['reason']}"
                  for d in info["data"]["skipped"]]
        lines.append("")
    figs = info.get("figures") or []
    if figs:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figs] + [""]
    return "\n".join(lines)


def describe_source(key: str, ds: Any, offset: int) -> dict[str, Any]:
    """A series' entry in ``info["data"]["evaluated"]`` (without its runs)."""
    z = np.asarray(ds["z"].values)
    return {"series": key, "series_uid": ds.attrs.get("series_uid"),
            "slices": int(ds.sizes["z"]), "first_index": offset,
            "spacing_mm": float(np.median(np.diff(z))) if z.size > 1 else None,
            "shape": [int(ds.sizes[d]) for d in ("z", "y", "x")]}


def info(*, store: str | None, factors: list[int], strides: list[int], methods: Sequence[str],
         models: dict[int, Any], sources: list[dict[str, Any]], cases: list[Case],
         skipped: list[dict[str, Any]], window: tuple[float, float]) -> dict[str, Any]:
    import importlib.metadata as md

    versions: dict[str, str | None] = {}
    for pkg in ("numpy", "scipy", "scikit-image", "dask", "distributed", "xarray", "zarr",
                "torch", "pandas"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # pragma: no cover - all are dependencies
            versions[pkg] = None
    evaluated = defaultdict(list)
    for c in cases:
        evaluated[c.key].append({"factor": c.factor, "stride": c.stride,
                                 "slices": int(c.index.size),
                                 "generated": int(c.generated.sum()),
                                 "index_range": [int(c.index[0]), int(c.index[-1])],
                                 **({"auto": c.auto} if c.auto is not None else {})})
    data = {"evaluated": [{**d, "runs": evaluated.get(d["series"], [])} for d in sources],
            "skipped": skipped}
    return {
        "ctvol_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "store": store, "factors": factors, "strides": strides, "methods": list(methods),
        "window": list(window), "data_range": 1.0, "conventions": CONVENTIONS,
        "t_test": "paired (scipy.stats.ttest_rel semantics), computed from the aggregated "
                  "moments (n, mean, sd) of the per-slice differences; PSNR pairs with an "
                  "exact slice (+inf) are excluded",
        "models": {k: {"path": m.path, "digest": m.digest,
                       "trained_on": (m.provenance or {}).get("split") or
                       (m.provenance or {}).get("store"),
                       "provenance": m.provenance} for k, m in models.items()},
        "data": data, "versions": versions,
    }


def _clean(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def save(rep: EvaluationReport, path: str | os.PathLike[str], *, figures: bool = True,
         storage_options: Mapping[str, Any] | None = None) -> pathlib.Path | str:
    """Write the report into a folder, or under an fsspec URL (returned as given)."""
    url = os.fspath(path)
    if "://" in url:
        # pathlib would turn "s3://b/r" into a local folder "s3:/b/r": write the
        # files locally, then upload each one under the URL
        import tempfile

        import fsspec

        fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        with tempfile.TemporaryDirectory() as tmp:
            save(rep, tmp, figures=figures)
            for local in sorted(pathlib.Path(tmp).rglob("*")):
                if local.is_file():
                    fs.put_file(str(local), f"{root.rstrip('/')}/"
                                            f"{local.relative_to(tmp).as_posix()}")
        return url
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if figures and not available("matplotlib"):
        warnings.warn("report figures skipped: matplotlib is not installed (pip install "
                      "'ctvol[figures]'); the tables are written", EvaluationWarning,
                      stacklevel=3)
        figures = False
    if figures:
        rep.info["figures"] = draw_all(rep, folder / "figures")
    records = rep.table.astype(object).where(rep.table.notna(), None).to_dict("records")
    doc = {**rep.info, "table": records,
           "histograms": {k: {"counts": v[0].tolist(), "edges": v[1].tolist()}
                          for k, v in rep.figure_data.items() if "/hist/" in k}}
    (folder / "report.json").write_text(json.dumps(_clean(doc), indent=1, allow_nan=False))
    (folder / "report.md").write_text(markdown(rep))
    return folder
