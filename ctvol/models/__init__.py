"""Models: the inter-slice U-net and its checkpoint format (safetensors + JSON)."""

from ._checkpoint import ResliceModel, bundled_models, load_model, save_model

__all__ = ["ResliceModel", "bundled_models", "load_model", "save_model"]
