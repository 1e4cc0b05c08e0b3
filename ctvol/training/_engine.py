"""The epoch loop shared by :func:`ctvol.train` and :func:`ctvol.train_inplane`.

Both write the same output folder (``last/`` with the optimiser state for an
exact resume, ``best/``, ``log.csv``), draw every random number of epoch ``e``
from ``(seed, e)``, and validate against a classical baseline (linear between
slices, bilinear in-plane). What differs between them is a :class:`Kind`.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import NoInputError, OptionError, OutputExistsError
from ..models import save_model
from .augment import random_affine


@dataclass(frozen=True)
class Kind:
    """What one trainer does differently in the shared epoch loop.

    Parameters
    ----------
    loss : callable
        ``loss(output, target)`` → scalar tensor, for training and validation.
    baseline : str
        Name of the classical method in the log columns, the progress lines
        and the provenance (``"linear"``, ``"bilinear"``).
    baseline_of : callable
        A validation input batch → the baseline's output (numpy, as the target).
    save : callable
        ``save(model, folder)`` writes ``best/``.
    loss_per_sample : bool
        Validation loss averaged over samples (else: the mean of batch means).
    digits : int
        Decimals of the losses in the progress lines.
    """

    loss: Callable[[Any, Any], Any]
    baseline: str
    baseline_of: Callable[[Any], np.ndarray]
    save: Callable[[Any, pathlib.Path], Any]
    loss_per_sample: bool
    digits: int


def log_columns(baseline: str) -> list[str]:
    """The header of ``log.csv``."""
    return ["epoch", "train_loss", "val_loss", "val_psnr_unet", "val_ssim_unet",
            f"val_psnr_{baseline}", f"val_ssim_{baseline}", "seconds"]


def save_state(folder: pathlib.Path, model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Write the checkpoint and the optimiser state (with ``state``) to ``folder``."""
    from safetensors.torch import save_file

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


