"""Mask R-CNN exported whole (mmeff.deploy.mask_rcnn through export_detector), checked against
mmdet itself: its detections and masks one by one, and mmdet's CocoMetric (bbox and segm).

The detector is the real Mask R-CNN-L1 config with 3 classes and narrower heads (FPN, RPN and
RoI heads at 64 channels, box head 256-wide: the same code paths at a cost this CPU takes in a
few seconds), with random weights whose head layers are scaled so that the scores spread (no
near-ties) and many boxes pass the 0.05 threshold (see ``detector``). The val images, resized
and padded by mmdet's own transforms to the export size, go through mmdet's ``test_step`` and
through the ONNX export in ONNX Runtime (masks pasted with ``paste_masks``).
"""
import os
import os.path as osp
import textwrap

import numpy as np
import pytest
import torch

from mmeff.datasets.synthetic_coco import make_coco_dataset

from helpers import load_tool

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MASK_RCNN = osp.join(ROOT, 'configs', 'detection', 'mask_rcnn_effformer_l1.py')
CLASSES = ('rectangle', 'ellipse', 'triangle')
SIZE = (128, 160)  # export size (H, W): the 64x80 images are scaled by 2 to fill it (a box
# in the padding below an image would crash mmdet's own mask pasting: _do_paste_mask's range)


def tiny_mask_rcnn(path, data_root, base=MASK_RCNN, backbone='dict(init_cfg=None)'):
    """The real Mask R-CNN config with 3 classes, 64-channel heads and the generated COCO."""
    text = textwrap.dedent(f"""
        _base_ = {base!r}
        data_root = {data_root + '/'!r}
        metainfo = dict(classes={CLASSES!r})
        model = dict(
            backbone={backbone},
            neck=dict(out_channels=64),
            rpn_head=dict(in_channels=64, feat_channels=64),
            roi_head=dict(
                bbox_roi_extractor=dict(out_channels=64),
                bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=3),
                mask_roi_extractor=dict(out_channels=64),
                mask_head=dict(in_channels=64, conv_out_channels=64, num_classes=3)))
        """)
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


def spread_weights_(model, sample, seed=0, mask_centre=3.):
    """Random weights that give a Mask R-CNN detections worth comparing: every weight drawn
    from ``seed`` (BN statistics and layer scales for fusion to fold), then each prediction
    layer scaled to the features it gets on ``sample`` (a val image), layer after layer: RPN
    logits of std 1.5, box refinements of std 0.1 (normalised deltas), class logits of std 2
    (scores spread over the three classes, hundreds over 0.05, no ties), mask logits of std 2
    around ``mask_centre`` (masks that cover most of their box, with holes that differ between
    boxes and classes)."""
    from helpers import randomise_
    for part in (model.backbone, model.neck, model.rpn_head, model.roi_head):
        randomise_(part, seed)  # not the data_preprocessor's mean/std (not in checkpoints)
    g = torch.Generator().manual_seed(seed)
    rpn, bbox, mask = model.rpn_head, model.roi_head.bbox_head, \
        model.roi_head.mask_head
    steps = [((rpn.rpn_cls, 1.5, 0.), (rpn.rpn_reg, 0.1, 0.)),
             ((bbox.fc_cls, 2., 0.), (bbox.fc_reg, 0.1, 0.)),
             ((mask.conv_logits, 2., mask_centre),)]
    for layers in steps:
        seen = {}

        def keep_input(layer):
            def hook(module, inputs, output):
                seen.setdefault(layer, []).append(inputs[0])
            return hook
        hooks = [layer.register_forward_hook(keep_input(layer)) for layer, _, _ in layers]
        with torch.no_grad():
            model.test_step(dict(inputs=[sample['inputs']],
                                 data_samples=[sample['data_samples']]))
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for layer, std, centre in layers:
                x = torch.cat([t.transpose(0, 1).reshape(t.shape[1], -1) for t in seen[layer]],
                              1)  # input features x samples (all RPN levels)
                mu, sd = x.mean(1), (x - x.mean(1, keepdim=True)).std()
                w = torch.randn(layer.weight.shape[:2], generator=g) * std / (
                    sd * x.shape[0] ** 0.5)
                layer.weight.copy_(w.view(layer.weight.shape))
                layer.bias.copy_(centre - w @ mu)
    return model


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    return make_coco_dataset(str(tmp_path_factory.mktemp('coco')), num_images=(1, 3),
                             size=(64, 80), classes=CLASSES, seed=0)


