"""Training inter-slice U-nets from slice-pair windows read straight from Zarr.

Modules, bottom up: ``_partition`` (every series split), ``augment``,
``windows`` (:class:`PairWindows`), ``_engine`` (the epoch loop every trainer
uses), then the trainers ``loop`` (:func:`train`) and ``inplane``, and
``dataset`` (:class:`VolumeDataset`, a torch Dataset). Names resolve on first
use, so importing the partition functions does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["PairWindows", "VolumeDataset", "Window", "random_affine", "split_of", "train"]

_LAZY = {"random_affine": "augment", "VolumeDataset": "dataset", "train": "loop",
         "PairWindows": "windows", "Window": "windows", "split_of": "_partition"}

if TYPE_CHECKING:
    from ._partition import split_of
    from .augment import random_affine
    from .dataset import VolumeDataset
    from .loop import train
    from .windows import PairWindows, Window


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
