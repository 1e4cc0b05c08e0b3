"""One description of each pipeline stage's options.

The tables here feed the ``ctvol`` CLI flags (help text, defaults, choices),
``ctvol run``'s config validation and the range checks the CLI runs before
any cluster starts or output is created, so the three cannot drift
(``tests/test_options.py`` also checks each default against the verb's
signature). An option is named by its keyword (``min_fraction``); errors name
it the way the user wrote it: ``--min-fraction`` on the command line,
``[curate] min_fraction`` in a config file.
"""

from __future__ import annotations

import argparse
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, OptionError

__all__ = ["OPTIONS", "Option", "add_arguments", "check", "from_args"]


@dataclass(frozen=True)
class Option:
    """One keyword option of a stage.

    ``kind`` is ``"int"``, ``"float"``, ``"str"``, ``"bool"`` or ``"path"``
    (a checkpoint folder or bundled model name); ``many`` takes a list.
    ``low``/``high`` bound numbers (``low_open``: strictly greater).
    ``cli=False``: config only (the CLI has its own flag for it, e.g. ``-o``).
    """

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    many: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    flag: str | None = None
    metavar: str | None = None
    cli: bool = True

    @property
    def cli_flag(self) -> str:
        if self.flag:
            return self.flag
        if self.kind == "bool" and self.default is True:
            return "--no-" + self.name.replace("_", "-")
        return "--" + self.name.replace("_", "-")

    def constraint(self) -> str:
        """What a valid value is, in words ("an integer >= 2")."""
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        what = {"int": "an integer", "float": "a number", "str": "a string",
                "bool": "true or false", "path": "a checkpoint folder or model name"}[self.kind]
        lo = (f"{'>' if self.low_open else '>='} {self.low:g}" if self.low is not None
              else None)
        if lo and self.high is not None:
            what += f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        elif lo:
            what += f" {lo}"
        elif self.high is not None:
            what += f" <= {self.high:g}"
        return f"a list of {what.replace('an integer', 'integers')}" if self.many else what

    def valid(self, value: Any) -> bool:
        if value is None:
            return True  # "not given": the verb's default applies
        if self.many:
            if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
                value = [value]  # one value where a list is allowed
            return len(value) > 0 and all(self._valid_one(v) for v in value)
        return self._valid_one(value)

    def _valid_one(self, v: Any) -> bool:
        if self.kind == "bool":
            return isinstance(v, bool)
        if self.kind in ("str", "path"):
            ok = isinstance(v, str) or (self.kind == "path" and isinstance(v, Mapping))
            return ok and (self.choices is None or v in self.choices)
        if isinstance(v, bool) or not isinstance(
                v, numbers.Integral if self.kind == "int" else numbers.Real):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or v <= self.high


def _o(*args: Any, **kwargs: Any) -> Option:
    return Option(*args, **kwargs)


_DEVICE = _o("device", "str", None, "'cuda' or 'cpu' (default: cuda when the worker has one)",
             choices=("cpu", "cuda"))

#: The options of each stage, in CLI order. Defaults equal the verbs' own.
OPTIONS: dict[str, tuple[Option, ...]] = {
    "ingest": (
        _o("modalities", "str", ("CT",), "modality to ingest (repeatable)", many=True,
           flag="--modality", metavar="MODALITY"),
        _o("split_gaps", "bool", True,
           "refuse series with gaps instead of splitting them into contiguous runs"),
        _o("max_obliquity_deg", "float", 45.0,
           "largest angle (degrees) between slice normal and patient z kept as axial",
           low=0, high=90, flag="--max-obliquity", metavar="DEG"),
        _o("padding_fill", "int", -1024,
           "HU written where PixelPaddingValue flags padding", cli=False),
        _o("compressor", "str", "lz4",
           "lossless codec for HU: lz4 (fast) or zstd (~15%% smaller, ~3x slower to write)",
           choices=("lz4", "zstd")),
    ),
    "curate": (
        _o("model", "path", None,
           "slice classifier checkpoint (default: the rule-based blank detector)"),
        _o("min_fraction", "float", 0.002,
           "blank rule: smallest thick-tissue fraction of the field of view", low=0, high=1),
        _o("tissue_hu", "float", -500.0, "blank rule: HU above which a pixel is tissue",
           metavar="HU"),
        _o("min_thickness_mm", "float", 6.0,
           "blank rule: tissue thinner than this (mm) is not body (table, sheets)", low=0,
           metavar="MM"),
        _o("batch_size", "int", 64, "slices per forward pass (classifier model)", low=1),
        _DEVICE,
    ),
    "reslice": (
        _o("output", "str", None, "output store (.zarr path or URL)", cli=False),
        _o("factor", "int", None, "re-slice factor k: output spacing = dz / k", low=2,
           metavar="K"),
        _o("spacing", "float", None,
           "target slice spacing (mm): one spacing for the whole cohort; a series already "
           "at it passes through unchanged", low=0, low_open=True, metavar="MM"),
        _o("method", "str", "auto", "auto: per series, the U-net only where a self-check on "
           "the series' own slices shows it beats linear (docs/reslice.md); unet or linear "
           "force one", choices=("auto", "unet", "linear")),
        _o("model", "path", None,
           "checkpoint folder or bundled model name (--method auto/unet; default: the "
           "bundled model for the factor)"),
        _o("batch_size", "int", 16, "slice pairs per forward pass", low=1),
        _DEVICE,
        _o("compressor", "str", "lz4", "lossless codec of the output store",
           choices=("lz4", "zstd")),
    ),
    "evaluate": (
        _o("output", "str", None, "report folder", cli=False),
        _o("factor", "int", (3,), "re-slice factor(s) k", many=True, low=2, metavar="K"),
        _o("methods", "str", None, "methods to compare (paired t-test of each against "
           "linear); default: linear unet auto, without unet when a factor has no bundled "
           "U-net and no --model", many=True, choices=("linear", "unet", "auto"),
           flag="--method"),
        _o("model", "path", None,
           "checkpoint folder or bundled name, one per factor (default: the bundled model "
           "of each factor)", many=True),
        _o("strides", "int", (1,), "1: pairs (i, i+k); 2 adds the doubled-stride sets",
           many=True, low=1, flag="--stride"),
        _o("batch_size", "int", 16, "slice pairs per forward pass", low=1),
        _DEVICE,
        _o("figures", "bool", True, "skip the report's figures"),
    ),
}


