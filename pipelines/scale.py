"""Scale run: the cohort pipeline on a synthetic cohort of N 512² slices (public API only).

    python pipelines/scale.py WORKDIR --slices 1000 [--series-slices 100] [--workers 2]
                              [--method linear|unet] [--keep]

Writes ``WORKDIR/dicom`` (``ctvol.testing.synthetic_cohort``: series of
``--series-slices`` slices with vendor-like headers, one localizer, one
series with a missing slice, one tilted series), then runs
``pipelines/scale.yaml``-equivalent stages with ``ctvol.run``: ingest →
reslice x3 (linear by default) → evaluate (linear). Prints and saves
``WORKDIR/scale.json``: slices, seconds and slices/s per stage, total time,
peak RSS of the driver and of every worker process. The generation of the
DICOM files is timed separately and not part of the pipeline.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import threading
import time

import psutil

import ctvol
from ctvol.testing import synthetic_cohort


class PeakSampler(threading.Thread):
    """Peak RSS of this process and every descendant (Dask workers), sampled every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[str, float] = {}
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
            time.sleep(0.2)


def bare_unet_pairs_per_s(size: int, n_pairs: int = 16, batch: int = 4) -> float:
    """The bundled x4 U-net alone over random windowed pairs (channels_last, inference mode)."""
    import torch

    net = ctvol.load_model("unet-x4").net.eval().to(memory_format=torch.channels_last)
    x = torch.rand(n_pairs, 2, size, size).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        net(x[:batch])  # warm-up
        t0 = time.perf_counter()
        for s in range(0, n_pairs, batch):
            net(x[s:s + batch])
    return n_pairs / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir")
    p.add_argument("--slices", type=int, default=1000)
    p.add_argument("--series-slices", type=int, default=100)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--scheduler", default="local")
    p.add_argument("--method", default="linear", choices=["linear", "unet"])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--keep", action="store_true", help="keep the stores afterwards")
    a = p.parse_args()

    work = pathlib.Path(a.workdir)
    dicom = work / "dicom"
    n_series = max(1, a.slices // a.series_slices)
    t0 = time.perf_counter()
    if not dicom.is_dir():
        synthetic_cohort(dicom, n_series=n_series, n_slices=a.series_slices,
                         shape=(a.size, a.size), spacings=(3.0, 2.5, 5.0), seed=0)
    gen_s = time.perf_counter() - t0
    for stale in ("cohort.zarr", "fine.zarr", "report"):
        shutil.rmtree(work / stale, ignore_errors=True)
    k = 4 if a.method == "unet" else 3  # the bundled U-nets are x4 and x5
    config = {
        "inputs": [str(dicom)], "store": str(work / "cohort.zarr"),
        "ingest": {},
        "reslice": {"output": str(work / "fine.zarr"), "factor": k, "method": a.method},
        "evaluate": {"output": str(work / "report"), "factor": [k], "methods": [a.method],
                     "figures": False},
    }
    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    summary = ctvol.run(config, scheduler=a.scheduler, workers=a.workers, progress=False)
    total = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    files = sum(1 for f in dicom.rglob("*") if f.is_file())
    out = {"slices_requested": a.slices, "series": n_series, "files": files,
           "size": a.size, "method": a.method, "scheduler": a.scheduler,
           "workers": a.workers, "generate_seconds": round(gen_s, 1),
           "pipeline_seconds": round(total, 1),
           "seconds_per_input_slice": total / max(1, summary.stages[0].get("slices", 0)),
           "stages": summary.stages, "peak_rss_mb_getrusage": summary.peak_rss_mb,
           "peak_rss_mb_sampled": {k: round(v) for k, v in sampler.peak.items() if v > 50},
           "failed": summary.failed}
    if a.method == "unet":  # pairs/s of the reslice stage against the bare model, same run
        res = next(st for st in summary.stages if st["stage"] == "reslice")
        pairs = res["slices"] - res["done"]  # N-1 pairs per series
        out["reslice_pairs_per_s"] = pairs / res["seconds"]
        out["bare_model_pairs_per_s"] = bare_unet_pairs_per_s(a.size)
        out["ratio_reslice_vs_bare"] = out["reslice_pairs_per_s"] / out["bare_model_pairs_per_s"]
        print(f"U-net: reslice stage {out['reslice_pairs_per_s']:.2f} pairs/s (read, infer, "
              f"write) vs bare model {out['bare_model_pairs_per_s']:.2f} pairs/s: ratio "
              f"{out['ratio_reslice_vs_bare']:.2f}")
    print(summary.table())
    print("peak RSS sampled (MiB):", out["peak_rss_mb_sampled"])
    print(f"\npipeline {total:.1f} s for {files} files "
          f"({out['seconds_per_input_slice'] * 1000:.1f} ms per input slice)")
    (work / "scale.json").write_text(json.dumps(out, indent=1, default=str))
    if not a.keep:
        for stale in ("cohort.zarr", "fine.zarr"):
            shutil.rmtree(work / stale, ignore_errors=True)


if __name__ == "__main__":
    main()
