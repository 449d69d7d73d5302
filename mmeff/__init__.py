"""mmeff: EfficientFormer for OpenMMLab 2.x."""
__version__ = "0.1.0"
