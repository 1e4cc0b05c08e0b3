"""``ctvol.ingest``: DICOM folders → a cohort store, every file accounted for."""

from __future__ import annotations

import os
import uuid
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._compute import compute
from ._options import check
from ._version import __version__
from ._volume import history_record
from .errors import GeometryWarning, IngestWarning, NoInputError
from .io._series import plan_series, series_key
from .io._write import WRITE_ERRNOS, write_error
from .io.dicom import find_files, read_headers
from .io.store import SERIES_COLUMNS, catalog, list_series

if TYPE_CHECKING:
    import pandas as pd

    from .io._series import RefusedGroup, SeriesPlan
    from .io.dicom import FileRecord

__all__ = ["IngestReport", "ingest"]

#: Files per header-reading task: 1.5-3 ms per file here, so 32-256 files
#: make tasks of ~0.1-0.5 s, and at least ~16 tasks when there are enough files.
HEADER_BATCH = (32, 256)

#: Values of catalog columns added after format version 1's first stores.
FILE_DEFAULTS: dict[str, Any] = {"frame": 0, "transfer_syntax": "", "lossy": False}
SERIES_DEFAULTS: dict[str, Any] = {"transfer_syntax": "", "lossy": False}


@dataclass
class IngestReport:
    """What :func:`ingest` did.

    Attributes
    ----------
    store : str
        The cohort store.
    files : pandas.DataFrame
        One row per input file of this run: path, status (``stored`` or
        ``excluded``), reason code, detail, series key.
    series : pandas.DataFrame
        One row per series (status ``ok``; ``last_run`` ``written`` by this
        run or found ``unchanged``), and per group excluded or refused, with
        shape, spacing (mm), tilt and warnings: the catalog's columns.
    written, unchanged : list of str
        Keys written by this run, and complete keys it found identical.
    """

    store: str
    files: pd.DataFrame
    series: pd.DataFrame
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def n_excluded(self) -> int:
        """Number of input files excluded (all with a reason)."""
        return int((self.files["status"] == "excluded").sum())

    @property
    def failed(self) -> list[str]:
        """Keys of series that were planned but could not be decoded/written."""
        s = self.series
        return list(s.loc[s["status"] == "failed", "key"])

    def summary(self) -> str:
        """The series table as text, with a one-line headline."""
        s = self.series
        ok = s[s["status"] == "ok"]
        head = (
            f"{len(self.files)} files -> {len(ok)} series in {self.store} "
            f"({len(self.written)} written, {len(self.unchanged)} unchanged); "
            f"{self.n_excluded} files excluded, {len(self.failed)} series failed"
        )
        return head + "\n" + format_series_table(s)

    def __repr__(self) -> str:
        return f"<IngestReport\n{self.summary()}\n>"


def format_series_table(series: pd.DataFrame) -> str:
    """A compact text table of a series catalog (for ``ctvol info`` and reports)."""
    import pandas as pd

    if series.empty:
        return "(empty catalog)"
    # The catalog's own column names (ctvol.catalog), in its order but for the
    # key, which goes last and whole: it is what users copy into open_series.
    cols = ["status", "last_run", "reason", "n_files", "n_slices", "rows", "cols", "dz", "dy",
            "tilt_deg", "description", "key"]
    t = series[[c for c in cols if c in series]].copy()
    t["description"] = [d if len(d) <= 24 else d[:23] + "…" for d in t["description"]]
    for c in ("dz", "dy", "tilt_deg"):
        if c in t:
            t[c] = [("" if pd.isna(v) else f"{v:.4g}") for v in t[c]]
    with pd.option_context("display.width", 200, "display.max_colwidth", 100,
                           "display.max_rows", 500):
        left = {c: f"{{:<{max(t[c].str.len().max(), len(c))}}}".format
                for c in ("last_run", "reason", "description", "key")}
        return t.to_string(index=False, formatters=left, justify="left")


