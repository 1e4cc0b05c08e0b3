"""The ``ctvol`` command line: ingest, reslice, upsample, shift-interleave, train, evaluate,
curate, run, info.

Commands run on a Dask scheduler: by default (``--scheduler auto``) the
in-process threaded scheduler for a small job and a LocalCluster sized to the
machine (one single-threaded worker process per core: DICOM decoding holds
the GIL) for a large one (docs/cluster.md); ``--scheduler local`` or
``threads`` forces either, ``--scheduler tcp://host:8786`` uses an existing
cluster. Options are checked before a cluster starts or any output is
created; each stage's options come from ``ctvol._options``.

Exit codes: 0 success; 1 an error (one line on stderr: ``ctvol VERB: error: ...``);
2 a usage error (a bad flag or value); 3 the run completed but some series
failed (listed in the catalog with their reason); 130 interrupted (Ctrl-C:
re-run the same command to resume); 141 stdout closed early (``| head``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import _options
from ._version import __version__
from .errors import (
    CtvolError,
    EvaluationWarning,
    MissingDependencyError,
    NoInputError,
    OptionError,
    StoreError,
)

EXIT_PARTIAL = 3
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``ctvol VERB: error: ...``, exit 2) and
    every option's default in its help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _options.HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str, prog: str | None = None) -> Any:  # type: ignore[override]
        prog = prog or self.prog
        sys.stderr.write(f"{prog}: error: {message} (see `{prog} --help`)\n")
        sys.exit(EXIT_USAGE)

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        if extras:  # named by the verb they were given to, not by the top-level parser
            verb = getattr(ns, "command", None)
            self.error(f"unrecognized arguments: {' '.join(extras)}",
                       f"{self.prog} {verb}" if verb else None)
        return ns


@contextlib.contextmanager
def _scheduler(spec: str, workers: int | None, quiet: bool = False,
               slices: int | None = None) -> Iterator[Any]:
    """The scheduler context of a command; ``auto`` picks threads or a LocalCluster
    by the job's size in slices (``ctvol._compute.choose_scheduler``)."""
    from ._compute import choose_scheduler, scheduler_context

    with scheduler_context(choose_scheduler(spec, slices), workers,
                           announce=not quiet) as client:
        yield client


def _count_files(inputs: Sequence[str]) -> int | None:
    """Files under local inputs (None when an input is a URL: size unknown)."""
    n = 0
    for p in inputs:
        if "://" in p:
            return None
        if os.path.isfile(p):
            n += 1
        for _, _, files in os.walk(p):
            n += len(files)
    return n


def _count_slices(store: str, keys: Sequence[str]) -> int:
    """Slices of the given series: from the ingest catalog when it lists them (one
    read), else from each series' metadata."""
    from .io.store import catalog, open_series

    cat = catalog(store)
    known = dict(zip(cat["key"], cat["n_slices"], strict=True)) if len(cat) else {}
    return sum(int(known[k]) if k in known else int(open_series(store, k).sizes["z"])
               for k in keys)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only errors and the final summary")
    _add_scheduler(p)


def _add_scheduler(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scheduler", default="auto", metavar="ADDRESS",
        help="where the work runs: 'auto' (threads for a small job, a LocalCluster for a "
             "large one: docs/cluster.md), 'local' (a LocalCluster on this machine), "
             "'threads', or a distributed scheduler address such as tcp://host:8786",
    )
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes for a LocalCluster (default: one per core)")


#: The library's advice in keyword form, said with the CLI's flags.
_CLI_WORDS = {"method='linear'": "--method linear", "method='unet'": "--method unet",
              "method='bilinear'": "--method bilinear", "model=PATH": "--model PATH",
              "pass model=": "pass --model "}


def _cli_words(message: str) -> str:
    """A library message as one line, its keyword advice said with the CLI's flags."""
    text = " ".join(message.split())
    for words, flags in _CLI_WORDS.items():
        text = text.replace(words, flags)
    return text


def _fail(command: str, message: str, code: int = 1) -> int:
    """Print ``ctvol COMMAND: error: MESSAGE`` (one line) on stderr; return ``code``."""
    print(f"ctvol {command}: error: {_cli_words(message)}", file=sys.stderr, flush=True)
    return code


