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

from ..intensity import HU_WINDOW, to_unit

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


class SegmentModel:
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
        self.net = net.eval()
        self.window = (float(window[0]), float(window[1]))
        self.provenance = dict(provenance or {})
        self.path = path
        self.batch_size = int(batch_size)
        self._digest: str | None = None
        self._device = "cpu"

    @property
    def config(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, "architecture": dict(self.net.config),
                "window": list(self.window), "provenance": self.provenance}

    @property
    def digest(self) -> str:
        """SHA-256 of config and weights: identifies the model in caches and reports."""
        if self._digest is None:
            from ._checkpoint import weights_digest

            self._digest = weights_digest(self.config, self.net)
        return self._digest

    @property
    def device(self) -> str:
        """Where the network's weights live (``"cpu"``, ``"cuda"``, ``"cuda:1"``...)."""
        return self._device

    def to(self, device: str) -> SegmentModel:
        """Move the network to ``device`` (channels-last), in place; returns self."""
        import torch

        self.net.to(torch.device(device), memory_format=torch.channels_last)
        self._device = device
        return self

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
            raise ValueError(f"SegmentModel takes (n, H, W) blocks, got shape {block.shape}")
        step = int(batch_size or self.batch_size)
        device = torch.device(self._device)
        cuda = device.type == "cuda"
        x = to_unit(np.asarray(block), self.window).astype(np.float32, copy=False)
        out = np.empty(block.shape, dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, x.shape[0], step):
                t = torch.from_numpy(np.ascontiguousarray(x[s : s + step, None]))
                if cuda:  # page-locked host memory: the copy overlaps with compute
                    t = t.pin_memory()
                t = t.to(device, non_blocking=cuda).contiguous(memory_format=torch.channels_last)
                if amp and cuda:
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        logits = self.net(t)
                else:
                    logits = self.net(t)
                out[s : s + step] = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
        return out

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """``predict(block)``: the model is itself a block predictor."""
        return self.predict(block)

    def __repr__(self) -> str:
        return (f"<SegmentModel {self.net.config} on {self._device} "
                f"{self.path or '(in memory)'}>")


def save_segmenter(model: SegmentModel, path: str | os.PathLike[str]) -> pathlib.Path:
    """Write a checkpoint folder (``model.safetensors`` + ``config.json``)."""
    from ._checkpoint import write_checkpoint

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
    from ._checkpoint import load_weights, read_checkpoint

    found = read_checkpoint(pathlib.Path(path))
    if found is None:
        raise FileNotFoundError(
            f"no segmenter checkpoint at {os.fspath(path)!r}: expected a folder with "
            "config.json and model.safetensors (written by ctvol.models.save_segmenter)"
        )
    cfg, cfg_path = found
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{cfg_path} is not a ctvol segmenter config (format {FORMAT!r}, "
                         f"got {cfg.get('format')!r})")
    net = seg_net(**cfg["architecture"])
    net.load_state_dict(load_weights(cfg_path))
    return SegmentModel(net, window=tuple(cfg.get("window", HU_WINDOW)),  # type: ignore[arg-type]
                        provenance=cfg.get("provenance"), path=str(cfg_path.parent))
