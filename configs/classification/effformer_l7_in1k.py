# EfficientFormer-L7 on ImageNet-1K, the authors' DeiT recipe (paper Table 1: 83.3 top-1).
# Recipe, data_root and teacher: effformer_l1_in1k.py. (The authors' 1e-6 layer-scale init for
# L7 was for their dense-prediction backbones; classification keeps 1e-5.)
_base_ = './effformer_l1_in1k.py'

model = dict(backbone=dict(arch='l7'))
