"""The paper's augmentation, batch-wise in torch (runs on the GPU when the batch is there).

One random transform per window — rotation within ±10°, shift within ±10 %,
zoom within ±20 %, horizontal flip with probability 1/2 — applied identically
to all its input and target channels, so inputs and targets stay aligned.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["random_affine"]


def random_affine(
    x: Any,
    y: Any,
    *,
    generator: Any = None,
    rotation_deg: float = 10.0,
    shift: float = 0.10,
    zoom: float = 0.20,
    flip: bool = True,
) -> tuple[Any, Any]:
    """Apply one random affine transform per sample to ``x`` and ``y`` together.

    Parameters
    ----------
    x, y : torch.Tensor
        (n, c_x, H, W) and (n, c_y, H, W), values in [0, 1].
    generator : torch.Generator, optional
        For reproducible draws (on the CPU).
    rotation_deg, shift, zoom : float
        Ranges: rotation in ±degrees, shift as a fraction of the size, zoom
        factor in [1 - zoom, 1 + zoom].
    flip : bool
        Horizontal flip with probability 1/2.

    Returns
    -------
    (x, y) transformed; pixels brought in from outside are 0 (air after
    windowing: -1024 HU).
    """
    import torch
    import torch.nn.functional as F

    n = x.shape[0]

    def uniform(lo: float, hi: float) -> Any:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    angle = uniform(-rotation_deg, rotation_deg) * (math.pi / 180.0)
    scale = uniform(1.0 - zoom, 1.0 + zoom)
    tx, ty = uniform(-2 * shift, 2 * shift), uniform(-2 * shift, 2 * shift)  # grid is [-1, 1]
    sx = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip \
        else torch.ones(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * sx, -sin, tx], dim=1),
        torch.stack([sin * sx, cos, ty], dim=1),
    ], dim=1).to(device=x.device, dtype=x.dtype)
    both = torch.cat([x, y], dim=1)
    grid = F.affine_grid(theta, list(both.shape), align_corners=False)
    out = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, : x.shape[1]], out[:, x.shape[1] :]
