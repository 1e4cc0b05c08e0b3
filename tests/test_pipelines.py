"""The example pipeline configs shipped in pipelines/ load and point at real files."""

from __future__ import annotations

import pathlib

import pytest

from ctvol._run import load_config

PIPELINES = pathlib.Path(__file__).resolve().parents[1] / "pipelines"


@pytest.mark.parametrize("name", ["cohort.yaml", "cohort.toml"])
def test_example_configs_load(name: str) -> None:
    cfg = load_config(PIPELINES / name)
    assert cfg["stages"] == ["ingest", "curate", "reslice", "evaluate"]
    assert all(pathlib.Path(p).is_dir() for p in cfg["inputs"])  # the bundled sample


def test_yaml_and_toml_examples_agree() -> None:
    assert load_config(PIPELINES / "cohort.yaml") == load_config(PIPELINES / "cohort.toml")


def _scale_module(monkeypatch: pytest.MonkeyPatch):
    import importlib

    monkeypatch.syspath_prepend(str(PIPELINES))  # importable by name: generate's processes
    return importlib.import_module("scale")


@pytest.mark.parametrize(("total", "lengths"), [(57931, [300, 150, 80]), (301, [100]),
                                                (250, [100, 50]), (7, [300])])
def test_scale_series_lengths_sum_to_the_cohort(total: int, lengths: list[int],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _scale_module(monkeypatch).series_lengths(total, lengths)
    assert sum(plan) == total
    assert all(n >= 2 for n in plan)  # a 1-slice remainder joins the series before it
    assert all(n in lengths for n in plan[:-1]) or len(plan) == 1


def test_scale_generate_writes_total_files_in_distinct_series(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pydicom

    scale = _scale_module(monkeypatch)
    n = scale.generate(tmp_path, 23, [6, 4], 16)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert n == len(scale.series_lengths(23, [6, 4]))
    assert len(files) == 23  # the localizer takes the missing slice's place
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in files}
    assert len(uids) >= n  # the length groups never share a series (their own seeds)
