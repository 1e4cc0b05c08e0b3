"""ctvol.run / `ctvol run`: configs, the staged pipeline, resumability, faults."""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ctvol
from ctvol.errors import ConfigError, StoreWriteError
from ctvol.testing import synthetic_cohort


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("syn") / "dicom"
    synthetic_cohort(d, n_series=5, n_slices=13, shape=(48, 48), seed=1)
    return d


def _config(tmp: pathlib.Path, inputs: pathlib.Path, fmt: str = "yaml",
            **reslice: object) -> pathlib.Path:
    res = {"factor": 3, "method": "linear", **reslice}
    body = {
        "yaml": textwrap.dedent(f"""\
            inputs: [{inputs}]
            store: cohort.zarr
            scheduler: threads
            curate: {{}}
            ingest: {{compressor: zstd}}
            reslice: {{output: fine.zarr, {", ".join(f"{k}: {v}" for k, v in res.items())}}}
            evaluate: {{output: report, factor: [3], methods: [linear], figures: false}}
            """),
        "toml": textwrap.dedent(f"""\
            inputs = ["{inputs}"]
            store = "cohort.zarr"
            scheduler = "threads"
            [ingest]
            [reslice]
            output = "fine.zarr"
            {chr(10).join(f'{k} = {v!r}'.replace("'", '"') for k, v in res.items())}
            """),
    }[fmt]
    path = tmp / f"pipeline.{fmt}"
    path.write_text(body)
    return path


def test_full_pipeline_then_rerun_skips_everything_done(cohort_dir: pathlib.Path,
                                                        tmp_path: pathlib.Path) -> None:
    cfg = _config(tmp_path, cohort_dir)
    first = ctvol.run(cfg, progress=False)
    stages = {s["stage"]: s for s in first.stages}
    assert list(stages) == ["ingest", "curate", "reslice", "evaluate"]  # pipeline order
    keys = ctvol.list_series(tmp_path / "cohort.zarr")
    assert len(keys) == 6  # 5 series, the gap one split into two runs; the localizer excluded
    assert stages["ingest"]["excluded_files"] == 1 and stages["ingest"]["done"] == 6
    assert stages["curate"]["done"] == 6 and stages["reslice"]["done"] == 6
    assert first.failed == []
    assert sorted(ctvol.list_series(tmp_path / "fine.zarr")) == sorted(keys)
    assert (tmp_path / "report" / "report.json").is_file()
    for key in keys:
        src = ctvol.open_series(tmp_path / "cohort.zarr", key)
        fine = ctvol.open_series(tmp_path / "fine.zarr", key)
        assert fine.sizes["z"] == (src.sizes["z"] - 1) * 3 + 1  # phantoms have no blank ends
        np.testing.assert_array_equal(fine.hu.values[::3], src.hu.values)
        assert fine.attrs["ctvol_run"]["source_sop_digest"] == src.attrs["sop_digest"]
    assert first.peak_rss_mb["driver"] > 0
    again = ctvol.run(cfg, progress=False)
    stages = {s["stage"]: s for s in again.stages}
    for stage in ("ingest", "curate", "reslice", "evaluate"):
        assert stages[stage]["done"] == 0 and stages[stage]["skipped"] == 6, stage
    assert "reslice" in again.table() and "peak memory" in again.table()
    # the catalog keeps each series' status; the no-op run is in last_run
    cat = ctvol.catalog(tmp_path / "cohort.zarr")
    ok = cat[cat["status"] == "ok"]
    assert len(ok) == 6 and set(ok["last_run"]) == {"unchanged"}
    # changed evaluate options: evaluate runs again, the rest stays skipped
    cfg.write_text(cfg.read_text().replace("figures: false", "figures: false, strides: [1, 2]"))
    third = {s["stage"]: s for s in ctvol.run(cfg, progress=False).stages}
    assert third["evaluate"]["done"] == 6 and third["reslice"]["done"] == 0


@pytest.mark.slow
def test_changed_parameters_redo_the_stage(cohort_dir: pathlib.Path,
                                           tmp_path: pathlib.Path) -> None:
    ctvol.run(_config(tmp_path, cohort_dir, fmt="toml"), progress=False)
    redo = ctvol.run(_config(tmp_path, cohort_dir, fmt="toml", factor=2), progress=False)
    res = next(s for s in redo.stages if s["stage"] == "reslice")
    assert res["done"] == 6 and res["skipped"] == 0
    key = ctvol.list_series(tmp_path / "fine.zarr")[0]
    assert ctvol.open_series(tmp_path / "fine.zarr", key).attrs["reslice"]["factor"] == 2


