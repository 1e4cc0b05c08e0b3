"""Faults on the distributed path: worker processes killed, disks filling, mid-ingest
and mid-reslice, on a LocalCluster of 2 single-threaded worker processes.

Faults are injected inside the worker processes by a worker plugin that wraps
zarr's ``LocalStore.set`` there: after a shard of the chosen series is on disk
the worker process exits (its task unfinished; the nanny restarts it), or the
write fails with ENOSPC. Whatever happens, afterwards every series is either
complete and bit-exact against a run without faults, or absent, and a re-run
completes it.
"""

from __future__ import annotations

import errno
import os
import pathlib
import re
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import ctvol
from ctvol.errors import CtvolError, StoreWriteError
from ctvol.testing import synthetic_cohort

pytestmark = pytest.mark.slow  # each case is a pipeline run on worker processes (> 5 s)


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("syn") / "dicom"
    # 40 slices: two shards per ingested series, so a kill can land between them
    synthetic_cohort(d, n_series=3, n_slices=40, shape=(32, 32), gaps=0, tilted=0, seed=5)
    return d


@pytest.fixture
def cluster() -> Iterator[Any]:
    """2 worker processes x 1 thread, new for each test (killed workers are restarted
    by their nannies in the background). A task whose worker dies is retried once
    (``allowed-failures`` 1): a worker dying once is survived, twice is KilledWorker."""
    import dask
    from distributed import LocalCluster

    with (dask.config.set({"distributed.scheduler.allowed-failures": 1}),
          LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                       dashboard_address=":0") as c):
        yield c


def _config(inputs: pathlib.Path, root: pathlib.Path) -> dict[str, Any]:
    return {"inputs": [str(inputs)], "store": str(root / "cohort.zarr"),
            "ingest": {}, "reslice": {"output": str(root / "fine.zarr"), "factor": 3,
                                      "method": "linear"}}


@pytest.fixture(scope="module")
def reference(cohort_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, dict[str, np.ndarray]]:
    """The same pipeline without faults, on threads: store -> key -> hu."""
    root = tmp_path_factory.mktemp("ref")
    summary = ctvol.run(_config(cohort_dir, root), scheduler="threads", progress=False)
    assert summary.failed == []
    return {name: {k: ctvol.open_series(root / name, k).hu.values
                   for k in ctvol.list_series(root / name)}
            for name in ("cohort.zarr", "fine.zarr")}


