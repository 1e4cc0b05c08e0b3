"""Models: the inter-slice U-net, the in-plane U-net, and their checkpoint formats
(safetensors + JSON)."""

from ._checkpoint import ResliceModel, bundled_models, load_model, save_model
from .inplane import InplaneModel, bundled_inplane_models, load_inplane_model, save_inplane_model

__all__ = ["InplaneModel", "ResliceModel", "bundled_inplane_models", "bundled_models",
           "load_inplane_model", "load_model", "save_inplane_model", "save_model"]