def _check_inputs(inputs: Sequence[str]) -> None:
    for p in inputs:
        if "://" not in p and not os.path.exists(p):
            raise NoInputError(f"input {p!r} does not exist; pass DICOM folders or files")


def _cmd_ingest(args: argparse.Namespace) -> int:
    from ._ingest import ingest
    from .io._layout import check_store_path

    opts = _options.from_args("ingest", args)
    opts["modalities"] = opts["modalities"] or _options.OPTIONS["ingest"][0].default
    _check_inputs(args.inputs)
    check_store_path(args.output, create=True)
    with _scheduler(args.scheduler, args.workers, args.quiet,
                    slices=_count_files(args.inputs)):
        report = ingest(args.inputs, args.output, progress=not args.quiet, **opts)
    if not args.quiet:
        print()
    print(report.summary())
    if not report.series["status"].isin(["ok", "unchanged", "failed", "refused"]).any():
        # As dcm2niix: every file's fate is recorded, and finding nothing is an error.
        reasons = report.files["reason"].value_counts() if len(report.files) else {}
        why = ", ".join(f"{n} {r}" for r, n in reasons.items() if r)
        return _fail("ingest", f"nothing ingested: none of the {len(report.files)} input files "
                     f"belongs to a {'/'.join(opts['modalities'])} series ({why}); each "
                     f"file's fate: `ctvol info {args.output} --files`")
    if report.failed:
        print(f"\ncompleted with {len(report.failed)} series failed: see `ctvol info "
              f"{args.output}` (status 'failed') for the reason of each", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from ._ingest import format_series_table
    from ._volume import history_text
    from .io._layout import list_incomplete
    from .io.store import catalog, list_series, open_series

    if args.key:
        ds = open_series(args.store, args.key)
        print(ds)
        history = ds.attrs.get("ctvol_history", [])
        if history:  # one line per entry: records and an older store's strings alike
            print("history:")
            for entry in history:
                print(f"  {history_text(entry)}")
        return 0
    if args.files:
        import pandas as pd

        df = catalog(args.store, level="files")
        with pd.option_context("display.width", 250, "display.max_colwidth", 120,
                               "display.max_rows", None):
            print(df[["path", "status", "reason", "key", "detail"]].to_string(index=False))
        return 0
    series = catalog(args.store)
    files = catalog(args.store, level="files")
    if files.empty:  # a store written by ctvol.write/reslice: no ingest catalog
        keys = list_series(args.store)
        print(f"{args.store}: {len(keys)} series (no ingest catalog)")
        for key in keys:
            ds = open_series(args.store, key)
            gen = int(ds["generated"].sum()) if "generated" in ds.coords else 0
            how = f"; {_method_text(ds)}" if "reslice" in ds.attrs else ""
            print(f"  {key}: {ds.sizes['z']} slices ({gen} generated) of "
                  f"{ds.sizes['y']}x{ds.sizes['x']}, spacing "
                  f"{', '.join(f'{v:.4g}' for v in ds.attrs.get('spacing', []))} mm{how}")
    else:
        n_ok = int(series["status"].isin(["ok", "unchanged"]).sum()) if len(series) else 0
        n_exc = int((files["status"] == "excluded").sum()) if len(files) else 0
        print(f"{args.store}: {n_ok} series, {len(files)} input files ({n_exc} excluded)")
        print(format_series_table(series))
    unfinished, ingest_running = list_incomplete(args.store)
    if unfinished or ingest_running:
        what = (f"{len(unfinished)} series not complete (readers do not see them: "
                f"{', '.join(unfinished[:5])}{', ...' if len(unfinished) > 5 else ''})"
                if unfinished else "its ingest never finished (no catalog written)")
        print(f"interrupted: {what}; re-run the command that wrote this store to finish")
    return 0


def _each_series(args: argparse.Namespace, command: str, done: str,
                 make: Callable[[Any], Any], describe: Callable[[Any, Any], str]) -> int:
    """Run ``make`` on each selected series of ``args.store`` and write the results to
    ``args.output``; a series that fails is skipped with its reason (exit code 3).

    The store, the keys and the output path are checked before a cluster starts."""
    from .io._layout import check_store_path
    from .io.store import list_series, open_series, write

    keys = args.series or list_series(args.store)
    if not keys:
        return _fail(command, f"no complete series in {args.store}")
    missing = sorted(set(keys) - set(list_series(args.store)))
    if missing:
        return _fail(command, f"--series {' '.join(missing)}: not a complete series of "
                              f"{args.store} (`ctvol info {args.store}` lists them)")
    _check_output(args.output, args.store)
    check_store_path(args.output, create=True)
    failed = []
    with _scheduler(args.scheduler, args.workers, args.quiet,
                    slices=_count_slices(args.store, keys)):
        for key in keys:
            try:
                ds = open_series(args.store, key)
                out = make(ds)
            except MissingDependencyError:
                raise  # not a property of the series: every one would fail
            except (ValueError, FileNotFoundError, CtvolError) as exc:
                print(f"ctvol {command}: series {key} skipped: {_cli_words(str(exc))}",
                      file=sys.stderr)
                failed.append(key)
                continue
            if not args.quiet:
                print(f"{key}: {describe(ds, out)}", flush=True)
            write(out, args.output, key, compressor=getattr(args, "compressor", "lz4"),
                  progress=not args.quiet)
    print(f"{len(keys) - len(failed)} series {done} into {args.output}"
          + (f"; {len(failed)} skipped" if failed else ""))
    return EXIT_PARTIAL if failed else 0


def _check_model(method: str, model: str | None, factor: int | None, *, inplane: bool = False
                 ) -> None:
    """``--method unet``: the checkpoint loads and fits the factor, or a bundled model
    exists for it (checked before a cluster starts). ``--method auto`` checks a
    given ``--model`` the same way; without one it falls back to linear itself."""
    if method not in ("unet", "auto") or (method == "auto" and model is None):
        return
    if inplane:
        from .models import bundled_inplane_models, load_inplane_model

        if model is not None:
            try:
                load_inplane_model(model)
            except (OSError, ValueError) as exc:
                raise OptionError(f"--model {model}: {exc}") from None
            return
        have = bundled_inplane_models()
        if factor not in have.values():
            names = ", ".join(f"{n} (x{f})" for n, f in have.items()) or "none"
            raise OptionError(f"no bundled in-plane U-net for factor {factor} (bundled: "
                              f"{names}); give --model PATH or --method bilinear")
        return
    from .models import bundled_models, load_model

    if model is not None:
        try:
            loaded = load_model(model)
        except (OSError, ValueError) as exc:
            raise OptionError(f"--model {model}: {exc}") from None
        if factor is not None and loaded.factor != factor:
            raise OptionError(f"--model {model} generates factor {loaded.factor}, not "
                              f"--factor {factor}; use --factor {loaded.factor} or a model "
                              f"trained for {factor}")
        return
    bundled = bundled_models()
    if factor is not None and factor not in bundled.values():
        names = ", ".join(f"{n} (x{f})" for n, f in bundled.items()) or "none"
        raise OptionError(f"no bundled U-net for factor {factor} (bundled: {names}); give "
                          "--model PATH (train one with `ctvol train`) or --method linear")


def _cmd_reslice(args: argparse.Namespace) -> int:
    from ._reslice import reslice

    opts = _options.from_args("reslice", args)
    _check_model(opts["method"], opts["model"], opts["factor"])
    opts.pop("compressor")  # ctvol.write's, in _each_series

    def make(ds: Any) -> Any:
        return reslice(ds, **opts)

    def describe(ds: Any, out: Any) -> str:
        n_gen = int(out.generated.sum())
        if not n_gen and "reslice" in out.attrs and out.attrs["reslice"].get("unchanged"):
            return f"{ds.sizes['z']} slices already at {ds.attrs['spacing'][0]:.4g} mm: unchanged"
        return (f"{ds.sizes['z']} slices at {ds.attrs['spacing'][0]:.4g} mm -> "
                f"{out.sizes['z']} at {out.attrs['spacing'][0]:.4g} mm "
                f"({n_gen} generated, {_method_text(out)})")

    return _each_series(args, "reslice", "resliced", make, describe)


def _method_text(out: Any) -> str:
    """``linear`` / ``unet``, or the auto decision with both self-check scores."""
    from ._reslice import auto_text

    info = out.attrs.get("reslice", {})
    if "auto" not in info:
        return str(info.get("method"))
    return f"auto -> {info['method']}: {auto_text(info['auto'])}"


def _cmd_upsample(args: argparse.Namespace) -> int:
    from ._inplane import upsample_inplane

    if args.factor < 2:
        raise OptionError(f"--factor must be an integer >= 2, got {args.factor}")
    if args.batch_size < 1:
        raise OptionError(f"--batch-size must be an integer >= 1, got {args.batch_size}")
    _check_model(args.method, args.model, args.factor, inplane=True)

    def make(ds: Any) -> Any:
        return upsample_inplane(ds, args.factor, method=args.method, model=args.model,
                                batch_size=args.batch_size, device=args.device)

    def describe(ds: Any, out: Any) -> str:
        sp = out.attrs["spacing"]
        return (f"{ds.sizes['y']}x{ds.sizes['x']} -> {out.sizes['y']}x{out.sizes['x']} at "
                f"{sp[1]:.4g} x {sp[2]:.4g} mm ({args.method})")

    return _each_series(args, "upsample", "upsampled in-plane", make, describe)


def _cmd_export(args: argparse.Namespace) -> int:
    from ._export import export

    with _scheduler(args.scheduler, args.workers):
        table = export(args.store, args.output, args.format, series=args.series,
                       progress=not args.quiet)
    failed = table[table["status"] == "failed"]
    for row in failed.itertuples():
        print(f"skipped {row.key}: {row.error}", file=sys.stderr)
    if table.empty:
        print(f"ctvol export: no complete series in {args.store}", file=sys.stderr)
        return 1
    counts = table["status"].value_counts().to_dict()
    print(f"{counts.get('exported', 0)} series exported as {args.format} into {args.output}"
          f", {counts.get('unchanged', 0)} unchanged (skipped)"
          + (f"; {len(failed)} failed" if len(failed) else ""))
    return EXIT_PARTIAL if len(failed) else 0


def _check_output(output: str, store: str) -> None:
    """Refuse to write predictions into the input store or over something not Zarr."""
    import os

    if "://" in output:
        return
    path = os.path.abspath(os.path.expanduser(output))
    if "://" not in store and path == os.path.abspath(os.path.expanduser(store)):
        raise StoreError(f"-o {output} is the input store: write predictions to another "
                         "Zarr store (e.g. predictions.zarr)")
    if os.path.isfile(path):
        raise StoreError(f"-o {output} is a file; choose a Zarr store path (a folder)")
    if os.path.isdir(path):
        entries = [e for e in os.listdir(path) if not e.startswith(".")]
        if entries and "zarr.json" not in entries:
            raise StoreError(f"-o {output} exists and is not a Zarr store (it holds "
                             f"{', '.join(sorted(entries)[:3])}); choose a new output path")


def _prediction_dataset(out: Any, args: argparse.Namespace) -> Any:
    """The DataArray as a Dataset for ``to_zarr``: ctvol attrs on the group, CF
    attrs on the variable, z-chunks of ~32 MB (zarr needs regular chunks)."""
    import os

    import numpy as np

    var_keys = ("classes", "flag_values", "flag_meanings")
    slice_bytes = out.dtype.itemsize * int(np.prod([out.sizes[d] for d in out.dims[1:]]))
    zc = max(1, (32 << 20) // max(1, slice_bytes))
    out = out.chunk({d: (zc if d == "z" else -1) for d in out.dims})
    labels = out.attrs["shift_interleave"]["labels"]
    var_attrs = {k: out.attrs[k] for k in var_keys if k in out.attrs}
    var_attrs["long_name"] = "label" if labels else "probability"
    if not labels:
        var_attrs["units"] = "1"
    ds = out.to_dataset()
    ds.attrs = {k: v for k, v in out.attrs.items() if k not in var_keys}
    ds.attrs["source"] = {"store": args.store if "://" in args.store
                          else os.path.abspath(args.store), "key": args.key}
    ds[out.name].attrs = var_attrs
    return ds


def _shift_interleave_result(args: argparse.Namespace) -> Any:
    from ._shift_interleave import shift_interleave
    from .io.store import open_series

    ds = open_series(args.store, args.key)
    factor = args.factor[0] if len(args.factor) == 1 else tuple(args.factor)
    axis = args.axis[0] if len(args.axis) == 1 else tuple(args.axis)
    return ds, shift_interleave(ds, args.model, factor, axis, fuse=args.fuse,
                                labels=args.labels or args.fuse == "vote",
                                device=args.device, amp=args.amp)


def _cmd_shift_interleave(args: argparse.Namespace) -> int:
    from .io._write import write_group

    _check_output(args.output, args.store)
    try:
        # Everything is checked (store, key, model, options) before a cluster
        # starts; the graph is built again inside the scheduler context, where
        # a cluster's GPU workers can be seen (nothing is computed either time).
        _shift_interleave_result(args)
        with _scheduler(args.scheduler, args.workers, args.quiet,
                        slices=_count_slices(args.store, [args.key])):
            ds, out = _shift_interleave_result(args)
            info = out.attrs["shift_interleave"]
            if not args.quiet:
                shape = " x ".join(f"{out.sizes[d]} {d}" for d in out.dims)
                print(f"{args.key}: {' x '.join(map(str, ds.hu.shape))} -> {shape} "
                      f"({info['predict']}, {info['runs']} runs per block)", flush=True)
            # xarray's to_zarr writes metadata and coordinates; the blocks
            # stream through a layer that keeps the model's GPU annotation.
            write_group(_prediction_dataset(out, args), args.output, args.key,
                        progress=not args.quiet)
    except ValueError as exc:  # bad factor/axis/option, a checkpoint of another kind
        print(f"ctvol shift-interleave: error: series {args.key}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.key}: {out.name} written to {args.output} (group {args.key})")
    return 0


def _series_arg(text: str) -> tuple[str, slice | None]:
    """``KEY`` or ``KEY:START:STOP`` (a slice range, e.g. a held-out z-block)."""
    key, sep, rest = text.partition(":")
    if not sep:
        return key, None
    try:
        start, stop = (int(v) if v else None for v in rest.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--series {text!r}: give KEY or KEY:START:STOP (slice indices)") from None
    return key, slice(start, stop)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import warnings

    import pandas as pd

    from .evaluation import CONVENTIONS, evaluate
    from .io.store import list_series
    from .models import load_model

    opts = _options.from_args("evaluate", args)
    series: Any = None
    if args.series:
        pairs = dict(args.series)
        series = (pairs if any(v is not None for v in pairs.values()) else list(pairs))
        if isinstance(series, dict):
            series = {k: (v if v is not None else slice(None)) for k, v in series.items()}
    keys = list(dict(args.series)) if args.series else list_series(args.store)
    model: Any = None
    if opts["model"] and "unet" in opts["methods"]:
        try:
            loaded = [load_model(m) for m in opts["model"]]
        except (OSError, ValueError) as exc:
            raise OptionError(f"--model: {exc}") from None
        model = {m.factor: m for m in loaded}
    with _scheduler(args.scheduler, args.workers, args.quiet,
                    slices=_count_slices(args.store, keys)):
        try:
            with warnings.catch_warnings():  # shown once, after the tables
                warnings.simplefilter("ignore", EvaluationWarning)
                rep = evaluate(args.store, opts["factor"], methods=opts["methods"],
                               model=model, series=series, strides=opts["strides"],
                               batch_size=opts["batch_size"], device=opts["device"],
                               progress=not args.quiet)
        except ValueError as exc:  # bad factor/model combination, nothing evaluable
            return _fail("evaluate", str(exc))
        out = rep.save(args.output, figures=opts["figures"])
    with pd.option_context("display.width", 160, "display.max_columns", 30,
                           "display.float_format", "{:.4g}".format):
        for conv in ("generated", "volume"):
            print(f"\n{conv}: {CONVENTIONS[conv]}")
            print(rep.summary(convention=conv, stride=min(opts["strides"])).to_string(na_rep="—"))
        if any(" - " in m for m in rep.table.method.unique()):
            from .evaluation._report import P_EXPLAINED

            print(f"\n{P_EXPLAINED}")
    skipped = rep.info["data"]["skipped"]
    for w in rep.info["warnings"]:
        print(f"ctvol: warning: {w}", file=sys.stderr)
    for d in skipped:
        print(f"ctvol evaluate: skipped {d['series']} x{d['factor']} stride {d['stride']}: "
              f"{d['reason']}", file=sys.stderr)
    files = "report.md, report.json" + (", figures/" if rep.info.get("figures") else "")
    print(f"\nreport written to {out}/ ({files})")
    return EXIT_PARTIAL if skipped else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.loop import train

    arch = {"depth": args.depth, "base": args.base, "output": args.output_kind}
    model = train(
        args.store, args.factor, epochs=args.epochs, out=args.out, batch_size=args.batch_size,
        lr=args.lr, crop=args.crop or None, architecture=arch, augment=not args.no_augment,
        device=args.device, num_workers=args.loader_workers, seed=args.seed,
        resume=args.resume, max_windows=args.max_windows, partitions=args.partitions,
        skip_blank=not args.keep_blank, progress=not args.quiet, blocks=args.blocks,
        init=args.init, select=args.select, body_fraction=args.body_fraction, loss=args.loss,
    )
    print(f"best model: {model.path} ({model!r}); log: {args.out}/log.csv")
    return 0


def _cmd_curate(args: argparse.Namespace) -> int:
    from .curation import curate_store
    from .io.store import list_series

    opts = _options.from_args("curate", args)
    keys = args.series or list_series(args.store)  # a store, before a cluster starts
    if opts["model"] is not None:
        from .curation import load_slice_model

        try:  # checked here; the path goes to the workers, each loads it once
            load_slice_model(opts["model"])
        except (OSError, ValueError) as exc:
            raise OptionError(f"--model {opts['model']}: {exc}") from None
    with _scheduler(args.scheduler, args.workers, args.quiet,
                    slices=_count_slices(args.store, keys)):
        table = curate_store(args.store, keys=keys, progress=not args.quiet, **opts)
    print()
    print(table.to_string(index=False))
    empty = table[table["kept"] == 0]
    print(f"\n{len(table)} series classified; labels written to series/<key>/label in "
          f"{args.store}" + (f"; {len(empty)} with no body at all" if len(empty) else ""))
    return EXIT_PARTIAL if len(empty) else 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ._run import run

    summary = run(args.config, scheduler=args.scheduler, workers=args.workers,
                  progress=not args.quiet)
    print()
    print(summary.table())
    if summary.failed:
        print(f"\ncompleted with {len(summary.failed)} series skipped (reasons above)",
              file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ctvol", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"ctvol {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="DICOM files/folders -> cohort store")
    p.add_argument("inputs", nargs="+", help="DICOM folders or files (local or fsspec URLs)")
    p.add_argument("-o", "--output", required=True, help="cohort store (.zarr path or URL)")
    _options.add_arguments(p, "ingest")
    _add_common(p)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("reslice", help="generate inter-slice slices: cohort store -> store")
    p.add_argument("store", help="input cohort store")
    p.add_argument("-o", "--output", required=True, help="output store (.zarr path or URL)")
    target = p.add_mutually_exclusive_group(required=True)
    _options.add_arguments(target, "reslice", only=("factor", "spacing"))
    _options.add_arguments(p, "reslice", skip=("factor", "spacing"))
    p.add_argument("--series", nargs="+", metavar="KEY", help="only these series (default: all)")
    _add_common(p)
    p.set_defaults(func=_cmd_reslice)

    p = sub.add_parser("upsample", help="in-plane super-resolution: cohort store -> store")
    p.add_argument("store", help="input cohort store")
    p.add_argument("-o", "--output", required=True, help="output store (.zarr path or URL)")
    p.add_argument("--factor", type=int, default=2, help="in-plane factor")
    p.add_argument("--method", choices=["unet", "bilinear"], default="unet",
                   help="in-plane U-net or the bilinear baseline")
    p.add_argument("--model", help="in-plane checkpoint folder or bundled name (--method unet; "
                                   "default: the bundled model for the factor)")
    p.add_argument("--series", nargs="+", metavar="KEY", help="only these series (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="'cuda' or 'cpu' (default: cuda when available)")
    _add_common(p)
    p.set_defaults(func=_cmd_upsample)

    p = sub.add_parser("export", help="store -> NIfTI files or derived DICOM series (resumable)")
    p.add_argument("store", help="cohort store, or a reslice/upsample output store")
    p.add_argument("-o", "--output", required=True,
                   help="output folder: <key>.nii.gz or <key>/ per series, <key>.json sidecars")
    p.add_argument("--format", choices=["nifti", "dicom"], required=True)
    p.add_argument("--series", nargs="+", metavar="KEY", help="only these series")
    p.add_argument("-q", "--quiet", action="store_true", help="no line per series")
    p.add_argument("--scheduler", default="threads", metavar="ADDRESS",
                   help="reads the store: 'threads' (default: files are written by this "
                        "process), 'local' or tcp://host:8786")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes for --scheduler local")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("shift-interleave",
                       help="a model's output refined by shifting its input: series -> Zarr")
    p.add_argument("store", help="input cohort store")
    p.add_argument("key", help="series key (`ctvol info STORE` lists them)")
    p.add_argument("--model", required=True,
                   help="checkpoint folder: a segmenter (ctvol.models.save_segmenter) or a "
                        "slice classifier (ctvol.curation.save_slice_model)")
    p.add_argument("--factor", type=int, nargs="+", required=True, metavar="K",
                   help="factor k (one, or one per --axis): output spacing = spacing / k")
    p.add_argument("--axis", nargs="+", choices=["z", "y", "x"], default=["z"],
                   help="axes to refine (slice classifiers: z only)")
    p.add_argument("--fuse", choices=["vote", "mean"], default=None,
                   help="fuse overlapping predictions: vote on labels (implies --labels) or "
                        "mean of probabilities (default: pure interleave)")
    p.add_argument("--labels", action="store_true",
                   help="labels instead of probabilities (segmenter mask p > 0.5; a slice "
                        "classifier's class code)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when the worker has one")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("-o", "--output", required=True,
                   help="output Zarr store (v3); the result goes to group KEY")
    _add_common(p)
    p.set_defaults(func=_cmd_shift_interleave)

    p = sub.add_parser("train", help="train a reslice U-net from a cohort store (resumable)")
    p.add_argument("store", help="cohort store")
    p.add_argument("--factor", type=int, required=True, help="re-slice factor k the model learns")
    p.add_argument("--epochs", type=int, required=True, help="epochs to train (in total)")
    p.add_argument("-o", "--out", required=True, help="output folder (last/, best/, log.csv)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--batch-size", type=int, default=4, help="windows per optimiser step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--crop", type=int, default=128, help="training crop in pixels (0: none)")
    p.add_argument("--depth", type=int, default=4, help="U-net levels")
    p.add_argument("--base", type=int, default=16, help="filters of the first level")
    p.add_argument("--output-kind", choices=["sigmoid", "residual"], default="sigmoid",
                   help="sigmoid: the paper's U-net; residual: a correction to linear")
    p.add_argument("--no-augment", action="store_true", help="no flips/scale/noise augmentation")
    p.add_argument("--max-windows", type=int, default=None,
                   help="training windows per epoch (default: all)")
    p.add_argument("--partitions", choices=["train-val", "train-val-test"], default="train-val",
                   help="train-val-test keeps a 10%% test partition nothing in training sees")
    p.add_argument("--keep-blank", action="store_true",
                   help="also train on windows touching slices `ctvol curate` labelled blank")
    p.add_argument("--blocks", default=None, metavar="JSON",
                   help="explicit train/val/test z-blocks per series (overrides --partitions; "
                        "see docs/training.md)")
    p.add_argument("--init", default=None, metavar="NAME|DIR",
                   help="start from a bundled model (unet-x3) or a checkpoint: fine-tuning")
    p.add_argument("--select", choices=["loss", "psnr"], default="loss",
                   help="best epoch by validation loss or validation PSNR (default: loss)")
    p.add_argument("--body-fraction", type=float, default=0.0,
                   help="minimum fraction of body pixels (> -500 HU) in a crop (default: 0.0)")
    p.add_argument("--loss", choices=["l1", "mse", "l1+ssim"], default="l1",
                   help="training loss: mean absolute or squared error, or 0.84 (1 - SSIM) "
                        "+ 0.16 L1 (default: l1)")
    p.add_argument("--loader-workers", type=int, default=0, help="DataLoader processes")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="'cuda' or 'cpu' (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and initialisation")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only errors and the final summary")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="hold-out evaluation of reslice methods -> report folder")
    p.add_argument("store", help="cohort store")
    p.add_argument("-o", "--output", required=True, help="report folder")
    _options.add_arguments(p, "evaluate", model={"action": "append", "nargs": None})
    p.add_argument("--series", nargs="+", type=_series_arg, metavar="KEY[:START:STOP]",
                   help="only these series, optionally a slice range of each (default: all)")
    _add_common(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("curate", help="classify every slice (blank or not); store the labels")
    p.add_argument("store", help="cohort store")
    p.add_argument("--series", nargs="+", metavar="KEY", help="only these series (default: all)")
    _options.add_arguments(p, "curate")
    _add_common(p)
    p.set_defaults(func=_cmd_curate)

    p = sub.add_parser("run", help="run a cohort pipeline from a .yaml/.toml config")
    p.add_argument("config", help="pipeline config (docs/cluster.md)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="override the config's `scheduler` (itself 'auto' when absent): 'auto', "
                        "'local', 'threads' or tcp://host:8786")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes for a local cluster (default: one per core)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only errors and the final summary")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("info", help="print a store's catalog")
    p.add_argument("store", help="cohort store")
    p.add_argument("key", nargs="?", help="show one series (its Dataset) instead")
    p.add_argument("--files", action="store_true", help="one row per input file with its fate")
    p.set_defaults(func=_cmd_info)
    return parser


def _message(exc: BaseException) -> str:
    """An exception as one line, in words (no ``[Errno 13]``, no quotes around a KeyError)."""
    if isinstance(exc, OSError) and not isinstance(exc, CtvolError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def _quiet_shutdown() -> None:
    """Silence distributed's logging while a cluster is torn down after Ctrl-C (its
    workers and comms log every cancelled task and closed stream)."""
    import logging

    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _on_interrupt(signum: int, frame: Any) -> None:
    import signal

    _quiet_shutdown()
    # A second Ctrl-C while the cluster closes ends the process at once.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    raise KeyboardInterrupt


@contextlib.contextmanager
def _cli_warnings(quiet: bool) -> Iterator[None]:
    """Warnings as ``ctvol: warning: ...`` lines on stderr, each once (none with -q:
    ctvol's warnings are also recorded in the catalog or the report)."""
    import warnings

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if not quiet:
            print(f"ctvol: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():  # the filters stay Python's (and the user's -W)
        warnings.showwarning = show
        yield


def _stdout_closed() -> None:
    """stdout's reader went away (``| head``): point stdout at /dev/null so the
    interpreter's final flush does not complain either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, sys.stdout.fileno())


def _killed_worker(exc: BaseException) -> bool:
    """dask.distributed gave up on a task whose workers kept dying."""
    from distributed import KilledWorker

    return isinstance(exc, KilledWorker)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a ``ctvol`` command; return its exit code (see the module docstring).

    Every error ends as one ``ctvol VERB: error: ...`` line on stderr, never a
    traceback (set ``CTVOL_DEBUG=1`` to see the traceback of an unexpected one).
    """
    import signal
    import threading

    args = build_parser().parse_args(argv)
    command = args.command
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _on_interrupt) if main_thread else None
    try:
        with _cli_warnings(getattr(args, "quiet", False)):
            return int(args.func(args))
    except KeyboardInterrupt:
        _quiet_shutdown()
        with contextlib.suppress(OSError):
            print(f"ctvol {command}: interrupted; re-run the same command to resume",
                  file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _stdout_closed()
        return EXIT_PIPE
    except OptionError as exc:
        return _fail(command, str(exc), EXIT_USAGE)
    except (CtvolError, OSError, ValueError, KeyError) as exc:
        return _fail(command, _message(exc))
    except Exception as exc:
        if _killed_worker(exc):  # not a bug of ctvol's nor of the data's
            return _fail(command, f"worker processes died on each of "
                         f"{getattr(exc, 'allowed_failures', 0) + 1} tries of task "
                         f"{getattr(exc, 'task', '?')!r} (dask KilledWorker: out of memory or "
                         "a crash; the worker logs say which). Complete series are kept and "
                         "none is visible half-written: re-run the same command to resume")
        if os.environ.get("CTVOL_DEBUG"):
            raise
        return _fail(command, f"unexpected {type(exc).__name__}: {_message(exc)} (a bug: "
                              "please report it; CTVOL_DEBUG=1 shows the traceback)")
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