def load_state(folder: pathlib.Path, optimizer: Any) -> dict[str, Any]:
    """Restore the optimiser from ``folder``; return the saved state (epoch, best loss)."""
    from safetensors.torch import load_file

    meta = json.loads((folder / "train_state.json").read_text())
    tensors = load_file(str(folder / "train_state.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        i, key = name.split(".", 1)
        state.setdefault(int(i), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


def psnr_ssim(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Mean PSNR and SSIM (scikit-image, data range 1.0) over target slices."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr, ssim = [], []
    for p, t in zip(pred.reshape(-1, *pred.shape[-2:]), target.reshape(-1, *target.shape[-2:]),
                    strict=True):
        psnr.append(peak_signal_noise_ratio(t, p, data_range=1.0))
        ssim.append(structural_similarity(t, p, data_range=1.0))
    return float(np.mean(psnr)), float(np.mean(ssim))


def check_out(out: str | os.PathLike[str], resume: bool,
              mismatch: Callable[[dict[str, Any]], str | None], resume_hint: str) -> pathlib.Path:
    """The output folder, checked against ``resume``.

    ``mismatch(config of out/last)`` says why that checkpoint cannot be
    continued (another kind or factor), or None.
    """
    out_dir = pathlib.Path(out)
    last = out_dir / "last"
    if (last / "config.json").exists():
        problem = mismatch(json.loads((last / "config.json").read_text()))
        if problem:
            raise OptionError(f"{out_dir} {problem}; choose another output folder")
        if not resume:
            raise OutputExistsError(
                f"{out_dir} already holds a checkpoint (epoch "
                f"{json.loads((last / 'train_state.json').read_text())['epoch']}); "
                f"pass {resume_hint} to continue it, or choose another folder")
    elif resume:
        raise NoInputError(f"nothing to resume: no checkpoint in {last}")
    return out_dir


def start(make_net: Callable[[], Any], *, seed: int, dev: str, lr: float, resume: bool,
          last: pathlib.Path, load: Callable[[pathlib.Path], Any]) -> tuple[Any, Any, int, float]:
    """The seeded network on ``dev`` (channels-last), its Adam optimiser, the epochs
    done and the best validation loss so far (on ``resume``: from ``last``)."""
    import torch

    torch.manual_seed(seed)
    net = make_net().to(torch.device(dev))
    net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    if not resume:
        return net, optimizer, 0, float("inf")
    net.load_state_dict(load(last).net.state_dict())
    meta = load_state(last, optimizer)
    return net, optimizer, int(meta["epoch"]), float(meta["best_val_loss"])


def loader(ds: Any, epoch: int, shuffle: bool, *, seed: int, batch_size: int,
           num_workers: int, dev: str, max_windows: int | None = None) -> Any:
    """A DataLoader whose order (and subset of ``max_windows``) comes from ``(seed, epoch)``."""
    import torch
    from torch.utils.data import DataLoader, Subset

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if shuffle and max_windows is not None and len(ds) > max_windows:
        idx = torch.randperm(len(ds), generator=g)[:max_windows].tolist()
        ds = Subset(ds, idx)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g,
                      num_workers=num_workers, pin_memory=dev.startswith("cuda"),
                      persistent_workers=False)


def fit(kind: Kind, model: Any, optimizer: Any, train_set: Any, val_set: Any, *,
        out_dir: pathlib.Path, start: int, best: float, epochs: int, resume: bool,
        augment: dict[str, Any] | None, seed: int, batch_size: int, num_workers: int,
        dev: str, amp: bool, progress: bool, max_windows: int | None = None,
        select: str = "loss") -> None:
    """Run epochs ``start`` .. ``epochs - 1``: train, validate, log, keep the best and last.

    ``augment``: :func:`ctvol.training.random_affine` keywords, or None for none.
    ``select``: ``"loss"`` keeps the epoch with the lowest validation loss,
    ``"psnr"`` the one with the highest validation PSNR (``best`` and the
    resume state hold the score minimised: the loss, or minus the PSNR).
    """
    import torch

    net = model.net
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "last"
    log_path = out_dir / "log.csv"
    if not resume or not log_path.exists():
        with open(log_path, "w", newline="") as fh:
            csv.writer(fh).writerow(log_columns(kind.baseline))
    opts: dict[str, Any] = {"seed": seed, "batch_size": batch_size, "num_workers": num_workers,
                            "dev": dev}
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        net.train()
        train_set.set_epoch(epoch)
        aug_gen = torch.Generator().manual_seed(seed * 7_919 + epoch)
        losses = []
        for x, y in loader(train_set, epoch, True, max_windows=max_windows, **opts):
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            if augment is not None:
                x, y = random_affine(x, y, generator=aug_gen, **augment)
            x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and dev == "cuda"):
                loss = kind.loss(net(x), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        net.eval()
        vl, preds, bases, targets = [], [], [], []
        with torch.inference_mode():
            for x, y in loader(val_set, 0, False, **opts):
                p = net(x.to(dev).contiguous(memory_format=torch.channels_last)).float().cpu()
                batch_loss = float(kind.loss(p, y))
                vl.append(batch_loss * len(y) if kind.loss_per_sample else batch_loss)
                preds.append(p.numpy())
                bases.append(kind.baseline_of(x))
                targets.append(y.numpy())
        pred, base, tgt = (np.concatenate(a) for a in (preds, bases, targets))
        psnr_u, ssim_u = psnr_ssim(pred, tgt)
        psnr_b, ssim_b = psnr_ssim(base, tgt)
        val_loss = float(np.sum(vl) / len(tgt)) if kind.loss_per_sample else float(np.mean(vl))
        row = [epoch + 1, float(np.mean(losses)), val_loss, psnr_u, ssim_u, psnr_b, ssim_b,
               round(time.perf_counter() - t0, 2)]
        with open(log_path, "a", newline="") as fh:
            csv.writer(fh).writerow(row)
        b, d = kind.baseline, kind.digits
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: train {row[1]:.{d}f} val {val_loss:.{d}f} | "
                  f"PSNR unet {psnr_u:.2f} {b} {psnr_b:.2f} | SSIM unet {ssim_u:.4f} "
                  f"{b} {ssim_b:.4f} | {row[-1]} s", flush=True)
        model.provenance.update({"epochs": epoch + 1, "val_loss": val_loss,
                                 "val_psnr_unet": psnr_u, f"val_psnr_{b}": psnr_b,
                                 "val_ssim_unet": ssim_u, f"val_ssim_{b}": ssim_b})
        score = val_loss if select == "loss" else -psnr_u
        if score < best:
            best = score
            kind.save(model, out_dir / "best")
        save_state(last, model, optimizer, {"epoch": epoch + 1, "best_val_loss": best})
