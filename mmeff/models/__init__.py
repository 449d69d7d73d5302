"""Importing this module registers every mmeff model in ``mmeff.registry.MODELS`` (scope
``mmeff``) and applies the compatibility fixes of ``mmeff.compat``. Use it from mmdet/mmseg
configs with ``custom_imports = dict(imports=['mmeff.models'], allow_failed_imports=False)``."""
from mmeff import compat

compat.apply_all()

from .backbones import EfficientFormer, EfficientFormerV2, load_backbone_state_dict  # noqa: E402
from .classifiers import EfficientFormerClassifier  # noqa: E402
from mmeff import segmentation  # noqa: E402,F401  (registers mmeff.SegDataCheckHook)

__all__ = ['EfficientFormer', 'EfficientFormerV2', 'EfficientFormerClassifier',
           'load_backbone_state_dict']
