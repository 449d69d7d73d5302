"""Readable demo output (tools/demo.py, tools/test.py's metrics line): at most ``--max-dets``
detections per picture, labels sized to the picture, legible segmentation class names, and
metrics printed as plain numbers. Models have random weights (the demo configs, built here);
images are generated."""
import ast
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

from helpers import load_tool

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_CONFIG = osp.join(ROOT, 'configs', 'demo', 'mask_rcnn_effformer_l1_synthetic.py')
SEG_CONFIG = osp.join(ROOT, 'configs', 'demo', 'fpn_effformer_l1_synthetic.py')
CLASSES = ('rectangle', 'ellipse', 'triangle')


def random_checkpoint(config, scope, path, dataset_meta):
    """The config's model with its random initial weights, saved as tools/train.py would
    (``state_dict`` + ``meta.dataset_meta``)."""
    from mmengine.registry import DefaultScope

    import mmeff.models  # noqa: F401  (registers mmeff.EfficientFormer)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    cfg = Config.fromfile(config)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(cfg.model)
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': dataset_meta}}, path)
    return path


@pytest.fixture(scope='module')
def det(tmp_path_factory):
    from mmeff.datasets.synthetic_coco import make_coco_dataset
    root = tmp_path_factory.mktemp('det')
    data = make_coco_dataset(str(root / 'coco') + '/', num_images=(1, 1), size=(128, 160),
                             classes=CLASSES, seed=0)
    meta = dict(classes=CLASSES, palette=[(220, 20, 60), (0, 128, 0), (0, 0, 230)])
    ckpt = random_checkpoint(DET_CONFIG, 'mmdet', str(root / 'mask_rcnn.pth'), meta)
    return dict(data=data, ckpt=ckpt, image=data['val2017_images'][0])


@pytest.fixture(scope='module')
def seg(tmp_path_factory):
    from mmseg.datasets import ADE20KDataset

    from mmeff.datasets import make_ade_dataset
    root = tmp_path_factory.mktemp('seg')
    data = make_ade_dataset(str(root / 'ade' / 'ADEChallengeData2016'), num_images=(1, 2),
                            size=(96, 128))
    meta = dict(classes=ADE20KDataset.METAINFO['classes'],
                palette=ADE20KDataset.METAINFO['palette'])
    ckpt = random_checkpoint(SEG_CONFIG, 'mmseg', str(root / 'fpn.pth'), meta)
    return dict(data=data, ckpt=ckpt, meta=meta)


# ---------------------------------------------------------------------------- detection
def test_demo_keeps_at_most_max_dets(det, tmp_path):
    demo = load_tool(ROOT, 'demo')
    name = osp.splitext(osp.basename(det['image']))[0]
    # 100 detections per image from the model, so that the demo's cut is what limits them.
    opts = {'data_root': det['data']['data_root'] + '/',
            'model.test_cfg.rcnn.max_per_img': 100, 'model.test_cfg.rcnn.score_thr': 0.}
    counts = {}
    for max_dets in (3, None):
        kwargs = {} if max_dets is None else dict(max_dets=max_dets)
        out_dir = str(tmp_path / f'demo_{max_dets}')
        out = demo.run_demo(DET_CONFIG, det['ckpt'], [det['image']], out_dir=out_dir,
                            device='cpu', score_thr=0., cfg_options=opts, **kwargs)
        with open(osp.join(out_dir, 'preds', name + '.json')) as f:
            pred = json.load(f)
        counts[max_dets] = len(pred['scores'])
        assert len(pred['bboxes']) == len(pred['labels']) == len(pred['masks']) == counts[max_dets]
        assert pred['scores'] == sorted(pred['scores'], reverse=True)  # the best ones
        picture = cv2.imread(out['vis'][0])
        assert picture.shape[:2] == (512, 640)  # 160x128 drawn 4x larger
    assert counts == {3: 3, None: 20}  # --max-dets, and its default of 20

    with pytest.raises(ValueError, match='--max-dets must be at least 1, got 0'):
        demo.run_demo(DET_CONFIG, det['ckpt'], [det['image']], out_dir=str(tmp_path / 'x'),
                      device='cpu', cfg_options=opts, max_dets=0)