def _fault(target: str, action: str, log: str, once: bool) -> Any:
    """A worker plugin: in each worker process, a write of a zarr key whose path
    contains ``target`` kills the process just after the write ("kill"; with
    ``once``, only the first time in the whole cluster) or fails ("enospc").
    Each fault appends a line to ``log``. Built here so that it pickles by value."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class StoreFault(WorkerPlugin):
        name = f"ctvol-fault-{uuid.uuid4().hex[:8]}"

        def setup(self, worker: Any) -> None:
            import zarr.storage

            original = self.original = zarr.storage.LocalStore.set

            async def faulty_set(store: Any, key: str, value: Any) -> None:
                path = f"{store.root}/{key}"
                if target not in path:
                    return await original(store, key, value)
                if action == "enospc":
                    with open(log, "a") as fh:
                        fh.write(f"enospc {path}\n")
                    raise OSError(errno.ENOSPC, "No space left on device", path)
                await original(store, key, value)  # a shard on disk, its task unfinished
                if once:
                    try:
                        os.close(os.open(log + ".once", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    except FileExistsError:
                        return
                with open(log, "a") as fh:
                    fh.write(f"kill {os.getpid()} {path}\n")
                os._exit(1)

            zarr.storage.LocalStore.set = faulty_set

        def teardown(self, worker: Any) -> None:
            import zarr.storage

            zarr.storage.LocalStore.set = self.original

    return StoreFault()


def _run_with_fault(cluster: Any, cfg: dict[str, Any], plugin: Any) -> Any:
    """ctvol.run on the cluster with the plugin registered in every worker; returns
    the summary, or the exception the run raised."""
    from distributed import Client

    with Client(cluster) as client:
        client.register_plugin(plugin)
        try:
            return ctvol.run(cfg, scheduler=cluster.scheduler_address, progress=False)
        except Exception as exc:
            return exc
        finally:
            client.unregister_worker_plugin(plugin.name)


def _check_stores(root: pathlib.Path, reference: dict[str, dict[str, np.ndarray]]) -> None:
    """Every visible series, in both stores, is bit-exact against the reference."""
    for name, ref in reference.items():
        if not (root / name).exists():
            continue
        keys = ctvol.list_series(root / name)
        assert set(keys) <= set(ref), (name, keys)
        for k in keys:
            np.testing.assert_array_equal(ctvol.open_series(root / name, k).hu.values, ref[k],
                                          err_msg=f"{name} {k}")


def _target(stage: str, reference: dict[str, dict[str, np.ndarray]]) -> tuple[str, str]:
    name = {"ingest": "cohort.zarr", "reslice": "fine.zarr"}[stage]
    key = sorted(reference[name])[1]
    return key, f"{name}/series/{key}/hu/c/"


@pytest.mark.parametrize("stage", ["ingest", "reslice"])
def test_worker_killed_once_is_retried(cluster: Any, cohort_dir: pathlib.Path,
                                       tmp_path: pathlib.Path, stage: str,
                                       reference: dict[str, dict[str, np.ndarray]]) -> None:
    """A worker process dies mid-write (a shard of one series on disk, its task
    unfinished): dask runs the task again elsewhere and the run completes, bit-exact."""
    key, target = _target(stage, reference)
    log = str(tmp_path / "faults.log")
    result = _run_with_fault(cluster, _config(cohort_dir, tmp_path),
                             _fault(target, "kill", log, once=True))
    assert not isinstance(result, BaseException), result
    assert pathlib.Path(log).read_text().count("kill ") == 1, "no worker died: nothing tested"
    assert result.failed == []
    for name, ref in reference.items():
        assert ctvol.list_series(tmp_path / name) == sorted(ref)
    _check_stores(tmp_path, reference)


@pytest.mark.parametrize("stage", ["ingest", "reslice"])
def test_worker_dying_on_every_try_leaves_the_series_absent_until_a_rerun(
        cluster: Any, cohort_dir: pathlib.Path, tmp_path: pathlib.Path, stage: str,
        reference: dict[str, dict[str, np.ndarray]]) -> None:
    """A series that kills its worker on every try (a decoder crash, memory) fails with
    the worker's death named; it is never visible half-written, the other series are
    complete and bit-exact, and a re-run without the fault completes it. (Tasks queued
    on a dying worker count its death too: another series may fail with it, and must
    obey the same rules.)"""
    key, target = _target(stage, reference)
    log = str(tmp_path / "faults.log")
    result = _run_with_fault(cluster, _config(cohort_dir, tmp_path),
                             _fault(target, "kill", log, once=False))
    # each of its tasks dies on the try and the one retry (the series has two shards)
    assert pathlib.Path(log).read_text().count("kill ") >= 2
    name = target.split("/")[0]
    if isinstance(result, BaseException):  # a task outside any one series' writes died
        assert isinstance(result, CtvolError), result
        assert re.search(rf"the {stage} stage stopped: worker processes died on each of 2 "
                         r"tries of task .*re-run the same config to resume", str(result))
        failed = {key: ""}
    else:  # recorded per series, the others written
        failed = {r["series"]: r["reason"] for r in result.failed if r["stage"] == stage}
        assert key in failed and all("died" in why for why in failed.values()), result.failed
        assert {r["stage"] for r in result.failed} == {stage}
    assert not set(failed) & set(ctvol.list_series(tmp_path / name))
    assert (tmp_path / name / "series" / key / "hu").is_dir()  # it was being written
    _check_stores(tmp_path, reference)
    again = ctvol.run(_config(cohort_dir, tmp_path), scheduler="threads", progress=False)
    assert again.failed == []
    redone = {r["series"] for r in again.series if r["status"] == "done" and r["stage"] == stage}
    assert set(failed) <= redone
    for name, ref in reference.items():
        assert ctvol.list_series(tmp_path / name) == sorted(ref)
    _check_stores(tmp_path, reference)


@pytest.mark.parametrize("stage", ["ingest", "reslice"])
def test_disk_full_in_a_worker_process_stops_cleanly_and_a_rerun_completes(
        cluster: Any, cohort_dir: pathlib.Path, tmp_path: pathlib.Path, stage: str,
        reference: dict[str, dict[str, np.ndarray]]) -> None:
    """ENOSPC raised inside a worker process (not the driver's threads): the run stops
    with StoreWriteError naming the store, the series and the path; complete series
    stay bit-exact, the one being written stays invisible; a re-run completes."""
    key, target = _target(stage, reference)
    log = str(tmp_path / "faults.log")
    result = _run_with_fault(cluster, _config(cohort_dir, tmp_path),
                             _fault(target, "enospc", log, once=False))
    assert "enospc " in pathlib.Path(log).read_text()
    assert isinstance(result, StoreWriteError), result
    name = target.split("/")[0]
    assert f"cannot write series {key} into {tmp_path / name}: No space left on device" \
        in str(result)
    assert f"{name}/series/{key}/hu/c/" in str(result) and "re-run" in str(result)
    assert key not in ctvol.list_series(tmp_path / name)
    _check_stores(tmp_path, reference)
    again = ctvol.run(_config(cohort_dir, tmp_path), scheduler="threads", progress=False)
    assert again.failed == []
    for name, ref in reference.items():
        assert ctvol.list_series(tmp_path / name) == sorted(ref)
    _check_stores(tmp_path, reference)
