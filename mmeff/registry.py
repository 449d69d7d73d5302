"""Child registries of mmengine's root registries (scope ``mmeff``).

Scoped names such as ``type='mmeff.EfficientFormer'`` resolve through the root registry into
these children from any library's config (mmdet, mmseg, mmpretrain), as long as the module
that registers them is imported (``custom_imports=dict(imports=['mmeff.models'])``).
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmeff', locations=['mmeff.models'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='mmeff', locations=['mmeff.datasets'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='mmeff', locations=['mmeff.datasets'])
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope='mmeff', locations=['mmeff.evaluation'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmeff', locations=['mmeff.engine'])
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS, scope='mmeff',
                          locations=['mmeff.engine.optim_wrappers'])
