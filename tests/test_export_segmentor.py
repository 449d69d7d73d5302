"""Whole-segmentor export (mmeff.deploy.segmentor, tools/export.py --task segmentor) and the
preprocessing helpers (mmeff.deploy.preprocess), checked against mmseg itself: its pipeline,
its EncoderDecoder's predictions and its IoUMetric, with ONNX Runtime running the export.
Core ML predictions need macOS: here the conversion and the spec checks run."""
import copy
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

from helpers import load_tool, randomise_, rel_err

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_FPN = osp.join(ROOT, 'configs', 'demo', 'fpn_effformer_l1_synthetic.py')
UPERNET = osp.join(ROOT, 'configs', 'segmentation', 'upernet_effformer_l1_ade20k_160k.py')
EXPORT_SIZE = (96, 128)
# Validation images cycle through these sizes (training takes the first 8 images): the export
# size itself, scaled up (75x100 -> 96x128), only padded (80x128), scaled down and padded
# (97x131 -> 95x128).
SIZES = [(96, 128), (75, 100), (80, 128), (97, 131)]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """The demo's Semantic FPN config trained for 8 iterations (64-px crops, batch 2) on a
    generated ADE20K: enough to predict several classes, in about 10 CPU-seconds."""
    from mmeff.datasets import make_ade_dataset
    tmp = tmp_path_factory.mktemp('seg_export')
    data = make_ade_dataset(str(tmp / 'ade' / 'ADEChallengeData2016'), num_images=(8, 4),
                            size=SIZES)
    work = str(tmp / 'work')
    opts = [f"data_root={data['data_root']}", 'model.backbone.init_cfg=None',
            'train_cfg.max_iters=8', 'train_cfg.val_interval=100', 'param_scheduler.0.end=8',
            'default_hooks.checkpoint.interval=8', 'train_dataloader.batch_size=2',
            'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
            'model.data_preprocessor.size=(64,64)', 'optim_wrapper.optimizer.lr=0.002']
    load_tool(ROOT, 'train').main([DEMO_FPN, '--work-dir', work, '--cfg-options', *opts])
    return dict(data=data, checkpoint=osp.join(work, 'iter_8.pth'), tmp=tmp)


def _rgb(path):
    return cv2.imread(path)[:, :, ::-1]


# ---------------------------------------------------------------------------- preprocessing
def test_preprocess_sizes_padding_and_inverse():
    from mmcv.image.geometric import rescale_size

    from mmeff.deploy.preprocess import (IMAGENET_MEAN_255, fitted_size, labels_to_image,
                                         logits_to_image, preprocess_image)
    for hw in SIZES + [(512, 683), (40, 300)]:
        # mmcv's keep-ratio rule (long side to long side) for landscape images and size
        assert fitted_size(hw, EXPORT_SIZE) == rescale_size(hw[::-1], EXPORT_SIZE[::-1])[::-1]
    assert fitted_size((300, 40), (96, 128)) == (96, 13)  # portrait into landscape: fits H
    assert fitted_size((300, 40), (96, 128), 'stretch') == (96, 128)

    image = np.random.default_rng(0).integers(0, 256, (80, 128, 3), dtype=np.uint8)
    x, meta = preprocess_image(image, EXPORT_SIZE)
    assert x.shape == (1, 3, 96, 128) and x.dtype == np.float32
    assert meta == dict(ori_shape=(80, 128), img_shape=(80, 128), pad_shape=(96, 128),
                        mode='keep_ratio')
    assert np.array_equal(x[0, :, :80].transpose(1, 2, 0), image)
    assert np.allclose(x[0, :, 80:], np.array(IMAGENET_MEAN_255, np.float32)[:, None, None])
    labels = np.random.default_rng(1).integers(0, 150, (1, 96, 128)).astype(np.int32)
    assert np.array_equal(labels_to_image(labels, meta), labels[0, :80])  # padding cropped
    logits = np.random.default_rng(2).standard_normal((1, 5, 96, 128)).astype(np.float32)
    assert np.array_equal(logits_to_image(logits, meta), logits[0, :, :80])

    # Scaled: nearest neighbour on pixel centres; an exact 2x keeps every other pixel.
    x, meta = preprocess_image(np.zeros((48, 64, 3), np.uint8), EXPORT_SIZE)
    assert meta['img_shape'] == (96, 128)
    assert np.array_equal(labels_to_image(labels, meta), labels[0, 1::2, 1::2])
    _, meta = preprocess_image(np.zeros((50, 60, 3), np.uint8), EXPORT_SIZE, mode='stretch')
    assert labels_to_image(labels, meta).shape == (50, 60)
    with pytest.raises(ValueError, match=r'does not end in the export size \(96, 128\)'):
        labels_to_image(labels[:, :64], meta)
    with pytest.raises(ValueError, match=r"mode must be one of \('keep_ratio', 'stretch'\)"):
        preprocess_image(image, EXPORT_SIZE, mode='pad')