def test_one_bad_series_never_fails_the_cohort(cohort_dir: pathlib.Path, tmp_path: pathlib.Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from ctvol.cli import main

    # 1.0 mm is reachable from 3 and 5 mm (keeping every acquired slice); the 1 mm
    # series (two runs and a tilted one) are already there and pass through unchanged;
    # 2.5 mm cannot reach it (k = 5, m = 2 would drop acquired slices): its one failure
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"inputs: [{cohort_dir}]\nstore: c.zarr\nscheduler: threads\n"
                   "ingest: {}\nreslice: {output: f.zarr, spacing: 1.0, method: linear}\n")
    assert main(["run", str(cfg), "-q"]) == 3
    out, err = capsys.readouterr()
    assert "completed with 1 series skipped" in err
    assert "not reachable from dz = 2.5 mm" in out
    keys = ctvol.list_series(tmp_path / "f.zarr")
    assert len(keys) == 5
    unchanged = 0
    for key in keys:
        fine = ctvol.open_series(tmp_path / "f.zarr", key)
        assert fine.attrs["spacing"][0] == pytest.approx(1.0)
        if fine.attrs["reslice"].get("unchanged"):
            unchanged += 1
            assert not fine["generated"].any()
            assert fine.attrs["ctvol_history"][-1]["params"]["unchanged"] is True
            src = ctvol.open_series(tmp_path / "c.zarr", key)
            np.testing.assert_array_equal(fine.hu.values, src.hu.values)
    assert unchanged == 3


@pytest.mark.parametrize(("text", "match"), [
    ("store: c.zarr\nbogus: 1\n", r"unknown config keys \['bogus'\]"),
    ("store: c.zarr\nstages: [ingest, polish]\n", r"unknown stage\(s\) \['polish'\]"),
    ("inputs: [x]\n", "needs `store`"),
    ("store: c.zarr\nstages: [ingest]\n", "needs `inputs`"),
    ("store: c.zarr\nreslice: {factor: 3}\n", r"\[reslice\] needs `output`"),
    ("store: c.zarr\nreslice: {output: f, factor: 3, spacing: 1}\n", "exactly one of"),
    ("store: c.zarr\nevaluate: {output: r, colour: red}\n", r"unknown option\(s\) \['colour'\]"),
    ("store: s3://b/c.zarr\nstorage_options: anon\n",
     r"`storage_options` must be a table of fsspec options"),
])
def test_config_errors(tmp_path: pathlib.Path, text: str, match: str) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        ctvol.run(cfg)


def test_config_file_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ctvol.run(tmp_path / "missing.yaml")
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"\.yaml, \.yml or \.toml"):
        ctvol.run(tmp_path / "p.json")


def test_relative_paths_are_relative_to_the_config(cohort_dir: pathlib.Path,
                                                   tmp_path: pathlib.Path) -> None:
    from ctvol._run import load_config

    cfg = load_config(_config(tmp_path, cohort_dir))
    assert cfg["store"] == str(tmp_path / "cohort.zarr")
    assert cfg["reslice"]["output"] == str(tmp_path / "fine.zarr")
    assert cfg["inputs"] == [str(cohort_dir)]


KILLER = textwrap.dedent("""
    import pathlib, sys, time
    import ctvol.io._write as st

    original = st.write_block
    def write_then_hang(block, *, path, block_info=None, **kwargs):
        result = original(block, path=path, block_info=block_info, **kwargs)
        if sys.argv[3] in path:          # the second series: one shard written, then hang
            pathlib.Path(sys.argv[2]).touch()
            time.sleep(600)
        return result
    st.write_block = write_then_hang

    import ctvol
    ctvol.run(sys.argv[1], progress=False)
""")


@pytest.mark.slow
def test_pipeline_killed_mid_reslice_resumes(cohort_dir: pathlib.Path,
                                             tmp_path: pathlib.Path) -> None:
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ctvol.run(_config(ref_dir, cohort_dir), progress=False)
    keys = sorted(ctvol.list_series(ref_dir / "cohort.zarr"))
    cfg = _config(tmp_path, cohort_dir)
    flag = tmp_path / "hung"
    (tmp_path / "kill.py").write_text(KILLER)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "kill.py"), str(cfg), str(flag),
                             f"series/{keys[1]}/"])
    try:
        deadline = time.monotonic() + 180
        while not flag.exists():
            assert proc.poll() is None, "the pipeline ended before it could be interrupted"
            assert time.monotonic() < deadline, "reslice never reached the second series"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    fine = tmp_path / "fine.zarr"
    assert ctvol.list_series(fine) == [keys[0]]  # the half-written series is not visible
    assert (fine / "series" / keys[1] / "hu").is_dir()
    summary = ctvol.run(cfg, progress=False)
    res = next(s for s in summary.stages if s["stage"] == "reslice")
    assert (res["skipped"], res["done"]) == (1, len(keys) - 1)
    assert sorted(ctvol.list_series(fine)) == keys  # each once, all complete
    for key in keys:
        np.testing.assert_array_equal(ctvol.open_series(fine, key).hu.values,
                                      ctvol.open_series(ref_dir / "fine.zarr", key).hu.values)


