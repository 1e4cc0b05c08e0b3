"""Reslice models and their checkpoints: safetensors weights + a JSON config.

A checkpoint is a folder::

    model.safetensors   the weights (loading never unpickles)
    config.json         {"format": "ctvol-reslice-model", "version": 1,
                         "architecture": {...}, "factor": k,
                         "window": [-1024, 1024], "provenance": {...}}

Bundled models live in ``ctvol/models/bundled/<name>/`` and are found by
name (:func:`bundled_models`).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ModelError, ModelNotFoundError
from ..intensity import HU_WINDOW
from ._base import TorchModel

__all__ = ["ResliceModel", "bundled_models", "load_model", "save_model"]

FORMAT = "ctvol-reslice-model"
BUNDLED = pathlib.Path(__file__).with_name("bundled")


class ResliceModel(TorchModel):
    """A trained inter-slice network with its config (a stateful object).

    Parameters
    ----------
    net : ctvol.models.unet.UNet
    window : (float, float)
        Intensity window in HU that maps to [0, 1] (the paper: -1024..1024).
    provenance : dict, optional
        Training facts (data, pixel spacing, kernel, epochs...), kept in the
        checkpoint's config.
    """

    def __init__(self, net: Any, *, window: tuple[float, float] = HU_WINDOW,
                 provenance: dict[str, Any] | None = None, path: str | None = None) -> None:
        super().__init__(net, provenance=provenance, path=path)
        self.window = (float(window[0]), float(window[1]))

    @property
    def factor(self) -> int:
        """Re-slice factor k: the model generates k-1 slices per pair."""
        return int(self.net.factor)

    @property
    def config(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, "architecture": dict(self.net.config),
                "factor": self.factor, "window": list(self.window),
                "provenance": self.provenance}

    def predict(self, pairs: np.ndarray, *, batch_size: int = 16, amp: bool = False) -> np.ndarray:
        """Run pairs through the network in batches.

        Parameters
        ----------
        pairs : (n, 2, H, W) float32 array in [0, 1]
        batch_size : int
        amp : bool
            bf16 autocast (CUDA only; slower on CPUs without AMX).

        Returns
        -------
        (n, k-1, H, W) float32 array in [0, 1]
        """
        import torch

        out = np.empty((pairs.shape[0], self.factor - 1, *pairs.shape[2:]), dtype=np.float32)
        return self.run_batches(
            pairs.shape[0], lambda s, e: torch.from_numpy(np.ascontiguousarray(pairs[s:e])),
            lambda y: y, out, batch_size=batch_size, amp=amp)

    def __repr__(self) -> str:
        a = self.net.config
        return (f"<ResliceModel x{self.factor} depth={a['depth']} base={a['base']} "
                f"output={a['output']} {self.path or '(in memory)'}>")


def write_checkpoint(model: Any, path: str | os.PathLike[str]) -> pathlib.Path:
    """Write any ctvol model (``.net`` and ``.config``) as ``model.safetensors`` +
    ``config.json`` into a folder; set ``model.path``. Shared by every model kind."""
    from safetensors.torch import save_file

    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(model.config, indent=2))
    model.path = str(out)
    return out


def read_checkpoint(folder: pathlib.Path) -> tuple[dict[str, Any], pathlib.Path] | None:
    """Config and config path of a checkpoint folder, or None when it is not one.

    A path to one of the two files stands for its folder. Callers check
    ``config["format"]`` before loading the weights (:func:`load_weights`).
    """
    if folder.is_file() and folder.name in ("config.json", "model.safetensors"):
        folder = folder.parent
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if not (cfg_path.is_file() and weights.is_file()):
        return None
    return json.loads(cfg_path.read_text()), cfg_path


def load_weights(cfg_path: pathlib.Path) -> dict[str, Any]:
    """The state dict next to a checkpoint's config (safetensors: never unpickled)."""
    from safetensors.torch import load_file

    return load_file(str(cfg_path.with_name("model.safetensors")))


def bundled_in(folder: pathlib.Path) -> dict[str, int]:
    """Names and factors of the checkpoints in a folder of bundled models."""
    found = {}
    if folder.is_dir():
        for cfg in sorted(folder.glob("*/config.json")):
            found[cfg.parent.name] = int(json.loads(cfg.read_text())["factor"])
    return found


def save_model(model: ResliceModel, path: str | os.PathLike[str]) -> pathlib.Path:
    """Write a checkpoint folder (``model.safetensors`` + ``config.json``)."""
    return write_checkpoint(model, path)


def bundled_models() -> dict[str, int]:
    """Names of the models shipped with ctvol and their factors."""
    return bundled_in(BUNDLED)


def load_model(name_or_path: str | os.PathLike[str]) -> ResliceModel:
    """Load a checkpoint by bundled name or by folder path (never unpickles).

    Raises
    ------
    FileNotFoundError
        Neither a bundled name nor a checkpoint folder; lists the bundled ones.
    ValueError
        The folder is not a ctvol reslice checkpoint.
    """
    require("torch", "a U-net model"), require("safetensors", "a U-net model")
    from .unet import UNet

    key = os.fspath(name_or_path)
    folder = BUNDLED / key if key in bundled_models() else pathlib.Path(key)
    found = read_checkpoint(folder)
    if found is None:
        names = ", ".join(f"{n} (x{f})" for n, f in bundled_models().items()) or "none yet"
        raise ModelNotFoundError(
            f"no reslice model {key!r}: not a bundled name and not a folder with config.json "
            f"and model.safetensors. Bundled models: {names}. Train one with `ctvol train`, "
            "or use method='linear'"
        )
    cfg, cfg_path = found
    if cfg.get("format") != FORMAT:
        hint = ("; it is an in-plane model: load it with ctvol.load_inplane_model"
                if cfg.get("format") == "ctvol-inplane-model" else "")
        raise ModelError(
            f"{cfg_path} is not a ctvol reslice model config (format {FORMAT!r}){hint}")
    net = UNet(**cfg["architecture"])
    net.load_state_dict(load_weights(cfg_path))
    return ResliceModel(net, window=tuple(cfg.get("window", HU_WINDOW)),  # type: ignore[arg-type]
                        provenance=cfg.get("provenance"), path=str(cfg_path.parent))


def as_model(model: ResliceModel | str | os.PathLike[str]) -> ResliceModel:
    """``model`` itself when it is a :class:`ResliceModel`, else :func:`load_model` of it."""
    return model if isinstance(model, ResliceModel) else load_model(model)


def bundled_name(k: int | None) -> str:
    """The bundled model for factor k (k=None: any), or a FileNotFoundError listing them."""
    bundled = bundled_models()
    names = [n for n, f in bundled.items() if k is None or f == k]
    if not names:
        have = ", ".join(f"{n} (x{f})" for n, f in bundled.items()) or "none yet"
        what = f"for factor {k}" if k is not None else "at all"
        raise ModelNotFoundError(
            f"no bundled U-net {what} (bundled models: {have}); pass model=PATH to a "
            "checkpoint, train one with `ctvol train`, or use method='linear'"
        )
    return names[0]