@pytest.fixture(scope='module')
def detector(coco, tmp_path_factory):
    """The config and a checkpoint of its whole model (random weights, see the docstring)."""
    from mmeff.deploy.detector import build_detector
    tmp = tmp_path_factory.mktemp('mask_rcnn')
    cfg = tiny_mask_rcnn(tmp / 'mask_rcnn_tiny.py', coco['data_root'])
    model, _, _ = build_detector(cfg)
    spread_weights_(model, val_samples(coco)[0])
    ckpt = str(tmp / 'mask_rcnn_tiny.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    return dict(cfg=cfg, ckpt=ckpt, tmp=tmp)


# ---------------------------------------------------------------------------- evaluation
def val_samples(coco):
    """The val images through mmdet's transforms: keep-ratio resize into SIZE, padded to SIZE
    (img_shape is then the export size, so mmdet clips boxes to it, as the export does)."""
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
    return [pipeline(dict(img_path=osp.join(coco['data_root'], 'val2017',
                                            api.loadImgs(i)[0]['file_name']), img_id=i))
            for i in api.getImgIds()]


def coco_map(coco, predictions) -> dict:
    from mmdet.evaluation import CocoMetric
    metric = CocoMetric(ann_file=coco['val2017_ann_file'], metric=['bbox', 'segm'])
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, predictions)
    result = metric.evaluate(len(predictions))
    return {k: result[f'coco/{k}'] for k in ('bbox_mAP', 'bbox_mAP_50', 'segm_mAP',
                                             'segm_mAP_50')}


def predictions(cfg_path, ckpt, onnx_path, coco):
    """(mmdet's predictions, ONNX Runtime's) on the val images, as CocoMetric takes them, and
    per image the agreement of the two (boxes in original-image pixels, pasted masks)."""
    import onnxruntime as ort

    from mmeff.deploy.detector import build_detector, compare_detections
    from mmeff.deploy.mask_rcnn import detections_with_masks
    model, _, _ = build_detector(cfg_path, ckpt)
    sess = ort.InferenceSession(onnx_path, providers=['CPUExecutionProvider'])
    ref, got, agreement = [], [], []
    for sample in val_samples(coco):
        meta = sample['data_samples'].metainfo
        assert tuple(sample['inputs'].shape[1:]) == SIZE
        with torch.no_grad():
            inst = model.test_step(dict(inputs=[sample['inputs']],
                                        data_samples=[sample['data_samples']]))[0].pred_instances
        ref.append(dict(img_id=meta['img_id'], ori_shape=meta['ori_shape'],
                        pred_instances=dict(bboxes=inst.bboxes, scores=inst.scores,
                                            labels=inst.labels, masks=inst.masks)))
        image = sample['inputs'][[2, 1, 0]].float()[None].numpy()  # BGR uint8 -> RGB float
        outputs = sess.run(None, {'image': image})
        det = detections_with_masks(outputs, meta['scale_factor'], meta['ori_shape'])
        got.append(dict(img_id=meta['img_id'], ori_shape=meta['ori_shape'],
                        pred_instances={k: torch.from_numpy(v) for k, v in det.items()}))
        a = (inst.bboxes.numpy(), inst.scores.numpy(), inst.labels.numpy())
        b = (det['bboxes'], det['scores'], det['labels'])
        agree = compare_detections(a, b, box_tol=0.5)
        agree.update(matched_masks(a, b, inst.masks.numpy(), det['masks']))
        agreement.append(agree)
    return ref, got, agreement


