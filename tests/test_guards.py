"""Nothing lost, nothing silently wrong: NaN/Inf in exports (ONNX, Core ML)."""
import os.path as osp

import numpy as np
import pytest
import torch

from mmeff.deploy import export_coreml, export_onnx
from mmeff.deploy.export import _errors
from mmeff.models import EfficientFormer

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_ARCH = dict(depths=[1, 1, 1, 1], widths=[8, 16, 24, 32], num_vit=1)


def tiny_backbone(nan=False):
    """A 4-stage EfficientFormer small enough to export in seconds; ``nan=True`` puts 3 NaN in
    an MB3D (attention block) MLP weight and 2 Inf in an MB4D one, as a diverged run would."""
    model = EfficientFormer(TINY_ARCH).eval()
    if nan:
        with torch.no_grad():
            model.stages[3].blocks[0].mlp.fc1.weight[0, :3] = float('nan')
            model.stages[2].blocks[0].mlp.fc1.weight[0, :2] = float('inf')
    return model


# ---------------------------------------------------------------------------- exports
def test_export_error_measure_keeps_nan():
    """Python's max() dropped NaN, so an all-NaN ONNX Runtime output measured error 0."""
    ref = (torch.ones(2, 3),)
    errs = _errors([np.full((2, 3), np.nan, np.float32)], ref)
    assert np.isnan(errs['rel_err']) and np.isnan(errs['max_abs_err'])
    assert _errors([np.ones((2, 3), np.float32)], ref) == dict(max_abs_err=0., rel_err=0.)


def test_onnx_export_refuses_nan_weights(tmp_path):
    with pytest.raises(ValueError) as info:
        export_onnx(tiny_backbone(nan=True), str(tmp_path / 'nan.onnx'), 64)
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'nan.onnx'}: 2 ONNX weight tensor(s) hold NaN or Inf")
    assert "initialiser 'model.stages.2.blocks.0.mlp.fc1.weight': 0 NaN, 2 Inf of 2304 values" \
        in msg
    assert ': 3 NaN, 0 Inf of 4096 values' in msg  # the MB3D linear (named by the exporter)
    assert ("because the model's own weights do (stages.2.blocks.0.mlp.fc1.weight: 0 NaN, 2 Inf "
            'of 2304 values; stages.3.blocks.0.mlp.fc1.weight: 3 NaN, 0 Inf of 4096 values)'
            in msg)
    assert 'the checkpoint is broken' in msg


def test_onnx_export_check_fails_on_nan_onnxruntime_outputs(tmp_path, monkeypatch):
    """A correct model whose ONNX Runtime session returns NaN (an exporter or runtime fault)."""
    import onnxruntime

    class NaNSession(onnxruntime.InferenceSession):
        def run(self, *args, **kwargs):
            return [np.full_like(o, np.nan) for o in super().run(*args, **kwargs)]

    path = str(tmp_path / 'ok.onnx')
    report = export_onnx(tiny_backbone(), path, 64)
    assert report['onnxruntime']['rel_err'] < 1e-4
    monkeypatch.setattr(onnxruntime, 'InferenceSession', NaNSession)
    with pytest.raises(RuntimeError) as info:
        export_onnx(tiny_backbone(), path, 64)
    assert str(info.value) == (
        f'ONNX Runtime outputs hold NaN or Inf where torch gives finite values on the same input '
        f"({path}): output 'stage0': 2048 NaN, 0 Inf of 2048 values; output 'stage1': 1024 "
        f"NaN, 0 Inf of 1024 values; output 'stage2': 384 NaN, 0 Inf of 384 values; output "
        f"'stage3': 128 NaN, 0 Inf of 128 values")


def test_coreml_export_checks_nan_constants_and_outputs(tmp_path):
    report = export_coreml(tiny_backbone(nan=True), str(tmp_path / 'nan.mlpackage'), 64)
    assert report['nonfinite_constants'] == [
        "const 'p_model_stages_2_blocks_0_mlp_fc1_weight_to_fp16': 0 NaN, 2 Inf of 2304 values",
        "const 'p_model_stages_3_blocks_0_mlp_fc1_weight_to_fp16': 3 NaN, 0 Inf of 4096 values"]
    problems = report['problems']
    assert problems[0] == ('2 constant(s) hold NaN or Inf (broken weights, or values that '
                           'overflow FP16): ' + '; '.join(report['nonfinite_constants']))
    assert problems[1].startswith('the torch model itself gives NaN or Inf on the export input')
    assert "output 'stage3': 128 NaN, 0 Inf of 128 values" in problems[1]
    # The tool turns the problems into exit status 1 (tested with a finite model elsewhere).
    clean = export_coreml(tiny_backbone(), str(tmp_path / 'ok.mlpackage'), 64)
    assert clean['nonfinite_constants'] == [] and clean['torch_nonfinite_outputs'] == []
    assert clean['problems'] == []