@pytest.mark.parametrize(("code", "text"), [
    (errno.ENOSPC, "No space left on device"),
    pytest.param(errno.EACCES, "Permission denied", marks=pytest.mark.slow)])
def test_output_that_cannot_take_writes_stops_with_a_clear_error(
        cohort_dir: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
        code: int, text: str) -> None:
    """Disk full / permission denied on the output store (injected into zarr's LocalStore:
    this runs as root in CI, where chmod cannot deny anything, and no disk can be filled)."""
    import zarr.storage

    cfg = _config(tmp_path, cohort_dir)
    ctvol.run(cfg, progress=False)
    store, fine = tmp_path / "cohort.zarr", tmp_path / "fine.zarr"
    before = {k: ctvol.open_series(store, k).hu.values for k in ctvol.list_series(store)}
    done = {k: ctvol.open_series(fine, k).hu.values for k in ctvol.list_series(fine)}
    original = zarr.storage.LocalStore.set
    writes = []

    async def failing_set(self: object, key: str, value: object) -> None:
        writes.append(key)
        if "/hu/c/" in key and len(writes) > 3:  # the pixels of the first series redone
            raise OSError(code, text, str(fine / key))
        await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", failing_set)
    cfg.write_text(cfg.read_text().replace("factor: 3", "factor: 2"))
    with pytest.raises(StoreWriteError, match=rf"cannot write series \S+ into .*fine\.zarr: "
                                              rf"{text} \(.*fine\.zarr/series/.*re-run"):
        ctvol.run(cfg, progress=False)
    monkeypatch.setattr(zarr.storage.LocalStore, "set", original)
    for k, hu in before.items():  # the input store is untouched
        np.testing.assert_array_equal(ctvol.open_series(store, k).hu.values, hu)
    visible = ctvol.list_series(fine)
    assert len(visible) == len(done) - 1  # the series being rewritten is not visible ...
    for k in visible:  # ... and every other complete series is intact
        np.testing.assert_array_equal(ctvol.open_series(fine, k).hu.values, done[k])
    summary = ctvol.run(cfg, progress=False)  # space freed: the re-run completes the cohort
    assert sorted(ctvol.list_series(fine)) == sorted(done)
    assert next(s for s in summary.stages if s["stage"] == "reslice")["failed"] == 0


@pytest.mark.slow
def test_worker_killed_mid_reslice_gives_the_same_output(tmp_path: pathlib.Path) -> None:
    import dask
    import xarray as xr
    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import WorkerPlugin

    from ctvol.testing import head_phantom

    hu = head_phantom((40, 64, 64), seed=4)
    ds = xr.Dataset({"hu": (("z", "y", "x"), hu)}, coords={"z": 3.0 * np.arange(40)},
                    attrs={"series_uid": "9.9"}).chunk({"z": 8})
    with dask.config.set(scheduler="threads"):
        ctvol.write(ctvol.reslice(ds, 3, method="linear"), tmp_path / "ref.zarr", "s")
    flag = str(tmp_path / "killed")

    class KillOnce(WorkerPlugin):  # defined here: pickled by value for the workers
        def transition(self, key: object, start: str, finish: str, **kw: object) -> None:
            if finish == "executing" and "reslice" in str(key) and not os.path.exists(flag):
                open(flag, "w").close()
                os._exit(1)  # the worker process dies mid-compute; its nanny restarts it

    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                       dashboard_address=":0") as cluster, Client(cluster) as client):
        client.register_plugin(KillOnce())
        ctvol.write(ctvol.reslice(ds, 3, method="linear"), tmp_path / "out.zarr", "s")
    assert os.path.exists(flag), "no worker was killed: the test did not test anything"
    np.testing.assert_array_equal(ctvol.open_series(tmp_path / "out.zarr", "s").hu.values,
                                  ctvol.open_series(tmp_path / "ref.zarr", "s").hu.values)


def _series(n: int, seed: int) -> object:
    import xarray as xr

    from ctvol.testing import head_phantom

    hu = head_phantom((n, 48, 48), seed=seed)
    return xr.Dataset({"hu": (("z", "y", "x"), hu)}, coords={"z": 3.0 * np.arange(n)},
                      attrs={"series_uid": f"7.{seed}"}).chunk({"z": 4})