def ingest(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    store: str | os.PathLike[str],
    *,
    modalities: Sequence[str] = ("CT",),
    split_gaps: bool = True,
    max_obliquity_deg: float = 45.0,
    padding_fill: int | None = -1024,
    compressor: str | Any = "lz4",
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> IngestReport:
    """Ingest DICOM files into a cohort store; every input file gets a fate.

    Headers are read first (in parallel on the active Dask scheduler), files
    are grouped into series and validated (``docs/storage.md``), then pixels
    are decoded to HU and written shard by shard, each series flagged
    ``complete`` when done. Re-running on the same input skips complete,
    identical series and redoes incomplete ones.

    Parameters
    ----------
    inputs : path, URL or iterable of them
        DICOM files and folders (searched recursively, hidden files included;
        local symlinked folders and files followed, each real folder once);
        local or fsspec URLs. Traversal rules: ``docs/storage.md``.
    store : path or URL
        The cohort store (created if absent; must be a ctvol store if present).
    modalities : sequence of str, default ("CT",)
        Modalities to ingest; other images are excluded with reason ``modality``.
    split_gaps : bool, default True
        Split a series with missing slices / uneven spacing into contiguous
        runs (keys ``<uid>_r1``, ``_r2``…). If False such series are refused.
    max_obliquity_deg : float, default 45
        Largest angle (degrees) between slice normal and patient z kept as axial.
    padding_fill : int or None, default -1024
        HU written where PixelPaddingValue flags padding; None keeps the
        modality-LUT value.
    compressor : {"lz4", "zstd"} or zarr codec, default "lz4"
        Lossless codec for ``hu`` (Blosc with bit-shuffle): ``"lz4"`` is fast
        (~2.3x on CT), ``"zstd"`` ~15 % smaller and ~3x slower to write.
    storage_options : mapping, optional
        fsspec options for a remote store.
    progress : bool, default False
        Show progress bars.

    Returns
    -------
    IngestReport

    Raises
    ------
    NoInputError
        No files under ``inputs``.
    StoreError
        ``store`` exists and is not a ctvol cohort store.

    Warns
    -----
    GeometryWarning
        Once per series with tilt, splits or disagreeing InstanceNumber order.
    IngestWarning
        Once per series without SeriesInstanceUID (grouped as dcm2niix does),
        or with slices without SOPInstanceUID (identified by their file's SHA-1).

    Examples
    --------
    >>> import ctvol, ctvol.testing, tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> _ = ctvol.testing.write_dicom_series(tmp / "dicom", ctvol.testing.head_phantom())
    >>> report = ctvol.ingest(tmp / "dicom", tmp / "cohort.zarr")
    >>> report.series[["status", "n_slices", "dz"]].values.tolist()
    [['ok', 16, 2.0]]
    """
    import dask

    from ._compute import compute_bounded, default_in_flight
    from .io import _layout as lay
    from .io import store as st

    so = dict(storage_options or {}) or None

    check("ingest", {"modalities": list(modalities), "split_gaps": split_gaps,
                     "max_obliquity_deg": max_obliquity_deg})  # before touching anything
    lay.hu_codec(compressor)
    url = lay.store_url(store)
    lay.check_store_path(url, create=True)  # fail fast on a bad path, creating nothing

    paths = find_files(inputs)
    if not paths:  # before the store is created: a failed ingest leaves no empty store
        raise NoInputError(f"no files found under {inputs!r}: nothing to ingest")
    root = lay.open_store(url, create=True, storage_options=so)
    st.mark_ingest_running(root)  # cleared when the catalog is written

    lo, hi = HEADER_BATCH
    size = min(hi, max(lo, -(-len(paths) // 16)))
    batches = [paths[i : i + size] for i in range(0, len(paths), size)]
    tasks = [dask.delayed(read_headers, pure=True)(b) for b in batches]
    records: list[FileRecord] = [r for batch in _run(tasks, progress, "headers") for r in batch]

    plans, refused = plan_series(
        records, modalities=modalities, split_gaps=split_gaps, max_obliquity_deg=max_obliquity_deg
    )

    existing = lay.series_attrs(root)
    to_write, unchanged = [], []
    for plan in plans:
        prev = existing.get(plan.key)
        digest = lay.sop_digest([h.slice_id for h in plan.headers])
        if prev is not None and prev.get("sop_digest") == digest:
            unchanged.append(plan)
        else:
            to_write.append(plan)

    history = history_record("ingest", {"padding_fill": padding_fill, "split_gaps": split_gaps})
    if to_write:
        root.require_group("series")  # once, before tasks create groups inside it

    def writes() -> Iterator[Any]:
        # One graph per series, built only when a slot frees: the driver (and
        # the scheduler) hold the write graphs, with their headers, of the
        # series in flight only, not of the whole cohort.
        for plan in to_write:
            yield _series_write(plan, url, history=history, compressor=compressor,
                                padding_fill=padding_fill, storage_options=so)

    if progress and to_write:
        print(f"ctvol ingest: pixels ({len(to_write)} series)", flush=True)
    done = compute_bounded(writes(), in_flight=default_in_flight(), progress=progress,
                           total=len(to_write), what="ctvol ingest: series written",
                           errors="return")
    results = {}
    try:
        for i, r in done:
            if isinstance(r, BaseException):
                r = _write_failed(r, url, to_write[i].key)  # raises unless a worker died
            results[r["key"]] = r
    finally:
        done.close()  # a raise above cancels the series still in flight

    for plan in plans:
        for w in plan.warnings:
            cls = IngestWarning if w in plan.identity_warnings else GeometryWarning
            warnings.warn(w, cls, stacklevel=2)

    files_df, series_df = _tables(records, plans, refused, results, {p.key for p in unchanged})
    files_all, series_all = _merge_catalog(url, so, files_df, series_df)
    summary = {
        "n_files": len(files_all),
        "n_series": int((series_all["status"] == "ok").sum()),
        "n_excluded_files": int((files_all["status"] == "excluded").sum()),
        "ctvol_version": __version__,
    }
    st.write_catalog(url, files_all, series_all, summary=summary, storage_options=so)
    return IngestReport(
        store=url, files=files_df, series=series_df,
        written=[k for k, r in results.items() if r["ok"]],
        unchanged=[p.key for p in unchanged],
    )


def _write_failed(exc: BaseException, url: str, key: str) -> dict[str, Any]:
    """A series whose write graph raised: a store that cannot take writes (disk full,
    permissions) stops the ingest with StoreWriteError naming the series; worker
    processes dying on it (a crash or out of memory while decoding) fail only that
    series, recorded with the reason; anything else is raised as it is."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        raise write_error(exc, url, key) from exc
    from distributed import KilledWorker

    if not isinstance(exc, KilledWorker):
        raise exc
    tries = getattr(exc, "allowed_failures", 0) + 1
    return {"key": key, "ok": False, "path": "",
            "error": f"the worker process writing series {key} died on each of {tries} "
                     f"tries (dask KilledWorker, task {getattr(exc, 'task', '?')!r}); "
                     "re-run to retry it: if it dies again, a file of this series crashes "
                     "the decoder or the series needs more memory than a worker has "
                     "(the worker logs say which)"}


def _series_write(plan: SeriesPlan, url: str, *, history: dict[str, Any], compressor: str | Any,
                  padding_fill: int | None, storage_options: dict[str, Any] | None) -> Any:
    """One series' write graph: create its group, write its shards, flag it complete."""
    import dask

    from . import _ingest_write as iw
    from .io import _layout as lay

    # Creating a series' group is a task too (~0.1-0.3 s of metadata and
    # coordinate writes): series are created in parallel, and each one's
    # shards wait only for their own group.
    key = dask.delayed(iw.begin_series, pure=False)(
        url, plan, history=history, compressor=compressor, storage_options=storage_options,
        write_id=uuid.uuid4().hex)  # run twice (a worker lost), it keeps the shards written
    blocks = [
        dask.delayed(iw.write_slices, pure=False)(
            url, key, z0, plan.headers[z0 : z0 + lay.SHARD_SLICES], padding_fill=padding_fill,
            storage_options=storage_options)
        for z0 in range(0, len(plan.headers), lay.SHARD_SLICES)
    ]
    return dask.delayed(iw.finish_series, pure=False)(url, plan.key, blocks,
                                                      storage_options=storage_options)


def _run(tasks: list[Any], progress: bool, what: str) -> list[Any]:
    if progress and tasks:
        print(f"ctvol ingest: {what} ({len(tasks)} tasks)", flush=True)
    return compute(tasks, progress=progress)


def _tables(
    records: list[FileRecord],
    plans: list[SeriesPlan],
    refused: list[RefusedGroup],
    results: Mapping[str, Mapping[str, Any]],
    unchanged: set[str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for plan in plans:
        h = plan.first
        res = results.get(plan.key)
        # A re-run keeps the status; what this run did goes in last_run.
        if plan.key in unchanged:
            status, last, reason = "ok", "unchanged", ""
            detail = "already complete and identical in the store"
        elif res is not None and res["ok"]:
            status, last, reason, detail = "ok", "written", "", ""
        else:
            status, last, reason = "failed", "failed", "decode-failed"
            detail = res["error"] if res else "not written"
        rows.append({
            "key": plan.key, "status": status, "last_run": last, "reason": reason,
            "detail": detail,
            "series_uid": h.series_uid, "series_number": h.series_number if h.series_number
            is not None else -1, "description": h.series_description,
            "n_files": len(plan.headers), "n_slices": len(plan.headers) if status != "failed"
            else 0, "rows": h.rows, "cols": h.cols, "dz": plan.spacing[0],
            "dy": plan.spacing[1], "dx": plan.spacing[2], "tilt_deg": plan.tilt_deg,
            "warnings": " | ".join(plan.warnings),
            "transfer_syntax": h.transfer_syntax,
            "lossy": bool(any(x.lossy for x in plan.headers)),
        })
    for rec in records:
        if rec.status == "pending":
            res = results.get(rec.key)
            if rec.key in unchanged or (res is not None and res["ok"]):
                rec.status = "stored"
            else:
                detail = res["error"] if res else "not written"
                rec.exclude("decode-failed", f"series {rec.key} failed: {detail}")
    for g in refused:
        rows.append(_group_row(g.key, "refused", g.reason, g.detail, g.series_uid, g.n_files,
                               g.description))
    # Files excluded one by one: one row per (series or folder, reason).
    groups: dict[tuple[str, str], list[FileRecord]] = defaultdict(list)
    refused_reasons = {"series-refused", "single-slice", "decode-failed"}
    for rec in records:
        if rec.status == "excluded" and rec.reason not in refused_reasons:
            # Files with no series (non-DICOM, DICOMDIR...) group by reason alone.
            owner = rec.header.series_uid if rec.header and rec.header.series_uid else ""
            groups[(owner, rec.reason)].append(rec)
    for (owner, reason), recs in sorted(groups.items()):
        first = recs[0].header
        key = series_key(owner) if owner else f"files:{reason}"
        detail = recs[0].detail + (f" (and {len(recs) - 1} more files)" if len(recs) > 1 else "")
        rows.append(_group_row(key, "excluded", reason, detail,
                               first.series_uid if first else "", len(recs),
                               first.series_description if first else ""))
    series = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    files = pd.DataFrame([r.as_row() for r in records])
    return files, series


def _group_row(key: str, status: str, reason: str, detail: str, uid: str, n: int,
               desc: str) -> dict[str, Any]:
    nan = float("nan")
    return {"key": key, "status": status, "last_run": "", "reason": reason,
            "detail": detail,
            "series_uid": uid, "series_number": -1, "description": desc, "n_files": n,
            "n_slices": 0, "rows": 0, "cols": 0, "dz": nan, "dy": nan, "dx": nan,
            "tilt_deg": nan, "warnings": "", "transfer_syntax": "", "lossy": False}


def _merge_catalog(
    url: str, so: Mapping[str, Any] | None, files: pd.DataFrame, series: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Previous catalog rows for files not seen in this run, plus this run's rows."""
    import pandas as pd

    old_files = catalog(url, level="files", storage_options=so)
    old_series = catalog(url, level="series", storage_options=so)
    if old_files.empty:
        return files, series
    old_files = old_files[~old_files["path"].isin(set(files["path"]))].copy()
    # Rows of a store written before a column existed get its neutral value.
    for df, defaults in ((old_files, FILE_DEFAULTS), (old_series, SERIES_DEFAULTS)):
        for col, value in defaults.items():
            if col not in df:
                df[col] = value
    complete = set(list_series(url, storage_options=so))
    keep = old_series[~old_series["key"].isin(set(series["key"]))]
    # Old "ok" rows stay only while their series is still complete in the store.
    keep = keep[(~keep["status"].isin(["ok", "unchanged"])) | keep["key"].isin(complete)]
    files_all = pd.concat([old_files, files], ignore_index=True)
    series_all = pd.concat([keep, series], ignore_index=True)
    return files_all, series_all
