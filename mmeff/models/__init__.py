"""Importing this module registers every mmeff model in ``mmeff.registry.MODELS`` (scope
``mmeff``) and every model family in ``mmeff.models.families.FAMILIES``. Use it from mmdet/mmseg
configs with ``custom_imports = dict(imports=['mmeff.models'], allow_failed_imports=False)``;
in code, ``mmeff.utils.register_all_modules()`` does the same and more (datasets, metrics,
hooks), in the OpenMMLab manner.

It also applies the compatibility fixes of ``mmeff.compat`` (``compat.apply_all()``, idempotent).
That is a side effect on purpose: a config run by mmdet's or mmseg's own tools reaches mmeff only
through ``custom_imports``, and without the checkpoint-loading fix every checkpoint mmengine
saves fails to load on torch >= 2.6 (resume, ``load_from``, ``init_detector``/``init_model``).
"""
from mmeff import compat

compat.apply_all()

from mmeff.checkpoint import load_backbone_state_dict  # noqa: E402
from .backbones import EfficientFormer, EfficientFormerV2  # noqa: E402
from .classifiers import EfficientFormerClassifier  # noqa: E402
from .families import FAMILIES, Family, family_of, family_of_arch  # noqa: E402
from mmeff import segmentation  # noqa: E402,F401  (registers mmeff.SegDataCheckHook)

__all__ = ['EfficientFormer', 'EfficientFormerV2', 'EfficientFormerClassifier',
           'load_backbone_state_dict', 'FAMILIES', 'Family', 'family_of', 'family_of_arch']
