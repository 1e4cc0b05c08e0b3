"""Training inter-slice U-nets from slice-pair windows read straight from Zarr."""

from .augment import random_affine
from .loop import train
from .windows import PairWindows, Window, split_of

__all__ = ["PairWindows", "Window", "random_affine", "split_of", "train"]
