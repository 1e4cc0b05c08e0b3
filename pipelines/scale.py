"""Scale run: the cohort pipeline on a synthetic cohort of N 512² slices (public API only).

    python pipelines/scale.py WORKDIR --slices 1000 [--series-slices 100] [--workers 2]
                              [--method linear|unet] [--curate] [--drop-dicom] [--keep]
    python pipelines/scale.py WORKDIR --slices 57931 --series-slices 300,150,80 \
                              --curate --drop-dicom            # the paper's cohort size

Writes ``WORKDIR/dicom`` (``ctvol.testing.synthetic_cohort``: series of
``--series-slices`` slices with vendor-like headers, one localizer, one
series with a missing slice, one tilted series; a comma list of lengths is
cycled over the series until ``--slices`` files, the last series taking the
remainder), then runs the stages with ``ctvol.run``: ingest → (curate) →
reslice x3 (linear by default) → evaluate (the same method). Prints and saves
``WORKDIR/scale-STAGES.json`` (``scale-ingest-reslice-evaluate.json`` by default):
slices, seconds and slices/s per stage, total time,
peak RSS of the driver and of every worker process, disk used by the DICOM
and each store, and the compression ratio of the stored ``hu``. The
generation of the DICOM files is timed separately and not part of the
pipeline. ``--drop-dicom`` runs ingest alone, deletes the DICOM files, then
runs the other stages (for a disk smaller than DICOM + both stores).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import psutil

import ctvol
from ctvol.testing import synthetic_cohort


class PeakSampler(threading.Thread):
    """Peak RSS of this process and every descendant (Dask workers), sampled every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[str, float] = {}
        self.load: list[float] = []  # 1-minute load average, every 0.2 s
        self.stop = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.is_set():
            for p in [me, *me.children(recursive=True)]:
                try:
                    mb = p.memory_info().rss / 2**20
                    name = "driver" if p.pid == me.pid else f"{p.name()}[{p.pid}]"
                except psutil.Error:
                    continue
                self.peak[name] = max(self.peak.get(name, 0.0), mb)
            self.load.append(os.getloadavg()[0])
            time.sleep(0.2)


def bare_unet_pairs_per_s(size: int, k: int, n_pairs: int = 16, batch: int = 4) -> float:
    """The bundled U-net alone over random windowed pairs (channels_last, inference mode)."""
    import torch

    net = ctvol.load_model(f"unet-x{k}").net.eval().to(memory_format=torch.channels_last)
    x = torch.rand(n_pairs, 2, size, size).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        net(x[:batch])  # warm-up
        t0 = time.perf_counter()
        for s in range(0, n_pairs, batch):
            net(x[s:s + batch])
    return n_pairs / (time.perf_counter() - t0)


def series_lengths(total: int, lengths: list[int]) -> list[int]:
    """Lengths cycled until ``total`` slices; the last series takes the remainder."""
    out: list[int] = []
    while sum(out) < total:
        out.append(min(lengths[len(out) % len(lengths)], total - sum(out)))
    if len(out) > 1 and out[-1] < 2:  # a 1-slice series is no volume: give it to the previous
        rest = out.pop()  # (not ``out[-2] += out.pop()``: its index is taken before the pop)
        out[-1] += rest
    return out


def _generate_group(dicom: pathlib.Path, g: int, n: int, count: int, size: int) -> None:
    first = g == 0
    synthetic_cohort(dicom / f"len{n}", n_series=count, n_slices=n, shape=(size, size),
                     spacings=(3.0, 2.5, 5.0), localizers=int(first), gaps=int(first),
                     tilted=int(first), seed=g)


def generate(dicom: pathlib.Path, total: int, lengths: list[int], size: int) -> int:
    """One ``synthetic_cohort`` per distinct length (its own seed, so UIDs differ), under
    ``dicom/len{L}``, the groups written in parallel (one process per core); the special
    cases (localizer, gap, tilt) in the first group only. The localizer takes the place
    of the gap's missing slice, so ``total`` files."""
    plan = series_lengths(total, lengths)
    groups = {n: plan.count(n) for n in dict.fromkeys(plan)}
    with ProcessPoolExecutor(min(len(groups), os.cpu_count() or 1)) as pool:
        for f in [pool.submit(_generate_group, dicom, g, n, count, size)
                  for g, (n, count) in enumerate(groups.items())]:
            f.result()
    return len(plan)


