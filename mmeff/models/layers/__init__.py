from .attention import Attention, relative_offset_index, resize_bias_table
from .blocks import ConvMlp, LayerScale, Meta3D, Meta4D, Mlp, Pooling
from .v2 import (FFN, Attention4D, AttentionDownsample, BlockV2, ConvNorm, DownsampleV2,
                 LocalGlobalQuery, ResizableBiasAttention, strided_query_offset_index)

__all__ = ['Attention', 'relative_offset_index', 'resize_bias_table', 'ConvMlp', 'LayerScale',
           'Meta3D', 'Meta4D', 'Mlp', 'Pooling', 'FFN', 'Attention4D', 'AttentionDownsample',
           'BlockV2', 'ConvNorm', 'DownsampleV2', 'LocalGlobalQuery', 'ResizableBiasAttention',
           'strided_query_offset_index']
