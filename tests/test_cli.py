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


def test_a_killed_worker_is_named_not_called_a_bug(sample_store: str, tmp_path: pathlib.Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A standalone verb whose worker processes kept dying (out of memory, a crash)
    fails in one line that says so and how to resume, as ``ctvol run`` does."""
    from distributed import KilledWorker

    import ctvol._reslice

    def dies(*args: object, **kwargs: object) -> None:
        raise KilledWorker("('reslice-block', 3)", "tcp://127.0.0.1:1", allowed_failures=3)

    monkeypatch.setattr(ctvol._reslice, "reslice", dies)
    rc = main(["reslice", sample_store, "-o", str(tmp_path / "fine.zarr"), "--factor", "3",
               "--method", "linear", "--scheduler", "threads", "-q"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "unexpected" not in err and "a bug" not in err
    assert "worker processes died on each of 4 tries" in err
    assert "reslice-block" in err and "re-run the same command to resume" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_console_script_on_local_cluster(sample_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    exe = pathlib.Path(sys.executable).with_name("ctvol")
    out = tmp_path / "c.zarr"
    run = subprocess.run([str(exe), "ingest", str(sample_dir), "-o", str(out), "--workers", "2",
                          "--scheduler", "local"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "LocalCluster with 2 workers" in run.stdout
    assert "\r" not in run.stdout and "\x1b" not in run.stdout  # a pipe: plain lines
    assert len(ctvol.list_series(out)) == 1


@pytest.mark.slow
def test_quiet_on_a_local_cluster_prints_only_the_summary(sample_dir: pathlib.Path,
                                                          tmp_path: pathlib.Path) -> None:
    run = _ctvol("ingest", str(sample_dir), "-o", str(tmp_path / "c.zarr"), "--workers", "2",
                 "--scheduler", "local", "-q")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("33 files -> 1 series in")
    assert "LocalCluster" not in run.stdout and "%" not in run.stdout


KILLER = textwrap.dedent("""
    import sys, time, pathlib
    import dask
    import ctvol._ingest_write as st

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


# --------------------------------------------------------------------------- as a command


CTVOL = str(pathlib.Path(sys.executable).with_name("ctvol"))


def _ctvol(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CTVOL, *args], capture_output=True, text=True, timeout=300,
                          **kwargs)  # type: ignore[call-overload]


def _one_error_line(run: subprocess.CompletedProcess[str], verb: str) -> str:
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"ctvol {verb}: error: "), lines[0]
    assert "Traceback" not in run.stderr
    return lines[0]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["ingest", "{tiny}", "-o", "/dev/null/x.zarr"], 1, "/dev/null is not a folder"),
    (["ingest", "{tiny}", "-o", "{tmp}/file.txt/x.zarr"], 1, "file.txt is not a folder"),
    (["ingest", "{tiny}", "-o", "{tmp}/ro/x.zarr"], 1, "ro is not writable"),
    (["ingest", "{tmp}/missing", "-o", "{tmp}/c.zarr"], 1, "'{tmp}/missing' does not exist"),
    (["ingest", "{tiny}", "-o", "{tmp}/c.zarr", "--max-obliquity", "100"], 2,
     r"--max-obliquity must be a number in [0, 90], got 100.0"),
    (["curate", "{store}", "--min-fraction", "2"], 2,
     "--min-fraction must be a number in [0, 1], got 2.0"),
    (["curate", "{store}", "--model", "{tmp}/nomodel"], 2, "--model {tmp}/nomodel"),
    (["reslice", "{store}", "-o", "{tmp}/f.zarr", "--factor", "1"], 2,
     "--factor must be an integer >= 2, got 1"),
    (["reslice", "{store}", "-o", "{tmp}/f.zarr", "--spacing", "0"], 2,
     "--spacing must be a number > 0, got 0.0"),
    (["reslice", "{store}", "-o", "{tmp}/f.zarr", "--factor", "2", "--method", "unet"], 2,
     "no bundled U-net for factor 2"),
    (["reslice", "{store}", "-o", "{tmp}/f.zarr", "--factor", "3", "--model", "nope"], 2,
     "--model nope: no reslice model 'nope'"),
    (["reslice", "{store}", "-o", "{tmp}/f.zarr", "--factor", "3", "--series", "nokey"], 1,
     "--series nokey: not a complete series"),
    (["reslice", "{store}", "-o", "{tmp}/f.zarr", "--factor", "3", "--fctor", "3"], 2,
     "unrecognized arguments: --fctor 3"),
    (["info", "{tmp}/txt"], 1, "exists and is not a Zarr store (it holds a.txt)"),
    (["run", "{tmp}/p.yaml"], 1, "p.yaml: [curate]: unknown option(s) ['fov_hu']"),
])
def test_errors_are_one_line_before_any_work(tmp_path: pathlib.Path, args: list[str],
                                             code: int, message: str) -> None:
    tiny = tmp_path / "tiny"
    write_dicom_series(tiny, head_phantom((3, 16, 16)))
    store = tmp_path / "c0.zarr"
    ctvol.ingest(tiny, store)
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "ro").mkdir(mode=0o555)
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("x")
    (tmp_path / "p.yaml").write_text(f"store: {store}\ncurate: {{fov_hu: -500}}\n")
    fill = {"tiny": str(tiny), "store": str(store), "tmp": str(tmp_path)}
    if "ro is not writable" in message and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    run = _ctvol(*(a.format(**fill) for a in args))
    assert run.returncode == code, run.stderr
    line = _one_error_line(run, args[0])
    assert message.format(**fill) in line
    assert "LocalCluster" not in run.stdout  # checked before a cluster starts
    assert not (tmp_path / "f.zarr").exists() and not (tmp_path / "c.zarr").exists()
    assert "method='" not in line and "model=" not in line  # the CLI's flags, not keywords
    if args[0] == "info":
        assert "remove" not in line and "delete" not in line


