"""Models and their checkpoint formats (safetensors + JSON): the inter-slice U-net, the
in-plane U-net, and a small 2-D segmenter usable as a block predictor
(:func:`ctvol.shift_interleave`)."""

from ._checkpoint import ResliceModel, bundled_models, load_model, save_model
from ._segment import SegmentModel, load_segmenter, save_segmenter, seg_net
from .inplane import InplaneModel, bundled_inplane_models, load_inplane_model, save_inplane_model

__all__ = ["InplaneModel", "ResliceModel", "SegmentModel", "bundled_inplane_models",
           "bundled_models", "load_inplane_model", "load_model", "load_segmenter",
           "save_inplane_model", "save_model", "save_segmenter", "seg_net"]
