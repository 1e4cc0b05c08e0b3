"""The pipeline with its stores on ``s3://``: moto's S3 server on loopback, through s3fs.

A real S3 protocol (HTTP, no renames, no folders) served in this process; the
options reach worker processes only through ``storage_options`` (the
credentials and endpoint are not in the environment).
"""

from __future__ import annotations

import json
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import ctvol
from ctvol.errors import StoreWriteError
from ctvol.testing import head_phantom, synthetic_cohort


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    """``storage_options`` for a moto S3 server on 127.0.0.1 (a free port)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {"key": "testing", "secret": "testing",
               "client_kwargs": {"endpoint_url": f"http://{host}:{port}",
                                 "region_name": "eu-west-1"}}
    finally:
        server.stop()


@pytest.fixture
def bucket(s3: dict[str, Any]) -> str:
    """A new, empty bucket for one test."""
    import s3fs

    name = f"ctvol-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**s3).mkdir(name)
    return name


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("syn") / "dicom"
    # two series and a localizer: small, since every zarr.json is an HTTP round trip
    synthetic_cohort(d, n_series=2, n_slices=10, shape=(32, 32), gaps=0, tilted=0, seed=2)
    return d


def _config(inputs: pathlib.Path, root: str, **extra: Any) -> dict[str, Any]:
    return {"inputs": [str(inputs)], "store": f"{root}/cohort.zarr", "scheduler": "threads",
            "ingest": {"compressor": "zstd"}, "curate": {},
            "reslice": {"output": f"{root}/fine.zarr", "factor": 3, "method": "linear"},
            "evaluate": {"output": f"{root}/report", "factor": [3], "methods": ["linear"],
                         "figures": False}, **extra}


def _same_stores(a: str, b: str, so: dict[str, Any]) -> list[str]:
    """Assert that store ``b`` (on s3) holds what local store ``a`` holds, bit for bit."""
    keys = ctvol.list_series(a)
    assert ctvol.list_series(b, storage_options=so) == keys
    for key in keys:
        want, got = ctvol.open_series(a, key), ctvol.open_series(b, key, storage_options=so)
        np.testing.assert_array_equal(got.hu.values, want.hu.values)
        np.testing.assert_array_equal(got.z.values, want.z.values)
        assert got.attrs["spacing"] == want.attrs["spacing"]
        assert got.attrs.get("sop_digest") == want.attrs.get("sop_digest")
    return keys


def _check_pipeline_on_s3(cohort_dir: pathlib.Path, tmp_path: pathlib.Path, bucket: str,
                          s3: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                          **extra: Any) -> None:
    import fsspec

    monkeypatch.chdir(tmp_path)  # a URL taken for a local path would land here
    ref = ctvol.run(_config(cohort_dir, str(tmp_path / "ref"), **extra), progress=False)
    url = f"s3://{bucket}"
    first = ctvol.run(_config(cohort_dir, url, storage_options=s3, **extra), progress=False)
    assert first.failed == [] and ref.failed == []
    for a, b in zip(ref.stages, first.stages, strict=True):
        assert (b["stage"], b["done"], b["skipped"]) == (a["stage"], a["done"], a["skipped"])
    assert {s["stage"]: s["done"] for s in first.stages} == dict.fromkeys(
        ["ingest", "curate", "reslice", "evaluate"], 2)
    keys = _same_stores(str(tmp_path / "ref" / "cohort.zarr"), f"{url}/cohort.zarr", s3)
    assert _same_stores(str(tmp_path / "ref" / "fine.zarr"), f"{url}/fine.zarr", s3) == keys
    for key in keys:  # the curate stage's labels were written into the s3 store too
        labels = ctvol.open_series(f"{url}/cohort.zarr", key, storage_options=s3)["label"]
        ref_labels = ctvol.open_series(tmp_path / "ref" / "cohort.zarr", key)["label"]
        np.testing.assert_array_equal(labels.values, ref_labels.values)
    cat = ctvol.catalog(f"{url}/cohort.zarr", level="files", storage_options=s3)
    ref_cat = ctvol.catalog(tmp_path / "ref" / "cohort.zarr", level="files")
    assert sorted(cat["path"]) == sorted(ref_cat["path"])
    assert (cat.sort_values("path")["status"].tolist()
            == ref_cat.sort_values("path")["status"].tolist())
    # the report went to the bucket, stamped with what it was computed from
    with fsspec.open(f"{url}/report/report.json", "r", **s3) as fh:
        report = json.load(fh)
    ref_report = json.loads((tmp_path / "ref" / "report" / "report.json").read_text())
    assert report["table"] == ref_report["table"]
    assert set(report["ctvol_run"]["sources"]) == set(keys)
    fs = fsspec.filesystem("s3", **s3)
    assert fs.exists(f"{bucket}/report/report.md")
    assert fs.exists(f"{bucket}/cohort.zarr/series/{keys[0]}/hu/zarr.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref"]  # nothing written locally
    # a re-run finds every stage done, in the bucket
    again = ctvol.run(_config(cohort_dir, url, storage_options=s3, **extra), progress=False)
    for s in again.stages:
        assert (s["done"], s["skipped"], s["failed"]) == (0, 2, 0), s


@pytest.mark.slow  # ~35 s: every zarr.json is a round trip to the server (docs/cluster.md)
def test_pipeline_on_s3_matches_local_disk(cohort_dir: pathlib.Path, tmp_path: pathlib.Path,
                                           bucket: str, s3: dict[str, Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _check_pipeline_on_s3(cohort_dir, tmp_path, bucket, s3, monkeypatch)


@pytest.mark.slow
def test_pipeline_on_s3_on_a_local_cluster(cohort_dir: pathlib.Path, tmp_path: pathlib.Path,
                                           bucket: str, s3: dict[str, Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes reach the bucket through the config's ``storage_options`` alone
    (nothing in their environment names the endpoint or the credentials)."""
    _check_pipeline_on_s3(cohort_dir, tmp_path, bucket, s3, monkeypatch, scheduler="local",
                          workers=2)