def test_preprocess_equals_mmseg_pipeline_and_data_preprocessor(trained):
    """preprocess_image(keep_ratio) then the graph's (x - mean) / std is exactly what mmseg's
    test pipeline (Resize keep_ratio) and SegDataPreProcessor (test_cfg size: pad) give."""
    from mmcv.transforms import Compose
    from mmengine.registry import init_default_scope
    from mmseg.models import SegDataPreProcessor

    from mmeff.deploy.preprocess import preprocess_image
    init_default_scope('mmseg')
    pipeline = Compose([dict(type='LoadImageFromFile'),
                        dict(type='Resize', scale=EXPORT_SIZE[::-1], keep_ratio=True),
                        dict(type='PackSegInputs')])
    cfg = Config.fromfile(DEMO_FPN).model.data_preprocessor
    cfg = {k: v for k, v in cfg.items() if k not in ('type', 'size')}
    preprocessor = SegDataPreProcessor(**cfg, test_cfg=dict(size=EXPORT_SIZE))
    mean, std = preprocessor.mean[None], preprocessor.std[None]
    for path in trained['data']['validation_images']:
        packed = pipeline(dict(img_path=path))
        ref = preprocessor(dict(inputs=[packed['inputs']],
                                data_samples=[packed['data_samples']]))['inputs']
        x, meta = preprocess_image(_rgb(path), EXPORT_SIZE)
        assert meta['img_shape'] == tuple(packed['data_samples'].img_shape)
        torch.testing.assert_close((torch.from_numpy(x) - mean) / std, ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- the model
FPN_V2_S0 = osp.join(ROOT, 'configs', 'segmentation', 'fpn_effformerv2_s0_ade20k_40k.py')


@pytest.mark.parametrize('config', [DEMO_FPN, FPN_V2_S0], ids=['v1_l1', 'v2_s0'])
def test_export_module_equals_mmseg_predict(config):
    """The exported function (normalisation, fused backbone, neck, head, resize, argmax) is
    mmseg's EncoderDecoder.predict, also at a size that is not a multiple of 32."""
    from mmseg.structures import SegDataSample

    from mmeff.deploy.segmentor import SegmentorExportModule, _prepare, load_segmentor
    model, _ = load_segmentor(config)
    for part in (model.backbone, model.neck, model.decode_head):  # BN statistics too
        randomise_(part, seed=1)
    size = (45, 70)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)) * 255  # RGB
    meta = dict(img_shape=size, ori_shape=size, pad_shape=size, padding_size=[0, 0, 0, 0])
    with torch.no_grad():
        # mmseg is given BGR, as cv2 loads images: its data_preprocessor makes it RGB
        inputs = model.data_preprocessor(dict(inputs=[x[0].flip(0)]))['inputs']
        (ref,) = model.predict(inputs, [SegDataSample(metainfo=meta)])
        exported, reference = _prepare(model, x, 'labels', True, True)
        labels = exported(x)
        logits = SegmentorExportModule(model, output='logits')(x)
    assert labels.dtype == torch.int32 and labels.shape == (1, *size)
    # Relative error, not elementwise: the graph normalises with (x - mean) * (1 / std), mmseg
    # with (x - mean) / std; the 1e-7 rounding difference shows on logits near 0 (V2: 5e-7).
    assert rel_err(logits[0], ref.seg_logits.data) < 1e-5
    assert (labels[0] == ref.pred_sem_seg.data[0]).float().mean() >= 0.999


