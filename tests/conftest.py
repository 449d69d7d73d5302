import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: heavier checks, run with `pytest -m slow`')


@pytest.fixture(scope='session')
def repo_root():
    return ROOT
