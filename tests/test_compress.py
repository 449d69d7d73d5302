"""Compressed Core ML (mmeff.deploy.compress): coremltools' palettisation and INT8 weight
quantisation of V1/V2 classifiers and backbones, the package's weight bytes against FP16, the
spec checks, the PyTorch model carrying the same compressed weights (checked value for value
against the package), and the one-line refusals. Core ML cannot predict on Linux: the error
is measured with PyTorch."""
import numpy as np
import pytest
import torch

from mmeff.deploy import coreml_problems, export_coreml, inspect_coreml
from mmeff.deploy.compress import (COMPRESS_MODES, WEIGHT_THRESHOLD, check_compress_mode,
                                   compress_array, compress_mlmodel, compressed_torch_error,
                                   package_weights)
from mmeff.models import EfficientFormer, EfficientFormerV2
from mmeff.models.classifiers import EfficientFormerClassifier

from helpers import randomise_

ct = pytest.importorskip('coremltools')

TINY = {'v1': ('mmeff.EfficientFormer', EfficientFormer,
               dict(depths=[1, 1, 2, 2], widths=[16, 32, 48, 64], num_vit=1)),
        'v2': ('mmeff.EfficientFormerV2', EfficientFormerV2,
               dict(depths=[1, 1, 2, 2], widths=[16, 32, 48, 64], num_vit=1))}
SIZE = 64
# Bits per compressed value: what the weight file may hold at most, relative to FP16, once
# the look-up tables / scales and the uncompressed small tensors are added.
MAX_RATIO = {'palettize4': 0.45, 'palettize8': 0.7, 'int8': 0.7}


def tiny_model(family, task):
    btype, cls, arch = TINY[family]
    if task == 'backbone':
        return randomise_(cls(arch), 0).eval()
    clf = EfficientFormerClassifier(backbone=dict(type=btype, arch=arch), num_classes=10)
    return randomise_(clf, 0).as_inference_module()


@pytest.fixture(scope='module', params=[
    ('v1', 'classifier'), ('v2', 'backbone'),
    pytest.param(('v1', 'backbone'), marks=pytest.mark.slow),
    pytest.param(('v2', 'classifier'), marks=pytest.mark.slow)], ids=lambda p: '-'.join(p))
def converted(request, tmp_path_factory):
    family, task = request.param
    model = tiny_model(family, task)
    path = str(tmp_path_factory.mktemp('coreml') / 'fp16.mlpackage')
    report = export_coreml(model, path, (1, 3, SIZE, SIZE))
    assert report['problems'] == []
    return model, ct.models.MLModel(path, skip_model_load=True)


def test_check_compress_mode_refusals(monkeypatch):
    with pytest.raises(ValueError, match=r"compression mode must be one of \('palettize4', "
                                         r"'palettize8', 'int8'\), got 'palettize2'"):
        check_compress_mode('palettize2')
    import coremltools.optimize.coreml as cto
    monkeypatch.delattr(cto, 'linear_quantize_weights')  # as in a coremltools without it
    with pytest.raises(ValueError, match=rf'--compress int8 needs coremltools\.optimize\.coreml\.'
                                         rf'linear_quantize_weights .* which the installed '
                                         rf'coremltools {ct.__version__} does not have .*: pip '
                                         rf'install -U "coremltools>=7"'):
        check_compress_mode('int8')
    assert check_compress_mode('palettize4') == 'palettize4'


def test_compress_array_is_coremltools_compression():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 16, 3, 3, generator=g).numpy()
    q = compress_array(w, 'int8')  # symmetric per output channel: scale = max|w| / 127
    w16 = w.astype(np.float16).astype(np.float32)
    scale = np.abs(w16).reshape(32, -1).max(1) / 127
    expected = (np.round(w16.reshape(32, -1) / scale[:, None]) * scale[:, None]).reshape(w.shape)
    close = np.isclose(q.astype(np.float32), expected, rtol=2e-3, atol=1e-5)
    assert close.mean() > 0.99  # FP16 scales may move a value sitting on a .5 step
    assert np.abs(q.astype(np.float32) - w16).max() <= scale.max() * 0.51 + 1e-3
    for mode, levels in (('palettize4', 16), ('palettize8', 256)):
        p = compress_array(w, mode)
        assert p.shape == w.shape and p.dtype == np.float16
        assert 2 < len(np.unique(p)) <= levels
        # k-means: each value goes to its nearest centre
        centres = np.unique(p).astype(np.float32)
        nearest = centres[np.abs(w16.reshape(-1, 1) - centres).argmin(1)]
        assert np.mean(nearest == p.reshape(-1).astype(np.float32)) > 0.99


# palettize8: 256-entry k-means per tensor (scikit-learn below 10000 values) takes ~30 s here
MODES = ['palettize4', 'int8', pytest.param('palettize8', marks=pytest.mark.slow)]


@pytest.mark.parametrize('mode', MODES)
def test_compressed_package_and_torch_error(converted, mode, tmp_path):
    model, fp16 = converted
    compressed, info = compress_mlmodel(fp16, mode)
    assert info['mode'] == mode and info['coremltools'] == ct.__version__
    assert info['fp16_weight_bytes'] > 0
    assert info['weight_bytes'] < MAX_RATIO[mode] * info['fp16_weight_bytes'], info
    kind = 'constexpr_affine_dequantize' if mode == 'int8' else 'constexpr_lut_to_dense'
    assert list(info['compressed_tensors']) == [kind] and info['compressed_tensors'][kind] >= 4
    # saved, the package passes the spec checks of an FP16 export (compressed weights are
    # expanded to FP16 on device) and keeps its metadata
    out = str(tmp_path / f'{mode}.mlpackage')
    compressed.save(out)
    report = inspect_coreml(out)
    assert coreml_problems(report) == []
    assert report['metadata']['mmeff.compress'] == mode
    assert report['metadata']['mmeff.precision'] == 'fp16'
    assert report['op_histogram'][kind] == info['compressed_tensors'][kind]
    # the torch model carrying the package's weights: every one is found in the model, and
    # the reproduction of one of them equals the package's values
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    err = compressed_torch_error(model, mode, x,
                                 mlmodel=ct.models.MLModel(out, skip_model_load=True))
    check = err['package_check']
    assert check['package_tensors'] == info['compressed_tensors'][kind]
    assert check['unmapped'] == [] and check['mapped'] == check['package_tensors']
    assert check['reproduction_equal'] is True, check
    # coarser weights, larger error; FP16 weights alone are close to exact
    assert err['fp16_weights']['rel_err'] < 1e-3
    assert err['fp16_weights']['rel_err'] < err['rel_err'] < 0.5, err
    # without the package, the reproduction of every weight gives the same model
    reproduced = compressed_torch_error(model, mode, x)
    assert reproduced['weights'] == 'reproduced'
    assert reproduced['rel_err'] == pytest.approx(err['rel_err'], rel=1e-6)


@pytest.mark.slow
def test_compressed_error_orders_the_modes(converted):
    model, _ = converted
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    errs = {m: compressed_torch_error(model, m, x)['rel_err'] for m in COMPRESS_MODES}
    assert errs['palettize8'] < errs['palettize4'] and errs['int8'] < errs['palettize4'], errs


def test_small_tensors_are_left_alone(converted):
    _, fp16 = converted
    compressed, _ = compress_mlmodel(fp16, 'int8')
    for op_type, dense in package_weights(compressed).values():
        assert dense.size > WEIGHT_THRESHOLD and dense.ndim >= 2, (op_type, dense.shape)
    assert package_weights(fp16) == {}  # the FP16 model given is not modified