def test_fixed_adaptive_pool_equals_torch():
    from mmeff.deploy.segmentor import FixedAdaptiveAvgPool2d
    x = torch.randn(2, 4, 3, 4)
    for out in (1, 2, 3, 6):
        torch.testing.assert_close(FixedAdaptiveAvgPool2d((out, out), (3, 4))(x),
                                   torch.nn.AdaptiveAvgPool2d(out)(x))


# ---------------------------------------------------------------------------- against mmseg
def _mmseg_reference(model, data_root):
    """mmseg's own test loop pieces at the export size: the demo's test pipeline with
    Resize(keep_ratio) to the export size, the data_preprocessor padding to it; the predictions
    and an IoUMetric fed with them."""
    from mmengine.evaluator import Evaluator
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    cfg = Config.fromfile(DEMO_FPN)
    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    loader_cfg.dataset.data_root = data_root
    loader_cfg.dataset.pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=EXPORT_SIZE[::-1], keep_ratio=True),
        dict(type='LoadAnnotations', reduce_zero_label=True), dict(type='PackSegInputs')]
    model.data_preprocessor.test_cfg = dict(size=EXPORT_SIZE)
    with DefaultScope.overwrite_default_scope('mmseg'):
        loader = Runner.build_dataloader(loader_cfg)
        evaluator = Evaluator(cfg.test_evaluator)
    evaluator.dataset_meta = loader.dataset.metainfo
    batches, predictions = [], []
    for batch in loader:
        with torch.no_grad():
            outs = model.test_step(batch)
        evaluator.process(outs, batch)
        batches.append(batch)
        predictions += [o.pred_sem_seg.data[0].numpy() for o in outs]
    return batches, predictions, evaluator.evaluate(len(loader.dataset)), loader.dataset.metainfo


@pytest.fixture(scope='module')
def fpn_onnx(trained):
    """The trained model exported with the default output (labels), and the report."""
    from mmeff.deploy.segmentor import export_segmentor
    path = str(trained['tmp'] / 'fpn.onnx')
    return path, export_segmentor(DEMO_FPN, trained['checkpoint'], 'onnx', EXPORT_SIZE, out=path)


@pytest.fixture(scope='module')
def reference(trained):
    """The trained model and what mmseg makes of the validation set (see _mmseg_reference)."""
    from mmeff.deploy.segmentor import load_segmentor
    model, _ = load_segmentor(DEMO_FPN, trained['checkpoint'])
    batches, preds, metrics, _ = _mmseg_reference(model, trained['data']['data_root'])
    return dict(model=model, batches=batches, preds=preds, metrics=metrics)


def test_onnx_miou_equals_mmseg_through_iou_metric(trained, fpn_onnx, reference):
    """The export (labels, argmax in the graph) run by ONNX Runtime on the generated validation
    images through the preprocessing helpers, its labels fed as pred_sem_seg into mmseg's
    IoUMetric (evaluate_onnx_segmentor): the same mIoU as the PyTorch model through mmseg's own
    pipeline (within 0.1), and the same labels on >= 99.9% of the pixels of the images that
    were not scaled. On scaled images the app's nearest-neighbour mapping of the labels differs
    from mmseg's bilinear mapping of the logits next to class borders; the logits output through
    logits_to_image is mmseg's mapping exactly (>= 99.9% there too)."""
    from mmeff.deploy.preprocess import logits_to_image, preprocess_image
    from mmeff.deploy.segmentor import SegmentorExportModule, evaluate_onnx_segmentor
    path, report = fpn_onnx
    assert report['outputs'] == [dict(name='labels', shape=[1, 96, 128], dtype='INT32')]
    assert report['gather_ops'] == 0 and report['onnxruntime']['label_agreement'] >= 0.999
    assert report['fusion']['batchnorms'] == 0 and report['model']['classes'][0] == 'wall'
    assert report['fused_vs_unfused']['rel_err'] < 1e-5

    model, batches = reference['model'], reference['batches']
    torch_preds, torch_metrics = reference['preds'], reference['metrics']
    onnx = evaluate_onnx_segmentor(path, DEMO_FPN, data_root=trained['data']['data_root'])
    assert onnx['input_size'] == EXPORT_SIZE
    assert abs(onnx['metrics']['mIoU'] - torch_metrics['mIoU']) <= 0.1
    assert len(np.unique(np.concatenate([p.ravel() for p in torch_preds]))) >= 2  # not trivial

    logits_model = SegmentorExportModule(model, output='logits').eval()
    samples = [s for batch in batches for s in batch['data_samples']]
    unscaled, scaled, via_logits = [], [], []
    for sample, ref in zip(samples, torch_preds):
        x, meta = preprocess_image(_rgb(sample.img_path), EXPORT_SIZE)
        agree = (onnx['labels'][sample.img_path] == ref).mean()
        (scaled if meta['img_shape'] != meta['ori_shape'] else unscaled).append(agree)
        with torch.no_grad():
            logits = logits_model(torch.from_numpy(x)).numpy()
        via_logits.append((logits_to_image(logits, meta).argmax(0) == ref).mean())
    assert len(unscaled) == 2 and len(scaled) == 2
    assert min(unscaled) >= 0.999 and min(via_logits) >= 0.999
    assert min(scaled) >= 0.98


