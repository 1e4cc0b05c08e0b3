"""A 2-D U-net for inter-slice generation: 2 slices in, k-1 slices out.

In the spirit of keras-unet's ``custom_unet`` used by the paper: ``depth``
levels of two 3x3 convolutions (batch-norm, ReLU), max-pool down,
transposed-convolution up, skip connections, a 1x1 output convolution.
``output="sigmoid"`` maps straight to [0, 1] (the paper); ``"residual"``
adds the network's output to the linear interpolation of the pair and clips
to [0, 1] (starts from the baseline; see DESIGN.md, model notes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["UNet", "linear_between"]


def linear_between(pair: torch.Tensor, k: int) -> torch.Tensor:
    """Distance-weighted average of a pair: (n, 2, H, W) -> (n, k-1, H, W)."""
    w = torch.arange(1, k, dtype=pair.dtype, device=pair.device).view(1, k - 1, 1, 1) / k
    a, b = pair[:, 0:1], pair[:, 1:2]
    return a + (b - a) * w


def _block(cin: int, cout: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers.append(nn.Conv2d(c, cout, 3, padding=1, bias=norm == "none"))
        if norm == "batch":
            layers.append(nn.BatchNorm2d(cout))
        elif norm == "instance":
            layers.append(nn.InstanceNorm2d(cout, affine=True))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """2-D U-net mapping a slice pair to the ``factor - 1`` slices between.

    Parameters
    ----------
    factor : int
        Re-slice factor k (>= 2): the network outputs k-1 channels.
    depth : int, default 4
        Number of down-sampling levels; inputs are padded to a multiple of
        ``2**depth`` and cropped back, so any matrix size works.
    base : int, default 16
        Filters of the first level (doubled at each level).
    norm : {"batch", "instance", "none"}, default "batch"
    output : {"sigmoid", "residual"}, default "sigmoid"
    """

    def __init__(self, factor: int, depth: int = 4, base: int = 16, norm: str = "batch",
                 output: str = "sigmoid") -> None:
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
        cin = 2
        for c in chans[:-1]:
            self.down.append(_block(cin, c, norm))
            cin = c
        self.bottom = _block(chans[-2], chans[-1], norm)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c_hi, c in zip(reversed(chans[1:]), reversed(chans[:-1]), strict=True):
            self.up.append(nn.ConvTranspose2d(c_hi, c, 2, stride=2))
            self.dec.append(_block(2 * c, c, norm))
        self.head = nn.Conv2d(chans[0], factor - 1, 1)
        if output == "residual":
            # Start exactly at the baseline: an untrained residual model is the
            # linear interpolation, and training can only move away from it.
            nn.init.zeros_(self.head.weight)
            assert self.head.bias is not None
            nn.init.zeros_(self.head.bias)
        self.pool = nn.MaxPool2d(2)

    @property
    def multiple(self) -> int:
        """Inputs are padded to a multiple of this (pixels)."""
        return int(2**self.depth)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        """(n, 2, H, W) in [0, 1] -> (n, factor-1, H, W) in [0, 1]."""
        h, w = pair.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        x = nn.functional.pad(pair, (0, pw, 0, ph), mode="replicate") if ph or pw else pair
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        x = self.head(x)[..., :h, :w]
        if self.output == "sigmoid":
            return torch.sigmoid(x)
        return (linear_between(pair, self.factor) + x).clamp(0.0, 1.0)
