"""Inference demo: image(s) in, pictures with the predictions drawn on them out.

    python tools/demo.py CONFIG CHECKPOINT IMAGE|FOLDER [IMAGE|FOLDER ...]
                         [--out-dir outputs/demo] [--device cpu|cuda:0] [--score-thr 0.3]
                         [--max-dets 20] [--opacity 0.5] [--no-labels] [--cfg-options k=v ...]

The config's ``default_scope`` picks the library's own inferencer:

* ``mmdet`` (detection / instance segmentation): mmdet's ``DetInferencer``; each image keeps
  its ``--max-dets`` best detections, of which boxes, labels, scores and masks above
  ``--score-thr`` are drawn into ``OUT_DIR/vis/<image>`` (lines and labels sized to the
  picture), and the kept predictions are written to ``OUT_DIR/preds/<image>.json``.
* ``mmseg`` (semantic segmentation): mmseg's ``MMSegInferencer``; the class map is overlaid in
  the dataset's palette (``--opacity``) into ``OUT_DIR/vis/<image>``, each class's name
  written on its largest region at a size that follows the picture (``--no-labels``: none),
  and the raw label map is written to ``OUT_DIR/pred/<image>.png``.

The pictures are drawn by ``mmeff.visualization`` (mmdet's / mmseg's visualizers with sizes
that follow the picture instead of fixed ones).

An image that cannot be read (empty, truncated, corrupt) gets one line on stderr and is left
out; the others are still drawn (exit status 1 when any was left out).

The class names and palette come from the checkpoint's ``dataset_meta`` (saved by
tools/train.py), else from the config's dataset. CHECKPOINT must be one of the model the config
builds (every tensor present with the model's shape); another arch, a classification or backbone
checkpoint, timm's layout or a ResNet is an error saying what the file is, before anything is
drawn (``mmeff.checkpoint.check_model_fit``).
"""
import argparse
import glob
import os
import os.path as osp
import sys
from typing import List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def collect_images(inputs: List[str]) -> List[str]:
    """Image files named by ``inputs`` (files, or folders searched non-recursively), sorted."""
    images = []
    for item in inputs:
        if osp.isdir(item):
            found = sorted(p for p in glob.glob(osp.join(item, '*'))
                           if p.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise FileNotFoundError(f'folder {item!r} holds no images '
                                        f'({", ".join(IMAGE_EXTENSIONS)})')
            images.extend(found)
        elif osp.isfile(item):
            images.append(item)
        else:
            raise FileNotFoundError(f'input image {item!r} does not exist')
    return images


def _output_paths(out_dir: str, subdir: str, images: List[str], ext: str = None) -> List[str]:
    paths = []
    for img in images:
        name = osp.basename(img)
        if ext is not None:
            name = osp.splitext(name)[0] + ext
        paths.append(osp.join(out_dir, subdir, name))
    return paths


def run_demo(config: str, checkpoint: str, inputs: List[str], out_dir: str = 'outputs/demo',
             device: str = None, score_thr: float = 0.3, opacity: float = 0.5,
             cfg_options: dict = None, max_dets: int = 20, with_labels: bool = True) -> dict:
    """Run the scope's inferencer on ``inputs``; returns the written picture/prediction paths.

    ``max_dets`` (detection): detections kept per image, best first (None: all);
    ``with_labels`` (segmentation): write the class names on the overlay.

    Images that cannot be read (empty, truncated, corrupt: ``mmeff.datasets.image_files``) are
    left out and listed in ``skipped``; the others are drawn. None readable is an error.

    Returns:
        dict: ``task`` ('detection' or 'segmentation'), ``vis`` (list of pictures),
        ``preds`` (list of prediction files), ``results`` (the inferencer's predictions) and
        ``skipped`` (``(image, problem)`` of each image left out).
    """
    import torch

    from mmeff.checkpoint import check_checkpoint_for_model, read_checkpoint
    from mmeff.datasets.image_files import unreadable_images
    from mmeff.engine import prepare_config
    from mmeff.engine.diagnostics import DataFileError

    cfg = prepare_config(config, cfg_options=cfg_options)
    ckpt = read_checkpoint(checkpoint)  # a clear error for a missing, corrupt or unsafe file
    images = collect_images(inputs)
    skipped = unreadable_images(images)
    images = [p for p in images if p not in dict(skipped)]
    if not images:
        path, problem = skipped[0]
        raise DataFileError(f'image {path!r} {problem}' + (
            f' (and the {len(skipped) - 1} other images cannot be read either)'
            if len(skipped) > 1 else '') + ': nothing to draw; give images that open')
    if not 0 <= score_thr <= 1:
        raise ValueError(f'--score-thr must be in [0, 1], got {score_thr}')
    if max_dets is not None and max_dets < 1:
        raise ValueError(f'--max-dets must be at least 1, got {max_dets}')
    device = device or ('cuda:0' if torch.cuda.is_available() else 'cpu')
    scope = cfg.get('default_scope')
    # The backbone's ImageNet init_cfg is irrelevant here (the checkpoint has every weight),
    # and the inferencers never call init_weights; dropping it documents that.
    if cfg.get('model', {}).get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None
    if scope == 'mmdet':
        from mmeff.visualization.det import DemoDetInferencer
        inferencer = DemoDetInferencer(model=cfg, weights=checkpoint, device=device,
                                       show_progress=False, max_dets=max_dets)
        check_checkpoint_for_model(inferencer.model, checkpoint, 'exact', ckpt)
        results = inferencer(images, out_dir=out_dir, pred_score_thr=score_thr,
                             no_save_pred=False)
        vis = _output_paths(out_dir, 'vis', images)
        preds = _output_paths(out_dir, 'preds', images, '.json')
        task = 'detection'
    elif scope == 'mmseg':
        from mmeff.visualization.seg import DemoSegInferencer
        inferencer = DemoSegInferencer(model=cfg, weights=checkpoint, device=device)
        check_checkpoint_for_model(inferencer.model, checkpoint, 'exact', ckpt)
        results = inferencer(images, out_dir=out_dir, img_out_dir='vis', pred_out_dir='pred',
                             opacity=opacity, with_labels=with_labels)
        vis = _output_paths(out_dir, 'vis', images)
        preds = _output_paths(out_dir, 'pred', images, '.png')
        # MMSegInferencer numbers the label maps it writes (00000000_pred.png, ... in input
        # order); name them after the images, as the vis pictures are.
        for i, dst in enumerate(preds):
            os.replace(osp.join(out_dir, 'pred', f'{i:08d}_pred.png'), dst)
        task = 'segmentation'
    else:
        raise ValueError(f'{config}: demo.py handles mmdet (detection) and mmseg (segmentation) '
                         f"configs, chosen by default_scope; this config has {scope!r}")
    missing = [p for p in vis + preds if not osp.isfile(p)]
    if missing:
        raise RuntimeError(f'the inferencer did not write {missing}')
    return dict(task=task, vis=vis, preds=preds, results=results, skipped=skipped)


def main(argv=None):
    parser = argparse.ArgumentParser(description='Draw a model\'s predictions on images')
    parser.add_argument('config', help='detection (mmdet) or segmentation (mmseg) config')
    parser.add_argument('checkpoint', help='trained checkpoint (from tools/train.py)')
    parser.add_argument('inputs', nargs='+', help='image files and/or folders of images')
    parser.add_argument('--out-dir', default='outputs/demo', help='where pictures go')
    parser.add_argument('--device', help='cpu, cuda:0, ... (default: cuda:0 if available)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: lowest score drawn (default 0.3)')
    parser.add_argument('--max-dets', type=int, default=20,
                        help='detection: most detections kept and drawn per image, best '
                             'scores first (default 20)')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='segmentation: opacity of the class overlay (default 0.5)')
    parser.add_argument('--no-labels', dest='with_labels', action='store_false',
                        help='segmentation: do not write the class names on the overlay')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries')
    args = parser.parse_args(argv)
    out = run_demo(args.config, args.checkpoint, args.inputs, args.out_dir, args.device,
                   args.score_thr, args.opacity, args.cfg_options, args.max_dets,
                   args.with_labels)
    for path in out['vis']:
        print(f'Wrote {path}')
    pred_dir = 'preds' if out['task'] == 'detection' else 'pred'
    print(f'Predictions: {osp.join(args.out_dir, pred_dir)}')
    for path, problem in out['skipped']:
        print(f'demo.py: error: image {path!r} {problem}: not drawn (replace it with a good '
              f'copy)', file=sys.stderr)
    return 1 if out['skipped'] else 0


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
