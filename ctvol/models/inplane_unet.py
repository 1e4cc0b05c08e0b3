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

import torch

from .unet import ImageGenerator

__all__ = ["InplaneUNet"]


class InplaneUNet(ImageGenerator):
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
        super().__init__(1, 1, factor, depth, base, norm, output)

    def baseline(self, x: torch.Tensor) -> torch.Tensor:
        return x  # the bilinear slice itself
