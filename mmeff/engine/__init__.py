from .hooks import RNGStateHook
from .hooks_nan import CheckFiniteLossHook, NonFiniteLossError
from .optim_wrappers import AGCOptimWrapper, AmpAGCOptimWrapper
from .launch import (build_runner, check_data_paths, check_model_channels, check_pretrained,
                     explain_dataset_errors, prepare_config)

__all__ = [
    'AGCOptimWrapper', 'AmpAGCOptimWrapper', 'CheckFiniteLossHook', 'NonFiniteLossError',
    'RNGStateHook', 'build_runner', 'check_data_paths', 'check_model_channels',
    'check_pretrained', 'explain_dataset_errors', 'prepare_config'
]
