"""Train a detection (mmdet), segmentation (mmseg) or classification (mmeff) config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                          [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

The config's ``default_scope`` decides which library builds the model, data and metrics. For
several processes or machines use tools/dist_train.sh (torchrun) or tools/slurm_train.sh: they
run this file with ``--launcher pytorch|slurm`` and mmengine wraps the model in PyTorch DDP.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model with mmengine')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the given checkpoint, or from the latest one in the work dir if '
        'no path is given')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the lr by the real batch size against auto_scale_lr.base_batch_size')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config entries, e.g. train_cfg.max_iters=10 data_root=/data/coco/')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)
    from mmeff.engine import (build_runner, check_data_paths, check_model_channels,
                              check_pretrained, explain_dataset_errors, prepare_config)
    cfg = prepare_config(args.config, args.work_dir, args.cfg_options, args.amp, args.launcher)
    check_model_channels(cfg)  # neck/head in_channels vs the backbone, before data is loaded
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not os.path.isfile(args.resume):
            raise FileNotFoundError(f'--resume checkpoint {args.resume!r} does not exist')
        cfg.resume = True
        cfg.load_from = args.resume
    if args.auto_scale_lr:
        if not cfg.get('auto_scale_lr', {}).get('base_batch_size'):
            raise ValueError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    check_data_paths(cfg)
    check_pretrained(cfg)
    from mmeff.engine.workdir_lock import lock_work_dir
    # One run per work dir (a second one would share the log and overwrite the checkpoints);
    # under DDP only rank 0 locks.
    with lock_work_dir(cfg.work_dir, args.launcher):
        runner = build_runner(cfg)
        if cfg.get('load_from'):  # mmengine would only log the keys that do not fit
            from mmeff.checkpoint import check_checkpoint_for_model, read_checkpoint
            from mmeff.slimming.supernet import check_checkpoint_space
            checkpoint = read_checkpoint(cfg.load_from)
            check_checkpoint_space(runner.model, checkpoint, cfg.load_from)  # supernets only
            check_checkpoint_for_model(runner.model, cfg.load_from,
                                       'exact' if cfg.resume else 'load_from',
                                       checkpoint=checkpoint)
        with explain_dataset_errors():
            runner.train()
    from mmeff.compat import shutdown_distributed
    shutdown_distributed()
    print(f'Work dir: {os.path.abspath(cfg.work_dir)}')


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
