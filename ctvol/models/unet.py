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

from ..errors import OptionError

__all__ = ["UNet", "UNetCore", "linear_between"]


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


class UNetCore(nn.Module):
    """The shared encoder-decoder: ``cin`` channels in, ``cout`` raw channels out.

    ``depth`` levels of :func:`_block` (two 3x3 convolutions, normalisation,
    ReLU), max-pool down, transposed convolution up, skip connections, a 1x1
    head. :meth:`features` pads the input (replicate) to a multiple of
    ``2**depth`` and crops the head's output back. The reslice, in-plane and
    segmentation networks are this core with their own input/output mapping;
    parameter names (``down``, ``bottom``, ``up``, ``dec``, ``head``) are part
    of every checkpoint's format.
    """

    def __init__(self, cin: int, cout: int, depth: int = 4, base: int = 16,
                 norm: str = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "instance", "none"):
            raise OptionError(f"norm must be 'batch', 'instance' or 'none', got {norm!r}")
        self.depth = int(depth)
        self.config: dict[str, Any] = {"depth": int(depth), "base": int(base), "norm": norm}
        chans = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        c_in = cin
        for c in chans[:-1]:
            self.down.append(_block(c_in, c, norm))
            c_in = c
        self.bottom = _block(chans[-2], chans[-1], norm)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c_hi, c in zip(reversed(chans[1:]), reversed(chans[:-1]), strict=True):
            self.up.append(nn.ConvTranspose2d(c_hi, c, 2, stride=2))
            self.dec.append(_block(2 * c, c, norm))
        self.head = nn.Conv2d(chans[0], cout, 1)
        self.pool = nn.MaxPool2d(2)

    @property
    def multiple(self) -> int:
        """Inputs are padded to a multiple of this (pixels)."""
        return int(2**self.depth)

    def zero_head(self) -> None:
        """Zero the head: a residual network then starts exactly at its baseline."""
        nn.init.zeros_(self.head.weight)
        assert self.head.bias is not None
        nn.init.zeros_(self.head.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, cin, H, W) -> (n, cout, H, W): the head's raw output, any H and W."""
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
        return self.head(y)[..., :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class ImageGenerator(UNetCore):
    """A core whose output is an image in [0, 1]: ``"sigmoid"`` maps the head's
    output straight there; ``"residual"`` adds it to :meth:`baseline` and clips
    (the head starts at zero, so an untrained network is its baseline)."""

    def __init__(self, cin: int, cout: int, factor: int, depth: int, base: int, norm: str,
                 output: str) -> None:
        if output not in ("sigmoid", "residual"):
            raise OptionError(f"output must be 'sigmoid' or 'residual', got {output!r}")
        super().__init__(cin, cout, depth, base, norm)
        self.config = {"factor": int(factor), "depth": int(depth), "base": int(base),
                       "norm": norm, "output": output}
        self.factor, self.output = int(factor), output
        if output == "residual":
            self.zero_head()

    def baseline(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x)
        if self.output == "sigmoid":
            return torch.sigmoid(y)
        return (self.baseline(x) + y).clamp(0.0, 1.0)


class UNet(ImageGenerator):
    """2-D U-net mapping a slice pair to the ``factor - 1`` slices between.

    (n, 2, H, W) in [0, 1] -> (n, factor-1, H, W) in [0, 1].

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
        ``"residual"``: an untrained model is exactly the linear interpolation
        of the pair, and training can only move away from it.
    """

    def __init__(self, factor: int, depth: int = 4, base: int = 16, norm: str = "batch",
                 output: str = "sigmoid") -> None:
        super().__init__(2, int(factor) - 1, factor, depth, base, norm, output)

    def baseline(self, x: torch.Tensor) -> torch.Tensor:
        return linear_between(x, self.factor)
