"""Models and their checkpoint formats (safetensors + JSON): the inter-slice U-net, the
in-plane U-net, a small 2-D segmenter usable as a block predictor
(:func:`ctvol.shift_interleave`), and the slice classifier / localizer.

Every model class derives from :class:`TorchModel` (config, digest, device, the
one batched predict loop); :data:`FORMATS` maps a checkpoint's ``format`` to its
class and loader; :mod:`ctvol.models._runtime` holds the device choice and the
per-worker model cache.
"""

from collections.abc import Callable
from typing import Any

from . import _checkpoint, _segment, _slice, inplane
from ._base import TorchModel
from ._checkpoint import (
    ResliceModel,
    as_model,
    bundled_models,
    bundled_name,
    load_model,
    save_model,
)
from ._segment import SegmentModel, load_segmenter, save_segmenter, seg_net
from ._slice import SliceModel, load_slice_model, save_slice_model, slice_net
from .inplane import InplaneModel, bundled_inplane_models, load_inplane_model, save_inplane_model

#: Checkpoint format (config.json's ``"format"``) → (model class, loader).
FORMATS: dict[str, tuple[type, Callable[..., Any]]] = {
    _checkpoint.FORMAT: (ResliceModel, load_model),
    inplane.FORMAT: (InplaneModel, load_inplane_model),
    _segment.FORMAT: (SegmentModel, load_segmenter),
    _slice.FORMAT: (SliceModel, load_slice_model),
}

__all__ = ["FORMATS", "InplaneModel", "ResliceModel", "SegmentModel", "SliceModel",
           "TorchModel", "as_model", "bundled_inplane_models", "bundled_models",
           "bundled_name", "load_inplane_model", "load_model", "load_segmenter",
           "load_slice_model", "save_inplane_model", "save_model", "save_segmenter",
           "save_slice_model", "seg_net", "slice_net"]
