# EfficientFormerV2-S2 on ImageNet-1K, the authors' V2 recipe (their README: 81.6 top-1 after 300
# epochs, 82.0 after 450). Recipe, data_root, teacher and the 450-epoch options:
# effformerv2_s0_in1k.py and configs/classification/README.md.
_base_ = './effformerv2_s0_in1k.py'

model = dict(backbone=dict(arch='s2', drop_path_rate=0.02))  # the authors' drop path for S2
