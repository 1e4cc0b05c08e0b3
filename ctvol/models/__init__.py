"""Models: the inter-slice U-net and its checkpoint format (safetensors + JSON); a small
2-D segmenter usable as a block predictor (:func:`ctvol.shift_interleave`)."""

from ._checkpoint import ResliceModel, bundled_models, load_model, save_model
from ._segment import SegmentModel, load_segmenter, save_segmenter, seg_net

__all__ = ["ResliceModel", "SegmentModel", "bundled_models", "load_model", "load_segmenter",
           "save_model", "save_segmenter", "seg_net"]