def _label(stage: str, opt: Option | str, style: str) -> str:
    name = opt if isinstance(opt, str) else opt.name
    if style == "flag" and isinstance(opt, Option):
        return opt.cli_flag
    if style == "config":
        return f"[{stage}] {name}"
    return name


def check(stage: str, values: Mapping[str, Any], *, style: str = "keyword",
          where: str = "") -> dict[str, Any]:
    """Check ``values`` against the stage's options and return them as a dict.

    Parameters
    ----------
    stage : {"ingest", "curate", "reslice", "evaluate"}
    values : mapping
        Option name -> value (None: not given).
    style : {"keyword", "flag", "config"}
        How errors name an option: ``min_fraction``, ``--min-fraction`` or
        ``[curate] min_fraction``.
    where : str
        The config file, named in config errors.

    Raises
    ------
    OptionError
        An unknown option or a value out of range (``style`` "keyword"/"flag").
    ConfigError
        The same in a config (``style="config"``).
    """
    err = ConfigError if style == "config" else OptionError
    prefix = f"{where}: " if where else ""
    table = {o.name: o for o in OPTIONS[stage]}
    unknown = [k for k in values if k not in table]
    if unknown:
        raise err(f"{prefix}[{stage}]: unknown option(s) {sorted(unknown)}; valid: "
                  f"{sorted(table)}" if style == "config" else
                  f"{prefix}unknown option(s) {sorted(unknown)} for {stage}; valid: "
                  f"{sorted(table)}")
    for key, value in values.items():
        opt = table[key]
        if not opt.valid(value):
            raise err(f"{prefix}{_label(stage, opt, style)} must be {opt.constraint()}, "
                      f"got {value!r}")
    return dict(values)


class _DefaultsHelp(argparse.HelpFormatter):
    """Every option's help ends with its default (flags that are off say nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if (d is None or isinstance(d, bool) or d is argparse.SUPPRESS or "default" in text
                or not action.option_strings):  # a flag's help says what it switches
            return text
        shown = " ".join(map(str, d)) if isinstance(d, (list, tuple)) else "%(default)s"
        return f"{text} (default: {shown})"


HelpFormatter = _DefaultsHelp


def add_arguments(parser: argparse.ArgumentParser | Any, stage: str, *,
                  skip: Sequence[str] = (), only: Sequence[str] | None = None,
                  **override: dict[str, Any]) -> None:
    """Add the stage's CLI flags to ``parser`` (a parser or an argument group).

    ``override`` maps an option name to extra ``add_argument`` keywords (e.g.
    ``required=True``); the destination is always the option's name.
    """
    for opt in OPTIONS[stage]:
        if not opt.cli or opt.name in skip or (only is not None and opt.name not in only):
            continue
        kw: dict[str, Any] = {"dest": opt.name, "help": opt.help}
        if opt.kind == "bool":
            kw["action"] = "store_false" if opt.default else "store_true"
            kw["default"] = opt.default
        else:
            kw["type"] = {"int": int, "float": float}.get(opt.kind, str)
            kw["default"] = list(opt.default) if isinstance(opt.default, tuple) \
                else opt.default
            if opt.choices is not None:
                kw["choices"] = list(opt.choices)
            if opt.metavar:
                kw["metavar"] = opt.metavar
            if opt.many:
                kw["nargs"] = "+"
                if opt.flag == "--modality":  # repeatable, as before
                    kw.pop("nargs")
                    kw["action"] = "append"
                    kw["default"] = None
                    kw["help"] += f" (default: {' '.join(opt.default)})"
        kw.update(override.get(opt.name, {}))
        parser.add_argument(opt.cli_flag, **kw)


def from_args(stage: str, args: argparse.Namespace, *, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The stage's options from parsed CLI arguments, checked (errors name the flags)."""
    values = {o.name: getattr(args, o.name) for o in OPTIONS[stage]
              if o.cli and o.name not in skip and hasattr(args, o.name)}
    return check(stage, values, style="flag")
