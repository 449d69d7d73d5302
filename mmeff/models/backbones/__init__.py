from .efficientformer import EfficientFormer, load_backbone_state_dict
from .efficientformer_v2 import EfficientFormerV2

__all__ = ['EfficientFormer', 'EfficientFormerV2', 'load_backbone_state_dict']
