"""Slice-level networks (classifier, localizer) and their checkpoints.

One small ResNet-style network serves both tasks: a stem convolution, stages
of residual basic blocks (two 3x3 convolutions, batch-norm, identity or 1x1
projection shortcut) each halving the resolution, global average pooling and
a linear head: ``len(classes)`` logits for the classifier (softmax), one
logit for the localizer (sigmoid: a location in [0, 1]).

A checkpoint is a folder, like the reslice models'::

    model.safetensors   the weights (loading never unpickles)
    config.json         {"format": "ctvol-slice-model", "version": 1,
                         "task": "classify" | "localize", "architecture": {...},
                         "classes": [...], "window": [-1024, 1024],
                         "input_size": 128, "provenance": {...}}

Slices are windowed to [0, 1] (the project's HU window), padded to a square
with air and resized to ``input_size`` (antialiased bilinear): the same
:func:`prepare` runs in training and inference.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ModelError, ModelNotFoundError, OptionError, OptionTypeError
from ..intensity import HU_WINDOW, to_unit
from ._base import TorchModel
from ._checkpoint import write_checkpoint

__all__ = ["FORMAT", "SliceModel", "load_slice_model", "prepare", "save_slice_model",
           "slice_net"]

FORMAT = "ctvol-slice-model"
TASKS = ("classify", "localize")



def slice_net(outputs: int, *, widths: Sequence[int] = (16, 32, 64, 128),
              blocks: int = 1) -> Any:
    """A small ResNet-style network: (n, 1, S, S) in [0, 1] -> (n, outputs) logits.

    Parameters
    ----------
    outputs : int
        Number of logits (classes, or 1 for the localizer).
    widths : sequence of int
        Channels of each stage; every stage halves the resolution.
    blocks : int
        Residual blocks per stage.
    """
    import torch
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = (nn.Identity() if stride == 1 and cin == cout else
                          nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                        nn.BatchNorm2d(cout)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.short(x))

    class SliceNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = {"outputs": int(outputs), "widths": [int(w) for w in widths],
                           "blocks": int(blocks)}
            self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 2, 1, bias=False),
                                      nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
            layers: list[nn.Module] = []
            cin = widths[0]
            for w in widths:
                for b in range(blocks):
                    layers.append(Basic(cin, w, 2 if b == 0 else 1))
                    cin = w
            self.stages = nn.Sequential(*layers)
            self.head = nn.Linear(cin, outputs)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stages(self.stem(x))
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    if outputs < 1 or not widths or blocks < 1:
        raise ModelError(f"bad architecture: outputs={outputs}, widths={widths}, blocks={blocks}")
    return SliceNet()


def prepare(hu: np.ndarray, size: int, window: tuple[float, float] = HU_WINDOW) -> Any:
    """HU slices (n, H, W) -> float32 tensor (n, 1, size, size) in [0, 1].

    Windowed, padded to a square with the window's low end (air), resized with
    antialiased bilinear interpolation.
    """
    import torch

    x = torch.from_numpy(to_unit(np.asarray(hu), window))[:, None]
    h, w = x.shape[-2:]
    if h != w:
        d = abs(h - w)
        pad = (d // 2, d - d // 2, 0, 0) if h > w else (0, 0, d // 2, d - d // 2)
        x = torch.nn.functional.pad(x, pad, value=0.0)
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False)
    return x.contiguous()


class SliceModel(TorchModel):
    """A trained slice-level network with its config (classifier or localizer).

    Parameters
    ----------
    net : torch.nn.Module
        From :func:`slice_net`.
    task : {"classify", "localize"}
    classes : sequence of str
        Class names (classifier), in logit order; ``["location"]`` for the localizer.
    input_size : int
        Side of the square the slices are resized to.
    window : (float, float)
        HU window mapped to [0, 1].
    """

    channels_last = False  # as trained; its pooling head gains nothing from it

    def __init__(self, net: Any, *, task: str, classes: Sequence[str], input_size: int = 128,
                 window: tuple[float, float] = HU_WINDOW,
                 provenance: dict[str, Any] | None = None, path: str | None = None) -> None:
        if task not in TASKS:
            raise OptionError(f"task must be one of {list(TASKS)}, got {task!r}")
        super().__init__(net, provenance=provenance, path=path)
        self.task = task
        self.classes = [str(c) for c in classes]
        self.input_size = int(input_size)
        self.window = (float(window[0]), float(window[1]))

    @property
    def outputs(self) -> int:
        return len(self.classes)

    @property
    def config(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, "task": self.task,
                "architecture": dict(self.net.config), "classes": list(self.classes),
                "input_size": self.input_size, "window": list(self.window),
                "provenance": self.provenance}

    def predict(self, hu: np.ndarray, *, batch_size: int = 64, amp: bool = False) -> np.ndarray:
        """HU slices (n, H, W) -> (n, outputs) float32: class probabilities or locations.

        ``amp``: bf16 autocast, on CUDA only (ignored on CPU). On CUDA the
        prepared batch is copied from pinned memory, without blocking.
        """
        import torch

        out = np.empty((hu.shape[0], self.outputs), dtype=np.float32)

        def finish(y: Any) -> Any:
            return torch.softmax(y, dim=1) if self.task == "classify" else torch.sigmoid(y)

        return self.run_batches(
            hu.shape[0], lambda s, e: prepare(hu[s:e], self.input_size, self.window), finish,
            out, batch_size=batch_size, amp=amp)

    def __repr__(self) -> str:
        return (f"<SliceModel {self.task} classes={self.classes} size={self.input_size} "
                f"{self.path or '(in memory)'}>")


def save_slice_model(model: SliceModel, path: str | os.PathLike[str]) -> pathlib.Path:
    """Write a checkpoint folder (``model.safetensors`` + ``config.json``)."""
    return write_checkpoint(model, path)


def load_slice_model(path: str | os.PathLike[str], *, task: str | None = None) -> SliceModel:
    """Load a slice classifier/localizer checkpoint folder (never unpickles).

    Raises
    ------
    FileNotFoundError
        No ``config.json`` + ``model.safetensors`` in the folder.
    ValueError
        Not a slice-model checkpoint, or one for another task.
    """
    require("torch", "a slice model"), require("safetensors", "a slice model")
    from ._checkpoint import load_weights, read_checkpoint

    folder = pathlib.Path(path)
    if folder.is_file():
        folder = folder.parent
    found = read_checkpoint(folder)
    if found is None:
        raise ModelNotFoundError(
            f"no slice model at {folder}: a checkpoint folder holds config.json and "
            "model.safetensors; train one with ctvol.curation.train_classifier / "
            "train_localizer"
        )
    cfg, cfg_path = found
    if cfg.get("format") != FORMAT:
        raise ModelError(f"{cfg_path} is not a ctvol slice model (format {cfg.get('format')!r},"
                         f" expected {FORMAT!r}); reslice U-nets go to ctvol.reslice instead")
    if task is not None and cfg["task"] != task:
        raise ModelError(f"{folder} is a {cfg['task']!r} model, but a {task!r} model is needed")
    arch = cfg["architecture"]
    net = slice_net(arch["outputs"], widths=arch["widths"], blocks=arch["blocks"])
    net.load_state_dict(load_weights(cfg_path))
    return SliceModel(net, task=cfg["task"], classes=cfg["classes"],
                      input_size=cfg["input_size"], window=tuple(cfg["window"]),  # type: ignore[arg-type]
                      provenance=cfg.get("provenance"), path=str(folder))


def resolve(model: Any, task: str) -> SliceModel:
    """A SliceModel from a model object or a checkpoint path, checked for ``task``."""
    if isinstance(model, SliceModel):
        if model.task != task:
            raise ModelError(f"{model!r} is a {model.task!r} model, but a {task!r} model "
                             "is needed")
        return model
    if isinstance(model, str | os.PathLike):
        return load_slice_model(model, task=task)
    raise OptionTypeError(f"model must be a SliceModel or a checkpoint folder path, got "
                          f"{type(model).__name__}")
