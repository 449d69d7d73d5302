"""Small helpers shared by the tools; nothing heavy is imported here."""
from typing import Any

import numpy as np


def to_builtin(obj: Any) -> Any:
    """``obj`` with numpy and torch numbers turned into Python ones, recursively.

    The metrics mmseg and mmpretrain return are numpy scalars, which numpy 2 prints as
    ``np.float64(58.64)``; after this they print as ``58.64`` and dump to JSON. Dicts become
    plain dicts in the same key order, tuples stay tuples, arrays and tensors become (nested)
    lists, anything else is returned unchanged.

    Example:
        >>> to_builtin({'mIoU': np.float64(58.64), 'per_class': np.array([1, 2])})
        {'mIoU': 58.64, 'per_class': [1, 2]}
        >>> to_builtin(np.float32(58.85))
        58.85
    """
    if isinstance(obj, np.floating) and obj.dtype.itemsize < 8:
        # float32 metrics (mmseg's): the shortest decimal that round-trips in float32, so
        # np.float32(58.85) prints 58.85, not 58.849998474121094.
        return float(str(obj))
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()  # a numpy scalar gives the Python scalar, an array nested lists
    if type(obj).__module__.split('.')[0] == 'torch' and hasattr(obj, 'tolist'):
        return obj.tolist()  # tensors, without importing torch here
    if isinstance(obj, dict):  # OrderedDict & co. too: they would print as OrderedDict([...])
        return {k: to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [to_builtin(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def register_all_modules(init_default_scope: bool = True) -> None:
    """Register every mmeff module (models, model families, datasets, metrics, hooks) in
    mmeff's registries, and by default make ``'mmeff'`` the default scope: the OpenMMLab entry
    point (``mmdet.utils.register_all_modules``); see :func:`mmeff.registry.register_all_modules`.
    """
    from mmeff.registry import register_all_modules as register
    register(init_default_scope)


__all__ = ['to_builtin', 'register_all_modules']
