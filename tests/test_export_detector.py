"""Whole-detector export (mmeff.deploy.detector): RetinaNet with an EfficientFormer backbone to
ONNX and Core ML, checked against mmdet itself.

The detector is the real RetinaNet-L1 config shrunk to 3 classes, with random weights whose
head is scaled so that its scores spread (0.3-0.4 at the top) instead of sitting at the 0.01
prior: every val image then has its 100 detections, boxes of every size, and no ties.
Training it on this CPU instead costs ~10 s an iteration, and 40 iterations still leave every
score under RetinaNet's 0.05 threshold (focal loss starts at the prior). The same val images,
resized and padded by mmdet's own transforms to the export size, go through mmdet's
``test_step`` and through the exported ONNX model in ONNX Runtime; the two sets of detections
are compared one by one and through mmdet's ``CocoMetric``.
"""
import os.path as osp
import textwrap

import numpy as np
import pytest
import torch

from mmeff.datasets.synthetic_coco import make_coco_dataset

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RETINANET = osp.join(ROOT, 'configs', 'detection', 'retinanet_effformer_l1.py')
CLASSES = ('rectangle', 'ellipse', 'triangle')
SIZE = (128, 160)  # export size (H, W): the 96x128 images are scaled by 1.25 to 120x160, padded


def tiny_retinanet(path, data_root):
    """The real RetinaNet-L1 config with 3 classes and the generated COCO."""
    text = textwrap.dedent(f"""
        _base_ = {RETINANET!r}
        data_root = {data_root + '/'!r}
        metainfo = dict(classes={CLASSES!r})
        model = dict(backbone=dict(init_cfg=None), bbox_head=dict(num_classes=3))
        """)
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    return make_coco_dataset(str(tmp_path_factory.mktemp('coco')), num_images=(8, 4),
                             size=(96, 128), classes=CLASSES, seed=0)