def test_demo_cli_max_dets_option(det, tmp_path, capsys):
    out_dir = tmp_path / 'cli'
    load_tool(ROOT, 'demo').main([
        DET_CONFIG, det['ckpt'], det['image'], '--out-dir', str(out_dir), '--device', 'cpu',
        '--score-thr', '0', '--max-dets', '2', '--cfg-options', 'model.test_cfg.rcnn.score_thr=0.'])
    (pred_file,) = (out_dir / 'preds').iterdir()
    assert len(json.loads(pred_file.read_text())['scores']) == 2
    assert f"Wrote {out_dir / 'vis' / osp.basename(det['image'])}" in capsys.readouterr().out


def _label_size(visualizer_cls, height, width, **kwargs):
    """Height and width (px) of the dark label background drawn for one large box on a white
    picture of ``height`` x ``width``."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    vis = visualizer_cls(name=f'{visualizer_cls.__name__}_{height}x{width}', **kwargs)
    vis.dataset_meta = dict(classes=CLASSES, palette=[(0, 200, 0)] * 3)
    sample = DetDataSample()
    sample.pred_instances = InstanceData(
        bboxes=torch.tensor([[0.25 * width, 0.25 * height, 0.75 * width, 0.75 * height]]),
        labels=torch.tensor([0]), scores=torch.tensor([0.9]))
    vis.add_datasample('x', np.full((height, width, 3), 255, np.uint8), sample, draw_gt=False,
                       pred_score_thr=0.1)
    ys, xs = np.nonzero(vis.get_image().max(-1) < 80)
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


def test_detection_labels_follow_the_picture_size():
    from mmdet.visualization import DetLocalVisualizer

    from mmeff.visualization.det import ReadableDetLocalVisualizer
    sizes = [(128, 160), (480, 640), (800, 1333)]
    # min_side=0: at the pictures' own sizes (by default the small one is drawn 4x larger)
    ours = [_label_size(ReadableDetLocalVisualizer, h, w, min_side=0) for h, w in sizes]
    mmdet = [_label_size(DetLocalVisualizer, h, w) for h, w in sizes]
    assert mmdet[1] == mmdet[2]  # mmdet: the same label on a 640 and a 1333 picture
    heights = [h for h, _ in ours]
    assert heights[0] < heights[1] < heights[2]
    assert heights[2] > 1.5 * heights[1]  # in proportion to sqrt(H * W): 1.7x
    assert heights[0] >= 8  # never below a readable size
    assert ours[0][1] < 0.5 * 160  # and a label does not cross a small picture


def _two_shapes(height=128, width=160):
    """A textured picture and two overlapping detections with masks, one at the right edge."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    yy, xx = np.mgrid[:height, :width]
    image = np.where((yy // 4 + xx // 4) % 2 == 0, 40, 215).astype(np.uint8)
    image = np.repeat(image[..., None], 3, axis=2)
    boxes = torch.tensor([[90., 30., 160., 90.], [100., 40., 160., 100.]])
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        masks[i, y0:y1, x0:x1] = True
    sample = DetDataSample()
    sample.pred_instances = InstanceData(bboxes=boxes, labels=torch.tensor([0, 1]),
                                         scores=torch.tensor([0.873, 0.61]), masks=masks)
    return image, sample


def test_detection_pictures_are_readable(monkeypatch):
    """The demo's 160x128 pictures: drawn 4x larger, scores with %, labels inside the picture
    and apart, masks translucent (the object visible under them, drawn before the labels)."""
    from mmdet.visualization import DetLocalVisualizer
    from mmengine.visualization import Visualizer

    from mmeff.visualization.det import ReadableDetLocalVisualizer
    texts = []

    def spy(self, text, *args, **kwargs):
        texts.append(text)
        return Visualizer.draw_texts(self, text, *args, **kwargs)

    monkeypatch.setattr(DetLocalVisualizer, 'draw_texts', spy, raising=False)
    image, sample = _two_shapes()
    meta = dict(classes=CLASSES, palette=[(220, 20, 60), (0, 128, 0), (0, 0, 230)])
    ours = ReadableDetLocalVisualizer(name='readable_two_shapes')
    ours.dataset_meta = meta
    ours.add_datasample('x', image, sample, draw_gt=False, pred_score_thr=0.3)
    drawn = ours.get_image()
    assert drawn.shape == (512, 640, 3)
    assert texts == ['rectangle: 87.3%', 'ellipse: 61.0%']
    (a, b) = ours.label_boxes
    for x0, y0, x1, y1 in (a, b):
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 512  # not cut at the right edge
    assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]  # apart

    # Inside the masks, away from the box lines and labels, the texture stays visible.
    big = image.repeat(4, 0).repeat(4, 1).astype(np.float32)
    region = (slice(4 * 70, 4 * 88), slice(4 * 104, 4 * 150))

    def contrast(picture):  # the texture's, per colour channel (a mask's colour is a shift)
        return picture[region].astype(np.float32).std(axis=(0, 1)).mean()

    ratio = contrast(drawn) / contrast(big)
    mmdet = DetLocalVisualizer(name='mmdet_two_shapes')
    mmdet.dataset_meta = meta
    big_sample = _two_shapes(512, 640)[1]
    big_sample.pred_instances.bboxes *= 4
    for i, (x0, y0, x1, y1) in enumerate(big_sample.pred_instances.bboxes.int().tolist()):
        big_sample.pred_instances.masks[i] = False
        big_sample.pred_instances.masks[i, y0:y1, x0:x1] = True
    mmdet.add_datasample('x', big.astype(np.uint8), big_sample, draw_gt=False,
                         pred_score_thr=0.3)
    mmdet_ratio = contrast(mmdet.get_image()) / contrast(big)
    assert ratio > 0.3 and ratio > 5 * mmdet_ratio, (ratio, mmdet_ratio)  # 0.36 vs 0.04


def test_upscale_factor_and_label_placement():
    from mmeff.visualization import place_label, upscale_factor
    assert upscale_factor(128, 160) == 4 and upscale_factor(96, 128) == 5
    assert upscale_factor(480, 640) == 1 and upscale_factor(100, 100, 0) == 1
    with pytest.raises(ValueError, match='positive'):
        upscale_factor(0, 10)
    taken = []
    assert place_label(95, 10, 20, 8, (50, 100), taken) == (80, 10)  # kept inside
    assert place_label(90, 12, 20, 8, (50, 100), taken) == (80, 20)  # moved below the first
    assert place_label(0, 48, 20, 8, (50, 100), taken) == (0, 42)


# ---------------------------------------------------------------------------- segmentation
def test_region_labels_are_readable_and_do_not_overlap():
    from mmeff.visualization import MIN_TEXT_PX, draw_region_labels
    label_map = np.zeros((96, 128), np.int64)
    label_map[:, 64:] = 1
    label_map[40:44, 10:14] = 2  # a speck: no label bigger than the region itself
    classes = ('wall', 'building', 'sky')
    palette = [(120, 120, 120), (180, 120, 120), (6, 230, 230)]
    image = np.full((96, 128, 3), 30, np.uint8)
    out, written = draw_region_labels(image, label_map, classes, palette)
    assert written == ['building', 'wall']  # larger region first; no label for the speck
    assert out.shape == image.shape and (image == 30).all()  # the input is left alone
    changed = (out != image).any(-1)
    ys, xs = np.nonzero(changed)
    assert 0.02 < changed.mean() < 0.3
    # Each label in its own region (left: wall, right: building), its text at least
    # MIN_TEXT_PX high.
    for region in (changed[:, :64], changed[:, 64:]):
        rows = np.nonzero(region.any(1))[0]
        assert len(rows) >= MIN_TEXT_PX
    with pytest.raises(ValueError, match='differ'):
        draw_region_labels(image, label_map[:10], classes, palette)


def test_segmentation_demo_overlay_and_labels(seg, tmp_path):
    demo = load_tool(ROOT, 'demo')
    image = cv2.imread(seg['data']['validation_images'][0])
    img_path = str(tmp_path / 'street.png')  # PNG: the overlay is checked pixel-wise
    cv2.imwrite(img_path, image)
    opts = {'data_root': seg['data']['data_root']}
    plain = demo.run_demo(SEG_CONFIG, seg['ckpt'], [img_path], out_dir=str(tmp_path / 'plain'),
                          device='cpu', opacity=0.5, cfg_options=opts, with_labels=False)
    labelled = demo.run_demo(SEG_CONFIG, seg['ckpt'], [img_path],
                             out_dir=str(tmp_path / 'labelled'), device='cpu', opacity=0.5,
                             cfg_options=opts)
    pred = cv2.imread(plain['preds'][0], cv2.IMREAD_UNCHANGED)
    palette_bgr = np.array(seg['meta']['palette'], np.float32)[:, ::-1]
    blend = image * 0.5 + palette_bgr[pred] * 0.5
    vis_plain = cv2.imread(plain['vis'][0]).astype(np.float32)
    vis_labelled = cv2.imread(labelled['vis'][0]).astype(np.float32)
    assert np.abs(vis_plain - blend).max() <= 1  # --no-labels: mmseg's overlay only
    differs = (np.abs(vis_labelled - vis_plain).max(-1) > 0)
    assert 0 < differs.mean() < 0.5  # names written at full opacity, the overlay kept around

    from mmeff.visualization import draw_region_labels
    rgb = cv2.cvtColor(vis_plain.astype(np.uint8), cv2.COLOR_BGR2RGB)
    expected, written = draw_region_labels(rgb, pred, seg['meta']['classes'],
                                           seg['meta']['palette'])
    assert written
    assert np.array_equal(cv2.cvtColor(expected, cv2.COLOR_RGB2BGR), vis_labelled)


# ---------------------------------------------------------------------------- metrics
def test_to_builtin_gives_plain_python_numbers():
    from mmeff.utils import to_builtin
    metrics = {'mIoU': np.float64(58.64), 'aAcc': np.float32(0.5), 'n': np.int64(3),
               'per_class': np.array([1.5, 2.]), 'top1': torch.tensor(80.),
               'nested': [(np.float32(1.25), 'x')], 'ok': 1.0, 'flag': True}
    out = to_builtin(metrics)
    assert out == {'mIoU': 58.64, 'aAcc': 0.5, 'n': 3, 'per_class': [1.5, 2.0], 'top1': 80.0,
                   'nested': [(1.25, 'x')], 'ok': 1.0, 'flag': True}
    assert type(out['mIoU']) is float and type(out['n']) is int
    assert 'np.' not in repr(out) and 'tensor' not in repr(out)
    json.dumps(out)
    assert isinstance(metrics['mIoU'], np.float64)  # the argument is not modified
    # mmseg's float32 metrics print as their short decimal, not float32's binary expansion
    assert repr(to_builtin({'mIoU': np.float32(58.85)})) == "{'mIoU': 58.85}"


def test_test_tool_prints_plain_metrics(seg, tmp_path):
    """mmseg's IoUMetric returns numpy scalars; tools/test.py prints them as numbers."""
    res = subprocess.run(
        [sys.executable, 'tools/test.py', SEG_CONFIG, seg['ckpt'], '--work-dir',
         str(tmp_path / 'work'), '--cfg-options', f"data_root={seg['data']['data_root']}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (line,) = [ln for ln in res.stdout.splitlines() if ln.startswith('Metrics: ')]
    assert 'np.' not in line, line
    metrics = ast.literal_eval(line[len('Metrics: '):])
    assert set(metrics) == {'aAcc', 'mIoU', 'mAcc'}
    assert all(type(v) is float for v in metrics.values())
