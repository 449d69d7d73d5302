"""mmeff: EfficientFormer for OpenMMLab 2.x."""
from .version import __version__  # noqa: F401
