"""Issue 8, in-plane half, on real CT: U-net vs bilinear 2x super-resolution on S2020.

Composed from the public API only. The volume (140 slices, 512², 0.451 mm) is
the high-resolution truth; its 2x area-downsampled copy (256², 0.902 mm) is
the low-resolution input. Training uses slices 0-91 (a guard of 6 slices),
evaluation the held-out block 98-139.

    ctvol ingest ../shared/data/dcm_qa_ct_philips/S21570/S2020 -o s2020.zarr --scheduler threads
    python pipelines/inplane_s2020.py train s2020.zarr -o models/inplane-x2 --epochs 12
    python pipelines/inplane_s2020.py evaluate s2020.zarr --model models/inplane-x2/last -o report

``evaluate`` writes ``report/inplane.json`` (PSNR/SSIM of both methods on the
held-out block, BA/TA Bland-Altman of bilinear-vs-HR and U-net-vs-HR) and
the Bland-Altman figures.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

FACTOR = 2
HELD_OUT = slice(98, 140)
BONE_HU = 300.0  # BA/TA threshold (HU)
SIGMA_HR = 1.2  # Gaussian blur in HR pixels (the study's sigma)
TISSUE_HU = -500.0  # TA: the head (blurred value >= -500 HU), not the air around it


def train(args: argparse.Namespace) -> int:
    import torch

    import ctvol

    # One intra-op thread: on a shared 2-core machine two threads ran a step
    # 5x slower (threads waiting on each other when one is descheduled).
    torch.set_num_threads(args.threads)

    key = ctvol.list_series(args.store)[0]
    model = ctvol.train_inplane(
        args.store, FACTOR, hr=key, epochs=args.epochs, out=args.out, loss=args.loss,
        norm="window", crop=128, batch_size=4, learning_rate=1e-3, repeats=args.repeats,
        augment={"rotation_deg": 0.0, "shift": 0.0, "zoom": 0.0},  # flips only
        resume=args.resume, progress=True, seed=0)
    print(model)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    import dask
    import numpy as np

    import ctvol
    from ctvol.metrics import METRICS, map_slice_metrics
    from ctvol.morphometry import ba_ta, bland_altman

    key = ctvol.list_series(args.store)[0]
    held = slice(HELD_OUT.start, HELD_OUT.start + args.max_slices if args.max_slices
                 else HELD_OUT.stop)
    hr = ctvol.open_series(args.store, key).isel(z=held)
    low = ctvol.downsample_inplane(hr, FACTOR)
    methods = {"bilinear": ctvol.upsample_inplane(low, FACTOR, method="bilinear"),
               "unet": ctvol.upsample_inplane(low, FACTOR, model=args.model)}
    metrics = map_slice_metrics(hr.hu.data, *(m.hu.data for m in methods.values()))
    fractions = {name: ba_ta(ds, sigma=SIGMA_HR, threshold=BONE_HU, tissue=TISSUE_HU)
                 for name, ds in {"hr": hr, **methods}.items()}
    fractions["lr"] = ba_ta(low, sigma=SIGMA_HR / FACTOR, threshold=BONE_HU, tissue=TISSUE_HU)
    with dask.config.set(scheduler="threads"):
        metrics, fractions = dask.compute(metrics, fractions)
    out = pathlib.Path(args.output)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    result = {"series": key, "slices": [held.start, held.stop - 1], "factor": FACTOR,
              "model": str(args.model), "bone_threshold_hu": BONE_HU, "sigma_hr_px": SIGMA_HR,
              "methods": {}}
    truth = fractions["hr"].values
    for j, name in enumerate(methods):
        per = {m: metrics[:, j, i] for i, m in enumerate(METRICS)}
        agree = bland_altman(fractions[name].values, truth)
        agree.figure(title=f"BA/TA, {name} (x{FACTOR}) vs HR, S2020 slices "
                     f"{held.start}-{held.stop - 1}").savefig(
            out / "figures" / f"bland_altman_{name}.png", dpi=120)
        result["methods"][name] = {
            "psnr_mean": float(np.mean(per["psnr"])), "psnr_sd": float(np.std(per["psnr"])),
            "ssim_mean": float(np.mean(per["ssim"])), "ssim_sd": float(np.std(per["ssim"])),
            "mse_mean": float(np.mean(per["mse"])),
            "ba_ta": agree.as_dict()}
    lr_agree = bland_altman(fractions["lr"].values, truth)
    result["methods"]["lr_native"] = {"ba_ta": lr_agree.as_dict()}
    from scipy import stats

    d = metrics[:, 1, 0] - metrics[:, 0, 0]
    result["paired_psnr_unet_minus_bilinear"] = {
        "mean": float(d.mean()), "t_test_p": float(stats.ttest_rel(metrics[:, 1, 0],
                                                                   metrics[:, 0, 0]).pvalue),
        "slices_unet_better": int((d > 0).sum()), "n": int(d.size)}
    result["ba_ta_hr_mean"] = float(truth.mean())
    (out / "inplane.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("store")
    t.add_argument("-o", "--out", required=True)
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--repeats", type=int, default=8, help="crops per training slice per epoch")
    t.add_argument("--loss", choices=["l1", "bce"], default="l1")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    t.set_defaults(func=train)
    e = sub.add_parser("evaluate")
    e.add_argument("store")
    e.add_argument("--model", required=True)
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--max-slices", type=int, default=None, help="smoke test: fewer slices")
    e.set_defaults(func=evaluate)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
