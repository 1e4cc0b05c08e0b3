"""``ctvol.run``: a cohort pipeline (ingest → curate → reslice → evaluate) from a config.

The pipeline composes the public API only (:func:`ctvol.ingest`,
:func:`ctvol.curate_store`, :func:`ctvol.curate`, :func:`ctvol.reslice`,
:func:`ctvol.write`, :func:`ctvol.evaluate`). Every stage is resumable per
series, decided by the stores' ``complete`` flags and recorded digests, never
by log files; one bad series is recorded with its reason and never fails the
cohort. ``docs/cluster.md`` describes the config and running it on a cluster.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._compute import choose_scheduler, scheduler_context
from ._deps import require
from ._options import check
from ._version import __version__
from .errors import ConfigError, CtvolError, CtvolWarning, MissingDependencyError, NoInputError

__all__ = ["RunSummary", "load_config", "run"]

STAGES = ("ingest", "curate", "reslice", "evaluate")
#: Top-level keys and the types they take (stage tables: ctvol._options.OPTIONS).
_TOP: dict[str, tuple[type, ...]] = {
    "inputs": (str, list), "store": (str,), "stages": (list,), "scheduler": (str,),
    "workers": (int,), "storage_options": (dict,), **dict.fromkeys(STAGES, (dict,)),
}


def load_config(path_or_mapping: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Read a pipeline config (YAML or TOML file, or a mapping) and check it.

    Relative paths (``inputs``, ``store``, stage outputs, model folders) are
    resolved against the config file's folder, so a config runs the same
    from any working directory.
    """
    if isinstance(path_or_mapping, Mapping):
        cfg, base = dict(path_or_mapping), pathlib.Path.cwd()
    else:
        path = pathlib.Path(path_or_mapping)
        if not path.is_file():
            raise NoInputError(f"pipeline config {path} does not exist")
        text = path.read_text()
        if path.suffix == ".toml":
            import tomllib

            cfg = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            yaml = require("yaml", f"the YAML pipeline config {path} (or write it as TOML)")
            cfg = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{path}: a pipeline config is .yaml, .yml or .toml")
        base = path.resolve().parent

    where = str(path_or_mapping) if not isinstance(path_or_mapping, Mapping) else "config"
    unknown = set(cfg) - set(_TOP)
    if unknown:
        raise ConfigError(f"{where}: unknown config keys {sorted(unknown)}; valid: "
                          f"{sorted(_TOP)}")
    for key, types in _TOP.items():
        value = cfg.get(key)
        if value is not None and key not in STAGES and (
                not isinstance(value, types) or isinstance(value, bool)):
            want = " or ".join({"str": "a string", "list": "a list", "int": "an integer",
                                "dict": "a table"}[t.__name__] for t in types)
            if key == "storage_options":
                want += " of fsspec options (e.g. {client_kwargs: {endpoint_url: URL}})"
            raise ConfigError(f"{where}: `{key}` must be {want}, got {value!r}")
    stages = cfg.get("stages") or [s for s in STAGES if s in cfg]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ConfigError(f"{where}: unknown stage(s) {bad}; stages are {list(STAGES)}")
    cfg["stages"] = [s for s in STAGES if s in stages]  # always in pipeline order
    for stage in STAGES:
        opts = cfg.get(stage) or {}
        if not isinstance(opts, Mapping):
            raise ConfigError(f"{where}: [{stage}] must be a table of options, got {opts!r}")
        cfg[stage] = check(stage, dict(opts), style="config", where=where)
    if "store" not in cfg:
        raise ConfigError(f"{where}: the config needs `store` (the cohort store path or URL)")
    if "ingest" in cfg["stages"] and not cfg.get("inputs"):
        raise ConfigError(f"{where}: the ingest stage needs `inputs` (DICOM folders or files)")
    for stage, need in (("reslice", "output"), ("evaluate", "output")):
        if stage in cfg["stages"] and not cfg[stage].get(need):
            raise ConfigError(f"{where}: [{stage}] needs `{need}`")
    if "reslice" in cfg["stages"] and ("factor" in cfg["reslice"]) == ("spacing" in cfg["reslice"]):
        raise ConfigError(f"{where}: [reslice] needs exactly one of `factor` or `spacing`")

    def local(p: Any) -> Any:  # relative paths are relative to the config's folder
        p = str(p)
        return p if "://" in p or os.path.isabs(p) else str(base / p)

    inputs = cfg.get("inputs") or []
    cfg["inputs"] = [local(p) for p in ([inputs] if isinstance(inputs, str) else inputs)]
    cfg["store"] = local(cfg["store"])
    for stage in ("reslice", "evaluate"):
        if cfg[stage].get("output"):
            cfg[stage]["output"] = local(cfg[stage]["output"])
    for stage in ("reslice", "evaluate", "curate"):
        m = cfg[stage].get("model")
        if isinstance(m, str) and (base / m).exists():  # else a bundled name such as unet-x3
            cfg[stage]["model"] = local(m)
    return cfg