def matched_masks(a, b, masks_a, masks_b, box_tol=0.5):
    """``rows_matched``: the rows of ``(boxes, scores, labels)`` result ``a`` with a row of
    the same label and box (within ``box_tol`` px) in ``b``, in any order (near-ties at a cut
    may reorder or swap rows), and ``min_mask_iou``: the smallest IoU of their masks."""
    from mmeff.deploy.mask_rcnn import compare_masks
    used, pairs = np.zeros(len(b[2]), bool), []
    for i in range(len(a[2])):
        diff = np.abs(b[0] - a[0][i]).max(1)
        cand = np.flatnonzero((b[2] == a[2][i]) & (diff <= box_tol) & ~used)
        if len(cand):
            j = cand[np.argmin(diff[cand])]
            used[j] = True
            pairs.append((i, j))
    rows_a, rows_b = [i for i, _ in pairs], [j for _, j in pairs]
    return dict(rows_matched=len(pairs),
                min_mask_iou=compare_masks(masks_a[rows_a], masks_b[rows_b]))


# ---------------------------------------------------------------------------- ONNX
@pytest.fixture(scope='module')
def exported(detector):
    from mmeff.deploy.detector import export_detector
    out = str(detector['tmp'] / 'mask_rcnn.onnx')
    report = export_detector(detector['cfg'], detector['ckpt'], fmt='onnx', input_size=SIZE,
                             out=out)
    return out, report


@pytest.fixture(scope='module')
def compared(detector, coco, exported):
    """mmdet's and ONNX Runtime's predictions on the val images, and their agreement."""
    return predictions(detector['cfg'], detector['ckpt'], exported[0], coco)


def test_mask_rcnn_onnx_matches_mmdet(coco, exported, compared):
    from mmeff.deploy.detector import format_detector_report
    report = exported[1]
    assert report['problems'] == [], report['problems']
    hist = report['op_histogram']
    assert hist['NonMaxSuppression'] == 2  # RPN (levels apart) and box head (classes apart)
    assert hist['RoiAlign'] == 8  # 4 levels x (box, mask) extractors: each level its own RoIs
    assert report['gather_ops'] == 0 and report['postprocess_gather_ops'] > 0
    assert report['outputs'] == [dict(name='boxes', shape=[100, 4], dtype='tensor(float)'),
                                 dict(name='scores', shape=[100], dtype='tensor(float)'),
                                 dict(name='labels', shape=[100], dtype='tensor(int64)'),
                                 dict(name='masks', shape=[100, 28, 28], dtype='tensor(float)')]
    assert report['fusion']['batchnorms'] == 0
    pp = report['postprocess']
    assert pp['rpn'] == dict(nms_pre=1000, max_per_img=1000, iou_threshold=0.7,
                             min_bbox_size=0.)
    assert (pp['max_dets'], pp['score_thr'], pp['iou_thr']) == (100, 0.05, 0.5)
    assert report['onnxruntime']['max_abs_err_masks'] < 1e-3
    text = format_detector_report(report)
    assert 'gather ops in the network: 0' in text and 'checks: all passed' in text
    assert 'paste_masks' in text
    ref, got, agreement = compared
    for a in agreement:  # one by one, up to float rounding (the 100th may swap)
        assert a['detections_a'] == a['detections_b'] == 100, agreement
        assert a['matched'] >= a['detections_a'] - 2, agreement
        assert a['max_abs_err_boxes'] <= 0.5 and a['max_abs_err_scores'] < 1e-3, agreement
        assert a['rows_matched'] == a['matched'] and a['min_mask_iou'] >= 0.95, agreement
    m_ref, m_onnx = coco_map(coco, ref), coco_map(coco, got)
    print(f'agreement per image: {agreement}\nmAP: mmdet {m_ref}, ONNX Runtime {m_onnx}')
    assert m_ref['bbox_mAP_50'] > 0 and m_ref['segm_mAP_50'] > 0  # some hit their objects
    for key in m_ref:
        assert abs(m_ref[key] - m_onnx[key]) <= 0.005, key  # 0.5 AP points


