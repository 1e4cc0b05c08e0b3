"""``ctvol.train``: Adam + mean absolute error on slice-pair windows, resumable exactly.

Output folder::

    out/last/   model.safetensors, config.json       (the reslice checkpoint)
                train_state.safetensors, train_state.json   (optimiser, epoch)
    out/best/   the checkpoint of the epoch with the lowest validation loss
    out/log.csv one row per epoch: losses, PSNR/SSIM of U-net and linear

Every random draw of epoch ``e`` (shuffling, crops, augmentation) comes from
``(seed, e)``, so a run resumed after epoch ``e`` continues exactly as an
uninterrupted one (tested: 2 epochs straight == 1 + resume 1 on CPU).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ._engine import Kind, check_out, fit, start

__all__ = ["train"]


def _slices_used(ds: Any) -> dict[str, dict[str, Any]]:
    """Per training series: first/last slice index and their z (mm) that windows read.

    z positions identify the slices in any store holding the same series (a
    subset has other indices), so ``ctvol.evaluate`` compares those.
    """
    import ctvol

    used: dict[str, list[int]] = {}
    for w in ds.windows:
        last = w.start + ds.factor * w.step
        lo, hi = used.get(w.key, [w.start, last])
        used[w.key] = [min(lo, w.start), max(hi, last)]
    out: dict[str, dict[str, Any]] = {}
    for key, (lo, hi) in used.items():
        z = ctvol.open_series(ds.store, key, storage_options=ds.storage_options)["z"].values
        out[key] = {"index": [lo, hi], "z_mm": [float(z[lo]), float(z[hi])]}
    return out


def train(
    store: str | os.PathLike[str],
    factor: int,
    *,
    epochs: int,
    out: str | os.PathLike[str],
    batch_size: int = 4,
    lr: float = 1e-3,
    crop: int | None = 128,
    strides: Sequence[int] = (1, 2),
    architecture: dict[str, Any] | None = None,
    augment: bool = True,
    device: str | None = None,
    amp: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    resume: bool = False,
    max_windows: int | None = None,
    partitions: str = "train-val",
    skip_blank: bool = True,
    progress: bool = False,
) -> Any:
    """Train a reslice U-net on a cohort store; returns the best model.

    Parameters
    ----------
    store : path or URL
        Cohort store (:func:`ctvol.ingest`).
    factor : int
        Re-slice factor k.
    epochs : int
        Total epochs (a resumed run continues up to this number).
    out : path
        Output folder (``last/``, ``best/``, ``log.csv``).
    batch_size, lr : int, float
        Adam on the mean absolute error (the paper's defaults: lr 1e-3).
    crop : int or None, default 128
        Training crop (pixels); validation uses fixed crops of the same size.
    strides : (1, 2)
        Window strides k and 2k (:class:`PairWindows`).
    architecture : dict, optional
        :class:`ctvol.models.unet.UNet` arguments (depth, base, norm, output).
    augment : bool
        The paper's augmentation (:func:`random_affine`).
    device : str, optional
        Default CUDA when available.
    amp : bool
        bf16 autocast on CUDA.
    num_workers : int
        DataLoader worker processes (each opens its own store handles).
    seed : int
        Seeds initialisation and every epoch's draws.
    resume : bool
        Continue from ``out/last``.
    max_windows : int, optional
        Cap on training windows per epoch (a random subset each epoch).
    partitions : {"train-val", "train-val-test"}
        ``"train-val-test"`` keeps a test partition (10 %) that neither
        training nor the choice of the best epoch sees (:class:`PairWindows`);
        the checkpoint records its z range for ``ctvol evaluate``.
    skip_blank : bool, default True
        Leave out windows touching slices that ``ctvol curate`` labelled blank.

    Raises
    ------
    ValueError
        No windows for the factor; ``out`` holds a checkpoint for another factor.
    FileExistsError
        ``out`` holds a checkpoint and ``resume`` is False.
    """
    import torch

    from ..inference import resolve_device
    from ..models import ResliceModel, load_model, save_model
    from ..models.unet import UNet, linear_between
    from .windows import PairWindows

    def mismatch(have: dict[str, Any]) -> str | None:
        if int(have["factor"]) != factor:
            return f"holds a checkpoint for factor {have['factor']}, not {factor}"
        return None

    out_dir = check_out(out, resume, mismatch, "resume=True (--resume)")
    dev = resolve_device(device)
    common: dict[str, Any] = {"strides": strides, "crop": crop, "partitions": partitions,
                              "skip_blank": skip_blank}
    train_set = PairWindows(store, factor, split="train", seed=seed, **common)
    val_set = PairWindows(store, factor, split="val", seed=seed + 1, **common)
    arch = {"depth": 4, "base": 16, "norm": "batch", "output": "sigmoid", **(architecture or {})}
    net, optimizer, done, best = start(lambda: UNet(factor, **arch), seed=seed, dev=dev, lr=lr,
                                       resume=resume, last=out_dir / "last", load=load_model)
    provenance = {"store": str(store), "factor": factor, "crop": crop, "strides": list(strides),
                  "batch_size": batch_size, "lr": lr, "seed": seed, "augment": augment,
                  "train_windows": len(train_set), "val_windows": len(val_set),
                  # first and last slice index each training series contributed
                  # (ctvol.evaluate warns when evaluating on them)
                  "training_slices": _slices_used(train_set),
                  "selection_slices": _slices_used(val_set), "partitions": partitions,
                  "blank_windows_skipped": train_set.blank_skipped + val_set.blank_skipped}
    kind = Kind(loss=torch.nn.functional.l1_loss, baseline="linear",
                baseline_of=lambda x: linear_between(x, factor).numpy(), save=save_model,
                loss_per_sample=False, digits=4)
    fit(kind, ResliceModel(net, provenance=provenance), optimizer, train_set, val_set,
        out_dir=out_dir, start=done, best=best, epochs=epochs, resume=resume,
        augment={} if augment else None, seed=seed, batch_size=batch_size,
        num_workers=num_workers, dev=dev, amp=amp, progress=progress, max_windows=max_windows)
    return load_model(out_dir / "best")
