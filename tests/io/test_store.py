"""The cohort store: layout, lazy open, DataTree, catalog, completeness."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import zarr

import ctvol
from ctvol.errors import SeriesNotFoundError, StoreError
from ctvol.io.store import SHARD_SLICES
from ctvol.testing import head_phantom, raise_if_dask_computes, write_dicom_series


@pytest.fixture()
def phantom_store(tmp_path: pathlib.Path) -> tuple[str, str, np.ndarray]:
    hu = head_phantom((40, 32, 32), seed=2)
    write_dicom_series(tmp_path / "in", hu, spacing=(1.25, 0.7, 0.6), origin=(-10.0, -20.0, 5.0))
    report = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr")
    return report.store, report.written[0], hu


def test_layout_on_disk(phantom_store: tuple[str, str, np.ndarray]) -> None:
    store, key, hu = phantom_store
    root = zarr.open_group(store, mode="r")
    assert root.attrs["ctvol"]["format_version"] == 1
    arr = root[f"series/{key}/hu"]
    assert arr.dtype == np.int16
    assert arr.chunks == (1, 32, 32) and arr.shards == (SHARD_SLICES, 32, 32)
    inner = arr.metadata.codecs[0].codecs  # the sharding codec's inner codecs
    (blosc,) = [c for c in inner if type(c).__name__ == "BloscCodec"]
    assert (blosc.cname.value, blosc.shuffle.value) == ("lz4", "bitshuffle")
    assert arr.metadata.dimension_names == ("z", "y", "x")
    assert set(root["catalog"].group_keys()) == {"files", "series"}


def test_open_series_is_lazy_and_round_trips(phantom_store: tuple[str, str, np.ndarray]) -> None:
    store, key, hu = phantom_store
    with raise_if_dask_computes():
        ds = ctvol.open_series(store, key)
        sub = ds.hu.isel(z=slice(3, 20)) + 0  # building on it computes nothing
    assert sub.chunks is not None
    assert ds.hu.dims == ("z", "y", "x") and ds.hu.dtype == np.int16
    assert ds.hu.chunks[0][0] == SHARD_SLICES  # dask chunks aligned with shards
    np.testing.assert_array_equal(ds.hu.values, hu)
    # Geometry: coordinates in mm, spacing derived from them agrees with attrs.
    np.testing.assert_allclose(np.diff(ds.z.values), 1.25)
    np.testing.assert_allclose(ds.z.values[0], 5.0)
    np.testing.assert_allclose(ds.y.values[:2], [-20.0, -19.3])
    np.testing.assert_allclose(ds.x.values[:2], [-10.0, -9.4])
    assert ds.attrs["spacing"] == pytest.approx([1.25, 0.7, 0.6])
    assert ds.attrs["orientation"] == [1, 0, 0, 0, 1, 0]
    assert ds.attrs["complete"] is True
    assert ds.attrs["tilt_deg"] == 0.0
    assert ds.sop_uid.values.tolist() == sorted(set(ds.sop_uid.values.tolist()),
                                                key=ds.sop_uid.values.tolist().index)
    assert len(set(ds.source.values.tolist())) == 40
    assert ds.attrs["ctvol_history"][0]["op"] == "ingest"


def test_open_cohort_datatree(phantom_store: tuple[str, str, np.ndarray]) -> None:
    store, key, hu = phantom_store
    with raise_if_dask_computes():
        tree = ctvol.open_cohort(store)
    assert list(tree["series"].children) == [key]
    node = tree[f"series/{key}"]
    assert node["hu"].dtype == np.int16 and node["hu"].chunks is not None
    assert tree["catalog/files"].sizes["file"] == 40
    np.testing.assert_array_equal(node["hu"].isel(z=7).values, hu[7])


def test_catalog_tables(phantom_store: tuple[str, str, np.ndarray]) -> None:
    store, key, _ = phantom_store
    series = ctvol.catalog(store)
    row = series.set_index("key").loc[key]
    assert row["status"] == "ok" and row["n_slices"] == 40
    assert (row["rows"], row["cols"]) == (32, 32)
    assert row["dz"] == pytest.approx(1.25)
    files = ctvol.catalog(store, level="files")
    assert (files["status"] == "stored").all() and (files["key"] == key).all()
    with pytest.raises(ValueError, match="'series' or 'files'"):
        ctvol.catalog(store, level="slices")


def test_incomplete_series_is_invisible(phantom_store: tuple[str, str, np.ndarray]) -> None:
    store, key, _ = phantom_store
    group = zarr.open_group(store, path=f"series/{key}", mode="r+")
    del group.attrs["complete"]
    assert ctvol.list_series(store) == []
    assert "series" not in ctvol.open_cohort(store).children or not ctvol.open_cohort(
        store)["series"].children
    with pytest.raises(SeriesNotFoundError, match="interrupted; re-run ingest"):
        ctvol.open_series(store, key)


def test_unknown_key_lists_existing(phantom_store: tuple[str, str, np.ndarray]) -> None:
    store, key, _ = phantom_store
    with pytest.raises(KeyError, match=f"no complete series 'nope'.*{key}"):
        ctvol.open_series(store, "nope")


def test_open_missing_store(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="no cohort store"):
        ctvol.open_series(tmp_path / "none.zarr", "k")


def test_newer_format_refused(phantom_store: tuple[str, str, np.ndarray]) -> None:
    store, key, _ = phantom_store
    root = zarr.open_group(store, mode="r+")
    root.attrs["ctvol"] = {"format_version": 99}
    with pytest.raises(StoreError, match="newer than this ctvol"):
        ctvol.open_series(store, key)


def test_root_summary_is_json(phantom_store: tuple[str, str, np.ndarray]) -> None:
    store, _, _ = phantom_store
    meta = json.loads((pathlib.Path(store) / "zarr.json").read_text())
    summary = meta["attributes"]["ctvol"]["summary"]
    assert summary["n_files"] == 40 and summary["n_series"] == 1


@pytest.mark.slow
def test_distributed_workers_write_every_value(tmp_path: pathlib.Path) -> None:
    """Several worker processes write shards of one series concurrently."""
    from distributed import Client, LocalCluster

    hu = head_phantom((100, 48, 48), seed=4)  # 4 shards, the last one partial
    write_dicom_series(tmp_path / "in", hu)
    with (
        LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                     dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        report = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr")
    np.testing.assert_array_equal(ctvol.open_series(report.store, report.written[0]).hu.values,
                                  hu)


def test_threads_write_every_value(tmp_path: pathlib.Path) -> None:
    import dask

    hu = head_phantom((70, 24, 24), seed=5)
    write_dicom_series(tmp_path / "in", hu)
    with dask.config.set(scheduler="threads", num_workers=4):
        report = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr")
    np.testing.assert_array_equal(ctvol.open_series(report.store, report.written[0]).hu.values,
                                  hu)


def test_fsspec_urls_for_inputs_and_store(tmp_path: pathlib.Path) -> None:
    """Inputs and store given as fsspec URLs (object stores use the same code path)."""
    import uuid

    import fsspec

    hu = head_phantom((5, 32, 32), seed=8)
    paths = write_dicom_series(tmp_path / "in", hu)
    fs = fsspec.filesystem("memory")
    root = f"/{uuid.uuid4().hex}"
    for p in paths:
        fs.pipe(f"{root}/in/{p.name}", p.read_bytes())
    report = ctvol.ingest(f"memory://{root}/in", f"memory://{root}/c.zarr")
    assert report.files["path"].str.startswith("memory://").all()
    ds = ctvol.open_series(f"memory://{root}/c.zarr", report.written[0])
    np.testing.assert_array_equal(ds.hu.values, hu)
    tree = ctvol.open_cohort(f"memory://{root}/c.zarr")
    assert list(tree["series"].children) == report.written
    again = ctvol.ingest(f"memory://{root}/in", f"memory://{root}/c.zarr")
    assert again.unchanged == report.written


def test_zstd_compressor_and_bad_name(tmp_path: pathlib.Path) -> None:
    hu = head_phantom((4, 32, 32), seed=9)
    write_dicom_series(tmp_path / "in", hu)
    report = ctvol.ingest(tmp_path / "in", tmp_path / "z.zarr", compressor="zstd")
    arr = zarr.open_group(report.store, mode="r")[f"series/{report.written[0]}/hu"]
    (blosc,) = [c for c in arr.metadata.codecs[0].codecs if type(c).__name__ == "BloscCodec"]
    assert blosc.cname.value == "zstd"
    np.testing.assert_array_equal(ctvol.open_series(report.store, report.written[0]).hu, hu)
    with pytest.raises(ValueError, match=r"one of \['lz4', 'zstd'\]"):
        ctvol.ingest(tmp_path / "in", tmp_path / "bad.zarr", compressor="gzip")
    assert not (tmp_path / "bad.zarr").exists()


@pytest.mark.parametrize("same_write", [True, False])
def test_series_creation_run_again_keeps_the_shards_written(tmp_path: pathlib.Path,
                                                            same_write: bool) -> None:
    """Ingest creates a series in a task; when the worker holding that task's result
    dies, Dask runs it again while the series' finished shard writes keep their
    results. The same write's second creation must not delete those shards (a series
    flagged complete with a hole of zeros); a new write replaces the series."""
    from ctvol import _ingest_write as st
    from ctvol.io._layout import open_store
    from ctvol.io._series import plan_series
    from ctvol.io.dicom import find_files, read_headers

    hu = head_phantom((40, 32, 32), seed=6)
    write_dicom_series(tmp_path / "d", hu)
    (plan,), _ = plan_series(read_headers(find_files(tmp_path / "d")))
    store = str(tmp_path / "c.zarr")
    open_store(store, create=True).require_group("series")
    st.begin_series(store, plan, history="h", write_id="write-1")
    first = st.write_slices(store, plan.key, 0, plan.headers[:SHARD_SLICES])
    st.begin_series(store, plan, history="h", write_id="write-1" if same_write else "write-2")
    rest = st.write_slices(store, plan.key, SHARD_SLICES, plan.headers[SHARD_SLICES:])
    st.finish_series(store, plan.key, [first, rest])
    ds = ctvol.open_series(store, plan.key)
    assert "ctvol_write_id" not in ds.attrs
    if same_write:
        np.testing.assert_array_equal(ds.hu.values, hu)
    else:  # the first shard went with the replaced group (the caller's to redo)
        assert (ds.hu.values[:SHARD_SLICES] == 0).all()
        np.testing.assert_array_equal(ds.hu.values[SHARD_SLICES:], hu[SHARD_SLICES:])


def test_a_store_with_string_history_opens_derives_and_displays(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stores written before history records hold strings in ctvol_history: they open,
    a derived volume keeps the strings and appends a record, and `ctvol info` shows
    both as lines."""
    import xarray as xr

    from ctvol.cli import main

    old = ["ctvol 0.1.0.dev0 ingest(padding_fill=-1024, split_gaps=False)"]
    ds = xr.Dataset({"hu": (("z", "y", "x"), head_phantom((4, 16, 16), seed=1))},
                    coords={"z": 2.0 * np.arange(4), "y": 0.5 * np.arange(16),
                            "x": 0.5 * np.arange(16)},
                    attrs={"series_uid": "1.2.3", "ctvol_history": old})
    store = str(tmp_path / "old.zarr")
    ctvol.write(ds, store, "s")
    back = ctvol.open_series(store, "s")
    assert back.attrs["ctvol_history"] == old
    fine = ctvol.reslice(back, 2, method="linear")
    assert fine.attrs["ctvol_history"] == [*old, {
        "op": "reslice", "params": {"factor": 2, "keep_every": 1, "method": "linear"},
        "version": ctvol.__version__}]
    ctvol.write(fine, store, "fine")
    assert ctvol.open_series(store, "fine").attrs["ctvol_history"] == \
        fine.attrs["ctvol_history"]  # records survive zarr attrs unchanged
    capsys.readouterr()
    assert main(["info", store, "fine"]) == 0
    printed = capsys.readouterr().out
    assert printed.endswith(f"history:\n  {old[0]}\n  ctvol {ctvol.__version__} "
                            "reslice(factor=2, keep_every=1, method='linear')\n")
