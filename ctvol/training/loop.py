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

import csv
import json
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["train"]

LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "val_psnr_unet", "val_ssim_unet",
               "val_psnr_linear", "val_ssim_linear", "seconds"]


def _save_state(folder: pathlib.Path, model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from ..models import save_model

    tmp = folder.with_name(folder.name + ".tmp")
    save_model(model, tmp)
    opt = optimizer.state_dict()
    tensors = {f"{i}.{name}": v.detach().cpu().contiguous()
               for i, s in opt["state"].items() for name, v in s.items()}
    save_file(tensors, str(tmp / "train_state.safetensors"))
    (tmp / "train_state.json").write_text(json.dumps(
        {**state, "param_groups": opt["param_groups"]}, indent=2))
    # Replace the previous checkpoint only once the new one is complete.
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        folder.rename(old)
        tmp.rename(folder)
        for p in old.iterdir():
            p.unlink()
        old.rmdir()
    else:
        tmp.rename(folder)


def _load_state(folder: pathlib.Path, optimizer: Any) -> dict[str, Any]:
    from safetensors.torch import load_file

    meta = json.loads((folder / "train_state.json").read_text())
    tensors = load_file(str(folder / "train_state.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        i, key = name.split(".", 1)
        state.setdefault(int(i), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


def _metrics(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Mean PSNR and SSIM (scikit-image, data range 1.0) over target slices."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr, ssim = [], []
    for p, t in zip(pred.reshape(-1, *pred.shape[-2:]), target.reshape(-1, *target.shape[-2:]),
                    strict=True):
        psnr.append(peak_signal_noise_ratio(t, p, data_range=1.0))
        ssim.append(structural_similarity(t, p, data_range=1.0))
    return float(np.mean(psnr)), float(np.mean(ssim))


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
    from torch.utils.data import DataLoader, Subset

    from ..inference import resolve_device
    from ..models import ResliceModel, save_model
    from ..models.unet import UNet, linear_between
    from .augment import random_affine
    from .windows import PairWindows

    out_dir = pathlib.Path(out)
    last = out_dir / "last"
    if (last / "config.json").exists():
        have = json.loads((last / "config.json").read_text())
        if int(have["factor"]) != factor:
            raise ValueError(
                f"{out_dir} holds a checkpoint for factor {have['factor']}, not {factor}; "
                "choose another output folder"
            )
        if not resume:
            raise FileExistsError(
                f"{out_dir} already holds a checkpoint (epoch "
                f"{json.loads((last / 'train_state.json').read_text())['epoch']}); "
                "pass resume=True (--resume) to continue it, or choose another folder"
            )
    elif resume:
        raise FileNotFoundError(f"nothing to resume: no checkpoint in {last}")

    dev = resolve_device(device)
    common: dict[str, Any] = {"strides": strides, "crop": crop, "partitions": partitions,
                              "skip_blank": skip_blank}
    train_set = PairWindows(store, factor, split="train", seed=seed, **common)
    val_set = PairWindows(store, factor, split="val", seed=seed + 1, **common)
    torch.manual_seed(seed)
    arch = {"depth": 4, "base": 16, "norm": "batch", "output": "sigmoid", **(architecture or {})}
    net = UNet(factor, **arch).to(torch.device(dev))
    net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    start, best = 0, float("inf")
    if resume:
        from ..models import load_model

        net.load_state_dict(load_model(last).net.state_dict())
        meta = _load_state(last, optimizer)
        start, best = int(meta["epoch"]), float(meta["best_val_loss"])
    provenance = {"store": str(store), "factor": factor, "crop": crop, "strides": list(strides),
                  "batch_size": batch_size, "lr": lr, "seed": seed, "augment": augment,
                  "train_windows": len(train_set), "val_windows": len(val_set),
                  # first and last slice index each training series contributed
                  # (ctvol.evaluate warns when evaluating on them)
                  "training_slices": _slices_used(train_set),
                  "selection_slices": _slices_used(val_set), "partitions": partitions,
                  "blank_windows_skipped": train_set.blank_skipped + val_set.blank_skipped}
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "log.csv"
    if not resume or not log_path.exists():
        with open(log_path, "w", newline="") as fh:
            csv.writer(fh).writerow(LOG_COLUMNS)

    def loader(ds: Any, epoch: int, shuffle: bool) -> Any:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        if shuffle and max_windows is not None and len(ds) > max_windows:
            idx = torch.randperm(len(ds), generator=g)[:max_windows].tolist()
            ds = Subset(ds, idx)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g,
                          num_workers=num_workers, pin_memory=dev.startswith("cuda"),
                          persistent_workers=False)

    model = ResliceModel(net, provenance=provenance)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        net.train()
        train_set.set_epoch(epoch)
        aug_gen = torch.Generator().manual_seed(seed * 7_919 + epoch)
        losses = []
        batches = loader(train_set, epoch, shuffle=True)
        for x, y in batches:
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            if augment:
                x, y = random_affine(x, y, generator=aug_gen)
            x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and dev == "cuda"):
                loss = torch.nn.functional.l1_loss(net(x), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        net.eval()
        vl, preds, lins, targets = [], [], [], []
        with torch.inference_mode():
            for x, y in loader(val_set, 0, shuffle=False):
                p = net(x.to(dev).contiguous(memory_format=torch.channels_last)).float().cpu()
                vl.append(float(torch.nn.functional.l1_loss(p, y)))
                preds.append(p.numpy())
                lins.append(linear_between(x, factor).numpy())
                targets.append(y.numpy())
        pred, lin, tgt = (np.concatenate(a) for a in (preds, lins, targets))
        psnr_u, ssim_u = _metrics(pred, tgt)
        psnr_l, ssim_l = _metrics(lin, tgt)
        val_loss = float(np.mean(vl))
        row = [epoch + 1, float(np.mean(losses)), val_loss, psnr_u, ssim_u, psnr_l, ssim_l,
               round(time.perf_counter() - t0, 2)]
        with open(log_path, "a", newline="") as fh:
            csv.writer(fh).writerow(row)
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: train {row[1]:.4f} val {val_loss:.4f} | "
                  f"PSNR unet {psnr_u:.2f} linear {psnr_l:.2f} | SSIM unet {ssim_u:.4f} "
                  f"linear {ssim_l:.4f} | {row[-1]} s", flush=True)
        model.provenance.update({"epochs": epoch + 1, "val_loss": val_loss,
                                 "val_psnr_unet": psnr_u, "val_psnr_linear": psnr_l,
                                 "val_ssim_unet": ssim_u, "val_ssim_linear": ssim_l})
        if val_loss < best:
            best = val_loss
            save_model(model, out_dir / "best")
        _save_state(last, model, optimizer, {"epoch": epoch + 1, "best_val_loss": best})
    from ..models import load_model

    return load_model(out_dir / "best")