def test_demo_step_compares_runtimes_and_draws_both(trained, fpn_onnx, reference, tmp_path):
    """tools/run_demo.py's segmentor step: the PyTorch predictions as tools/test.py --out dumps
    them (here mmseg's keep-ratio pipeline at the export size), the ONNX Runtime mIoU, the
    agreement and the side-by-side picture."""
    from mmengine.fileio import dump
    preds, metrics = reference['preds'], reference['metrics']
    samples = [s for batch in reference['batches'] for s in batch['data_samples']]
    pkl = str(tmp_path / 'predictions.pkl')
    dump([dict(img_path=s.img_path, pred_sem_seg=dict(data=torch.from_numpy(p)[None]))
          for s, p in zip(samples, preds)], pkl)
    picture = str(tmp_path / 'pictures' / 'seg_pytorch_vs_onnxruntime.png')
    demo = load_tool(ROOT, 'run_demo')
    out = demo.compare_segmentor_runtimes(fpn_onnx[0], DEMO_FPN, trained['checkpoint'],
                                          trained['data']['data_root'], pkl, metrics['mIoU'],
                                          picture)
    assert out['images'] == 4 and out['pixels'] == sum(h * w for h, w in SIZES)
    assert abs(out['onnx_miou'] - out['torch_miou']) <= 0.1 and out['agreement'] >= 0.99
    drawn = cv2.imread(picture)
    h, w = SIZES[0]  # the first image (sorted), 4x larger, twice, with a title row
    assert drawn.shape == (4 * h + 28, 2 * 4 * w + 8, 3)


# ---------------------------------------------------------------------------- UPerNet, Core ML
def test_upernet_onnx_through_the_export_tool(tmp_path):
    """UPerNet (random weights) at 64x96: the PPM's adaptive pools on a 2x3 map become
    matmuls, so the graph has no gather; logits match torch (checked by the tool)."""
    import json
    out, rep = tmp_path / 'upernet.onnx', tmp_path / 'report.json'
    rc = load_tool(ROOT, 'export').main([UPERNET, '--task', 'segmentor', '--format', 'onnx',
                                         '--input-size', '64x96', '--output', 'logits',
                                         '--out', str(out), '--report-json', str(rep)])
    report = json.loads(rep.read_text())
    assert rc == 0 and out.exists() and report['gather_ops'] == 0 and report['problems'] == []
    assert report['outputs'] == [dict(name='logits', shape=[1, 150, 64, 96], dtype='FLOAT')]
    assert report['onnxruntime']['rel_err'] < 1e-4 and report['op_histogram']['MatMul'] > 6


