"""Models: the BiT ResNetV2 backbone used by every DFB stage."""
from .resnetv2 import (KNOWN_MODELS, ResNetV2, StdConv2d, create_model, load_state_dict_checked,
                       npz_key_map)

__all__ = ["KNOWN_MODELS", "ResNetV2", "StdConv2d", "create_model", "load_state_dict_checked",
           "npz_key_map"]
