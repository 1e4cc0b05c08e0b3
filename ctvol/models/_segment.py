"""A small 2-D segmentation network as a block predictor, and its checkpoints.

:class:`SegmentModel` maps a block of slices (n, H, W) in HU to per-pixel
foreground probabilities of the same shape, one slice at a time: it is a
``predict`` for :func:`ctvol.shift_interleave` (refining along z needs no
``predict_depth``, since no slice sees its neighbours).

A checkpoint is a folder, like the reslice models'::

    model.safetensors   the weights (loading never unpickles)
    config.json         {"format": "ctvol-segment-model", "version": 1,
                         "architecture": {...}, "window": [-1024, 1024],
                         "provenance": {...}}
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ModelError, ModelNotFoundError, VolumeError
from ..intensity import HU_WINDOW, to_unit
from ._base import TorchModel
from ._checkpoint import write_checkpoint

__all__ = ["SegmentModel", "load_segmenter", "save_segmenter", "seg_net"]

FORMAT = "ctvol-segment-model"


def seg_net(*, depth: int = 2, base: int = 8) -> Any:
    """A small 2-D U-net: (n, 1, H, W) in [0, 1] -> (n, 1, H, W) logits.

    ``depth`` levels of two 3x3 convolutions (batch-norm, ReLU), max-pool
    down, transposed convolution up, skip connections. Inputs are padded
    (replicate) to a multiple of ``2**depth`` and cropped back.
    """
    from .unet import UNetCore

    net = UNetCore(1, 1, depth, base, "batch")  # logits out: forward = features
    net.config = {"depth": int(depth), "base": int(base)}
    return net


class SegmentModel(TorchModel):
    """A trained per-slice segmenter: (n, H, W) HU -> (n, H, W) probabilities.

    Runs where :class:`ctvol.models.ResliceModel` runs: on the device it was
    moved to (:meth:`to`), in :func:`torch.inference_mode`, channels-last,
    with pinned-memory, non-blocking host-to-GPU copies and optional bf16
    autocast on CUDA. :func:`ctvol.shift_interleave` moves it for you
    (``device=``), once per worker process and device.

    Parameters
    ----------
    net : torch.nn.Module
        From :func:`seg_net` (logits out).
    window : (float, float)
        HU window mapped to [0, 1] before the network.
    provenance : dict, optional
        Training facts, kept in the checkpoint.
    path : str, optional
        The checkpoint folder it was loaded from or saved to.
    batch_size : int
        Slices per forward pass.

    Notes
    -----
    The digest (the model's identity in caches and reports) is computed once:
    do not keep training a network after wrapping it.
    """

    def __init__(self, net: Any, *, window: tuple[float, float] = HU_WINDOW,
                 provenance: dict[str, Any] | None = None, path: str | None = None,
                 batch_size: int = 8) -> None:
        super().__init__(net, provenance=provenance, path=path)
        self.window = (float(window[0]), float(window[1]))
        self.batch_size = int(batch_size)

    @property
    def config(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, "architecture": dict(self.net.config),
                "window": list(self.window), "provenance": self.provenance}

    def predict(self, block: np.ndarray, *, batch_size: int | None = None,
                amp: bool = False) -> np.ndarray:
        """Probabilities for a block of slices along its first axis.

        Parameters
        ----------
        block : (n, H, W) array
            Values in HU.
        batch_size : int, optional
            Slices per forward pass (default: the model's ``batch_size``).
        amp : bool, default False
            bf16 autocast, on CUDA only (ignored on CPU).

        Returns
        -------
        (n, H, W) float32 array of foreground probabilities in [0, 1].
        """
        import torch

        if block.ndim != 3:
            raise VolumeError(f"SegmentModel takes (n, H, W) blocks, got shape {block.shape}")
        x = to_unit(np.asarray(block), self.window).astype(np.float32, copy=False)
        out = np.empty(block.shape, dtype=np.float32)
        return self.run_batches(
            x.shape[0], lambda s, e: torch.from_numpy(np.ascontiguousarray(x[s:e, None])),
            lambda logits: torch.sigmoid(logits)[:, 0], out,
            batch_size=int(batch_size or self.batch_size), amp=amp)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """``predict(block)``: the model is itself a block predictor."""
        return self.predict(block)

    def __repr__(self) -> str:
        return (f"<SegmentModel {self.net.config} on {self._device} "
                f"{self.path or '(in memory)'}>")


def save_segmenter(model: SegmentModel, path: str | os.PathLike[str]) -> pathlib.Path:
    """Write a checkpoint folder (``model.safetensors`` + ``config.json``)."""
    return write_checkpoint(model, path)


def load_segmenter(path: str | os.PathLike[str]) -> SegmentModel:
    """Load a segmenter checkpoint folder (never unpickles).

    Raises
    ------
    FileNotFoundError
        Not a folder with ``config.json`` and ``model.safetensors``.
    ValueError
        The folder holds another kind of checkpoint.
    """
    require("torch", "a segmenter"), require("safetensors", "a segmenter")
    from ._checkpoint import load_weights, read_checkpoint

    found = read_checkpoint(pathlib.Path(path))
    if found is None:
        raise ModelNotFoundError(
            f"no segmenter checkpoint at {os.fspath(path)!r}: expected a folder with "
            "config.json and model.safetensors (written by ctvol.models.save_segmenter)"
        )
    cfg, cfg_path = found
    if cfg.get("format") != FORMAT:
        raise ModelError(f"{cfg_path} is not a ctvol segmenter config (format {FORMAT!r}, "
                         f"got {cfg.get('format')!r})")
    net = seg_net(**cfg["architecture"])
    net.load_state_dict(load_weights(cfg_path))
    return SegmentModel(net, window=tuple(cfg.get("window", HU_WINDOW)),  # type: ignore[arg-type]
                        provenance=cfg.get("provenance"), path=str(cfg_path.parent))
