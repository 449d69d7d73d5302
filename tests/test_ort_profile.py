"""mmeff.benchmark.ort_profile and tools/profile_onnx.py: ONNX Runtime's profiler per operator
type over the profiled calls only, the operators of the graph ONNX Runtime runs, the files."""
import json
import os.path as osp
import subprocess
import sys

import pytest

from mmeff.benchmark.ort_profile import format_profile, profile_onnx
from mmeff.deploy.export import export_onnx
from mmeff.models import EfficientFormer

from helpers import randomise_

pytest.importorskip('onnxruntime')
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='module')
def tiny_onnx(tmp_path_factory):
    model = EfficientFormer(dict(depths=[1, 1, 2, 2], widths=[16, 32, 48, 64], num_vit=1),
                            out_indices=(0, 1, 2, 3))
    path = str(tmp_path_factory.mktemp('profile') / 'tiny.onnx')
    export_onnx(randomise_(model).eval(), path, 64, method='torchscript')
    return path


def test_profile_per_operator_type(tiny_onnx):
    result = profile_onnx(tiny_onnx, threads=1, warmup=1, runs=3)
    ops = {row['op']: row for row in result['ops']}
    assert 'Conv' in ops and 'AveragePool' in ops
    assert abs(sum(row['share'] for row in result['ops']) - 1) < 1e-3
    assert [r['ms_per_run'] for r in result['ops']] == sorted(
        (r['ms_per_run'] for r in result['ops']), reverse=True)
    # Only the 3 profiled calls count: the kernel sum per call is below the call's wall time.
    assert 0 < result['kernel_ms_per_run'] <= result['run_ms_median'] * 1.5
    # The graph as ONNX Runtime runs it: the MB4D mixers keep it in the blocked layout.
    graph = result['graph_ops']
    assert graph['Conv'] >= 4 and graph.get('ReorderInput', 0) == 0
    assert result['reorders'] == graph.get('ReorderOutput', 0)  # out of it for the outputs
    text = format_profile(result, 'tiny')
    assert text.startswith('## tiny (model run median ') and '| Conv | ' in text


def test_profile_bad_input(tiny_onnx, tmp_path):
    with pytest.raises(FileNotFoundError, match='no ONNX model at .*export one first'):
        profile_onnx(str(tmp_path / 'missing.onnx'))
    with pytest.raises(ValueError, match='runs must be an int >= 1'):
        profile_onnx(tiny_onnx, runs=0)


def test_profile_tool(tmp_path):
    proc = subprocess.run(
        [sys.executable, 'tools/profile_onnx.py', '--archs', 'l1', '--input-size', '64',
         '--threads', '1', '--warmup', '1', '--runs', '2', '--int8', '--out-dir', str(tmp_path),
         '--name', 'p'], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / 'p.json').read_text())
    assert [r['title'] for r in results] == ['l1 classifier, FP32', 'l1 classifier, INT8']
    assert any(r['op'] == 'QLinearConv' for r in results[1]['ops'])
    text = (tmp_path / 'p.md').read_text()
    assert '--archs l1 --task classifier --input-size 64' in text
    assert '## l1 classifier, FP32 (model run median' in text and '## l1 classifier, INT8' in text
    bad = subprocess.run([sys.executable, 'tools/profile_onnx.py', '--runs', '0'], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and '--runs must be at least 1' in bad.stderr
