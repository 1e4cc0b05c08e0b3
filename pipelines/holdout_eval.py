"""Hold-out check of a reslice model against linear interpolation (public API only).

The protocol of the paper, on the validation z-block of a single-series store
(the slices ``PairWindows(split="val")`` uses, never seen in training): keep
every k-th acquired slice, generate the ones between with each method, and
compare every generated slice with the real slice it replaces, on intensities
clipped to [-1024, 1024] HU and mapped to [0, 1] (data range 1.0): PSNR, SSIM
(scikit-image defaults), MSE; paired t-test (scipy.stats.ttest_rel) of U-net
against linear on the same slices.

    python pipelines/holdout_eval.py STORE MODEL_DIR [--factor 3] [--val-fraction 0.3]

The full evaluation stage (Dask aggregations, reports, figures) is issue 5;
this is the small table a model card needs.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy import stats
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

import ctvol
from ctvol.intensity import to_unit


def holdout(store: str, model: str, factor: int, val_fraction: float = 0.3) -> dict:
    (key,) = ctvol.list_series(store)
    ds = ctvol.open_series(store, key)
    n = ds.sizes["z"]
    cut = int(round(n * (1 - val_fraction)))
    block = ds.isel(z=slice(cut, n))
    m = (block.sizes["z"] - 1) // factor * factor + 1  # whole groups of k
    block = block.isel(z=slice(0, m))
    kept = block.isel(z=slice(None, None, factor))
    real = to_unit(block.hu.values)
    results = {}
    for method in ("linear", "unet"):
        out = ctvol.reslice(kept, factor, method=method,
                            model=model if method == "unet" else None)
        gen = out.generated.values
        pred = to_unit(out.hu.values)
        rows = [(peak_signal_noise_ratio(t, p, data_range=1.0),
                 structural_similarity(t, p, data_range=1.0),
                 mean_squared_error(t, p)) for t, p in zip(real[gen], pred[gen], strict=True)]
        results[method] = np.array(rows)
    table = {"series": key, "factor": factor, "slices_held_out": int(m),
             "generated_slices": int(results["unet"].shape[0]), "metrics": {}}
    for j, name in enumerate(("psnr", "ssim", "mse")):
        u, li = results["unet"][:, j], results["linear"][:, j]
        t = stats.ttest_rel(u, li)
        table["metrics"][name] = {"unet_mean": float(u.mean()), "unet_sd": float(u.std(ddof=1)),
                                  "linear_mean": float(li.mean()),
                                  "linear_sd": float(li.std(ddof=1)),
                                  "t": float(t.statistic), "p": float(t.pvalue)}
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("store")
    p.add_argument("model")
    p.add_argument("--factor", type=int, default=3)
    p.add_argument("--val-fraction", type=float, default=0.3)
    a = p.parse_args()
    print(json.dumps(holdout(a.store, a.model, a.factor, a.val_fraction), indent=2))


if __name__ == "__main__":
    main()
