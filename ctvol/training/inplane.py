"""``ctvol.train_inplane``: in-plane super-resolution U-nets from (LR, HR) slice pairs.

Pairs come from two co-registered series of a store (``hr=`` and ``lr=``, the
microCT study's set-up) or, with ``lr=None``, from the high-resolution series
and its f × f area-downsampled copy (made on the fly from the HR pixels read).
Each sample reads one slice's crop (plus a margin of f pixels) from Zarr,
never a whole volume.

Output folder (as :func:`ctvol.train`)::

    out/last/   model.safetensors, config.json (format "ctvol-inplane-model"),
                train_state.safetensors, train_state.json
    out/best/   the epoch with the lowest validation loss
    out/log.csv one row per epoch: losses, PSNR/SSIM of the U-net and of bilinear

Every random draw of epoch ``e`` comes from ``(seed, e)``: a resumed run
continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._deps import require
from .._inplane import area_downsample, bilinear, downsample_inplane, normalise
from .._volume import check_factor
from ..errors import DataError, GeometryError, OptionError, SeriesNotFoundError
from ..io._handles import HuHandles
from ..io._layout import series_attrs, store_url
from ..io.store import open_series, open_store
from ..models._runtime import resolve_device
from ..models.inplane import (
    InplaneModel,
    check_normalisation,
    load_inplane_model,
    save_inplane_model,
)
from ._engine import check_out, fit, image_kind, start
from .windows import split_of

__all__ = ["InplanePairs", "train_inplane"]

LOSSES = ("l1", "bce")
#: Slices left out between the training and validation z-blocks of one series.
GUARD = 6


def _keys(v: str | Sequence[str] | None) -> list[str] | None:
    if v is None:
        return None
    return [v] if isinstance(v, str) else list(v)


class InplanePairs:
    """A torch-style Dataset of (bilinear LR, HR) slice crops from a cohort store.

    Parameters
    ----------
    store : path or URL
    factor : int
        In-plane factor f (HR size = f × LR size).
    hr : str or sequence of str
        High-resolution series key(s).
    lr : str or sequence of str, optional
        Co-registered low-resolution series (same slices, f times fewer pixels
        along y and x); default: area-downsample the HR slices (f × f means,
        rounded to whole HU, as :func:`ctvol.downsample_inplane`).
    split : {"train", "val", "all"}
        One series: contiguous z-blocks (first ``1 - val_fraction`` train,
        the rest validation) with ``guard`` slices left out between them.
        Several series: split by a hash of their SeriesInstanceUID
        (:func:`ctvol.training.split_of`), so no series feeds both sides.
    crop : int, optional
        HR crop size in pixels (a multiple of f); None: whole slices.
    normalisation : "window", "minmax" or dict
        ``"window"``: HU clipped to the window (default [-1024, 1024]), mapped
        to [0, 1]; ``"minmax"``: each LR volume's own min and max (read once)
        map to 0 and 1, for HR and LR alike.
    repeats : int, default 1
        Crops per slice per epoch.
    seed : int

    Each item is ``(x, y)``, float32 (1, c, c): ``x`` the LR crop upsampled
    bilinearly (exactly the matching region of the whole upsampled slice:
    the LR crop carries a one-pixel margin), ``y`` the HR crop, both in [0, 1].
    """

    def __init__(self, store: str | os.PathLike[str], factor: int, *,
                 hr: str | Sequence[str], lr: str | Sequence[str] | None = None,
                 split: str = "train", crop: int | None = 128, normalisation: Any = "window",
                 repeats: int = 1, seed: int = 0, val_fraction: float = 0.3,
                 guard: int = GUARD, storage_options: dict[str, Any] | None = None) -> None:
        f = check_factor(factor)
        if split not in ("train", "val", "all"):
            raise OptionError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if crop is not None and (crop < f or crop % f):
            raise OptionError(f"crop must be a positive multiple of factor {f}, got {crop!r}")
        if repeats < 1:
            raise OptionError(f"repeats must be >= 1, got {repeats!r}")
        hr_keys = _keys(hr) or []
        lr_keys = _keys(lr)
        if not hr_keys:
            raise OptionError("give at least one high-resolution series key (hr=)")
        if lr_keys is not None and len(lr_keys) != len(hr_keys):
            raise OptionError(f"lr= names {len(lr_keys)} series but hr= names {len(hr_keys)}: "
                              "give one low-resolution series per high-resolution one")
        self.store, self.factor, self.split, self.crop = store_url(store), f, split, crop
        self.normalisation = check_normalisation(normalisation)
        self.repeats, self.seed, self.epoch = int(repeats), seed, 0
        self.storage_options = storage_options
        root = open_store(store, storage_options=storage_options)
        series = series_attrs(root)
        missing = [k for k in [*hr_keys, *(lr_keys or [])] if k not in series]
        if missing:
            raise SeriesNotFoundError(
                f"no complete series {', '.join(map(repr, missing))} in {self.store}; "
                f"complete series: {', '.join(sorted(series)[:10]) or 'none'}")
        lows: list[str | None] = list(lr_keys) if lr_keys is not None else [None] * len(hr_keys)
        self.pairs: list[tuple[str, str | None]] = list(zip(hr_keys, lows, strict=True))
        self.shapes: dict[str, tuple[int, ...]] = {}
        for h, low in self.pairs:
            shape = tuple(root[f"series/{h}/hu"].shape)
            self.shapes[h] = shape
            if shape[1] % f or shape[2] % f:
                raise GeometryError(f"series {h} is {shape[1]} x {shape[2]} pixels, not "
                                    f"divisible by factor {f}")
            if crop is not None and crop > min(shape[1:]):
                raise OptionError(f"crop {crop} is larger than series {h} ({shape[1]} x "
                                  f"{shape[2]})")
            if low is not None:
                lshape = tuple(root[f"series/{low}/hu"].shape)
                want = (shape[0], shape[1] // f, shape[2] // f)
                if lshape != want:
                    raise GeometryError(
                        f"low-resolution series {low} is {lshape}, but {h} {shape} needs "
                        f"{want} for factor {f}: co-registered pairs need the same slices "
                        "and f times fewer pixels along y and x")
        single = len(self.pairs) == 1
        self.items: list[tuple[int, int]] = []  # (pair index, slice index)
        self.ranges: dict[str, tuple[int, int]] = {}
        for p, (h, _) in enumerate(self.pairs):
            n = self.shapes[h][0]
            if split == "all":
                lo, hi = 0, n
            elif single:
                cut = int(round(n * (1 - val_fraction)))
                lo, hi = (0, max(0, cut - guard)) if split == "train" else (cut, n)
            else:
                uid = series[h].get("series_uid", h)
                lo, hi = (0, n) if split_of(uid, val_fraction) == split else (0, 0)
            if hi > lo:
                self.ranges[h] = (lo, hi)
            self.items.extend((p, i) for i in range(lo, hi))
        if not self.items:
            raise DataError(f"no {split} slices in {self.store} for series {hr_keys}; "
                            "use split='all' or more series")
        self._ranges_lr: dict[str, tuple[float, float]] = {}
        if self.normalisation["kind"] == "minmax":
            self._ranges_lr = {h: self._minmax(h, low) for h, low in self.pairs}
        self._hu = HuHandles(self.store, storage_options)

    def _minmax(self, hr: str, lr: str | None) -> tuple[float, float]:
        """(min, max) of the LR volume (synthetic: of the area-downsampled HR)."""
        import dask

        ds = open_series(self.store, lr or hr, storage_options=self.storage_options)
        if lr is None:
            ds = downsample_inplane(ds, self.factor)
        lo, hi = dask.compute(ds["hu"].data.min(), ds["hu"].data.max())
        return float(lo), float(hi)

    def window(self, hr: str) -> tuple[float, float]:
        """The (lo, hi) grey values that map to 0 and 1 for a series."""
        if self.normalisation["kind"] == "window":
            lo, hi = self.normalisation["window"]
            return float(lo), float(hi)
        lo, hi = self._ranges_lr[hr]
        return (lo, hi) if hi > lo else (lo, lo + 1.0)

    def __len__(self) -> int:
        return len(self.items) * self.repeats

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _array(self, key: str) -> Any:
        return self._hu(key)

    def read(self, pair: int, z: int, r0: int, c0: int, c: int | None
             ) -> tuple[np.ndarray, np.ndarray]:
        """HR crop (c, c) and LR crop with a 1-pixel margin (c/f + 2, c/f + 2), in HU.

        ``r0``, ``c0`` are multiples of f. The margin is read where it exists
        and edge-replicated at the slice border (what bilinear does there).
        """
        f = self.factor
        hr_key, lr_key = self.pairs[pair]
        _, h, w = self.shapes[hr_key]
        ch, cw = (h, w) if c is None else (c, c)
        hra = self._array(hr_key)
        lr0, lc0, lh, lw = r0 // f, c0 // f, ch // f, cw // f
        # LR rows [lr0 - 1, lr0 + lh + 1) clipped to the slice.
        a0, a1 = max(lr0 - 1, 0), min(lr0 + lh + 1, h // f)
        b0, b1 = max(lc0 - 1, 0), min(lc0 + lw + 1, w // f)
        if lr_key is None:
            span = np.asarray(hra[z, a0 * f : a1 * f, b0 * f : b1 * f])
            low = area_downsample(span[None], f)[0]
            y = span[(r0 - a0 * f) : (r0 - a0 * f) + ch, (c0 - b0 * f) : (c0 - b0 * f) + cw]
        else:
            low = np.asarray(self._array(lr_key)[z, a0:a1, b0:b1])
            y = np.asarray(hra[z, r0 : r0 + ch, c0 : c0 + cw])
        pad = ((lr0 - 1 < 0) * 1, (lr0 + lh + 1 > h // f) * 1)
        padc = ((lc0 - 1 < 0) * 1, (lc0 + lw + 1 > w // f) * 1)
        if any(pad) or any(padc):
            low = np.pad(low, (pad, padc), mode="edge")
        return y, low

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        f = self.factor
        pair, z = self.items[index % len(self.items)]
        hr_key = self.pairs[pair][0]
        _, h, w = self.shapes[hr_key]
        c = self.crop
        if c is None:
            r0 = c0 = 0
        else:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            r0 = int(rng.integers(0, (h - c) // f + 1)) * f
            c0 = int(rng.integers(0, (w - c) // f + 1)) * f
        y, low = self.read(pair, z, r0, c0, c)
        up = bilinear(low[None], f)[0][f:-f, f:-f]  # drop the margin
        lo, hi = self.window(hr_key)
        return normalise(up, lo, hi)[None], normalise(y, lo, hi)[None]


def _loss(pred: Any, target: Any, kind: str) -> Any:
    import torch.nn.functional as F

    if kind == "l1":
        return F.l1_loss(pred, target)
    # Binary cross-entropy on normalised grey values (the microCT study's choice);
    # clamped away from 0 and 1 so a saturated residual output stays finite.
    return F.binary_cross_entropy(pred.clamp(1e-6, 1 - 1e-6), target)


def train_inplane(
    store: str | os.PathLike[str],
    factor: int = 2,
    *,
    hr: str | Sequence[str],
    lr: str | Sequence[str] | None = None,
    epochs: int,
    out: str | os.PathLike[str],
    loss: str = "l1",
    norm: Any = "window",
    crop: int | None = 128,
    batch_size: int = 4,
    learning_rate: float = 1e-3,
    repeats: int = 1,
    architecture: dict[str, Any] | None = None,
    augment: bool | dict[str, Any] = True,
    device: str | None = None,
    amp: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    resume: bool = False,
    val_fraction: float = 0.3,
    guard: int = GUARD,
    progress: bool = False,
) -> Any:
    """Train an in-plane super-resolution U-net; returns the last epoch's model.

    Adam on ``loss`` between the network's output (from the bilinear-upsampled
    LR crop) and the HR crop, both normalised to [0, 1].

    Parameters
    ----------
    store : path or URL
        Cohort store.
    factor : int, default 2
        In-plane factor f.
    hr, lr : str or sequence of str
        HR series key(s); co-registered LR series, or None for the
        area-downsampled HR (see :class:`InplanePairs`).
    epochs : int
        Total epochs (a resumed run continues up to this number); an epoch
        visits every training slice ``repeats`` times, one random crop each.
    out : path
        Output folder (``last/``, ``best/``, ``log.csv``).
    loss : {"l1", "bce"}, default "l1"
        Mean absolute error, or binary cross-entropy on the normalised grey
        values (the study's choice).
    norm : "window", "minmax" or dict, default "window"
        The HU window (CT) or each volume's min-max (microCT grey values);
        recorded in the checkpoint and applied again at inference.
    crop : int or None, default 128
        HR training crop in pixels (validation: fixed crops of the same size).
    batch_size, learning_rate : int, float
        The study's optimiser: Adam, lr 1e-3.
    architecture : dict, optional
        :class:`ctvol.models.inplane_unet.InplaneUNet` arguments (depth, base,
        norm, output; default residual).
    augment : bool or dict, default True
        :func:`ctvol.training.random_affine` on input and target together; a
        dict passes its ranges (e.g. ``{"rotation_deg": 0, "shift": 0,
        "zoom": 0}`` for flips only, which do not resample the HR target).
    device, amp, num_workers, seed, resume
        As :func:`ctvol.train`.
    val_fraction, guard : float, int
        One series: the last ``val_fraction`` of the slices validate, with
        ``guard`` slices left out before them.

    Returns
    -------
    InplaneModel
        Loaded from ``out/last``.

    Raises
    ------
    ValueError
        Bad factor, loss, crop or normalisation; ``out`` holds a checkpoint
        for another factor.
    FileExistsError
        ``out`` holds a checkpoint and ``resume`` is False.
    """
    require("torch", "ctvol.train_inplane")
    from ..models.inplane_unet import InplaneUNet

    f = check_factor(factor)
    if loss not in LOSSES:
        raise OptionError(f"loss must be one of {list(LOSSES)}, got {loss!r}")

    def mismatch(have: dict[str, Any]) -> str | None:
        if have.get("format") != "ctvol-inplane-model" or int(have["factor"]) != f:
            return (f"holds a checkpoint of another kind or factor ({have.get('format')}, "
                    f"x{have.get('factor')})")
        return None

    out_dir = check_out(out, resume, mismatch, "resume=True")
    dev = resolve_device(device)
    common = {"hr": hr, "lr": lr, "crop": crop, "normalisation": norm,
              "val_fraction": val_fraction, "guard": guard}
    train_set = InplanePairs(store, f, split="train", repeats=repeats, seed=seed, **common)
    val_set = InplanePairs(store, f, split="val", seed=seed + 1, **common)
    arch = {"depth": 4, "base": 16, "norm": "batch", "output": "residual",
            **(architecture or {})}
    net, optimizer, done, best = start(lambda: InplaneUNet(f, **arch), seed=seed, dev=dev,
                                       lr=learning_rate, resume=resume, last=out_dir / "last",
                                       load=load_inplane_model)
    aug_kw = augment if isinstance(augment, dict) else {}
    provenance = {
        "store": str(store), "hr": _keys(hr), "lr": _keys(lr),
        "lr_source": "series" if lr is not None else "area-downsampled HR",
        "factor": f, "crop": crop, "batch_size": batch_size, "learning_rate": learning_rate,
        "repeats": repeats, "seed": seed, "augment": bool(augment), "augment_ranges": aug_kw,
        "train_slices_per_epoch": len(train_set), "val_slices": len(val_set),
        # first and last+1 slice index of each series used for training
        "training_slices": {k: list(v) for k, v in train_set.ranges.items()},
        "validation_slices": {k: list(v) for k, v in val_set.ranges.items()},
    }
    model = InplaneModel(net, normalisation=train_set.normalisation, loss=loss,
                         provenance=provenance)
    kind = image_kind(loss=lambda p, t: _loss(p.float(), t, loss), baseline="bilinear",
                      baseline_of=lambda x: x.numpy(), save=save_inplane_model,
                      loss_per_sample=True, digits=5)
    fit(kind, model, optimizer, train_set, val_set, out_dir=out_dir, start=done, best=best,
        epochs=epochs, resume=resume, augment=aug_kw if augment else None, seed=seed,
        batch_size=batch_size, num_workers=num_workers, dev=dev, amp=amp, progress=progress)
    return load_inplane_model(out_dir / "last")
