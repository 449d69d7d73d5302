# EfficientFormerV2-L on ImageNet-1K, the authors' V2 recipe (their README: 83.3 top-1 after 300
# epochs, 83.5 after 450). Recipe, data_root, teacher and the 450-epoch options:
# effformerv2_s0_in1k.py and configs/classification/README.md.
_base_ = './effformerv2_s0_in1k.py'

model = dict(backbone=dict(arch='l', drop_path_rate=0.1))  # the authors' drop path for L
