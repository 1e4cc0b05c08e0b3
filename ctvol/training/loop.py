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
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from .._deps import require
from ..errors import ModelError, OptionError
from ..io.store import list_series, open_series
from ..models import ResliceModel, load_model, save_model
from ..models._runtime import resolve_device
from ._engine import check_out, fit, image_kind, start
from .windows import PairWindows, check_blocks

__all__ = ["train"]


def _slices_used(ds: Any) -> dict[str, Any]:
    """Per series: the contiguous runs of slices that windows read, as slice
    indices and z (mm): ``{"index": [lo, hi], "z_mm": [...]}``, or a list of
    them when windows come from several blocks.

    z positions identify the slices in any store holding the same series (a
    subset has other indices), so ``ctvol.evaluate`` compares those.
    """
    read: dict[str, set[int]] = {}
    for w in ds.windows:
        read.setdefault(w.key, set()).update(range(w.start, w.start + ds.factor * w.step + 1))
    out: dict[str, Any] = {}
    for key, idx in read.items():
        z = open_series(ds.store, key, storage_options=ds.storage_options)["z"].values
        s = sorted(idx)
        cuts = [i + 1 for i in range(len(s) - 1) if s[i + 1] != s[i] + 1]
        runs = [(s[a], s[b - 1]) for a, b in zip([0, *cuts], [*cuts, len(s)], strict=True)]
        spans = [{"index": [lo, hi], "z_mm": [float(z[lo]), float(z[hi])]} for lo, hi in runs]
        out[key] = spans[0] if len(spans) == 1 else spans
    return out


