"""HU windowing as in the paper: clip to [-1024, 1024] HU, map linearly to [0, 1].

Both directions are plain elementwise functions, so they work lazily on
dask-backed DataArrays and eagerly on numpy arrays alike.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

__all__ = ["HU_WINDOW", "from_unit", "to_hu_int16", "to_unit"]

#: The intensity window of the paper, in HU.
HU_WINDOW = (-1024.0, 1024.0)

T = TypeVar("T")


def to_unit(hu: T, window: tuple[float, float] = HU_WINDOW) -> T:
    """HU → [0, 1]: clip to ``window`` (HU), then map linearly (float32 for numpy input)."""
    lo, hi = window
    if isinstance(hu, np.ndarray):
        out = (np.clip(hu, lo, hi).astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
        return out  # type: ignore[return-value]
    return ((hu.clip(lo, hi) - lo) / (hi - lo))  # type: ignore[attr-defined,no-any-return]


def from_unit(x: T, window: tuple[float, float] = HU_WINDOW) -> T:
    """[0, 1] → HU (float); values outside [0, 1] are clipped first."""
    lo, hi = window
    if isinstance(x, np.ndarray):
        return (np.clip(x, 0.0, 1.0) * (hi - lo) + lo)  # type: ignore[return-value]
    return x.clip(0.0, 1.0) * (hi - lo) + lo  # type: ignore[attr-defined,no-any-return]


def to_hu_int16(values: np.ndarray) -> np.ndarray:
    """Float HU → int16 HU: round half to even, saturate at the int16 range."""
    return np.rint(values).clip(-32768, 32767).astype(np.int16)
