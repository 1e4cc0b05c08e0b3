"""In-plane super-resolution models and their checkpoint format (safetensors + JSON).

The network (:class:`ctvol.models.inplane_unet.InplaneUNet`) takes a slice
already upsampled (bilinear) to the high-resolution grid and returns the
high-resolution slice, both normalised to [0, 1].

A checkpoint is a folder::

    model.safetensors   the weights (loading never unpickles)
    config.json         {"format": "ctvol-inplane-model", "version": 1,
                         "architecture": {...}, "factor": f,
                         "normalisation": {"kind": "window", "window": [lo, hi]}
                                        | {"kind": "minmax"},
                         "loss": "l1" | "bce", "provenance": {...}}

Bundled in-plane models live in ``ctvol/models/bundled_inplane/<name>/``
(separate from the reslice models, whose loader and factor plans must not see
them).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ModelError, ModelNotFoundError, OptionError
from ..intensity import HU_WINDOW
from ._base import TorchModel
from ._checkpoint import bundled_in, write_checkpoint

__all__ = [
    "FORMAT",
    "NORMS",
    "InplaneModel",
    "bundled_inplane_models",
    "load_inplane_model",
    "save_inplane_model",
]

FORMAT = "ctvol-inplane-model"
BUNDLED = pathlib.Path(__file__).with_name("bundled_inplane")
#: Normalisations: the HU window (CT) or min-max of each input volume (microCT grey values).
NORMS = ("window", "minmax")
LOSSES = ("l1", "bce")


def check_normalisation(norm: Any) -> dict[str, Any]:
    """``"window"``, ``"minmax"`` or a dict → the normalisation record of a checkpoint."""
    if isinstance(norm, str):
        norm = {"kind": norm}
    if not isinstance(norm, dict) or norm.get("kind") not in NORMS:
        raise OptionError(f"normalisation must be one of {list(NORMS)} (or a dict with "
                          f"'kind'), got {norm!r}")
    out: dict[str, Any] = {"kind": norm["kind"]}
    if norm["kind"] == "window":
        lo, hi = (float(v) for v in norm.get("window", HU_WINDOW))
        if not hi > lo:
            raise OptionError(f"window must be (low, high) with high > low, got {(lo, hi)}")
        out["window"] = [lo, hi]
    return out


class InplaneModel(TorchModel):
    """A trained in-plane super-resolution network with its config.

    Parameters
    ----------
    net : InplaneUNet
    normalisation : "window", "minmax" or dict, default "window"
        How grey values map to [0, 1]: ``{"kind": "window", "window": [lo, hi]}``
        (HU clipped to the window, CT) or ``{"kind": "minmax"}`` (each input
        volume's own minimum and maximum, microCT grey values).
    loss : {"l1", "bce"}
        The training loss (recorded).
    provenance : dict, optional
    """

    def __init__(self, net: Any, *, normalisation: Any = "window", loss: str = "l1",
                 provenance: dict[str, Any] | None = None, path: str | None = None) -> None:
        if loss not in LOSSES:
            raise OptionError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
        super().__init__(net, provenance=provenance, path=path)
        self.normalisation = check_normalisation(normalisation)
        self.loss = loss

    @property
    def factor(self) -> int:
        """In-plane factor f: the model makes f·H × f·W slices from H × W."""
        return int(self.net.factor)

    @property
    def residual(self) -> bool:
        return bool(self.net.output == "residual")

    @property
    def config(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, "architecture": dict(self.net.config),
                "factor": self.factor, "normalisation": dict(self.normalisation),
                "loss": self.loss, "provenance": self.provenance}

    def predict(self, x: np.ndarray, *, batch_size: int = 8, amp: bool = False) -> np.ndarray:
        """(n, H, W) float32 bilinear slices in [0, 1] → (n, H, W) float32 in [0, 1]."""
        import torch

        out = np.empty(x.shape, dtype=np.float32)
        return self.run_batches(
            x.shape[0], lambda s, e: torch.from_numpy(np.ascontiguousarray(x[s:e, None])),
            lambda y: y[:, 0], out, batch_size=batch_size, amp=amp)

    def __repr__(self) -> str:
        a = self.net.config
        return (f"<InplaneModel x{self.factor} depth={a['depth']} base={a['base']} "
                f"output={a['output']} norm={self.normalisation['kind']} loss={self.loss} "
                f"{self.path or '(in memory)'}>")


def save_inplane_model(model: InplaneModel, path: str | os.PathLike[str]) -> pathlib.Path:
    """Write a checkpoint folder (``model.safetensors`` + ``config.json``)."""
    return write_checkpoint(model, path)


def bundled_inplane_models() -> dict[str, int]:
    """Names of the in-plane models shipped with ctvol and their factors."""
    return bundled_in(BUNDLED)


def load_inplane_model(name_or_path: str | os.PathLike[str]) -> InplaneModel:
    """Load an in-plane checkpoint by bundled name or folder path (never unpickles).

    Raises
    ------
    FileNotFoundError
        Neither a bundled name nor a checkpoint folder; lists the bundled ones.
    ValueError
        The folder holds another kind of checkpoint (e.g. a reslice model).
    """
    require("torch", "an in-plane U-net"), require("safetensors", "an in-plane U-net")
    from ._checkpoint import load_weights, read_checkpoint

    key = os.fspath(name_or_path)
    folder = BUNDLED / key if key in bundled_inplane_models() else pathlib.Path(key)
    found = read_checkpoint(folder)
    if found is None:
        names = ", ".join(f"{n} (x{f})" for n, f in bundled_inplane_models().items())
        raise ModelNotFoundError(
            f"no in-plane model {key!r}: not a bundled name and not a folder with config.json "
            f"and model.safetensors. Bundled in-plane models: {names or 'none'}. Train one "
            "with ctvol.train_inplane, or use method='bilinear'"
        )
    cfg, cfg_path = found
    if cfg.get("format") != FORMAT:
        raise ModelError(f"{cfg_path} is not a ctvol in-plane model config (format "
                         f"{cfg.get('format')!r}, expected {FORMAT!r})")
    from .inplane_unet import InplaneUNet

    net = InplaneUNet(**cfg["architecture"])
    net.load_state_dict(load_weights(cfg_path))
    return InplaneModel(net, normalisation=cfg["normalisation"], loss=cfg.get("loss", "l1"),
                        provenance=cfg.get("provenance"), path=str(cfg_path.parent))
