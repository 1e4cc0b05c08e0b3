"""The ``ctvol`` command line: ingest, reslice, upsample, shift-interleave, train, evaluate,
curate, run, info.

Commands run on a Dask scheduler: by default a LocalCluster sized to the
machine (one single-threaded worker process per core: DICOM decoding holds
the GIL), ``--scheduler threads`` for the in-process threaded scheduler, or
``--scheduler tcp://host:8786`` for an existing cluster.

Exit codes: 0 success; 1 an error (message on stderr); 3 the run completed
but some series failed (listed in the catalog with their reason).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_PARTIAL = 3


def _scheduler(spec: str, workers: int | None) -> Any:
    from ctvol._compute import scheduler_context

    return scheduler_context(spec, workers, announce=True)


def _add_scheduler(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scheduler", default="local", metavar="ADDRESS",
        help="'local' (default: a LocalCluster on this machine), 'threads', "
             "or a distributed scheduler address such as tcp://host:8786",
    )
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes for --scheduler local (default: one per core)")


def _cmd_ingest(args: argparse.Namespace) -> int:
    import ctvol

    with _scheduler(args.scheduler, args.workers):
        report = ctvol.ingest(
            args.inputs, args.output, modalities=args.modality or ("CT",),
            split_gaps=not args.no_split_gaps, max_obliquity_deg=args.max_obliquity,
            compressor=args.compressor,
            progress=not args.quiet,
        )
    print()
    print(report.summary())
    if report.failed:
        print(f"\ncompleted with {len(report.failed)} series failed: see `ctvol info "
              f"{args.output}` (status 'failed') for the reason of each", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import ctvol
    from ctvol._ingest import format_series_table

    if args.key:
        print(ctvol.open_series(args.store, args.key))
        return 0
    if args.files:
        import pandas as pd

        df = ctvol.catalog(args.store, level="files")
        with pd.option_context("display.width", 250, "display.max_colwidth", 120,
                               "display.max_rows", None):
            print(df[["path", "status", "reason", "key", "detail"]].to_string(index=False))
        return 0
    series = ctvol.catalog(args.store)
    files = ctvol.catalog(args.store, level="files")
    if files.empty:  # a store written by ctvol.write/reslice: no ingest catalog
        keys = ctvol.list_series(args.store)
        print(f"{args.store}: {len(keys)} series (no ingest catalog)")
        for key in keys:
            ds = ctvol.open_series(args.store, key)
            gen = int(ds["generated"].sum()) if "generated" in ds.coords else 0
            how = f"; {_method_text(ds)}" if "reslice" in ds.attrs else ""
            print(f"  {key}: {ds.sizes['z']} slices ({gen} generated) of "
                  f"{ds.sizes['y']}x{ds.sizes['x']}, spacing "
                  f"{', '.join(f'{v:.4g}' for v in ds.attrs.get('spacing', []))} mm{how}")
        return 0
    n_ok = int(series["status"].isin(["ok", "unchanged"]).sum()) if len(series) else 0
    n_exc = int((files["status"] == "excluded").sum()) if len(files) else 0
    print(f"{args.store}: {n_ok} series, {len(files)} input files ({n_exc} excluded)")
    print(format_series_table(series))
    return 0


def _each_series(args: argparse.Namespace, command: str, done: str,
                 make: Callable[[Any], Any], describe: Callable[[Any, Any], str]) -> int:
    """Run ``make`` on each selected series of ``args.store`` and write the results to
    ``args.output``; a series that fails is skipped with its reason (exit code 3)."""
    import ctvol
    from ctvol.errors import CtvolError

    keys = args.series or ctvol.list_series(args.store)
    if not keys:
        print(f"ctvol {command}: no complete series in {args.store}", file=sys.stderr)
        return 1
    failed = []
    with _scheduler(args.scheduler, args.workers):
        for key in keys:
            try:
                ds = ctvol.open_series(args.store, key)
                out = make(ds)
            except (ValueError, FileNotFoundError, CtvolError) as exc:
                print(f"skipped {key}: {exc}", file=sys.stderr)
                failed.append(key)
                continue
            if not args.quiet:
                print(f"{key}: {describe(ds, out)}", flush=True)
            ctvol.write(out, args.output, key, progress=not args.quiet)
    print(f"{len(keys) - len(failed)} series {done} into {args.output}"
          + (f"; {len(failed)} skipped" if failed else ""))
    return EXIT_PARTIAL if failed else 0


def _cmd_reslice(args: argparse.Namespace) -> int:
    import ctvol

    def make(ds: Any) -> Any:
        return ctvol.reslice(ds, args.factor, spacing=args.spacing, method=args.method,
                             model=args.model, batch_size=args.batch_size, device=args.device)

    def describe(ds: Any, out: Any) -> str:
        return (f"{ds.sizes['z']} slices at {ds.attrs['spacing'][0]:.4g} mm -> "
                f"{out.sizes['z']} at {out.attrs['spacing'][0]:.4g} mm "
                f"({int(out.generated.sum())} generated, {_method_text(out)})")

    return _each_series(args, "reslice", "resliced", make, describe)


def _method_text(out: Any) -> str:
    """``linear`` / ``unet``, or the auto decision with both self-check scores."""
    from ctvol._reslice import auto_text

    info = out.attrs.get("reslice", {})
    if "auto" not in info:
        return str(info.get("method"))
    return f"auto -> {info['method']}: {auto_text(info['auto'])}"


def _cmd_upsample(args: argparse.Namespace) -> int:
    import ctvol

    def make(ds: Any) -> Any:
        return ctvol.upsample_inplane(ds, args.factor, method=args.method, model=args.model,
                                      batch_size=args.batch_size, device=args.device)

    def describe(ds: Any, out: Any) -> str:
        sp = out.attrs["spacing"]
        return (f"{ds.sizes['y']}x{ds.sizes['x']} -> {out.sizes['y']}x{out.sizes['x']} at "
                f"{sp[1]:.4g} x {sp[2]:.4g} mm ({args.method})")

    return _each_series(args, "upsample", "upsampled in-plane", make, describe)


def _cmd_export(args: argparse.Namespace) -> int:
    import ctvol

    with _scheduler(args.scheduler, args.workers):
        table = ctvol.export(args.store, args.output, args.format, series=args.series,
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

    from ctvol.errors import StoreError

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
    import ctvol

    ds = ctvol.open_series(args.store, args.key)
    factor = args.factor[0] if len(args.factor) == 1 else tuple(args.factor)
    axis = args.axis[0] if len(args.axis) == 1 else tuple(args.axis)
    return ds, ctvol.shift_interleave(ds, args.model, factor, axis, fuse=args.fuse,
                                      labels=args.labels or args.fuse == "vote",
                                      device=args.device, amp=args.amp)


def _cmd_shift_interleave(args: argparse.Namespace) -> int:
    from ctvol.io._group import write_group

    _check_output(args.output, args.store)
    try:
        # Everything is checked (store, key, model, options) before a cluster
        # starts; the graph is built again inside the scheduler context, where
        # a cluster's GPU workers can be seen (nothing is computed either time).
        _shift_interleave_result(args)
        with _scheduler(args.scheduler, args.workers):
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

    import ctvol
    from ctvol.errors import EvaluationWarning

    series: Any = None
    if args.series:
        pairs = dict(args.series)
        series = (pairs if any(v is not None for v in pairs.values()) else list(pairs))
        if isinstance(series, dict):
            series = {k: (v if v is not None else slice(None)) for k, v in series.items()}
    model: Any = None
    if args.model:
        loaded = [ctvol.load_model(m) for m in args.model]
        model = {m.factor: m for m in loaded}
    with _scheduler(args.scheduler, args.workers):
        try:
            with warnings.catch_warnings():  # shown once, after the tables
                warnings.simplefilter("ignore", EvaluationWarning)
                rep = ctvol.evaluate(args.store, args.factor, methods=args.method,
                                     model=model, series=series, strides=args.stride,
                                     batch_size=args.batch_size, device=args.device,
                                     progress=not args.quiet)
        except ValueError as exc:  # bad factor/model combination, nothing evaluable
            print(f"ctvol evaluate: error: {exc}", file=sys.stderr)
            return 1
        out = rep.save(args.output, figures=not args.no_figures)
    with pd.option_context("display.width", 160, "display.max_columns", 30,
                           "display.float_format", "{:.4g}".format):
        for conv in ("generated", "volume"):
            print(f"\n{conv}: {ctvol._evaluate.CONVENTIONS[conv]}")
            print(rep.summary(convention=conv, stride=min(args.stride)).to_string(na_rep="—"))
    skipped = rep.info["data"]["skipped"]
    for w in rep.info["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    for d in skipped:
        print(f"skipped {d['series']} x{d['factor']} stride {d['stride']}: {d['reason']}",
              file=sys.stderr)
    print(f"\nreport written to {out}/ (report.md, report.json, figures/)")
    return EXIT_PARTIAL if skipped else 0


def _cmd_train(args: argparse.Namespace) -> int:
    import ctvol

    arch = {"depth": args.depth, "base": args.base, "output": args.output_kind}
    model = ctvol.train(
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
    from ctvol import curate_store

    with _scheduler(args.scheduler, args.workers):
        table = curate_store(args.store, keys=args.series, model=args.model,
                             min_fraction=args.min_fraction, progress=not args.quiet)
    print()
    print(table.to_string(index=False))
    empty = table[table["kept"] == 0]
    print(f"\n{len(table)} series classified; labels written to series/<key>/label in "
          f"{args.store}" + (f"; {len(empty)} with no body at all" if len(empty) else ""))
    return EXIT_PARTIAL if len(empty) else 0


def _cmd_run(args: argparse.Namespace) -> int:
    import ctvol

    summary = ctvol.run(args.config, scheduler=args.scheduler, workers=args.workers,
                        progress=not args.quiet)
    print()
    print(summary.table())
    if summary.failed:
        print(f"\ncompleted with {len(summary.failed)} series skipped (reasons above)",
              file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ctvol import __version__

    parser = argparse.ArgumentParser(prog="ctvol", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"ctvol {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="DICOM files/folders -> cohort store")
    p.add_argument("inputs", nargs="+", help="DICOM folders or files (local or fsspec URLs)")
    p.add_argument("-o", "--output", required=True, help="cohort store (.zarr path or URL)")
    p.add_argument("--modality", action="append",
                   help="modality to ingest (repeatable; default CT)")
    p.add_argument("--no-split-gaps", action="store_true",
                   help="refuse series with gaps instead of splitting them into runs")
    p.add_argument("--max-obliquity", type=float, default=45.0, metavar="DEG",
                   help="largest slice-normal angle from patient z kept as axial (default 45)")
    p.add_argument("--compressor", choices=["lz4", "zstd"], default="lz4",
                   help="lossless codec for HU: lz4 (fast, default) or zstd (~15%% smaller)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_scheduler(p)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("reslice", help="generate inter-slice slices: cohort store -> store")
    p.add_argument("store", help="input cohort store")
    p.add_argument("-o", "--output", required=True, help="output store (.zarr path or URL)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--factor", type=int, help="re-slice factor k (output dz = dz / k)")
    target.add_argument("--spacing", type=float, metavar="MM", help="target slice spacing (mm)")
    p.add_argument("--method", choices=["auto", "unet", "linear"], default="auto",
                   help="auto (default): per series, the U-net only where a self-check on "
                        "the series' own slices shows it beats linear; unet or linear force one")
    p.add_argument("--model", help="checkpoint folder or bundled model name (method unet/auto)")
    p.add_argument("--series", nargs="+", metavar="KEY", help="only these series")
    p.add_argument("--batch-size", type=int, default=16, help="slice pairs per forward pass")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when available")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_scheduler(p)
    p.set_defaults(func=_cmd_reslice)

    p = sub.add_parser("upsample", help="in-plane super-resolution: cohort store -> store")
    p.add_argument("store", help="input cohort store")
    p.add_argument("-o", "--output", required=True, help="output store (.zarr path or URL)")
    p.add_argument("--factor", type=int, default=2, help="in-plane factor (default 2)")
    p.add_argument("--method", choices=["unet", "bilinear"], default="unet")
    p.add_argument("--model", help="in-plane checkpoint folder or bundled name (method unet)")
    p.add_argument("--series", nargs="+", metavar="KEY", help="only these series")
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_scheduler(p)
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
                   help="axes to refine (default z; slice classifiers: z only)")
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
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_scheduler(p)
    p.set_defaults(func=_cmd_shift_interleave)

    p = sub.add_parser("train", help="train a reslice U-net from a cohort store (resumable)")
    p.add_argument("store", help="cohort store")
    p.add_argument("--factor", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("-o", "--out", required=True, help="output folder (last/, best/, log.csv)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--crop", type=int, default=128, help="training crop in pixels (0: none)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--base", type=int, default=16, help="filters of the first level")
    p.add_argument("--output-kind", choices=["sigmoid", "residual"], default="sigmoid")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--max-windows", type=int, default=None, help="training windows per epoch")
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
                   help="minimum fraction of body pixels (> -500 HU) in a crop (default 0)")
    p.add_argument("--loss", choices=["l1", "mse"], default="l1", help="training loss")
    p.add_argument("--loader-workers", type=int, default=0, help="DataLoader processes")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="hold-out evaluation of reslice methods -> report folder")
    p.add_argument("store", help="cohort store")
    p.add_argument("--factor", type=int, nargs="+", default=[3], help="factor(s) k (default 3)")
    p.add_argument("-o", "--output", required=True, help="report folder")
    p.add_argument("--method", nargs="+", choices=["linear", "unet", "auto"],
                   default=["linear", "unet", "auto"],
                   help="methods compared (default: linear unet auto); each is paired-t-tested "
                        "against linear")
    p.add_argument("--model", action="append",
                   help="checkpoint folder or bundled name (repeat, one per factor; default: "
                        "the bundled model of each factor)")
    p.add_argument("--series", nargs="+", type=_series_arg, metavar="KEY[:START:STOP]",
                   help="only these series, optionally a slice range of each")
    p.add_argument("--stride", type=int, nargs="+", default=[1],
                   help="1: pairs (i, i+k); 2 adds the doubled-stride sets (default 1)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_scheduler(p)
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser("curate", help="classify every slice (blank or not); store the labels")
    p.add_argument("store", help="cohort store")
    p.add_argument("--series", nargs="+", metavar="KEY", help="only these series")
    p.add_argument("--model", help="slice classifier checkpoint (default: the blank rule)")
    p.add_argument("--min-fraction", type=float, default=0.002,
                   help="blank rule: smallest thick-tissue fraction of the FOV (default 0.002)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_scheduler(p)
    p.set_defaults(func=_cmd_curate)

    p = sub.add_parser("run", help="run a cohort pipeline from a .yaml/.toml config")
    p.add_argument("config", help="pipeline config (docs/cluster.md)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="override the config: 'local', 'threads' or tcp://host:8786")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("info", help="print a store's catalog")
    p.add_argument("store")
    p.add_argument("key", nargs="?", help="show one series (its Dataset) instead")
    p.add_argument("--files", action="store_true", help="one row per input file with its fate")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ctvol.errors import CtvolError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CtvolError, FileNotFoundError) as exc:
        print(f"ctvol {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