def _so(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """fsspec options for every store and output given as a URL (``storage_options``)."""
    return dict(cfg.get("storage_options") or {}) or None


@dataclass
class RunSummary:
    """What :func:`run` did, per stage and per series."""

    config: dict[str, Any]
    stages: list[dict[str, Any]] = field(default_factory=list)   # one row per stage
    series: list[dict[str, Any]] = field(default_factory=list)   # one row per (stage, series)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # process → peak RSS (MiB)
    warnings: list[str] = field(default_factory=list)            # ctvol warnings, by stage

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.series if r["status"] == "failed"]

    def table(self) -> str:
        """The final summary: per stage, series done / skipped / failed, slices, time."""
        import pandas as pd

        df = pd.DataFrame(self.stages)
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            out = df.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")
        auto = [r for r in self.series
                if r["stage"] == "reslice" and r["reason"].startswith("auto -> ")]
        if auto:
            n_unet = sum(r["reason"].startswith("auto -> unet") for r in auto)
            out += (f"\n\nreslice method auto: U-net for {n_unet} series, linear for "
                    f"{len(auto) - n_unet} (self-check on each series' own slices):\n"
                    + "\n".join(f"  {r['series']}: {r['reason']}" for r in auto))
        if self.failed:
            out += "\n\nfailed:\n" + "\n".join(
                f"  {r['stage']} {r['series']}: {r['reason']}" for r in self.failed)
        if self.warnings:
            out += "\n\nwarnings:\n" + "\n".join(f"  {w}" for w in self.warnings)
        if self.peak_rss_mb:
            out += "\n\npeak memory (RSS, MiB): " + ", ".join(
                f"{k} {v:.0f}" for k, v in self.peak_rss_mb.items())
        return out


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB).

    Linux's VmHWM is the high-water mark of this process's own memory; the
    getrusage maximum survives fork+exec, so a worker spawned by a large
    driver would report the driver's peak.
    """
    import resource
    import sys

    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _stage_ingest(cfg: dict[str, Any], summary: RunSummary, progress: bool) -> None:
    from ._ingest import ingest

    opts = cfg["ingest"]
    rep = ingest(cfg["inputs"], cfg["store"], progress=progress,
                 storage_options=_so(cfg), **opts)
    slices = 0
    for _, row in rep.series.iterrows():
        key = row.get("key")
        status = ({"written": "done", "unchanged": "skipped"}.get(row["last_run"], "done")
                  if row["status"] == "ok" else row["status"])
        if status == "done":
            slices += int(row["n_slices"])
        if status in ("done", "skipped", "failed"):  # excluded files are in the catalog
            summary.series.append({"stage": "ingest", "series": key, "status": status,
                                   "reason": row.get("detail") or row.get("reason") or ""})
    summary.stages[-1].update(slices=slices, files=len(rep.files),
                              excluded_files=rep.n_excluded)


def _stage_curate(cfg: dict[str, Any], summary: RunSummary, progress: bool) -> None:
    from .curation import curate_store
    from .io.store import list_series, open_series

    so = _so(cfg)
    keys = list_series(cfg["store"], storage_options=so)
    todo = [k for k in keys
            if "label" not in open_series(cfg["store"], k, storage_options=so).data_vars]
    for k in sorted(set(keys) - set(todo)):
        summary.series.append({"stage": "curate", "series": k, "status": "skipped",
                               "reason": "labels already stored"})
    slices = 0
    if todo:
        opts = dict(cfg["curate"])
        table = curate_store(cfg["store"], keys=todo, progress=progress,
                             storage_options=so, **opts)
        for _, row in table.iterrows():
            summary.series.append({"stage": "curate", "series": row["key"], "status": "done",
                                   "reason": row.get("note") or ""})
            slices += int(row["slices"])
    summary.stages[-1]["slices"] = slices


def _reslice_params(opts: dict[str, Any]) -> dict[str, Any]:
    return {k: opts.get(k) for k in ("factor", "spacing", "method", "model")}


class _OnDemand(Mapping[str, Any]):
    """``key -> build(key)``, built each time it is asked for and not kept.

    :func:`ctvol.write_many` asks for a series only when it starts writing
    it, so the driver holds the graphs (and coordinates) of the series in
    flight, not of every series to write.
    """

    def __init__(self, keys: list[str], build: Callable[[str], Any]) -> None:
        self._keys, self._build = dict.fromkeys(keys), build

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys:
            raise KeyError(key)
        return self._build(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _stage_reslice(cfg: dict[str, Any], summary: RunSummary, progress: bool) -> None:
    from ._reslice import reslice
    from .curation import curate
    from .io.store import list_series, open_series, write_many

    opts = dict(cfg["reslice"])
    out = opts.pop("output")
    compressor = opts.pop("compressor", "lz4")
    params = _reslice_params(opts)
    curated = "curate" in cfg["stages"]
    so = _so(cfg)
    done_before = {}
    try:
        for k in list_series(out, storage_options=so):
            done_before[k] = open_series(out, k, storage_options=so).attrs.get(
                "ctvol_run", {})
    except (FileNotFoundError, CtvolError):
        pass

    def resliced(key: str, ds: Any = None) -> tuple[int, Any]:
        """The series' input length and its resliced volume (lazy), stamped."""
        if ds is None:
            ds = open_series(cfg["store"], key, storage_options=so)
        if curated and "label" in ds.data_vars:
            kept = curate(ds)  # the longest non-blank run (split=False)
            assert not isinstance(kept, list)
            ds = kept
        ds = ds.drop_vars("label", errors="ignore")
        # method="auto" decides once per series (its self-check computes); the
        # rebuild when the write starts reuses that decision and its record.
        decided = decisions.get(key)
        fine = reslice(ds, opts.get("factor"), spacing=opts.get("spacing"),
                       method=decided[0] if decided else opts.get("method", "auto"),
                       model=opts.get("model"),
                       batch_size=opts.get("batch_size", 16), device=opts.get("device"))
        if decided:
            fine.attrs["reslice"] = decided[1]
            fine.attrs["ctvol_history"] = [*fine.attrs["ctvol_history"][:-1], decided[2]]
        elif "auto" in fine.attrs["reslice"]:
            decisions[key] = (fine.attrs["reslice"]["method"], dict(fine.attrs["reslice"]),
                              fine.attrs["ctvol_history"][-1])
        fine.attrs["ctvol_run"] = stamps[key]
        return int(ds.sizes["z"]), fine

    slices = made = 0
    decisions: dict[str, tuple[str, dict[str, Any], Any]] = {}  # method, record, history entry
    stamps: dict[str, dict[str, Any]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for key in list_series(cfg["store"], storage_options=so):
        ds = open_series(cfg["store"], key, storage_options=so)
        stamps[key] = {"source_sop_digest": ds.attrs.get("sop_digest"), "curated": curated,
                       "reslice": params}
        if done_before.get(key) == stamps[key]:
            summary.series.append({"stage": "reslice", "series": key, "status": "skipped",
                                   "reason": "complete in the output with the same source "
                                             "and parameters"})
            continue
        try:  # metadata checks now, so that a bad series is recorded as before any write
            n_in, fine = resliced(key, ds)
        except MissingDependencyError:
            raise  # not a property of the series: every one would fail
        except (CtvolError, ValueError, FileNotFoundError) as exc:
            summary.series.append({"stage": "reslice", "series": key, "status": "failed",
                                   "reason": str(exc)})
            continue
        sizes[key] = (n_in, int(fine.sizes["z"]))
        del ds, fine  # rebuilt when its write starts (~30 ms): not kept for the whole cohort
    # On a Client up to in_flight series' blocks run concurrently and each is
    # flagged complete when its own blocks finish. StoreWriteError (disk full,
    # permissions) stops the run; any other failure skips only its series.
    todo = _OnDemand(list(sizes), lambda key: resliced(key)[1])
    outcome = write_many(todo, out, compressor=compressor, progress=progress,
                         errors="collect", storage_options=so)
    for key, err in outcome.items():
        if err is not None:
            summary.series.append({"stage": "reslice", "series": key, "status": "failed",
                                   "reason": f"{type(err).__name__}: {err}"})
            continue
        slices += sizes[key][0]
        made += sizes[key][1]
        how = ""
        if key in decisions:
            from ._reslice import auto_text

            rec = decisions[key][1]
            how = f"auto -> {rec['method']}: {auto_text(rec['auto'])}"
        summary.series.append({"stage": "reslice", "series": key, "status": "done",
                               "reason": how})
    summary.stages[-1].update(slices=slices, output_slices=made)


def _evaluate_stamp(cfg: dict[str, Any]) -> dict[str, Any]:
    """What an evaluation depends on: each series' source digest, the options, the
    models' digests (a bundled default: this ctvol's version), JSON-normalised."""
    import json

    from .io.store import list_series, open_series
    from .models import load_model

    store, so = cfg["store"], _so(cfg)
    sources = {k: open_series(store, k, storage_options=so).attrs.get("sop_digest")
               for k in list_series(store, storage_options=so)}
    model = cfg["evaluate"].get("model")
    models: Any = __version__
    if model is not None:
        paths = model.values() if isinstance(model, Mapping) else (
            [model] if isinstance(model, str) else model)
        models = [load_model(m).digest for m in paths]
    stamp = {"sources": sources, "evaluate": cfg["evaluate"], "models": models}
    return dict(json.loads(json.dumps(stamp, default=str)))


def _stage_evaluate(cfg: dict[str, Any], summary: RunSummary, progress: bool) -> None:
    import json

    import fsspec

    from .evaluation import evaluate

    opts = dict(cfg["evaluate"])
    out = opts.pop("output")
    figures = opts.pop("figures", True)
    factor = opts.pop("factor", 3)
    stamp = _evaluate_stamp(cfg)
    so = _so(cfg)
    # the output may be a URL (s3://...): the report is read and stamped through fsspec
    report = f"{str(out).rstrip('/')}/report.json"
    try:
        with fsspec.open(report, "r", **(so or {})) as fh:
            previous = json.loads(fh.read()).get("ctvol_run")
    except (OSError, ValueError):
        previous = None
    if previous == stamp:  # the same series, options and models: the report stands
        for key in stamp["sources"]:
            summary.series.append({"stage": "evaluate", "series": key, "status": "skipped",
                                   "reason": "report up to date (same series, options and "
                                             "models)"})
        summary.stages[-1]["note"] = f"unchanged: {report}"
        return
    rep = evaluate(cfg["store"], factor, progress=progress, storage_options=so, **opts)
    rep.save(out, figures=figures, storage_options=so)
    with fsspec.open(report, "r", **(so or {})) as fh:
        doc = json.loads(fh.read())
    doc["ctvol_run"] = stamp  # what this report was computed from (see above)
    with fsspec.open(report, "w", **(so or {})) as fh:
        fh.write(json.dumps(doc, indent=1, allow_nan=False))
    for d in rep.info["data"]["skipped"]:
        summary.series.append({"stage": "evaluate", "series": d["series"], "status": "skipped",
                               "reason": f"x{d['factor']}: {d['reason']}"})
    evaluated = [e for e in rep.info["data"]["evaluated"] if e["runs"]]
    for e in evaluated:
        summary.series.append({"stage": "evaluate", "series": e["series"], "status": "done",
                               "reason": ""})
    t = rep.table
    gen = t[(t.series == "all") & (t.convention == "generated") & (t.metric == "psnr")
            & ~t.method.str.contains(" - ")]
    summary.stages[-1]["slices"] = sum(int(e["slices"]) for e in evaluated)
    summary.stages[-1]["note"] = "; ".join(
        f"x{r.factor} {r.method} PSNR {r['mean']:.2f} dB" for _, r in gen.iterrows()
        if r["mean"] == r["mean"])


def _job_size(cfg: dict[str, Any]) -> int | None:
    """The run's size for ``scheduler: auto``: input files when it ingests, else the
    store's slices (None when unknown: a URL)."""
    from .io.store import list_series, open_series

    if "ingest" in cfg["stages"]:
        n = 0
        for p in cfg["inputs"]:
            if "://" in p:
                return None
            n += 1 if os.path.isfile(p) else sum(len(f) for _, _, f in os.walk(p))
        return n
    so = _so(cfg)
    try:
        return sum(int(open_series(cfg["store"], k, storage_options=so).sizes["z"])
                   for k in list_series(cfg["store"], storage_options=so))
    except (CtvolError, OSError):
        return None


def run(config: str | os.PathLike[str] | Mapping[str, Any], *, scheduler: str | None = None,
        workers: int | None = None, progress: bool = True) -> RunSummary:
    """Run a cohort pipeline described by a config (see ``docs/cluster.md``).

    Parameters
    ----------
    config : path to a .yaml/.toml file, or a mapping
        ``inputs``, ``store``, optional ``stages``, ``scheduler``, ``workers``,
        ``storage_options`` (fsspec options for the store and stage outputs
        given as URLs, e.g. ``s3://``) and one table per stage (``ingest``,
        ``curate``, ``reslice``, ``evaluate``) with that stage's options.
    scheduler : str, optional
        Overrides the config: ``"auto"`` (the default: threads for a small
        job, a LocalCluster for a large one; ``docs/cluster.md``), ``"local"``
        (a LocalCluster sized to the machine), ``"threads"``, or a scheduler address
        (``tcp://host:8786``: a dask-jobqueue or Kubernetes cluster).
    workers : int, optional
        Worker processes for ``"local"``.
    progress : bool, default True
        Progress bars per stage.

    Returns
    -------
    RunSummary
        Per stage: series done / skipped (already complete) / failed, slices,
        seconds; per series the fate and reason; peak memory per process.
    """
    import warnings

    from distributed import KilledWorker

    cfg = load_config(config)
    spec = choose_scheduler(scheduler or cfg.get("scheduler") or "auto", _job_size(cfg))
    summary = RunSummary(config=cfg)
    runners = {"ingest": _stage_ingest, "curate": _stage_curate, "reslice": _stage_reslice,
               "evaluate": _stage_evaluate}
    with scheduler_context(spec, workers or cfg.get("workers")) as client:
        for stage in cfg["stages"]:
            t0 = time.perf_counter()
            summary.stages.append({"stage": stage})
            # ctvol's warnings (series split, tilt, evaluating on training
            # slices) go into the summary; only this thread enters the block.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", CtvolWarning)
                try:
                    runners[stage](cfg, summary, progress)
                except KilledWorker as exc:  # not a bug of ctvol's nor of the data's
                    raise CtvolError(
                        f"the {stage} stage stopped: worker processes died on each of "
                        f"{getattr(exc, 'allowed_failures', 0) + 1} tries of task "
                        f"{getattr(exc, 'task', '?')!r} (dask KilledWorker: out of memory "
                        "or a crash; the worker logs say which). Complete series are kept "
                        "and none is visible half-written: re-run the same config to resume"
                    ) from exc
            summary.warnings += [f"{stage}: {w.message}" for w in caught
                                 if issubclass(w.category, CtvolWarning)]
            for w in caught:  # anything else is shown as usual
                if not issubclass(w.category, CtvolWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            secs = time.perf_counter() - t0
            rows = [r for r in summary.series if r["stage"] == stage]
            summary.stages[-1].update(
                done=sum(r["status"] == "done" for r in rows),
                skipped=sum(r["status"] == "skipped" for r in rows),
                failed=sum(r["status"] == "failed" for r in rows),
                seconds=round(secs, 2),
                slices_per_s=round(summary.stages[-1].get("slices", 0) / secs, 2) if secs else 0)
        summary.peak_rss_mb["driver"] = _peak_rss_mb()
        if client is not None:
            for addr, mb in sorted(client.run(_peak_rss_mb).items()):
                summary.peak_rss_mb[f"worker {addr}"] = mb
    return summary