@pytest.fixture(scope='module')
def detector(coco, tmp_path_factory):
    """The config and a checkpoint of its whole model (random weights, see the docstring)."""
    from helpers import randomise_

    from mmeff.deploy.detector import build_detector
    tmp = tmp_path_factory.mktemp('retinanet')
    cfg = tiny_retinanet(tmp / 'retinanet_tiny.py', coco['data_root'])
    model, _, _ = build_detector(cfg)
    randomise_(model.backbone, 0)  # BN statistics and layer scales that fusion must fold
    g = torch.Generator().manual_seed(0)
    head = model.bbox_head
    with torch.no_grad():
        head.retina_cls.weight.copy_(torch.randn(head.retina_cls.weight.shape, generator=g)
                                     * 2e-3)
        head.retina_cls.bias.fill_(-2.)
        head.retina_reg.weight.copy_(torch.randn(head.retina_reg.weight.shape, generator=g)
                                     * 4e-4)
        head.retina_reg.bias.zero_()
    ckpt = str(tmp / 'retinanet_tiny.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    return dict(cfg=cfg, ckpt=ckpt, tmp=tmp)


# ---------------------------------------------------------------------------- evaluation
def val_samples(cfg_path, coco):
    """The val images through mmdet's transforms: keep-ratio resize into SIZE, then padded to
    SIZE (Pad sets img_shape to the padded size, so mmdet clips boxes to it, as the export)."""
    from mmcv.transforms import Compose
    from mmdet.utils import register_all_modules
    from pycocotools.coco import COCO
    register_all_modules()
    pipeline = Compose([
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(SIZE[1], SIZE[0]), keep_ratio=True),
        dict(type='Pad', size=(SIZE[1], SIZE[0]), pad_val=dict(img=(104, 116, 124))),
        dict(type='PackDetInputs',
             meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
    ])
    api = COCO(coco['val2017_ann_file'])
    samples = []
    for img_id in api.getImgIds():
        info = api.loadImgs(img_id)[0]
        samples.append(pipeline(dict(img_path=osp.join(coco['data_root'], 'val2017',
                                                       info['file_name']), img_id=img_id)))
    return samples


def coco_map(coco, predictions) -> float:
    from mmdet.evaluation import CocoMetric
    metric = CocoMetric(ann_file=coco['val2017_ann_file'], metric='bbox')
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, predictions)
    result = metric.evaluate(len(predictions))
    return {k: result[k] for k in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75')}


def predictions(cfg_path, ckpt, onnx_path, coco):
    """(mmdet's predictions, ONNX Runtime's) on the val images, as CocoMetric takes them, and
    the per-image agreement of the two in the export's pixels."""
    import onnxruntime as ort

    from mmeff.deploy.detector import build_detector, compare_detections, detections_to_image
    model, _, _ = build_detector(cfg_path, ckpt)
    sess = ort.InferenceSession(onnx_path, providers=['CPUExecutionProvider'])
    ref, got, agreement = [], [], []
    for sample in val_samples(cfg_path, coco):
        meta = sample['data_samples'].metainfo
        assert tuple(sample['inputs'].shape[1:]) == SIZE
        with torch.no_grad():
            pred = model.test_step(dict(inputs=[sample['inputs']],
                                        data_samples=[sample['data_samples']]))[0]
        inst = pred.pred_instances
        ref.append(dict(img_id=meta['img_id'], ori_shape=meta['ori_shape'],
                        pred_instances=dict(bboxes=inst.bboxes, scores=inst.scores,
                                            labels=inst.labels)))
        image = sample['inputs'][[2, 1, 0]].float()[None].numpy()  # BGR uint8 -> RGB float
        boxes, scores, labels = sess.run(None, {'image': image})
        det = detections_to_image(boxes, scores, labels, meta['scale_factor'],
                                  meta['ori_shape'], clip=False)  # mmdet does not clip again
        got.append(dict(img_id=meta['img_id'], ori_shape=meta['ori_shape'],
                        pred_instances={k: torch.from_numpy(v) for k, v in det.items()}))
        agreement.append(compare_detections(
            (inst.bboxes.numpy(), inst.scores.numpy(), inst.labels.numpy()),
            (det['bboxes'], det['scores'], det['labels'])))
    return ref, got, agreement


# ---------------------------------------------------------------------------- ONNX
def test_retinanet_onnx_map_equals_mmdet(detector, coco):
    from mmeff.deploy.detector import export_detector
    out = str(detector['tmp'] / 'retinanet.onnx')
    report = export_detector(detector['cfg'], detector['ckpt'], fmt='onnx', input_size=SIZE,
                             out=out)
    assert report['problems'] == []
    assert report['op_histogram']['NonMaxSuppression'] == 1
    assert report['gather_ops'] == 0  # none in backbone/neck/head; TopK/NMS selection gathers
    assert report['postprocess_gather_ops'] > 0
    from mmeff.deploy.detector import format_detector_report
    text = format_detector_report(report)
    assert 'gather ops in the network: 0' in text and 'checks: all passed' in text
    assert report['outputs'] == [dict(name='boxes', shape=[100, 4], dtype='tensor(float)'),
                                 dict(name='scores', shape=[100], dtype='tensor(float)'),
                                 dict(name='labels', shape=[100], dtype='tensor(int64)')]
    assert report['fusion']['batchnorms'] == 0 and report['fusion']['cached_bias_grids'] == [(4, 5)]
    assert report['postprocess']['mmdet_test_cfg'] == dict(
        nms_pre=1000, score_thr=0.05, iou_threshold=0.5, max_per_img=100, min_bbox_size=0)
    ref, got, agreement = predictions(detector['cfg'], detector['ckpt'], out, coco)
    n_ref = sum(len(p['pred_instances']['scores']) for p in ref)
    assert n_ref == 4 * 100  # every image has max_dets detections over score_thr
    for a in agreement:  # the same detections, up to float rounding (the 100th may swap)
        assert a['detections_a'] == a['detections_b']
        assert a['matched'] >= a['detections_a'] - 2, agreement
        assert a['max_abs_err_boxes'] < 0.05
        assert a['max_abs_err_scores'] < 1e-3
    m_ref, m_onnx = coco_map(coco, ref), coco_map(coco, got)
    print(f'bbox mAP / mAP_50: mmdet {m_ref}, ONNX Runtime {m_onnx}')
    assert m_ref['coco/bbox_mAP_50'] > 0  # random weights, but some boxes do hit objects
    for key in m_ref:
        assert abs(m_ref[key] - m_onnx[key]) <= 0.005, key  # 0.5 AP points


def test_preprocessing_matches_mmdets_resize(coco):
    """preprocess_detection_image (for apps and demos) resizes as mmdet's Resize does and pads
    with the mean colour; the boxes map back with its scale."""
    import mmcv

    from mmeff.deploy.detector import detections_to_image, preprocess_detection_image
    samples = val_samples(RETINANET, coco)
    for sample in samples:
        meta = sample['data_samples'].metainfo
        bgr = mmcv.imread(meta['img_path'])
        x, scale = preprocess_detection_image(bgr[..., ::-1], SIZE)
        assert x.shape == (1, 3) + SIZE and scale == pytest.approx(meta['scale_factor'][0])
        h, w = (int(round(s * scale)) for s in meta['ori_shape'])
        mmdet_rgb = sample['inputs'][[2, 1, 0]].float().numpy()
        np.testing.assert_array_equal(x[0, :, :h, :w], mmdet_rgb[:, :h, :w])
        np.testing.assert_allclose(x[0, :, h:, :], np.broadcast_to(
            np.array([123.675, 116.28, 103.53], np.float32)[:, None, None], (3, SIZE[0] - h,
                                                                              SIZE[1])))
    det = detections_to_image(np.array([[10., 10., 200., 150.], [0, 0, 0, 0]]),
                              np.array([0.9, 0.]), np.array([1, -1]), 1.25, (96, 128))
    np.testing.assert_allclose(det['bboxes'], [[8., 8., 128., 96.]])
    assert det['labels'].tolist() == [1]


# ---------------------------------------------------------------------------- Core ML
def test_retinanet_coreml_spec(detector):
    pytest.importorskip('coremltools')
    from mmeff.deploy.detector import export_detector
    out = str(detector['tmp'] / 'retinanet.mlpackage')
    report = export_detector(detector['cfg'], detector['ckpt'], fmt='coreml', input_size=SIZE,
                             out=out, image_input=True)
    assert report['problems'] == []
    hist = report['op_histogram']
    assert hist['non_maximum_suppression'] == 1
    assert report['gather_ops'] == 0 and 'topk' not in hist
    assert report['spec_version'] >= 7 and report['model_type'] == 'mlProgram'
    assert report['non_fp16_tensors'] == [] and report['float_dtypes']['FLOAT16'] > 100
    assert [i['kind'] for i in report['inputs']] == ['image']
    assert [(o['name'], o['shape'], o['dtype']) for o in report['outputs']] == [
        ('boxes', [100, 4], 'FLOAT32'), ('scores', [100], 'FLOAT32'), ('labels', [100], 'INT32')]


def test_coreml_nms_reference_is_per_class_best_class():
    """The torch side of mmeff::coreml_nms: one class per box (its best), suppression within a
    class only, padded with zeros."""
    from mmeff.deploy.detector import coreml_nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [0., 0., 10., 10.],
                          [50., 50., 60., 60.]])
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.0], [0.0, 0.7], [0.01, 0.02]])
    out_boxes, out_scores = coreml_nms(boxes, scores, 0.5, 0.05, 4)
    # box 1 overlaps box 0 in class 0: suppressed; box 2 (class 1) survives; box 3 is too low
    assert out_scores.max(1).values.tolist() == pytest.approx([0.9, 0.7, 0., 0.])
    assert out_boxes[:2].tolist() == [[0., 0., 10., 10.], [0., 0., 10., 10.]]
    assert out_boxes[2:].abs().sum() == 0


