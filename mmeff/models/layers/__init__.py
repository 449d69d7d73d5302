from .attention import Attention, relative_offset_index
from .blocks import ConvMlp, LayerScale, Meta3D, Meta4D, Mlp, Pooling

__all__ = ['Attention', 'relative_offset_index', 'ConvMlp', 'LayerScale', 'Meta3D', 'Meta4D',
           'Mlp', 'Pooling']
