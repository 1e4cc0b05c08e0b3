"""Shared fixtures: the bundled real sample, the full shared data set, phantoms."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "dcm_qa_ct_philips"
# The full real export lives in the project's shared folder next to a checkout.
SHARED = pathlib.Path(
    os.environ.get("CTVOL_SHARED_DATA", REPO.parent / "shared" / "data")
) / "dcm_qa_ct_philips"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.gpu`` tests run where CUDA is visible and skip elsewhere, saying so."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (a gpu test; run `pytest -m gpu` on a GPU machine)")
    for item in gpu:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    # torch (later stages) writes an inductor cache under $TMPDIR/<user>.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))


@pytest.fixture(scope="session")
def sample_dir() -> pathlib.Path:
    assert SAMPLE.is_dir(), f"bundled sample missing at {SAMPLE}"
    return SAMPLE


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    if not (SHARED / "S21570" / "S2020").is_dir():
        pytest.skip(f"full real data set not found at {SHARED} (set CTVOL_SHARED_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def phantom() -> np.ndarray:
    from ctvol.testing import head_phantom

    return head_phantom((6, 32, 32), seed=3)


@pytest.fixture(scope="session")
def sample_store(tmp_path_factory: pytest.TempPathFactory, sample_dir: pathlib.Path) -> str:
    """The bundled sample ingested once per session (read-only for tests)."""
    import ctvol

    store = str(tmp_path_factory.mktemp("sample") / "cohort.zarr")
    ctvol.ingest(sample_dir, store)
    return store


@pytest.fixture
def gpu_cluster() -> Iterator[tuple[Any, str]]:
    """A Client on an in-process cluster of two workers, one declaring ``GPU=1``:
    yields (client, address of the GPU worker). Tasks annotated with the GPU
    resource must run only there."""
    from distributed import Client, LocalCluster, Worker

    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                           dashboard_address=":0")
    cluster.worker_spec["gpu"] = {"cls": Worker,
                                  "options": {"nthreads": 1, "resources": {"GPU": 1}}}
    cluster.sync(cluster._correct_state)
    try:
        with Client(cluster) as client:
            client.wait_for_workers(2)
            workers = client.scheduler_info()["workers"]
            (gpu,) = [a for a, w in workers.items() if w.get("resources")]
            yield client, gpu
    finally:
        cluster.close()