def test_ingest_of_no_dicom_exits_1_after_recording_every_file(tmp_path: pathlib.Path) -> None:
    for i in range(4):
        write_non_dicom(tmp_path / "in" / f"{i}.txt")
    run = _ctvol("ingest", str(tmp_path / "in"), "-o", str(tmp_path / "c.zarr"))
    assert run.returncode == 1
    line = _one_error_line(run, "ingest")
    assert "nothing ingested: none of the 4 input files belongs to a CT series (4 not-dicom)" \
        in line
    files = ctvol.catalog(tmp_path / "c.zarr", level="files")
    assert len(files) == 4 and set(files["reason"]) == {"not-dicom"}


@pytest.mark.parametrize("what", ["missing", "empty"])
def test_failed_ingest_leaves_no_store(tmp_path: pathlib.Path, what: str) -> None:
    if what == "empty":
        (tmp_path / "in").mkdir()
    run = _ctvol("ingest", str(tmp_path / "in"), "-o", str(tmp_path / "c.zarr"))
    assert run.returncode == 1
    _one_error_line(run, "ingest")
    assert not (tmp_path / "c.zarr").exists()


def test_small_job_runs_on_threads_and_scheduler_still_forces_a_cluster(
        tmp_path: pathlib.Path) -> None:
    write_dicom_series(tmp_path / "in", head_phantom((3, 16, 16)))
    run = _ctvol("ingest", str(tmp_path / "in"), "-o", str(tmp_path / "a.zarr"))
    assert run.returncode == 0, run.stderr
    assert "LocalCluster" not in run.stdout  # 3 files: auto -> threads
    assert ctvol.list_series(tmp_path / "a.zarr")


def test_closed_stdout_ends_quietly(sample_store: str) -> None:
    proc = subprocess.Popen(f"{CTVOL} info {sample_store} --files | head -1", shell=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert out.count("\n") == 1 and "path" in out
    assert err == ""


@pytest.mark.parametrize("scheduler", ["threads", pytest.param("local", marks=pytest.mark.slow)])
def test_ctrl_c_stops_quietly_and_info_says_interrupted(tmp_path: pathlib.Path,
                                                        scheduler: str) -> None:
    write_dicom_series(tmp_path / "in", head_phantom((300, 64, 64), seed=2))
    store = tmp_path / "c.zarr"
    # A new session, and SIGINT to its whole process group: what a terminal's Ctrl-C does.
    proc = subprocess.Popen([CTVOL, "ingest", str(tmp_path / "in"), "-o", str(store),
                             "--scheduler", scheduler], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    marker = store / "zarr.json"
    while not (marker.exists() and "ingest_running" in marker.read_text()):  # started
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        "ctvol ingest: interrupted; re-run the same command to resume"]
    info = _ctvol("info", str(store))
    assert info.returncode == 0, info.stderr
    assert "interrupted:" in info.stdout and "re-run" in info.stdout
    again = _ctvol("ingest", str(tmp_path / "in"), "-o", str(store), "-q")
    assert again.returncode == 0, again.stderr
    assert "interrupted" not in _ctvol("info", str(store)).stdout


SLOW_HEADERS = textwrap.dedent("""
    import sys, time
    import ctvol.io.dicom as dicom

    original = dicom.read_headers
    def slow(paths, *args, **kwargs):  # every header task takes over a second
        time.sleep(1.2)
        return original(paths, *args, **kwargs)
    dicom.read_headers = slow

    from ctvol.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _ingest_argv(tmp_path: pathlib.Path, *extra: str) -> list[str]:
    write_dicom_series(tmp_path / "in", head_phantom((3, 16, 16)))
    (tmp_path / "slow.py").write_text(SLOW_HEADERS)
    return [sys.executable, str(tmp_path / "slow.py"), "ingest", str(tmp_path / "in"), "-o",
            str(tmp_path / "c.zarr"), "--scheduler", "threads", *extra]


def test_progress_is_a_live_bar_on_a_terminal(tmp_path: pathlib.Path) -> None:
    import pty

    argv = _ingest_argv(tmp_path)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    text = b"".join(chunks).decode()
    assert "\r[" in text and "% Completed" in text  # dask's bar, redrawn in place
    assert "1 series in" in text


def test_progress_is_plain_lines_in_a_log(tmp_path: pathlib.Path) -> None:
    run = subprocess.run(_ingest_argv(tmp_path), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "\r" not in run.stdout and "\x1b" not in run.stdout
    assert "ctvol: 100% (" in run.stdout  # a line at the end of the stage
    assert "ctvol ingest: headers" in run.stdout


def test_quiet_prints_only_the_summary(tmp_path: pathlib.Path) -> None:
    run = subprocess.run(_ingest_argv(tmp_path, "-q"), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("3 files -> 1 series in")
    assert "%" not in run.stdout and "headers" not in run.stdout
    assert run.stderr == ""


def test_warnings_are_ctvol_lines(tmp_path: pathlib.Path) -> None:
    write_dicom_series(tmp_path / "in", head_phantom((4, 16, 16)), tilt_deg=15.0)
    run = _ctvol("ingest", str(tmp_path / "in"), "-o", str(tmp_path / "c.zarr"))
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert lines and all(line.startswith("ctvol: warning: ") for line in lines), run.stderr
    assert any("gantry tilt 15" in line for line in lines)
