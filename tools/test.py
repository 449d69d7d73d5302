"""Evaluate a checkpoint with a detection / segmentation / classification config.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
                         [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

Metrics are printed, after the number of images scored, and written to
``WORK_DIR/<timestamp>/<timestamp>.json`` by mmengine. CHECKPOINT (a file, or a URL for
mmengine's loaders) must be one of the model the config builds (saved by tools/train.py): every
tensor present with the model's shape, else an error says what the file is and what to use
instead (``mmeff.checkpoint.check_model_fit``), before the Runner starts. A segmentation image
without its label map is an error, a label map without its image a warning (it is not scored);
an image that cannot be read (corrupt, truncated, empty) is an error naming the file.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (evaluate) a model with mmengine')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where logs and metrics go')
    parser.add_argument('--out', help='dump raw predictions to this pickle file')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. data_root=/data/coco/')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_model_for_check(cfg):
    """The model the Runner will build from ``cfg`` (without its weights), to check the
    checkpoint against before the Runner starts: a distillation teacher is left out (it is not
    in the checkpoint's state dict, and loading it costs as much as the student)."""
    import copy

    from mmengine.registry import MODELS, DefaultScope
    model_cfg = copy.deepcopy(cfg.model)
    if model_cfg.get('distillation') is not None:
        model_cfg.distillation = None
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        return MODELS.build(model_cfg)


def main(argv=None):
    args = parse_args(argv)
    from mmeff.checkpoint import check_checkpoint_for_model, read_checkpoint
    from mmeff.engine import (build_runner, check_data_paths, check_model_channels,
                              explain_dataset_errors, prepare_config)
    cfg = prepare_config(args.config, args.work_dir, args.cfg_options, args.amp, args.launcher)
    check_model_channels(cfg)  # neck/head in_channels vs the backbone, before data is loaded
    # A missing, corrupt or unsafe file (or URL) fails here, before anything is built.
    checkpoint = read_checkpoint(args.checkpoint)
    # A checkpoint that does not fit fails before the Runner logs its environment and config
    # (mmengine would only log the keys that do not fit and evaluate random weights).
    check_checkpoint_for_model(build_model_for_check(cfg), args.checkpoint, 'exact', checkpoint)
    del checkpoint
    cfg.load_from = args.checkpoint
    cfg.resume = False
    check_data_paths(cfg, which=('test_dataloader',))
    runner = build_runner(cfg)
    dataset = runner.test_dataloader.dataset
    if hasattr(dataset, 'seg_map_suffix'):
        from mmeff.segmentation import check_files
        check_files(dataset, 'test')  # label maps without images are reported
    if args.out:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    from mmeff.datasets.image_files import dataset_image_paths, explain_image_error
    try:
        with explain_dataset_errors():
            metrics = runner.test()
    except Exception as exc:
        # mmcv's image loading fails on a corrupt, truncated or empty file with a message that
        # names no file (or looks like a bug): name it, and the fix.
        clear = explain_image_error(exc, dataset_image_paths(dataset), 'the test dataset')
        if clear is None:
            raise
        raise clear from exc
    from mmeff.compat import shutdown_distributed
    shutdown_distributed()
    from mmeff.utils import to_builtin
    metrics = to_builtin(metrics)  # mmseg's numpy scalars would print as np.float64(58.64)
    print(f'Images scored: {len(dataset)} ({type(dataset).__name__})')
    print(f'Metrics: {metrics}')
    return metrics


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
