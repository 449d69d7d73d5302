"""The distributed supernet on a GPU: two ranks of configs/slimming/supernet_tiny_synthetic.py
through tools/train.py ``--launcher pytorch --amp``, with mmengine's DDP wrapper
(``SupernetDDP``), the one dynamic loss scaler and the sandwich's ``no_sync``.

One lent machine has one GPU, so both ranks share ``cuda:0`` (``LOCAL_RANK=0`` for each, set by
hand instead of torchrun's 0 and 1) and talk over gloo (NCCL refuses two ranks on one device);
gloo all-reduces the CUDA gradients through host memory. What NCCL would do differently is the
transport, not the wrapper's logic checked here: identical ranks after training (weights, BN
statistics, architecture logits), finite losses, and a run killed after epoch 1 that resumes to
the same state as the uninterrupted one.

Deselected in the default run (``cuda`` marker); on a GPU machine:
``.venv/bin/python -m pytest -m cuda tests/test_cuda_dist.py``.
"""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from test_slimming_dist import _free_port, train_two_ranks_and_resume

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')]

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _train_two_ranks_one_gpu(tmp_path, config, work_dir, *extra):
    port = str(_free_port())
    procs, logs = [], []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK='0', WORLD_SIZE='2',
                   LOCAL_WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT=port,
                   PYTHONWARNINGS='ignore', PYTHONPATH=f'{tmp_path}:{ROOT}')
        log = open(tmp_path / f'rank{rank}_{osp.basename(work_dir)}_{len(extra)}.log', 'w+')
        cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir',
               work_dir, '--launcher', 'pytorch', '--amp',
               '--cfg-options', 'env_cfg.dist_cfg.backend=gloo', *extra]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
        logs.append(log)
    rcs = [p.wait(timeout=600) for p in procs]
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    assert rcs == [0, 0], '\n'.join(t[-3000:] for t in texts)
    return '\n'.join(texts)


def test_two_ranks_on_one_gpu_amp_identical_and_resume(tmp_path):
    # CUDA kernels under the warn-only determinism of mmeff/engine/determinism.py need not be
    # bit-reproducible between processes: the resumed run is held to 1e-3, not to equality.
    train_two_ranks_and_resume(
        tmp_path, lambda config, work_dir, *extra: _train_two_ranks_one_gpu(
            tmp_path, config, work_dir, *extra), resume_atol=1e-3)
