# EfficientFormerV2-S1 on ImageNet-1K, the authors' V2 recipe (their README: 79.0 top-1 after 300
# epochs, 79.7 after 450). Recipe, data_root, teacher and the 450-epoch options:
# effformerv2_s0_in1k.py and configs/classification/README.md.
_base_ = './effformerv2_s0_in1k.py'

model = dict(backbone=dict(arch='s1', drop_path_rate=0.))  # the authors' drop path for S1
