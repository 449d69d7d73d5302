from .efficientformer import EfficientFormer, load_backbone_state_dict

__all__ = ['EfficientFormer', 'load_backbone_state_dict']
