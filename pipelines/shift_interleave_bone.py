"""Real-data check of ctvol.shift_interleave (docs/shift_interleave.md): bone masks x5 along z.

S21570/S2010 (5 mm) and S21570/S2020 (1 mm) are two reconstructions of one
acquisition. Segment bone on the 5 mm series, refine the mask x5 along z by
shift-and-interleave, and compare with the same segmenter on the real 1 mm
slices at the same z positions (Dice), against nearest-neighbour and linear
(threshold 0.5) upsampling of the 5 mm mask. The same comparison on a
"decimated" 5 mm series (every 5th 1 mm slice: thin samples, no partial-volume
averaging) separates the method from the thick-slice effect.

    python pipelines/shift_interleave_bone.py THICK.zarr THIN.zarr [--model SEG_DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from train_bone_segmenter import bone_labels  # noqa: E402

K = 5


def threshold_predict(block: np.ndarray) -> np.ndarray:
    """The threshold segmenter as a block predictor (labels 0/1)."""
    return bone_labels(block).astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 1.0


def upsample_nearest(mask: np.ndarray, k: int) -> np.ndarray:
    n_out = (mask.shape[0] - 1) * k + 1
    return mask[np.rint(np.arange(n_out) / k).astype(int)]  # k odd: no ties


def upsample_linear(values: np.ndarray, k: int) -> np.ndarray:
    n_out = (values.shape[0] - 1) * k + 1
    pos = np.arange(n_out) / k
    i0 = np.minimum(np.floor(pos).astype(int), values.shape[0] - 2)
    w = (pos - i0)[:, None, None]
    v = values.astype(np.float32)
    return (1 - w) * v[i0] + w * v[i0 + 1]


def main() -> None:
    import dask

    import ctvol

    p = argparse.ArgumentParser()
    p.add_argument("thick")
    p.add_argument("thin")
    p.add_argument("--model", help="segmenter checkpoint (pipelines/train_bone_segmenter.py)")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args()
    dask.config.set(scheduler="threads")

    thick = ctvol.open_series(a.thick, ctvol.list_series(a.thick)[0])
    thin = ctvol.open_series(a.thin, ctvol.list_series(a.thin)[0])
    # Geometry: same in-plane grid and orientation, z positions of the fine grid on thin slices.
    assert np.array_equal(thick.y.values, thin.y.values), "in-plane rows differ"
    assert np.array_equal(thick.x.values, thin.x.values), "in-plane columns differ"
    assert thick.attrs["orientation"] == thin.attrs["orientation"]
    zt, z1 = thick.z.values, thin.z.values
    fine_z = zt[0] + np.arange((zt.size - 1) * K + 1) * (float(np.diff(zt).mean()) / K)
    match = np.searchsorted(z1, fine_z - 1e-3)
    offset = float(np.max(np.abs(z1[match] - fine_z)))
    print(f"thick: {thick.hu.shape} z {zt[0]:.2f}..{zt[-1]:.2f} mm (dz {np.diff(zt).mean():g}, "
          f"thickness {thick.attrs.get('slice_thickness')}); thin: {thin.hu.shape} "
          f"z {z1[0]:.2f}..{z1[-1]:.2f} mm; fine grid {fine_z.size} slices = thin slices "
          f"{match[0]}..{match[-1]}, max |z offset| {offset:.2e} mm")
    assert offset < 1e-3

    hu5 = thick.hu.values
    decimated = thin.isel(z=match[::K]).chunk({"z": 8})  # every 5th thin slice, at thick z
    assert np.allclose(decimated.z.values, zt)

    segmenters = {"threshold": (threshold_predict, np.uint8)}
    if a.model:
        segmenters["cnn"] = (a.model, np.float32)
    results = {"geometry": {"thick_shape": list(hu5.shape), "thin_shape": list(thin.hu.shape),
                            "fine_slices": int(fine_z.size), "thin_first": int(match[0]),
                            "max_z_offset_mm": offset}, "rows": []}
    gen = (np.arange(fine_z.size) % K) != 0
    for name, (predict, dtype) in segmenters.items():
        # k = 1: the segmenter itself, through the same graph.
        ref = ctvol.shift_interleave(thin.chunk({"z": 8}), predict, 1, dtype=dtype).values
        ref = ref[match] > 0.5
        for source, vol in (("real 5 mm", thick.chunk({"z": 8})), ("every 5th 1 mm", decimated)):
            coarse_p = ctvol.shift_interleave(vol, predict, 1, dtype=dtype).values
            coarse = coarse_p > 0.5
            t0 = time.perf_counter()
            si = ctvol.shift_interleave(vol, predict, K, axis="z", dtype=dtype).values
            t_si = time.perf_counter() - t0
            methods = {
                "shift-and-interleave": si > 0.5,
                "nearest-neighbour": upsample_nearest(coarse, K),
                "linear (mask, >0.5)": upsample_linear(coarse, K) > 0.5,
            }
            if dtype == np.float32:
                fused = ctvol.shift_interleave(vol, predict, K, fuse="mean").values
                methods["shift-and-interleave, fuse=mean"] = fused > 0.5
                methods["linear (probabilities, >0.5)"] = upsample_linear(coarse_p, K) > 0.5
            else:
                fused = ctvol.shift_interleave(vol, predict, K, fuse="vote", dtype=dtype).values
                methods["shift-and-interleave, fuse=vote"] = fused > 0
            for m, mask in methods.items():
                row = {"segmenter": name, "input": source, "method": m,
                       "dice_all": dice(mask, ref), "dice_generated": dice(mask[gen], ref[gen]),
                       "dice_kept": dice(mask[~gen], ref[~gen])}
                results["rows"].append(row)
                print(f"{name:9s} | {source:14s} | {m:34s} | all {row['dice_all']:.4f} | "
                      f"generated {row['dice_generated']:.4f} | kept {row['dice_kept']:.4f}",
                      flush=True)
            print(f"  (shift_interleave x{K} on {vol.hu.shape}: {t_si:.1f} s, 2 threads)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
