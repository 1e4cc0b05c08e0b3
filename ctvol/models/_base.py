"""What every ctvol model shares: its network, config, weights digest, device, and
the one batched predict loop (channels-last, pinned host memory and bf16 autocast
on CUDA, inference mode). Subclasses say how a batch is prepared and how the
network's output becomes the result; the checkpoint formats are in
:data:`ctvol.models.FORMATS`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

__all__ = ["TorchModel", "weights_digest"]


class TorchModel:
    """Base of the model classes: ``net`` (a ``torch.nn.Module`` with ``.config``),
    provenance, the checkpoint ``path`` it was loaded from, and a device.

    Subclasses define ``config`` (the checkpoint's config.json) and call
    :meth:`run_batches` from their ``predict``.
    """

    #: Move the network to channels-last memory (convolutional nets; the slice
    #: classifier's pooling head keeps the default layout).
    channels_last: ClassVar[bool] = True

    def __init__(self, net: Any, *, provenance: dict[str, Any] | None = None,
                 path: str | None = None) -> None:
        self.net = net.eval()
        self.provenance = dict(provenance or {})
        self.path = path
        self._digest: str | None = None
        self._device = "cpu"

    @property
    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def digest(self) -> str:
        """SHA-256 of the config and weights: the model's identity in caches and reports."""
        if self._digest is None:
            self._digest = weights_digest(self.config, self.net)
        return self._digest

    @property
    def device(self) -> str:
        """Where the network's weights live (``"cpu"``, ``"cuda"``, ``"cuda:1"``...)."""
        return self._device

    def to(self, device: str) -> Any:
        """Move the network to ``device``, in place; returns self."""
        import torch

        if self.channels_last:
            self.net.to(torch.device(device), memory_format=torch.channels_last)
        else:
            self.net.to(torch.device(device))
        self._device = device
        return self

    def run_batches(self, n: int, batch: Callable[[int, int], Any],
                    finish: Callable[[Any], Any], out: np.ndarray, *, batch_size: int,
                    amp: bool = False) -> np.ndarray:
        """Fill ``out[s:e]`` with ``finish(net(batch(s, e)))`` for batches of ``n`` items.

        ``batch(s, e)`` gives the CPU float32 input tensor of items ``s:e``;
        ``finish`` maps the network's float32 output to what ``out`` holds. On
        CUDA the input is copied from pinned memory without blocking, and
        ``amp`` runs the network under bf16 autocast (ignored on CPU).
        """
        import torch

        device = torch.device(self._device)
        cuda = device.type == "cuda"
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                e = min(n, s + batch_size)
                x = batch(s, e)
                if cuda:  # page-locked host memory: the copy overlaps with compute
                    x = x.pin_memory()
                x = x.to(device, non_blocking=cuda)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                if amp and cuda:
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        y = self.net(x)
                else:
                    y = self.net(x)
                out[s:e] = finish(y.float()).cpu().numpy()
        return out


def weights_digest(config: dict[str, Any], net: Any) -> str:
    """SHA-256 of a model's config (sorted JSON) and weights (by parameter name)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