def test_evaluate_onnx_detector_gives_the_metric_of_the_onnx_detections(detector, coco,
                                                                        exported, compared):
    """evaluate_onnx_detector (the demo's ONNX Runtime step): the config's own test pipeline
    and evaluator, ``data_root`` carried into both (as --cfg-options data_root=... in the
    tools), the same mAP as ONNX Runtime's detections above."""
    from mmeff.deploy.detector import evaluate_onnx_detector
    cfg = detector['tmp'] / 'mask_rcnn_eval.py'
    cfg.write_text(textwrap.dedent(f"""
        _base_ = {detector['cfg']!r}
        test_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=({SIZE[1]}, {SIZE[0]}), keep_ratio=True),
            dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
            dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                                  'img_shape', 'scale_factor'))]
        data_root = 'data/synthetic_coco/'
        test_dataloader = dict(dataset=dict(
            data_root=data_root, ann_file='annotations/instances_val2017.json',
            data_prefix=dict(img='val2017/'), metainfo=dict(classes={CLASSES!r}),
            pipeline=test_pipeline))
        test_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
        """))
    result = evaluate_onnx_detector(exported[0], str(cfg), data_root=coco['data_root'])
    assert result['images'] == 3 and result['input_size'] == SIZE
    m_onnx = coco_map(coco, compared[1])
    for key, value in m_onnx.items():
        assert result['metrics'][f'coco/{key}'] == pytest.approx(value, abs=1e-6), key
    with pytest.raises(FileNotFoundError, match=r"ONNX file 'nope.onnx' does not exist; "
                                                r'export it with tools/export.py'):
        evaluate_onnx_detector('nope.onnx', str(cfg))


def test_roi_align_matches_mmcv_in_torch_and_onnxruntime(tmp_path):
    """torchvision's roi_align(aligned=True, sampling_ratio=0), as exported (ONNX RoiAlign,
    half_pixel, adaptive sampling) and run by ONNX Runtime, gives mmcv's RoIAlign: RoIs from
    a few pixels to larger than the map, some partly outside it."""
    import onnxruntime as ort
    from mmcv.ops import RoIAlign
    from torchvision.ops import roi_align
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(1, 8, 20, 24, generator=g)
    xy = torch.rand(40, 2, generator=g) * 180 - 20
    wh = torch.rand(40, 2, generator=g) ** 2 * 200 + 0.5
    rois = torch.cat([torch.zeros(40, 1), xy, xy + wh], 1)
    for size, scale in ((7, 1 / 8), (14, 1 / 4)):
        ref = RoIAlign(size, scale, sampling_ratio=0, aligned=True)(feat, rois)
        tv = roi_align(feat, rois, (size, size), scale, 0, aligned=True)
        torch.testing.assert_close(tv, ref, atol=1e-5, rtol=1e-5)

        class Module(torch.nn.Module):
            def forward(self, f, r):
                return roi_align(f, r, (size, size), scale, 0, aligned=True)
        path = str(tmp_path / f'roi_align_{size}.onnx')
        torch.onnx.export(Module(), (feat, rois), path, opset_version=17, dynamo=False,
                          input_names=['feat', 'rois'])
        sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
        (got,) = sess.run(None, {'feat': feat.numpy(), 'rois': rois.numpy()})
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-5, rtol=1e-5)


def test_paste_masks_matches_mmdets_do_paste_mask():
    """paste_masks gives what mmdet's FCNMaskHead pastes on the CPU (box by box, one pixel
    around each box), for boxes inside, across the border, tiny and of zero width."""
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask

    from mmeff.deploy.mask_rcnn import paste_masks
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 28, 28, generator=g)
    boxes = torch.tensor([[10.3, 5.7, 60.2, 40.9], [-5., -3., 30., 20.], [70., 50., 130., 90.],
                          [20.5, 30.5, 22.5, 31.], [40., 10., 40., 30.], [0., 0., 96., 80.]])
    h, w = 80, 96
    for thr in (0.5, 0.3):
        ref = np.zeros((6, h, w), bool)
        for i in range(6):
            m, (sy, sx) = _do_paste_mask(masks[i:i + 1, None], boxes[i:i + 1], h, w,
                                         skip_empty=True)
            ref[i, sy, sx] = (m[0] >= thr).numpy()
        got = paste_masks(boxes.numpy(), masks.numpy(), h, w, thr=thr)
        assert got.dtype == bool and got.shape == (6, h, w)
        np.testing.assert_array_equal(got, ref)
    probs = paste_masks(boxes.numpy(), masks.numpy(), h, w, thr=None)
    m, (sy, sx) = _do_paste_mask(masks[:1, None], boxes[:1], h, w, skip_empty=True)
    np.testing.assert_allclose(probs[0, sy, sx], m[0].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r'paste_masks needs boxes \(N, 4\) and masks'):
        paste_masks(boxes.numpy(), masks.numpy()[:2], h, w)