def du(path: pathlib.Path) -> int:
    """Bytes of the files under ``path`` (0 if absent)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir")
    p.add_argument("--slices", type=int, default=1000)
    p.add_argument("--series-slices", default="100",
                   help="slices per series, or a comma list of lengths cycled over the series")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--scheduler", default="local")
    p.add_argument("--method", default="linear", choices=["linear", "unet"])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--curate", action="store_true", help="add the curate stage")
    p.add_argument("--drop-dicom", action="store_true",
                   help="delete the DICOM files after ingest (the other stages run after)")
    p.add_argument("--stages", default=None,
                   help="comma list of stages to run (default: ingest, [curate,] reslice, "
                        "evaluate); without ingest, the stages run on WORKDIR/cohort.zarr")
    p.add_argument("--keep", action="store_true", help="keep the stores afterwards")
    a = p.parse_args()
    stages = (a.stages.split(",") if a.stages else
              ["ingest", *(["curate"] if a.curate else []), "reslice", "evaluate"])

    work = pathlib.Path(a.workdir)
    dicom = work / "dicom"
    lengths = [int(n) for n in str(a.series_slices).split(",")]
    t0 = time.perf_counter()
    if "ingest" in stages and not dicom.is_dir():
        generate(dicom, a.slices, lengths, a.size)
    n_series = len(series_lengths(a.slices, lengths))
    gen_s = time.perf_counter() - t0
    for stale in ("cohort.zarr", "fine.zarr", "report"):
        if "ingest" in stages or stale != "cohort.zarr":
            shutil.rmtree(work / stale, ignore_errors=True)
    k = 3
    config: dict = {
        "inputs": [str(dicom)], "store": str(work / "cohort.zarr"),
        "stages": stages, "ingest": {}, "curate": {},
        "reslice": {"output": str(work / "fine.zarr"), "factor": k, "method": a.method},
        "evaluate": {"output": str(work / "report"), "factor": [k], "methods": [a.method],
                     "figures": False},
    }
    sampler = PeakSampler()
    sampler.start()
    files = (sum(1 for f in dicom.rglob("*") if f.is_file()) if dicom.is_dir() else
             len(ctvol.catalog(str(work / "cohort.zarr"), level="files")))
    disk = {"dicom": du(dicom)}
    t0 = time.perf_counter()
    if a.drop_dicom and "ingest" in stages and len(stages) > 1:
        first = ctvol.run({**config, "stages": ["ingest"]}, scheduler=a.scheduler,
                          workers=a.workers, progress=False)
        disk["cohort.zarr"] = du(work / "cohort.zarr")
        shutil.rmtree(dicom)
        rest = [s for s in stages if s != "ingest"]
        summary = ctvol.run({**config, "stages": rest}, scheduler=a.scheduler,
                            workers=a.workers, progress=False)
        summary.stages[:0] = first.stages
        summary.series[:0] = first.series
        summary.peak_rss_mb = {f"ingest {p}": v for p, v in first.peak_rss_mb.items()} | {
            f"after {p}": v for p, v in summary.peak_rss_mb.items()}
    else:
        summary = ctvol.run(config, scheduler=a.scheduler, workers=a.workers, progress=False)
    total = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    for name in ("cohort.zarr", "fine.zarr", "report"):
        disk[name] = du(work / name) or disk.get(name, 0)
    cat = ctvol.catalog(str(work / "cohort.zarr"))
    cat = cat[cat["status"] == "ok"] if "status" in cat else cat
    raw = float((cat["n_slices"] * cat["rows"] * cat["cols"] * 2).sum())
    out = {"slices_requested": a.slices, "series": n_series, "files": files,
           "disk_bytes": disk, "hu_raw_bytes": raw,
           "compression_ratio_cohort": raw / max(1, disk["cohort.zarr"]),
           "size": a.size, "method": a.method, "scheduler": a.scheduler,
           "workers": a.workers, "generate_seconds": round(gen_s, 1),
           "pipeline_seconds": round(total, 1),
           "seconds_per_input_slice": total / max(1, summary.stages[0].get("slices", 0)),
           "stages": summary.stages, "peak_rss_mb_getrusage": summary.peak_rss_mb,
           "peak_rss_mb_sampled": {k: round(v) for k, v in sampler.peak.items() if v > 50},
           "load_average_1min": {"mean": round(sum(sampler.load) / max(1, len(sampler.load)), 2),
                                 "max": max(sampler.load, default=0.0)},
           "failed": summary.failed}
    if a.method == "unet":  # pairs/s of the reslice stage against the bare model, same run
        res = next(st for st in summary.stages if st["stage"] == "reslice")
        pairs = res["slices"] - res["done"]  # N-1 pairs per series
        out["reslice_pairs_per_s"] = pairs / res["seconds"]
        out["bare_model_pairs_per_s"] = bare_unet_pairs_per_s(a.size, k)
        out["ratio_reslice_vs_bare"] = out["reslice_pairs_per_s"] / out["bare_model_pairs_per_s"]
        print(f"U-net: reslice stage {out['reslice_pairs_per_s']:.2f} pairs/s (read, infer, "
              f"write) vs bare model {out['bare_model_pairs_per_s']:.2f} pairs/s: ratio "
              f"{out['ratio_reslice_vs_bare']:.2f}")
    print(summary.table())
    print("peak RSS sampled (MiB):", out["peak_rss_mb_sampled"])
    print("load average (1 min) during the run:", out["load_average_1min"])
    print("disk (GB):", {n: round(b / 1e9, 2) for n, b in disk.items()},
          f"compression of hu in the cohort store: {out['compression_ratio_cohort']:.2f}x")
    print(f"\npipeline {total:.1f} s for {files} files "
          f"({out['seconds_per_input_slice'] * 1000:.1f} ms per input slice)")
    out["stages_run"] = stages
    (work / f"scale-{'-'.join(stages)}.json").write_text(json.dumps(out, indent=1, default=str))
    if not a.keep:
        for stale in (["cohort.zarr"] if "ingest" in stages else []) + ["fine.zarr"]:
            shutil.rmtree(work / stale, ignore_errors=True)


if __name__ == "__main__":
    main()
