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
