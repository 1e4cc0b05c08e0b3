"""One options schema per stage: CLI flags, config checks and the verbs agree."""

from __future__ import annotations

import argparse
import inspect
import pathlib

import pytest

import ctvol
from ctvol import _options
from ctvol.cli import build_parser
from ctvol.errors import ConfigError, OptionError

VERBS = {
    "ingest": ctvol.ingest,
    "curate": ctvol.classify_slices,
    "reslice": ctvol.reslice,
    "evaluate": ctvol.evaluate,
}


@pytest.mark.parametrize("stage", list(_options.OPTIONS))
def test_schema_defaults_and_names_are_the_verbs(stage: str) -> None:
    params = inspect.signature(VERBS[stage]).parameters
    for opt in _options.OPTIONS[stage]:
        if opt.name == "output" or (stage == "evaluate" and opt.name == "figures"):
            continue  # written by the CLI / ctvol.run, not a keyword of the verb
        if stage == "reslice" and opt.name == "compressor":
            params_w = inspect.signature(ctvol.write).parameters
            assert params_w["compressor"].default == opt.default
            continue
        assert opt.name in params, f"{stage}: {opt.name} is not a keyword of the verb"
        default = params[opt.name].default
        if isinstance(default, tuple) or isinstance(opt.default, tuple):
            assert tuple([default] if isinstance(default, int) else default) == \
                tuple(opt.default), opt.name
        else:
            assert default == opt.default, opt.name


def test_method_choices_are_the_verbs() -> None:
    from ctvol._reslice import METHODS
    from ctvol.evaluation import METHODS as EVAL_METHODS

    table = {o.name: o for o in _options.OPTIONS["reslice"]}
    assert set(table["method"].choices or ()) == set(METHODS)
    table = {o.name: o for o in _options.OPTIONS["evaluate"]}
    assert set(table["methods"].choices or ()) == set(EVAL_METHODS)


def _subparser(verb: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[verb]


@pytest.mark.parametrize(("verb", "stage"), [("ingest", "ingest"), ("curate", "curate"),
                                             ("reslice", "reslice"), ("evaluate", "evaluate")])
def test_cli_flags_come_from_the_schema(verb: str, stage: str) -> None:
    flags = {s for a in _subparser(verb)._actions for s in a.option_strings}
    for opt in _options.OPTIONS[stage]:
        if opt.cli:
            assert opt.cli_flag in flags, (verb, opt.cli_flag)
    # and the parsed defaults are the schema's
    args = _subparser(verb)._defaults
    assert args.get("func") is not None


VERB_NAMES = ["ingest", "reslice", "upsample", "shift-interleave", "train", "evaluate",
              "curate", "run", "info"]


@pytest.mark.parametrize("verb", VERB_NAMES)
def test_every_option_has_help_with_its_default(verb: str) -> None:
    p = _subparser(verb)
    text = p.format_help()
    for action in p._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"ctvol {verb} {action.option_strings[0]} has no help"
        d = action.default
        if d is not None and not isinstance(d, bool) and d is not argparse.SUPPRESS:
            shown = " ".join(map(str, d)) if isinstance(d, list) else str(d)
            assert f"(default: {shown})" in " ".join(text.split()), (verb, action.dest)


def test_top_level_help_lists_every_verb() -> None:
    text = build_parser().format_help()
    for verb in VERB_NAMES:
        assert verb in text


@pytest.mark.parametrize(("stage", "values", "style", "match"), [
    ("curate", {"min_fraction": 2.0}, "flag", r"--min-fraction must be a number in \[0, 1\], "
                                              r"got 2\.0"),
    ("curate", {"min_fraction": 2.0}, "keyword", r"^min_fraction must be"),
    ("reslice", {"factor": 1}, "flag", r"--factor must be an integer >= 2, got 1"),
    ("reslice", {"factor": 2.5}, "keyword", r"factor must be an integer >= 2, got 2\.5"),
    ("reslice", {"spacing": 0.0}, "flag", r"--spacing must be a number > 0, got 0\.0"),
    ("reslice", {"method": "cubic"}, "flag",
     r"--method must be one of \['auto', 'unet', 'linear'\]"),
    ("ingest", {"split_gaps": "yes"}, "keyword", r"split_gaps must be true or false"),
    ("evaluate", {"strides": [1, 0]}, "flag", r"--stride must be a list of integers >= 1"),
    ("curate", {"fov_hu": 3}, "keyword", r"unknown option\(s\) \['fov_hu'\] for curate"),
])
def test_check_names_the_option_as_given(stage: str, values: dict[str, object], style: str,
                                         match: str) -> None:
    with pytest.raises(OptionError, match=match):
        _options.check(stage, values, style=style)


@pytest.mark.parametrize(("body", "match"), [
    ("curate: {fov_hu: 3}\n", r"p\.yaml: \[curate\]: unknown option\(s\) \['fov_hu'\]"),
    ("curate: {min_fraction: 2}\n", r"p\.yaml: \[curate\] min_fraction must be a number in "
                                    r"\[0, 1\], got 2"),
    ("reslice: {output: f, factor: three}\n", r"p\.yaml: \[reslice\] factor must be an integer"),
    ("reslice: {output: f, factor: 3, batch_size: 0}\n", r"\[reslice\] batch_size must be"),
    ("ingest: {split_gaps: 1}\n", r"\[ingest\] split_gaps must be true or false, got 1"),
    ("workers: two\n", r"p\.yaml: `workers` must be an integer, got 'two'"),
    ("inputs: 3\n", r"`inputs` must be a string or a list"),
])
def test_config_keys_checked_against_the_schema(tmp_path: pathlib.Path, body: str,
                                                match: str) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text("store: c.zarr\n" + body)
    with pytest.raises(ConfigError, match=match):
        ctvol.load_config(cfg) if hasattr(ctvol, "load_config") else ctvol.run(cfg)


def test_real_curate_options_pass_the_config(tmp_path: pathlib.Path) -> None:
    from ctvol._run import load_config

    cfg = tmp_path / "p.yaml"
    cfg.write_text("store: c.zarr\ncurate: {min_thickness_mm: 4, tissue_hu: -400, "
                   "min_fraction: 0.01}\n")
    assert load_config(cfg)["curate"] == {"min_thickness_mm": 4, "tissue_hu": -400,
                                          "min_fraction": 0.01}


def test_verbs_check_their_keywords_with_the_schema(tmp_path: pathlib.Path) -> None:
    from ctvol.testing import head_phantom, write_dicom_series

    write_dicom_series(tmp_path / "in", head_phantom((3, 16, 16)))
    with pytest.raises(OptionError, match=r"max_obliquity_deg must be a number in \[0, 90\]"):
        ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr", max_obliquity_deg=100)
    assert not (tmp_path / "c.zarr").exists()  # checked before anything is created
    ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr")
    with pytest.raises(OptionError, match=r"unknown option\(s\) \['fov_hu'\] for curate"):
        ctvol.curate_store(tmp_path / "c.zarr", fov_hu=-500)
    with pytest.raises(ValueError, match=r"min_fraction must be a number in \[0, 1\]"):
        ctvol.curate_store(tmp_path / "c.zarr", min_fraction=2.0)