# ---------------------------------------------------------------------------- errors
def test_non_mmeff_backbone_is_refused(tmp_path):
    from mmeff.deploy.detector import export_detector
    cfg = tmp_path / 'retinanet_r50.py'
    cfg.write_text("_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'\n")
    with pytest.raises(ValueError, match=r"model.backbone is 'ResNet', not an mmeff backbone "
                                         r'\(mmeff.EfficientFormer, mmeff.EfficientFormerV2\).*'
                                         r'mmdeploy'):
        export_detector(str(cfg))


def test_other_detectors_are_refused(tmp_path):
    """A detector type the export does not implement (Mask R-CNN is: test_export_mask_rcnn)."""
    from mmeff.deploy.detector import export_detector
    cfg = tmp_path / 'fcos.py'
    cfg.write_text(f"_base_ = {RETINANET!r}\nmodel = dict(type='FCOS')\n")
    with pytest.raises(ValueError, match=r"model.type 'FCOS' cannot be exported as a whole "
                                         r"detector; supported: \('RetinaNet', 'MaskRCNN'\)\. "
                                         r'Export its backbone with --task backbone'):
        export_detector(str(cfg))


@pytest.mark.parametrize('size, message', [
    ((500, 500), r'input size 500x500 cannot be taken by this detector: both sides must be '
                 r'multiples of 32 \(data_preprocessor.pad_size_divisor\); use 512x512'),
    ((16, 64), r'input size 16x64 is too small: the backbone needs at least 32 pixels'),
    ('big', r"input size 'big' is not 'N' or 'HxW'"),
])
def test_bad_input_sizes_are_refused(size, message):
    from mmeff.deploy.detector import export_detector
    with pytest.raises(ValueError, match=message):
        export_detector(RETINANET, input_size=size)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    """The 80-class RetinaNet config with weights of a 3-class one, and with a backbone-only
    file: errors from mmeff.checkpoint's fit check, naming the file and the difference."""
    from mmeff.checkpoint import CheckpointMismatchError
    from mmeff.deploy.detector import build_detector, export_detector
    model, _, _ = build_detector(RETINANET)
    sd = {k: v for k, v in model.state_dict().items()}
    sd['bbox_head.retina_cls.weight'] = sd['bbox_head.retina_cls.weight'][:27]
    sd['bbox_head.retina_cls.bias'] = sd['bbox_head.retina_cls.bias'][:27]
    path = str(tmp_path / 'three_classes.pth')
    torch.save({'state_dict': sd}, path)
    with pytest.raises(CheckpointMismatchError, match=r'three_classes.pth does not fit this '
                                                      r'RetinaNet.*Class-count mismatch'):
        export_detector(RETINANET, path)
    backbone_only = str(tmp_path / 'backbone.pth')
    torch.save({'state_dict': {k: v for k, v in sd.items() if k.startswith('backbone.')}},
               backbone_only)
    with pytest.raises(CheckpointMismatchError, match=r'backbone.pth does not fit this '
                                                      r'RetinaNet.*tools/train.py saved'):
        export_detector(RETINANET, backbone_only)


