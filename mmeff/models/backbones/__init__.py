from mmeff.checkpoint import load_backbone_state_dict  # public here too (the loader they use)

from .efficientformer import EfficientFormer
from .efficientformer_v2 import EfficientFormerV2

__all__ = ['EfficientFormer', 'EfficientFormerV2', 'load_backbone_state_dict']
