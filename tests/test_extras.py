"""Without the optional extras (torch, matplotlib), the core works and what needs an
extra says which one, in one line (ctvol/_deps.py)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

from ctvol.testing import head_phantom, write_dicom_series

#: Runs the ctvol CLI in a process where the optional modules cannot be imported.
BLOCKED = textwrap.dedent("""
    import sys

    class Block:
        BLOCKED = ("torch", "safetensors", "pytorch_msssim", "matplotlib", "monai",
                   "nibabel")

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, Block())
    from ctvol.cli import main

    code = main(sys.argv[1:])
    assert not any(m.split(".")[0] in Block.BLOCKED for m in sys.modules), \\
        sorted(m for m in sys.modules if m.split(".")[0] in Block.BLOCKED)
    sys.exit(code)
""")


def _ctvol(tmp: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp / "blocked.py"
    script.write_text(BLOCKED)
    return subprocess.run([sys.executable, str(script), *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    tmp = tmp_path_factory.mktemp("extras")
    write_dicom_series(tmp / "in", head_phantom((12, 32, 32), seed=3))
    return tmp


def test_core_runs_without_torch_or_matplotlib(cohort: pathlib.Path) -> None:
    """ingest -> reslice (default auto: linear, with the reason) -> evaluate (tables,
    no figures) -> export, with none of the extras importable."""
    store, fine, report = cohort / "c.zarr", cohort / "f.zarr", cohort / "report"
    run = _ctvol(cohort, "ingest", str(cohort / "in"), "-o", str(store), "-q")
    assert run.returncode == 0, run.stderr
    run = _ctvol(cohort, "reslice", str(store), "-o", str(fine), "--factor", "3",
                 "--scheduler", "threads")
    assert run.returncode == 0, run.stderr
    assert "auto -> linear: torch is not installed (pip install 'ctvol[torch]')" in run.stdout
    run = _ctvol(cohort, "evaluate", str(store), "--factor", "3", "-o", str(report),
                 "--scheduler", "threads")
    assert run.returncode == 0, run.stderr
    assert "figures skipped: matplotlib is not installed" in run.stderr
    assert "(report.md, report.json)" in run.stdout
    doc = json.loads((report / "report.json").read_text())
    assert sorted(doc["methods"]) == ["auto", "linear"]
    assert not (report / "figures").exists()
    run = _ctvol(cohort, "export", str(store), "-o", str(cohort / "dcm"), "--format", "dicom")
    assert run.returncode == 0, run.stderr
    assert list((cohort / "dcm").rglob("*.dcm"))


@pytest.mark.parametrize("args, extra", [
    (["reslice", "{store}", "-o", "{tmp}/u.zarr", "--factor", "4", "--method", "unet"],
     "torch"),
    pytest.param(["train", "{store}", "--factor", "3", "--epochs", "1", "-o", "{tmp}/m"],
                 "torch", marks=pytest.mark.slow),
    pytest.param(["upsample", "{store}", "-o", "{tmp}/up.zarr", "--factor", "2"], "torch",
                 marks=pytest.mark.slow),
    (["export", "{store}", "-o", "{tmp}/nii", "--format", "nifti"], "nifti"),
])
def test_what_needs_an_extra_names_it_in_one_line(cohort: pathlib.Path, args: list[str],
                                                  extra: str) -> None:
    store = cohort / "named.zarr"
    if not store.exists():
        assert _ctvol(cohort, "ingest", str(cohort / "in"), "-o", str(store), "-q")\
            .returncode == 0
    run = _ctvol(cohort, *[a.format(store=store, tmp=cohort) for a in args])
    assert run.returncode == 1, (run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'ctvol[{extra}]'" in lines[0], run.stderr
    assert "Traceback" not in run.stderr
    assert not (cohort / "nii").exists()  # nothing written before the check
