"""Train the small 2-D bone segmenter used in docs/shift_interleave.md (CPU, minutes).

Labels: bone = HU > 300 after an in-plane Gaussian (sigma 1 pixel, per slice),
on every slice of one thin series. The network (ctvol.models.seg_net, depth 2,
base 8) learns that rule on random 128 x 128 crops with the paper's
augmentation (ctvol.training.augment.random_affine), BCE + soft-Dice loss.

    python pipelines/train_bone_segmenter.py STORE KEY OUT [--minutes 8] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

BONE_HU = 300.0
SIGMA_PX = 1.0


def bone_labels(hu: np.ndarray) -> np.ndarray:
    """The threshold segmenter: per-slice Gaussian (sigma 1 px in-plane), then HU > 300."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(hu.astype(np.float32), sigma=(0, SIGMA_PX, SIGMA_PX))
    return smooth > BONE_HU


def main() -> None:
    import torch

    import ctvol
    from ctvol.intensity import to_unit
    from ctvol.models import SegmentModel, save_segmenter, seg_net
    from ctvol.training.augment import random_affine

    p = argparse.ArgumentParser()
    p.add_argument("store")
    p.add_argument("key")
    p.add_argument("out")
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: a shared 2-core machine is faster with one)")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    hu = ctvol.open_series(a.store, a.key).hu.values
    x_all = to_unit(hu)
    y_all = bone_labels(hu).astype(np.float32)
    net = seg_net(depth=2, base=8)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    n, h, w = hu.shape
    c = a.crop
    t0, step, losses = time.time(), 0, []
    net.train()
    while time.time() - t0 < a.minutes * 60:
        idx = rng.integers(0, n, a.batch)
        ys, xs = rng.integers(0, h - c, a.batch), rng.integers(0, w - c, a.batch)
        xb = np.stack([x_all[i, r:r + c, q:q + c] for i, r, q in zip(idx, ys, xs, strict=True)])
        yb = np.stack([y_all[i, r:r + c, q:q + c] for i, r, q in zip(idx, ys, xs, strict=True)])
        xt, yt = random_affine(torch.from_numpy(xb[:, None]), torch.from_numpy(yb[:, None]),
                               generator=gen)
        yt = (yt > 0.5).float()
        logits = net(xt)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt)
        prob = torch.sigmoid(logits)
        dice = 1 - (2 * (prob * yt).sum() + 1) / (prob.sum() + yt.sum() + 1)
        loss = bce + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            print(f"step {step} {time.time() - t0:.0f}s loss {np.mean(losses[-100:]):.4f}",
                  flush=True)
    model = SegmentModel(net, provenance={
        "task": "bone", "labels": f"HU > {BONE_HU:g} after in-plane Gaussian sigma {SIGMA_PX} px",
        "store": a.store, "series": a.key, "slices": int(n), "steps": step,
        "crop": c, "batch": a.batch, "seed": a.seed, "minutes": a.minutes})
    save_segmenter(model, a.out)
    # Agreement with the labels on the training series (whole slices).
    pred = np.concatenate([model(hu[s:s + 8]) for s in range(0, n, 8)]) > 0.5
    lab = y_all > 0.5
    dice = 2 * (pred & lab).sum() / (pred.sum() + lab.sum())
    print(f"saved {a.out}: {step} steps; Dice vs threshold labels on the training series "
          f"{dice:.4f}", flush=True)


if __name__ == "__main__":
    main()