# ---------------------------------------------------------------------------- refusals
def test_coreml_is_refused_with_the_onnx_route():
    from mmeff.deploy.detector import export_detector
    with pytest.raises(ValueError, match=r"Core ML cannot run this Mask R-CNN exactly: it has no "
                                         r"RoIAlign with mmcv's adaptive sampling.*crop_resize "
                                         r'samples one point per bin.*--format onnx'):
        export_detector(MASK_RCNN, fmt='coreml')


def test_cascade_mask_rcnn_is_refused_naming_why():
    from mmeff.deploy.detector import export_detector
    cascade = osp.join(ROOT, 'configs', 'detection', 'cascade_mask_rcnn_effformer_l1.py')
    with pytest.raises(ValueError, match=r'Cascade Mask R-CNN is not exported whole: its '
                                         r'CascadeRoIHead refines the RoIs through three box '
                                         r'heads.*--task backbone'):
        export_detector(cascade)


def test_other_roi_heads_are_refused(tmp_path):
    from mmeff.deploy.detector import export_detector
    cfg = tmp_path / 'mask_rcnn_roipool.py'
    cfg.write_text(textwrap.dedent(f"""
        _base_ = {MASK_RCNN!r}
        model = dict(roi_head=dict(bbox_roi_extractor=dict(roi_layer=dict(
            _delete_=True, type='RoIPool', output_size=7))))
        """))
    with pytest.raises(ValueError, match=r"model.roi_head.bbox_roi_extractor.roi_layer.type is "
                                         r"'RoIPool'; the whole Mask R-CNN export implements "
                                         r'RoIAlign'):
        export_detector(str(cfg))


# ---------------------------------------------------------------------------- CLI
@pytest.fixture(scope='module')
def three_class_checkpoint(tmp_path_factory):
    """A Mask R-CNN-L1 checkpoint with 3 classes: it does not fit the 80-class config."""
    from mmeff.deploy.detector import build_detector
    tmp = tmp_path_factory.mktemp('ckpt')
    cfg = tmp / 'mask_rcnn_3.py'
    cfg.write_text(f'_base_ = {MASK_RCNN!r}\nmodel = dict(backbone=dict(init_cfg=None), '
                   'roi_head=dict(bbox_head=dict(num_classes=3), '
                   'mask_head=dict(num_classes=3)))\n')
    model, _, _ = build_detector(str(cfg))
    path = str(tmp / 'three_classes.pth')
    torch.save({'state_dict': model.state_dict()}, path)
    return path


