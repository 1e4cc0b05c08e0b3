"""A 2-D U-net for in-plane super-resolution: one upsampled slice in, one slice out.

The same levels as :class:`ctvol.models.unet.UNet` (two 3x3 convolutions
with normalisation and ReLU, max-pool down, transposed convolution up, skip
connections), with 1 input and 1 output channel. The input is the slice
already upsampled bilinearly to the high-resolution grid, as in the microCT
study (upsample first, then a U-net). ``output="residual"`` (default) adds
the network's correction to its input and clips to [0, 1]: an untrained model
returns the bilinear slice exactly. ``"sigmoid"`` maps straight to [0, 1]
(the study's choice).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .unet import _block

__all__ = ["InplaneUNet"]


class InplaneUNet(nn.Module):
    """(n, 1, H, W) bilinear slices in [0, 1] -> (n, 1, H, W) slices in [0, 1].

    Parameters
    ----------
    factor : int
        In-plane factor the model is trained for (recorded; the network is
        fully convolutional and runs on any size).
    depth : int, default 4
        Down-sampling levels; inputs are padded to a multiple of ``2**depth``
        (replicate) and cropped back.
    base : int, default 16
        Filters of the first level (doubled at each level).
    norm : {"batch", "instance", "none"}, default "batch"
    output : {"residual", "sigmoid"}, default "residual"
    """

    def __init__(self, factor: int, depth: int = 4, base: int = 16, norm: str = "batch",
                 output: str = "residual") -> None:
        super().__init__()
        if norm not in ("batch", "instance", "none"):
            raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {norm!r}")
        if output not in ("sigmoid", "residual"):
            raise ValueError(f"output must be 'sigmoid' or 'residual', got {output!r}")
        self.config: dict[str, Any] = {"factor": int(factor), "depth": int(depth),
                                       "base": int(base), "norm": norm, "output": output}
        self.factor, self.depth, self.output = int(factor), int(depth), output
        chans = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = 1
        for c in chans[:-1]:
            self.down.append(_block(cin, c, norm))
            cin = c
        self.bottom = _block(chans[-2], chans[-1], norm)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c_hi, c in zip(reversed(chans[1:]), reversed(chans[:-1]), strict=True):
            self.up.append(nn.ConvTranspose2d(c_hi, c, 2, stride=2))
            self.dec.append(_block(2 * c, c, norm))
        self.head = nn.Conv2d(chans[0], 1, 1)
        if output == "residual":
            nn.init.zeros_(self.head.weight)
            assert self.head.bias is not None
            nn.init.zeros_(self.head.bias)
        self.pool = nn.MaxPool2d(2)

    @property
    def multiple(self) -> int:
        """Inputs are padded to a multiple of this (pixels)."""
        return int(2**self.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 1, H, W) in [0, 1] -> (n, 1, H, W) in [0, 1]."""
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        y = nn.functional.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        skips = []
        for block in self.down:
            y = block(y)
            skips.append(y)
            y = self.pool(y)
        y = self.bottom(y)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            y = dec(torch.cat([up(y), skip], dim=1))
        y = self.head(y)[..., :h, :w]
        if self.output == "sigmoid":
            return torch.sigmoid(y)
        return (x + y).clamp(0.0, 1.0)