def load_blocks(blocks: str | os.PathLike[str] | dict[str, Any], factor: int) -> dict[str, Any]:
    """A blocks spec (dict or JSON file, optional top-level ``"series"`` key), checked.

    Guard gaps must be more than 2k slices (the doubled-stride window of
    factor k spans 2k + 1 slices, so no window of one block reaches another).
    """
    import json

    spec = blocks
    if not isinstance(spec, dict):
        try:
            spec = json.loads(pathlib.Path(spec).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise OptionError(f"cannot read the blocks file {blocks}: {e}") from e
    spec = spec.get("series", spec)
    check_blocks(spec, guard=2 * factor + 1)
    return spec


def _test_slices(store: Any, blocks: dict[str, Any]) -> dict[str, Any]:
    """z ranges (mm) of the test blocks per series key present in ``store``."""
    out: dict[str, Any] = {}
    for key in list_series(store):
        ds = open_series(store, key)
        spec = blocks.get(ds.attrs.get("series_uid", key), blocks.get(key))
        if not spec or not spec.get("test"):
            continue
        z = ds["z"].values
        out[key] = [{"index": [int(lo), int(hi) - 1], "z_mm": [float(z[lo]), float(z[hi - 1])]}
                    for lo, hi in spec["test"]]
    return out


def l1_ssim_loss(output: Any, target: Any) -> Any:
    """``0.84 (1 - SSIM) + 0.16 L1`` on [0, 1] images: the mix of Zhao et al.,
    "Loss functions for image restoration with neural networks" (IEEE TCI 2017),
    with single-scale SSIM (Gaussian window 11, sigma 1.5, data range 1) from
    ``pytorch_msssim``; each generated slice is one SSIM channel."""
    import torch
    from pytorch_msssim import ssim

    s = ssim(output.float(), target.float(), data_range=1.0, size_average=True)
    return 0.84 * (1.0 - s) + 0.16 * torch.nn.functional.l1_loss(output, target)


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
    blocks: str | os.PathLike[str] | dict[str, Any] | None = None,
    init: str | os.PathLike[str] | None = None,
    select: str = "loss",
    body_fraction: float = 0.0,
    loss: str = "l1",
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
    blocks : path or dict, optional
        Explicit contiguous z-blocks per series (a JSON file or its dict:
        ``{series_uid: {"train": [[lo, hi]], "val": [...], "test": [...]}}``),
        overriding ``partitions``: training reads the ``train`` blocks, the
        best epoch is chosen on the ``val`` blocks, and ``test`` blocks are
        read by nothing here (the checkpoint records them for
        ``ctvol evaluate``). Blocks of a series must be at least 2k + 1
        slices apart (:func:`ctvol.training.windows.check_blocks`).
    init : str or path, optional
        Start from a bundled model name (``"unet-x3"``) or a checkpoint folder
        instead of random weights: fine-tuning. Its factor must be ``factor``;
        its architecture is kept (``architecture`` is then ignored).
    select : {"loss", "psnr"}, default "loss"
        The best epoch: lowest validation loss, or highest validation PSNR.
    body_fraction : float, default 0
        Crops must hold at least this fraction of body (> -500 HU) pixels
        (:class:`PairWindows`); 0 takes any crop.
    loss : {"l1", "mse", "l1+ssim"}, default "l1"
        Training loss: mean absolute error (the paper), mean squared error
        (what PSNR measures), or :func:`l1_ssim_loss` (what SSIM measures,
        mixed with L1).

    Raises
    ------
    ValueError
        No windows for the factor; ``out`` holds a checkpoint for another factor.
    FileExistsError
        ``out`` holds a checkpoint and ``resume`` is False.
    """
    require("torch", "ctvol.train")
    import torch

    from ..models.unet import UNet, linear_between

    def mismatch(have: dict[str, Any]) -> str | None:
        if int(have["factor"]) != factor:
            return f"holds a checkpoint for factor {have['factor']}, not {factor}"
        return None

    if select not in ("loss", "psnr"):
        raise OptionError(f"select must be 'loss' or 'psnr', got {select!r}")
    losses: dict[str, Callable[[Any, Any], Any]] = {
        "l1": torch.nn.functional.l1_loss, "mse": torch.nn.functional.mse_loss,
        "l1+ssim": l1_ssim_loss}
    if loss not in losses:
        raise OptionError(f"loss must be one of {sorted(losses)}, got {loss!r}")
    if not 0.0 <= body_fraction <= 1.0:
        raise OptionError(f"body_fraction must be in [0, 1], got {body_fraction!r}")
    block_spec = load_blocks(blocks, factor) if blocks is not None else None
    start_from = None
    if init is not None:
        start_from = load_model(init)
        if start_from.factor != factor:
            raise ModelError(f"init model {init} is for factor {start_from.factor}, not "
                             f"{factor}; choose unet-x{factor} or a checkpoint for x{factor}")
    out_dir = check_out(out, resume, mismatch, "resume=True (--resume)")
    dev = resolve_device(device)
    common: dict[str, Any] = {"strides": strides, "crop": crop, "partitions": partitions,
                              "skip_blank": skip_blank, "blocks": block_spec,
                              "body_fraction": body_fraction}
    train_set = PairWindows(store, factor, split="train", seed=seed, **common)
    val_set = PairWindows(store, factor, split="val", seed=seed + 1, **common)
    arch = {"depth": 4, "base": 16, "norm": "batch", "output": "sigmoid", **(architecture or {})}
    if start_from is not None:
        arch = {k: v for k, v in start_from.net.config.items() if k != "factor"}
    net, optimizer, done, best = start(lambda: UNet(factor, **arch), seed=seed, dev=dev, lr=lr,
                                       resume=resume, last=out_dir / "last", load=load_model)
    if start_from is not None and not resume:
        net.load_state_dict(start_from.net.state_dict())
    provenance = {"store": str(store), "factor": factor, "crop": crop, "strides": list(strides),
                  "batch_size": batch_size, "lr": lr, "seed": seed, "augment": augment,
                  "train_windows": len(train_set), "val_windows": len(val_set),
                  # first and last slice index each training series contributed
                  # (ctvol.evaluate warns when evaluating on them)
                  "training_slices": _slices_used(train_set),
                  "selection_slices": _slices_used(val_set), "partitions": partitions,
                  "blank_windows_skipped": train_set.blank_skipped + val_set.blank_skipped,
                  "loss": loss, "select": select, "body_fraction": body_fraction}
    if block_spec is not None:
        provenance["blocks"] = block_spec
        provenance["test_slices"] = _test_slices(store, block_spec)
    if start_from is not None:
        provenance["init"] = {"model": str(init), "digest": start_from.digest}
    kind = image_kind(loss=losses[loss], baseline="linear",
                      baseline_of=lambda x: linear_between(x, factor).numpy(), save=save_model,
                      loss_per_sample=False, digits=4)
    fit(kind, ResliceModel(net, provenance=provenance), optimizer, train_set, val_set,
        out_dir=out_dir, start=done, best=best, epochs=epochs, resume=resume,
        augment={} if augment else None, seed=seed, batch_size=batch_size,
        num_workers=num_workers, dev=dev, amp=amp, progress=progress, max_windows=max_windows,
        select=None if select == "loss" else "val_psnr_unet")
    return load_model(out_dir / "best")
