"""Training inter-slice U-nets from slice-pair windows read straight from Zarr."""

from .augment import random_affine
from .dataset import VolumeDataset
from .loop import train
from .windows import PairWindows, Window, split_of

__all__ = ["PairWindows", "VolumeDataset", "Window", "random_affine", "split_of", "train"]