def test_a_failed_series_is_never_visible_on_s3(bucket: str, s3: dict[str, Any]) -> None:
    """S3 has no atomic rename: completeness is the ``complete`` flag, written last."""
    import xarray as xr

    def series(seed: int, broken: bool = False) -> xr.Dataset:
        hu = head_phantom((9, 48, 48), seed=seed)
        ds = xr.Dataset({"hu": (("z", "y", "x"), hu)}, coords={"z": 3.0 * np.arange(9)},
                        attrs={"series_uid": f"7.{seed}"}).chunk({"z": 4})
        if not broken:
            return ds

        def fail(b: np.ndarray, block_info: Any = None) -> np.ndarray:
            if block_info[0]["chunk-location"][0] == 1:
                raise ValueError("block 1 cannot be read")
            return b

        return ds.assign(hu=ds.hu.copy(data=ds.hu.data.map_blocks(fail, dtype=ds.hu.dtype)))

    url = f"s3://{bucket}/out.zarr"
    todo = {"a": ctvol.reslice(series(1), 3, method="linear"),
            "bad": ctvol.reslice(series(2, broken=True), 3, method="linear")}
    outcome = ctvol.write_many(todo, url, errors="collect", storage_options=s3)
    assert outcome["a"] is None and isinstance(outcome["bad"], ValueError)
    assert ctvol.list_series(url, storage_options=s3) == ["a"]  # "bad" was partly written
    import fsspec

    assert fsspec.filesystem("s3", **s3).exists(f"{bucket}/out.zarr/series/bad/hu/zarr.json")
    np.testing.assert_array_equal(
        ctvol.open_series(url, "a", storage_options=s3).hu.values, todo["a"].hu.values)


def test_a_missing_bucket_is_named(cohort_dir: pathlib.Path, s3: dict[str, Any]) -> None:
    with pytest.raises(StoreWriteError, match=r"cannot create the cohort store "
                                              r"s3://no-such-bucket-ctvol/c\.zarr: .*bucket"):
        ctvol.ingest(cohort_dir, "s3://no-such-bucket-ctvol/c.zarr", storage_options=s3)