def test_bad_arguments_are_refused(tmp_path):
    from mmeff.deploy.detector import export_detector
    with pytest.raises(ValueError, match="fmt must be one of \\('onnx', 'coreml'\\), got 'tflite'"):
        export_detector(RETINANET, fmt='tflite')
    with pytest.raises(ValueError, match=r'an ONNX export is written to a path ending in \.onnx'):
        export_detector(RETINANET, input_size=64, out=str(tmp_path / 'model.mlpackage'))
    with pytest.raises(FileNotFoundError, match="config file 'nope.py' does not exist"):
        export_detector('nope.py')


@pytest.mark.slow
def test_efficientformer_v2_retinanet_onnx_matches_mmdet(tmp_path):
    """A RetinaNet with an EfficientFormerV2-S0 backbone: the ONNX export gives mmdet's own
    detections on an image of the export size."""
    import onnxruntime as ort
    from mmdet.structures import DetDataSample

    from mmeff.deploy.detector import build_detector, compare_detections, export_detector
    cfg = tmp_path / 'retinanet_v2_s0.py'
    cfg.write_text(textwrap.dedent(f"""
        _base_ = {RETINANET!r}
        model = dict(
            backbone=dict(_delete_=True, type='mmeff.EfficientFormerV2', arch='s0',
                          out_indices=(0, 1, 2, 3), init_cfg=None),
            neck=dict(in_channels=[32, 48, 96, 176]))
        """))
    model, _, _ = build_detector(str(cfg))
    ckpt = str(tmp_path / 'v2.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    out = str(tmp_path / 'v2.onnx')
    report = export_detector(str(cfg), ckpt, input_size=SIZE, out=out)
    assert report['problems'] == [] and report['gather_ops'] == 0
    image = torch.randint(0, 256, (3,) + SIZE, generator=torch.Generator().manual_seed(1),
                          dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(img_shape=SIZE, ori_shape=SIZE, scale_factor=(1., 1.)))
    with torch.no_grad():
        inst = model.test_step(dict(inputs=[image], data_samples=[sample]))[0].pred_instances
    sess = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    got = sess.run(None, {'image': image[[2, 1, 0]].float()[None].numpy()})  # BGR -> RGB
    agree = compare_detections((inst.bboxes.numpy(), inst.scores.numpy(), inst.labels.numpy()),
                               got)
    assert agree['detections_a'] == agree['detections_b'] > 0
    assert agree['matched'] >= agree['detections_a'] - 2, agree


def test_cfg_options_are_merged_as_the_tools_merge_them():
    """export_detector's cfg_options (tools/export.py --cfg-options): merged into the config
    before it is checked and built; a misspelt top-level key is refused."""
    from mmeff.deploy.detector import build_detector, export_detector
    model, cfg, _ = build_detector(RETINANET, cfg_options={'model.bbox_head.num_classes': 3})
    assert model.bbox_head.num_classes == 3 and cfg.model.bbox_head.num_classes == 3
    with pytest.raises(ValueError, match=r"--cfg-options modle.bbox_head.num_classes=.*no "
                                         r"top-level 'modle'.*did you mean 'model'\?"):
        export_detector(RETINANET, cfg_options={'modle.bbox_head.num_classes': 3})