@pytest.mark.parametrize('case', ['backbone', 'checkpoint', 'size', 'max_dets'])
def test_bad_input_is_one_line_and_no_file(case, tmp_path, capsys, three_class_checkpoint):
    """tools/export.py --task detector on a Mask R-CNN: each mistake is one line on stderr
    naming the fix, exit status 1, and nothing at --out (no staging left either)."""
    from mmeff.cli import run
    out = tmp_path / 'export' / 'mask_rcnn.onnx'
    config, extra = MASK_RCNN, ['--input-size', '128x160']
    if case == 'backbone':
        config = str(tmp_path / 'mask_rcnn_r50.py')
        with open(config, 'w') as f:
            f.write("_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'\n")
        expected = (r"model.backbone is 'ResNet', not an mmeff backbone \(mmeff.EfficientFormer, "
                    r'mmeff.EfficientFormerV2\).*mmdeploy')
    elif case == 'checkpoint':
        extra += ['--checkpoint', three_class_checkpoint]
        expected = r'three_classes.pth does not fit this MaskRCNN.*Class-count mismatch'
    elif case == 'size':
        extra = ['--input-size', '500x500']
        expected = (r'input size 500x500 cannot be taken by this detector: both sides must be '
                    r'multiples of 32 .*use 512x512')
    else:
        extra += ['--max-dets', '0']
        expected = r'max_dets \(--max-dets\) must be a positive int.*got 0'
    export = load_tool(ROOT, 'export')
    status = run(export.main, [config, '--task', 'detector', '--format', 'onnx',
                               '--out', str(out), *extra], prog='export.py')
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 1 and err[0].startswith('export.py: error: '), err
    import re
    assert re.search(expected, err[0]), err[0]
    assert not out.exists()
    assert not out.parent.exists() or os.listdir(out.parent) == []


# ---------------------------------------------------------------------------- V2
@pytest.mark.slow
def test_efficientformer_v2_mask_rcnn_onnx_matches_mmdet(tmp_path, coco):
    """Mask R-CNN with an EfficientFormerV2-S0 backbone: the export gives mmdet's detections
    and masks on a val image (slow: a second model built, fused and exported, ~1 min idle)."""
    import onnxruntime as ort

    from mmeff.deploy.detector import (ROUNDING_EPS, build_detector, compare_detections,
                                       export_detector, rounding_agreement)
    from mmeff.deploy.mask_rcnn import detections_with_masks
    base = osp.join(ROOT, 'configs', 'detection', 'mask_rcnn_effformerv2_s0.py')
    cfg = tiny_mask_rcnn(tmp_path / 'mask_rcnn_v2_s0.py', coco['data_root'], base=base,
                         backbone="dict(init_cfg=None, norm_cfg=dict(type='BN'))")
    model, _, _ = build_detector(cfg)
    spread_weights_(model, val_samples(coco)[0], seed=1)
    ckpt = str(tmp_path / 'v2.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    out = str(tmp_path / 'v2.onnx')
    report = export_detector(cfg, ckpt, input_size=SIZE, out=out)
    assert report['problems'] == [] and report['gather_ops'] == 0
    sample = val_samples(coco)[0]
    meta = sample['data_samples'].metainfo
    with torch.no_grad():
        inst = model.eval().test_step(dict(inputs=[sample['inputs']],
                                           data_samples=[sample['data_samples']]))[0]
    inst = inst.pred_instances
    sess = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    outputs = sess.run(None, {'image': sample['inputs'][[2, 1, 0]].float()[None].numpy()})
    det = detections_with_masks(outputs, meta['scale_factor'], meta['ori_shape'])
    ref = (inst.bboxes.numpy(), inst.scores.numpy(), inst.labels.numpy())
    agree = compare_detections(ref, (det['bboxes'], det['scores'], det['labels']), box_tol=0.5)
    assert agree['detections_a'] == agree['detections_b'] > 0
    # As many rows may differ as differ between mmdet and itself on the image moved by a
    # rounding-sized amount (near-ties at the proposal cuts: 0-3 of 100 seen), at least 2.
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[sample['inputs']],
                                            data_samples=[sample['data_samples']]), False)

        def mmdet_predict(x):
            found = model.predict(x, data['data_samples'])[0].pred_instances
            return found.bboxes, found.scores, found.labels
        itself = rounding_agreement(mmdet_predict, data['inputs'], ref,
                                    eps=ROUNDING_EPS / float(model.data_preprocessor.std.mean()))
    least = min(agree['detections_a'] - 2, itself['matched'])
    assert agree['matched'] >= least, (agree, itself)
    masks = matched_masks(ref, (det['bboxes'], det['scores'], det['labels']),
                          inst.masks.numpy(), det['masks'])
    assert masks['rows_matched'] == agree['matched'] and masks['min_mask_iou'] >= 0.95, masks
