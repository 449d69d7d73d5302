# EfficientFormer-L3 on ImageNet-1K, the authors' DeiT recipe (paper Table 1: 82.4 top-1).
# Recipe, data_root and teacher: effformer_l1_in1k.py.
_base_ = './effformer_l1_in1k.py'

model = dict(backbone=dict(arch='l3'))
