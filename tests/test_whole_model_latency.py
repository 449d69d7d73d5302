"""Whole-model latency (mmeff.benchmark.whole_model) through tools/benchmark_latency.py
--whole-model and tools/coreml_latency.py, with tiny repetitions (a smoke test of the code
paths, not a measurement)."""
import json
import os.path as osp
import subprocess
import sys

import pytest

from helpers import load_tool

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RETINANET = osp.join(ROOT, 'configs', 'detection', 'retinanet_effformer_l1.py')
FPN = osp.join(ROOT, 'configs', 'segmentation', 'fpn_effformer_l1_ade20k_40k.py')
MASK_RCNN = osp.join(ROOT, 'configs', 'detection', 'mask_rcnn_effformer_l1.py')


def _check_rows(result, task, size):
    assert result['schema'] == 'mmeff.benchmark.whole_model/1'
    assert result['settings']['task'] == task and result['settings']['reps'] == 2
    rows = result['results']
    assert [(r['part'], r['input_size'], r['status']) for r in rows] == [
        ('backbone', size, 'ok'), ('whole', size, 'ok')]
    backbone, whole = rows
    for r in rows:
        assert r['runtime'] == 'onnxruntime' and r['reps'] == 2 and r['median_ms'] > 0
    assert whole['over_backbone'] == pytest.approx(whole['median_ms'] / backbone['median_ms'],
                                                   rel=1e-2)
    assert result['machine']['cpu'] and result['machine']['torch_threads'] == 1


def _whole_model_run(tmp_path, config):
    """tools/benchmark_latency.py --whole-model CONFIG at 64x96, two timed calls: its JSON."""
    tool = load_tool(ROOT, 'benchmark_latency')
    rc = tool.main(['--whole-model', config, '--input-sizes', '64x96', '--warmup', '0',
                    '--reps', '2', '--threads', '1', '--settle-ms', '0', '--out-dir',
                    str(tmp_path), '--name', 'whole'])
    assert rc == 0
    with open(tmp_path / 'whole.json') as f:
        return json.load(f)


def test_benchmark_latency_times_the_whole_detector(tmp_path):
    result = _whole_model_run(tmp_path, RETINANET)
    _check_rows(result, 'detector', [64, 96])
    md = (tmp_path / 'whole.md').read_text()
    assert '# Whole detector vs backbone latency' in md and '| 64x96 | detector |' in md
    assert 'not iPhone / Core ML figures' in md


def test_benchmark_latency_times_the_whole_mask_rcnn(tmp_path):
    """--whole-model on a Mask R-CNN config (the real L1 config with narrow heads and fewer
    proposals, so that the smoke test stays fast): backbone and whole Mask R-CNN rows."""
    cfg = tmp_path / 'mask_rcnn_small.py'
    cfg.write_text(f"""_base_ = {MASK_RCNN!r}
model = dict(
    backbone=dict(init_cfg=None), neck=dict(out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=32),
                  bbox_head=dict(in_channels=32, fc_out_channels=64),
                  mask_roi_extractor=dict(out_channels=32),
                  mask_head=dict(in_channels=32, conv_out_channels=32)),
    test_cfg=dict(rpn=dict(max_per_img=50), rcnn=dict(max_per_img=10)))
""")
    result = _whole_model_run(tmp_path, str(cfg))
    _check_rows(result, 'detector', [64, 96])
    assert result['settings']['detector'] == 'MaskRCNN'
    md = (tmp_path / 'whole.md').read_text()
    assert '(MaskRCNN); weights: random' in md and '| 64x96 | detector |' in md


def test_whole_model_options_need_a_config(capsys):
    tool = load_tool(ROOT, 'benchmark_latency')
    with pytest.raises(SystemExit) as err:
        tool.main(['--checkpoint', 'x.pth'])
    assert err.value.code == 2
    assert '--whole-task and --checkpoint go with --whole-model CONFIG' in capsys.readouterr().err
    from mmeff.benchmark.whole_model import infer_task, whole_model_latency
    with pytest.raises(FileNotFoundError, match="config file 'nope.py' does not exist"):
        infer_task('nope.py')
    assert infer_task(RETINANET) == 'detector' and infer_task(FPN) == 'segmentor'
    with pytest.raises(ValueError, match="task must be one of \\('detector', 'segmentor'\\)"):
        whole_model_latency(RETINANET, task='classifier')


@pytest.mark.slow
def test_whole_segmentor_latency():
    from mmeff.benchmark.whole_model import to_markdown, whole_model_latency
    result = whole_model_latency(FPN, input_sizes=['64x64'], warmup=0, reps=2, threads=1,
                                 settle_s=0)
    _check_rows(result, 'segmentor', [64, 64])
    assert '| 64x64 | segmentor |' in to_markdown(result)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == 'darwin', reason='the non-macOS path (proxies)')
def test_coreml_latency_prints_whole_model_proxies(tmp_path):
    pytest.importorskip('coremltools')
    from mmeff.deploy.detector import export_detector
    package = str(tmp_path / 'retinanet.mlpackage')
    export_detector(RETINANET, fmt='coreml', input_size=(64, 64), out=package)
    res = subprocess.run([sys.executable, 'tools/coreml_latency.py', package, '--proxy-reps', '2',
                          '--proxy-warmup', '0', '--threads', '1'], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 3, res.stderr[-2000:]
    assert 'cannot time Core ML predictions here' in res.stderr
    assert f'PROXIES for the whole detector of {RETINANET} at 1x3x64x64' in res.stdout
    for part in ('onnxruntime backbone', 'onnxruntime whole'):
        line = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith(f'PROXY {part}'))
        assert 'median' in line and 'CPU' in line
