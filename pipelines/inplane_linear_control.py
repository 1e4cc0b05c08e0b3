"""In-plane control for issue 8: the best *linear* 2x upsampler on S2020.

A least-squares filter (7x7 LR neighbourhood + offset, one per HR sub-pixel phase)
fitted on 400,000 pixels per phase of the training slices 0-91, applied to the
held-out slices 98-139 and scored as ``inplane_s2020.py evaluate`` scores its
methods. It shows how much of a learned model's gain over bilinear is linear
deconvolution of the (known, linear) area downsampling.

    python pipelines/inplane_linear_control.py s2020.zarr report/linear_ls.json
"""

from __future__ import annotations

import json
import sys

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import ctvol
from ctvol.metrics import slice_metrics
from ctvol.morphometry import ba_ta, bland_altman

R = 3  # neighbourhood radius in LR pixels
TRAIN, HELD_OUT = slice(0, 92), slice(98, 140)


def features(low: np.ndarray) -> np.ndarray:
    """(n, h, w) LR -> (n, h, w, (2R+1)²) neighbourhoods (edge-replicated)."""
    p = np.pad(low, ((0, 0), (R, R), (R, R)), mode="edge")
    return sliding_window_view(p, (2 * R + 1, 2 * R + 1), axis=(1, 2)).reshape(*low.shape, -1)


def main(store: str, out_json: str) -> None:
    key = ctvol.list_series(store)[0]
    ds = ctvol.open_series(store, key)
    hr = ds.hu.values.astype(np.float64)
    low = ctvol.downsample_inplane(ds, 2).hu.values.astype(np.float64)
    rng = np.random.default_rng(0)
    feats = features(low[TRAIN]).reshape(-1, (2 * R + 1) ** 2)
    weights = {}
    for py in (0, 1):
        for px in (0, 1):
            target = hr[TRAIN, py::2, px::2].ravel()
            idx = rng.choice(target.size, 400_000, replace=False)
            x = np.concatenate([feats[idx], np.ones((idx.size, 1))], axis=1)
            weights[py, px] = np.linalg.lstsq(x, target[idx], rcond=None)[0]
    test = features(low[HELD_OUT])
    out = np.empty_like(hr[HELD_OUT])
    for (py, px), w in weights.items():
        out[:, py::2, px::2] = test @ w[:-1] + w[-1]
    pred = np.rint(out).clip(-32768, 32767).astype(np.int16)
    m = slice_metrics(ds.hu.values[HELD_OUT], pred)
    f_hr = ba_ta(ds.isel(z=HELD_OUT), sigma=1.2, threshold=300, tissue=-500).values
    f_ls = ba_ta(pred, sigma=1.2, threshold=300, tissue=-500).values
    res = {"psnr_mean": float(m[:, 0].mean()), "psnr_sd": float(m[:, 0].std()),
           "ssim_mean": float(m[:, 1].mean()), "ba_ta": bland_altman(f_ls, f_hr).as_dict()}
    with open(out_json, "w") as fh:
        json.dump(res, fh, indent=2)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