def _broken(n: int, seed: int) -> object:
    """A series whose graph fails in one block (as a corrupt input chunk would)."""
    ds = _series(n, seed)

    def fail(b: np.ndarray, block_info: object = None) -> np.ndarray:
        if block_info[0]["chunk-location"][0] == 1:  # type: ignore[index]
            raise ValueError("block 1 cannot be read")
        return b

    return ds.assign(hu=ds.hu.copy(data=ds.hu.data.map_blocks(fail, dtype=ds.hu.dtype)))


@pytest.mark.parametrize("scheduler", ["threads", pytest.param("local", marks=pytest.mark.slow)])
def test_write_many_collects_failures_and_flags_only_whole_series(
        tmp_path: pathlib.Path, scheduler: str) -> None:
    from ctvol._compute import scheduler_context

    series = {"a": ctvol.reslice(_series(9, 1), 3, method="linear"),
              "bad": ctvol.reslice(_broken(9, 2), 3, method="linear"),
              "b": ctvol.reslice(_series(7, 3), 3, method="linear")}
    with scheduler_context(scheduler, 2):
        outcome = ctvol.write_many(series, tmp_path / "out.zarr", errors="collect")
        with pytest.raises(ValueError, match="block 1 cannot be read"):
            ctvol.write_many({"bad": series["bad"]}, tmp_path / "other.zarr")
    assert outcome["a"] is None and outcome["b"] is None
    assert isinstance(outcome["bad"], ValueError)
    assert ctvol.list_series(tmp_path / "out.zarr") == ["a", "b"]  # "bad" never visible
    for key in ("a", "b"):
        np.testing.assert_array_equal(ctvol.open_series(tmp_path / "out.zarr", key).hu.values,
                                      series[key].hu.values)


@pytest.mark.slow
def test_write_many_runs_series_concurrently_on_a_client(tmp_path: pathlib.Path) -> None:
    """On a Client the series' blocks are submitted together: with two workers,
    blocks of different series run at the same time (written one after another,
    the one-block series below could never overlap)."""
    import xarray as xr
    from distributed import Client, LocalCluster, get_task_stream

    from ctvol.testing import head_phantom

    series = {}
    for i in range(4):  # one 32-slice shard each: one write task per series
        hu = head_phantom((32, 96, 96), seed=i)
        series[f"s{i}"] = xr.Dataset({"hu": (("z", "y", "x"), hu)},
                                     coords={"z": 1.0 * np.arange(32)}).chunk({"z": 32})
    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                       dashboard_address=":0") as cluster, Client(cluster),
          get_task_stream() as ts):
        ctvol.write_many(series, tmp_path / "out.zarr")
    spans: dict[str, tuple[float, float]] = {}
    for t in ts.data:
        name = str(t["key"])
        for key in series:
            if f"ctvol-write-{key}-" in name:
                (s0, s1), = [(x["start"], x["stop"]) for x in t["startstops"]
                             if x["action"] == "compute"]
                spans[key] = (min(s0, spans.get(key, (s0, s1))[0]),
                              max(s1, spans.get(key, (s0, s1))[1]))
    assert sorted(spans) == sorted(series)
    ordered = sorted(spans.values())
    assert any(b[0] < a[1] for a, b in zip(ordered, ordered[1:], strict=False)), spans
    assert ctvol.list_series(tmp_path / "out.zarr") == sorted(series)


def test_reslice_stage_auto_records_its_decision(cohort_dir: pathlib.Path,
                                                 tmp_path: pathlib.Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``method: auto``: one self-check per series (not again when its write starts),
    and the decision in the summary and the output."""
    from ctvol import _reslice

    checks: list[int] = []
    real = _reslice.self_check
    monkeypatch.setattr(_reslice, "self_check",
                        lambda ds, k, **kw: checks.append(k) or real(ds, k, **kw))
    summary = ctvol.run(_config(tmp_path, cohort_dir, fmt="toml", method="auto", factor=4),
                        progress=False)
    rows = [s for s in summary.series if s["stage"] == "reslice"]
    assert len(rows) == 6 and len(checks) == 6
    assert all(r["reason"].startswith("auto -> ") and "PSNR unet" in r["reason"]
               for r in rows)
    key = ctvol.list_series(tmp_path / "fine.zarr")[0]
    rec = ctvol.open_series(tmp_path / "fine.zarr", key).attrs["reslice"]
    assert rec["auto"]["method"] == rec["method"] and rec["auto"]["slices"] > 0
    table = summary.table()
    assert "reslice method auto: U-net for " in table
    assert f"  {key}: auto -> {rec['method']}: self-check on" in table
