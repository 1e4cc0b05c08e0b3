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

#: The checkpoint formats (config.json's ``"format"``), by model.
RESLICE_FORMAT = _checkpoint.FORMAT
INPLANE_FORMAT = inplane.FORMAT
SEGMENT_FORMAT = _segment.FORMAT
SLICE_FORMAT = _slice.FORMAT

#: Checkpoint format → (model class, loader): what reads a checkpoint, and what
#: the per-worker cache (``_runtime.cached_model``) loads a path with.
FORMATS: dict[str, tuple[type, Callable[..., Any]]] = {
    RESLICE_FORMAT: (ResliceModel, load_model),
    INPLANE_FORMAT: (InplaneModel, load_inplane_model),
    SEGMENT_FORMAT: (SegmentModel, load_segmenter),
    SLICE_FORMAT: (SliceModel, load_slice_model),
}

__all__ = ["FORMATS", "INPLANE_FORMAT", "RESLICE_FORMAT", "SEGMENT_FORMAT", "SLICE_FORMAT",
           "InplaneModel", "ResliceModel", "SegmentModel", "SliceModel",
           "TorchModel", "as_model", "bundled_inplane_models", "bundled_models",
           "bundled_name", "load_inplane_model", "load_model", "load_segmenter",
           "load_slice_model", "save_inplane_model", "save_model", "save_segmenter",
           "save_slice_model", "seg_net", "slice_net"]