def test_coreml_segmentor_spec_checks(tmp_path):
    """Core ML conversion only (predictions need macOS): mlprogram iOS 16, FP16, an ImageType
    input with the normalisation in the graph, argmax in the graph (int32 labels)."""
    pytest.importorskip('coremltools')
    from mmeff.deploy.segmentor import export_segmentor
    path = str(tmp_path / 'fpn.mlpackage')
    report = export_segmentor(DEMO_FPN, fmt='coreml', input_size=(64, 96), out=path,
                              image_input=True)
    assert report['problems'] == [], report['problems']
    assert report['model_type'] == 'mlProgram' and report['spec_version'] >= 7
    assert report['gather_ops'] == 0 and report['float_dtypes'].get('FLOAT16')
    assert report['inputs'] == [dict(name='image', kind='image', shape=[1, 3, 64, 96],
                                     dtype='RGB')]
    assert report['outputs'] == [dict(name='labels', kind='tensor', shape=[1, 64, 96],
                                      dtype='INT32')]
    assert report['op_histogram']['reduce_argmax'] == 1
    assert report['metadata']['mmeff.mean'] == '[123.675, 116.28, 103.53]'
    assert report['metadata']['mmeff.task'] == 'segmentor'
    assert report['metadata']['mmeff.arch'] == 'l1'  # read by tools/coreml_latency.py


@pytest.mark.slow
def test_v2_segmentor_onnx(tmp_path):
    """Semantic FPN with EfficientFormerV2-S0 (random weights) to ONNX: no gather, labels as
    torch's (checked by export_segmentor)."""
    from mmeff.deploy.segmentor import export_segmentor
    report = export_segmentor(FPN_V2_S0, input_size=(64, 96), out=str(tmp_path / 'v2.onnx'))
    assert report['gather_ops'] == 0 and report['onnxruntime']['label_agreement'] >= 0.999
    assert report['fusion']['batchnorms'] == 0 and report['model']['arch'] == 's0'


# ---------------------------------------------------------------------------- errors
def test_non_mmeff_backbone_is_refused(tmp_path):
    from mmeff.deploy.segmentor import export_segmentor
    cfg = tmp_path / 'fpn_r50.py'
    cfg.write_text("_base_ = ['mmseg::_base_/models/fpn_r50.py']\n")
    with pytest.raises(ValueError, match=r"model\.backbone is 'ResNetV1c', which is not an mmeff "
                                         r"EfficientFormer; the segmentor export supports the "
                                         r"backbone types mmeff\.EfficientFormer"):
        export_segmentor(str(cfg), input_size=64)


def test_checkpoint_that_does_not_fit_is_refused(trained, tmp_path):
    """The trained Semantic FPN checkpoint given with the UPerNet config, through the tool."""
    from mmeff.checkpoint import CheckpointMismatchError
    export = load_tool(ROOT, 'export')
    with pytest.raises(CheckpointMismatchError,
                       match=r'iter_8\.pth does not fit this EncoderDecoder.*tensors missing, '
                             r"e\.g\. \['decode_head\..*unexpected keys, e\.g\. \['neck\..*"
                             r'Use a checkpoint saved with this config \(tools/train\.py\)'):
        export.main([UPERNET, '--task', 'segmentor', '--format', 'onnx', '--input-size', '64',
                     '--checkpoint', trained['checkpoint'], '--out', str(tmp_path / 'x.onnx')])


def test_input_size_and_option_errors(capsys):
    from mmeff.deploy.segmentor import export_segmentor
    with pytest.raises(ValueError, match=r'input size 24x64 is too small for a segmentor export: '
                                         r'each side must be at least 32 px.*--input-size '
                                         r'512x512'):
        export_segmentor(DEMO_FPN, input_size=(24, 64))
    with pytest.raises(ValueError, match=r"output must be one of \('labels', 'logits'\)"):
        export_segmentor(DEMO_FPN, output='probs')
    with pytest.raises(ValueError, match=r'ending in \.mlpackage'):
        export_segmentor(DEMO_FPN, fmt='coreml', input_size=64, out='x.onnx')
    export = load_tool(ROOT, 'export')
    for argv, message in (
            (['l1', '--task', 'segmentor'], 'MODEL must be a config file'),
            ([DEMO_FPN, '--output', 'logits'], 'not an option of --task backbone: --output '
                                               '(only for --task segmentor)')):
        with pytest.raises(SystemExit):
            export.parse_args(argv + ['--format', 'onnx'])
        assert message in capsys.readouterr().err
