"""``randomness.deterministic=True`` on a GPU, in the form the models here can train with.

mmengine's ``Runner.set_randomness`` turns the flag into ``torch.use_deterministic_algorithms
(True)``, which makes every CUDA op without a deterministic kernel raise. EfficientFormer's
attention resizes its bias table with bicubic interpolation, and ``upsample_bicubic2d``'s CUDA
backward has no deterministic kernel: every config with ``deterministic=True`` (the demo,
segmentation and supernet configs) stopped at its first GPU training step with
``upsample_bicubic2d_backward_out_cuda does not have a deterministic implementation``
(seen on an H200, benchmarks/gpu_path_h200.md). On CUDA the same request is kept with
``warn_only=True``: deterministic kernels wherever PyTorch has them (cuDNN, and cuBLAS through
``CUBLAS_WORKSPACE_CONFIG``, set here when the user did not), a warning naming each op that
has none. Runs on the CPU are unchanged (all the CPU kernels used here are deterministic).
"""
import os

import torch
from mmengine.logging import print_log

CUBLAS_WORKSPACE = ':4096:8'  # what PyTorch's reproducibility notes give for cuBLAS >= 10.2


def wants_determinism(cfg) -> bool:
    randomness = cfg.get('randomness') or {}
    return bool(randomness.get('deterministic', False))


def prepare_cuda_determinism(cfg) -> bool:
    """Before the Runner is built: cuBLAS needs its workspace setting before CUDA starts.

    Returns whether anything was set (a deterministic config on a machine with CUDA).
    """
    if not (wants_determinism(cfg) and torch.cuda.is_available()):
        return False
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', CUBLAS_WORKSPACE)
    return True


def relax_cuda_determinism(cfg) -> bool:
    """After the Runner set ``use_deterministic_algorithms(True)``: keep it, warn-only on CUDA.

    Returns whether the setting was changed.
    """
    if not (wants_determinism(cfg) and torch.cuda.is_available()):
        return False
    torch.use_deterministic_algorithms(True, warn_only=True)
    print_log('randomness.deterministic=True on CUDA: deterministic kernels where PyTorch has '
              'them, a warning for ops without one (the bicubic resize of the attention biases '
              'has no deterministic CUDA backward)', logger='current')
    return True
