"""The ctvol command line, and an ingest killed mid-write."""

from __future__ import annotations

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
from ctvol.cli import EXIT_PARTIAL, main
from ctvol.errors import SeriesNotFoundError
from ctvol.testing import head_phantom, write_dicom_series, write_non_dicom


def test_ingest_and_info(sample_dir: pathlib.Path, tmp_path: pathlib.Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "c.zarr")
    assert main(["ingest", str(sample_dir), "-o", out, "--scheduler", "threads", "-q"]) == 0
    text = capsys.readouterr().out
    assert "33 files -> 1 series" in text and "3 files excluded" in text
    assert "localizer" in text and "secondary-capture" in text
    assert main(["info", out]) == 0
    text = capsys.readouterr().out
    assert "1 series, 33 input files (3 excluded)" in text
    assert "STD BRAIN 1MM" in text
    assert main(["info", out, "--files"]) == 0
    assert "S21570/S1000/I10" in capsys.readouterr().out
    (key,) = ctvol.list_series(out)
    assert main(["info", out, key]) == 0
    assert "hu " in capsys.readouterr().out


def test_bad_output_path_exit_code(tmp_path: pathlib.Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    write_dicom_series(tmp_path / "in", head_phantom((3, 16, 16)))
    (tmp_path / "out").mkdir()
    write_non_dicom(tmp_path / "out" / "x.txt")
    assert main(["ingest", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                 "--scheduler", "threads", "-q"]) == 1
    assert "error:" in capsys.readouterr().err


def test_failed_series_exit_code(tmp_path: pathlib.Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    write_dicom_series(tmp_path / "in", np.full((3, 16, 16), 60000.0), slope=2.0,
                       intercept=0.0, bits_stored=16)
    rc = main(["ingest", str(tmp_path / "in"), "-o", str(tmp_path / "c.zarr"),
               "--scheduler", "threads", "-q"])
    assert rc == EXIT_PARTIAL
    assert "1 series failed" in capsys.readouterr().err


def test_console_script_on_local_cluster(sample_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    exe = pathlib.Path(sys.executable).with_name("ctvol")
    out = tmp_path / "c.zarr"
    run = subprocess.run([str(exe), "ingest", str(sample_dir), "-o", str(out), "--workers", "2",
                          "--scheduler", "local"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "LocalCluster with 2 workers" in run.stdout
    assert len(ctvol.list_series(out)) == 1


KILLER = textwrap.dedent("""
    import sys, time, pathlib
    import dask
    import ctvol.io.store as st

    original = st.write_slices
    def write_then_hang(store, key, z0, *args, **kwargs):
        result = original(store, key, z0, *args, **kwargs)
        if z0 == 0:
            pathlib.Path(sys.argv[3]).touch()  # one shard is on disk
            time.sleep(600)
        return result
    st.write_slices = write_then_hang

    import ctvol
    with dask.config.set(scheduler="threads", num_workers=2):
        ctvol.ingest(sys.argv[1], sys.argv[2])
""")


def test_interrupted_ingest_leaves_nothing_visible_and_rerun_completes(
    tmp_path: pathlib.Path,
) -> None:
    hu = head_phantom((70, 24, 24), seed=6)  # 3 shards
    write_dicom_series(tmp_path / "in", hu)
    store, flag = tmp_path / "c.zarr", tmp_path / "written"
    (tmp_path / "kill.py").write_text(KILLER)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "kill.py"), str(tmp_path / "in"),
                             str(store), str(flag)])
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, "ingest ended before it could be interrupted"
            assert time.monotonic() < deadline, "ingest never wrote its first shard"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # Partial data is on disk, but no reader sees it.
    (partial,) = [p for p in (store / "series").iterdir() if p.is_dir()]
    assert (partial / "hu" / "c").is_dir()  # a shard of pixels was written
    assert ctvol.list_series(store) == []
    key = partial.name
    with pytest.raises(SeriesNotFoundError, match="interrupted"):
        ctvol.open_series(store, key)
    # A re-run completes it.
    report = ctvol.ingest(tmp_path / "in", store)
    assert report.written == [key]
    np.testing.assert_array_equal(ctvol.open_series(store, key).hu.values, hu)
