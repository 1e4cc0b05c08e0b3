"""The one epoch loop of every trainer: :func:`ctvol.train`, :func:`ctvol.train_inplane`
and the slice classifier and localizer (:func:`ctvol.curation.train_classifier`,
:func:`ctvol.curation.train_localizer`).

Every trainer writes the same kind of output folder (``last/`` with the
optimiser state for an exact resume, the best epoch's checkpoint, ``log.csv``
with one row per epoch), draws every random number of epoch ``e`` from
``(seed, e)``, and keeps the epoch with the lowest validation loss (or the
highest value of a chosen validation metric). What differs between them is a
:class:`Kind`: the loss, what validation measures, where the best checkpoint
goes and how it is written.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import time
from collections.abc import Callable, Sequence
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
    save : callable
        ``save(model, folder)`` writes the best checkpoint.
    metrics : sequence of str
        Names of the validation metrics: the log columns after ``val_loss``,
        and keys of the model's provenance.
    keep : callable
        ``keep(x, output, target)`` of one validation batch (CPU tensors, the
        output as float32) → a tuple of numpy arrays to keep.
    measure : callable
        The kept arrays, each concatenated over the batches → ``{metric: value}``.
    describe : callable
        ``{metric: value}`` → the metrics' part of a progress line.
    loss_per_sample : bool
        Validation loss averaged over samples (else: the mean of batch means).
    digits : int
        Decimals of the losses in the progress lines.
    image_targets : bool
        Targets are images transformed with the inputs by the augmentation
        (else: labels, left as they are).
    best : str
        The best checkpoint's folder, relative to the output folder (``"."``:
        the output folder itself).
    """

    loss: Callable[[Any, Any], Any]
    save: Callable[[Any, pathlib.Path], Any]
    metrics: Sequence[str]
    keep: Callable[[Any, Any, Any], tuple[np.ndarray, ...]]
    measure: Callable[..., dict[str, float]]
    describe: Callable[[dict[str, float]], str]
    loss_per_sample: bool
    digits: int
    image_targets: bool = True
    best: str = "best"


def image_kind(*, loss: Callable[[Any, Any], Any], baseline: str,
               baseline_of: Callable[[Any], np.ndarray], save: Callable[[Any, pathlib.Path], Any],
               loss_per_sample: bool, digits: int) -> Kind:
    """The kind of the U-net trainers: validation PSNR/SSIM of the network and of
    a classical ``baseline`` (``"linear"``, ``"bilinear"``) computed by
    ``baseline_of(input batch)`` (numpy, as the target)."""
    names = ["val_psnr_unet", "val_ssim_unet", f"val_psnr_{baseline}", f"val_ssim_{baseline}"]

    def keep(x: Any, p: Any, y: Any) -> tuple[np.ndarray, ...]:
        return p.numpy(), baseline_of(x), y.numpy()

    def measure(pred: np.ndarray, base: np.ndarray, target: np.ndarray) -> dict[str, float]:
        return dict(zip(names, (*psnr_ssim(pred, target), *psnr_ssim(base, target)), strict=True))

    def describe(m: dict[str, float]) -> str:
        u, b = m, baseline
        return (f"PSNR unet {u['val_psnr_unet']:.2f} {b} {u[f'val_psnr_{b}']:.2f} | SSIM unet "
                f"{u['val_ssim_unet']:.4f} {b} {u[f'val_ssim_{b}']:.4f}")

    return Kind(loss=loss, save=save, metrics=names, keep=keep, measure=measure,
                describe=describe, loss_per_sample=loss_per_sample, digits=digits)


def log_columns(metrics: Sequence[str]) -> list[str]:
    """The header of ``log.csv``."""
    return ["epoch", "train_loss", "val_loss", *metrics, "seconds"]


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
          last: pathlib.Path, load: Callable[[pathlib.Path], Any],
          channels_last: bool = True) -> tuple[Any, Any, int, float]:
    """The seeded network on ``dev`` (channels-last unless ``channels_last`` is
    False), its Adam optimiser, the epochs done and the best validation score so
    far (on ``resume``: from ``last``)."""
    import torch

    torch.manual_seed(seed)
    net = make_net().to(torch.device(dev))
    if channels_last:
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
        select: str | None = None) -> None:
    """Run epochs ``start`` .. ``epochs - 1``: train, validate, log, keep the best and last.

    ``train_set`` has ``set_epoch(epoch)`` (its draws of that epoch).
    ``val_set``: None validates nothing (the log's validation columns are NaN)
    and keeps the last epoch as the best.
    ``augment``: :func:`ctvol.training.random_affine` keywords, or None for none.
    ``select``: None keeps the epoch with the lowest validation loss, a metric
    name (``"val_psnr_unet"``) the one with its highest value (``best`` and the
    resume state hold the score minimised: the loss, or minus the metric).
    """
    import torch

    if select is not None and select not in kind.metrics:
        raise OptionError(f"select must be None or one of {list(kind.metrics)}, got {select!r}")
    net = model.net
    cl = torch.channels_last if model.channels_last else torch.contiguous_format
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "last"
    log_path = out_dir / "log.csv"
    if not resume or not log_path.exists():
        with open(log_path, "w", newline="") as fh:
            csv.writer(fh).writerow(log_columns(kind.metrics))
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
            if augment is not None and kind.image_targets:
                x, y = random_affine(x, y, generator=aug_gen, **augment)
            elif augment is not None:  # a label is no image: transform the inputs only
                x, _ = random_affine(x, x[:, :0], generator=aug_gen, **augment)
            x = x.contiguous(memory_format=cl)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and dev == "cuda"):
                loss = kind.loss(net(x), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        net.eval()
        val_loss, metrics = validate(kind, net, val_set, cl, opts)
        row = [epoch + 1, float(np.mean(losses)), val_loss, *(metrics[m] for m in kind.metrics),
               round(time.perf_counter() - t0, 2)]
        with open(log_path, "a", newline="") as fh:
            csv.writer(fh).writerow(row)
        if progress:
            d = kind.digits
            print(f"epoch {epoch + 1}/{epochs}: train {row[1]:.{d}f} val {val_loss:.{d}f} | "
                  f"{kind.describe(metrics)} | {row[-1]} s", flush=True)
        model.provenance.update({"epochs": epoch + 1, "val_loss": val_loss, **metrics})
        score = val_loss if select is None else -metrics[select]
        if val_set is None or score < best:
            best = score
            kind.save(model, out_dir / kind.best)
        save_state(last, model, optimizer, {"epoch": epoch + 1, "best_val_loss": best})


def validate(kind: Kind, net: Any, val_set: Any, memory_format: Any,
             opts: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """The validation loss and metrics of ``net`` on ``val_set`` (NaN without one)."""
    import torch

    if val_set is None:
        return float("nan"), dict.fromkeys(kind.metrics, float("nan"))
    losses, kept, n = [], [], 0
    with torch.inference_mode():
        for x, y in loader(val_set, 0, False, **opts):
            p = net(x.to(opts["dev"]).contiguous(memory_format=memory_format)).float().cpu()
            batch_loss = float(kind.loss(p, y))
            losses.append(batch_loss * len(y) if kind.loss_per_sample else batch_loss)
            kept.append(kind.keep(x, p, y))
            n += len(y)
    val_loss = float(np.sum(losses) / n) if kind.loss_per_sample else float(np.mean(losses))
    return val_loss, kind.measure(*(np.concatenate(a) for a in zip(*kept, strict=True)))
