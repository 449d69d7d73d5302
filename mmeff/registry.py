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
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='mmeff',
                    locations=['mmeff.datasets'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='mmeff',
                      locations=['mmeff.datasets'])
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope='mmeff', locations=['mmeff.evaluation'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmeff', locations=['mmeff.engine'])
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS, scope='mmeff',
                          locations=['mmeff.engine.optim_wrappers'])

# Modules whose import registers mmeff's modules in the registries above.
REGISTERING_MODULES = ('mmeff.models', 'mmeff.datasets', 'mmeff.evaluation', 'mmeff.engine',
                       'mmeff.engine.hooks_classification', 'mmeff.slimming.hooks',
                       'mmeff.slimming.supernet', 'mmeff.slimming.wrapper')


def register_all_modules(init_default_scope: bool = True) -> None:
    """Register every mmeff module in mmeff's registries, as mmdet's and mmseg's
    ``register_all_modules`` do for theirs: import the modules that register (which includes
    ``mmeff.models``: the model families and ``mmeff.compat``'s fixes, see its docstring).

    Args:
        init_default_scope (bool): Also make ``'mmeff'`` the default scope, so that bare type
            names are looked up in mmeff's registries first. When another scope is current, a
            new ``'mmeff'`` scope instance is made current, with a warning (as mmdet does).
            Defaults to True.
    """
    import datetime
    import importlib
    import warnings

    from mmengine.registry import DefaultScope

    for name in REGISTERING_MODULES:
        importlib.import_module(name)
    if not init_default_scope:
        return
    current = DefaultScope.get_current_instance()
    if current is None or not DefaultScope.check_instance_created('mmeff'):
        DefaultScope.get_instance('mmeff', scope_name='mmeff')
        return
    if current.scope_name != 'mmeff':
        warnings.warn(f'The current default scope "{current.scope_name}" is not "mmeff"; '
                      f'register_all_modules makes "mmeff" the default scope. If that is not '
                      f'what you want, call it with init_default_scope=False.')
        DefaultScope.get_instance(f'mmeff-{datetime.datetime.now()}', scope_name='mmeff')
