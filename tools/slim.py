"""Latency-driven slimming (paper, section 4): EfficientFormer variants for latency budgets.

    python tools/slim.py CONFIG --budgets B1 [B2 ...] [--relative-to supernet|l1|l3|l7]
        [--backend NAME (default torch-cpu)] [--work-dir DIR]
        [--phase all|train-supernet|build-lut|search|export-subnet]
        [--input-size N] [--threads N] [--warmup 5] [--reps 30] [--compute-units ALL]
        [--calib-batches 4] [--eval-batches N] [--device cpu|cuda] [--cfg-options k=v ...]

A budget is milliseconds on the machine that measured the latency table (``2.5``), or a
fraction of the latency the table predicts for a reference network (``0.8x``: of the full
supernet, or of ``--relative-to l1`` where the space contains L1), which travels between
machines.

``--backend`` is any backend of the runtime layer (:mod:`mmeff.runtime`; ``--help`` lists them:
torch-cpu, torch-cuda, onnxruntime, coreml...).

CONFIG is a supernet config (configs/slimming/supernet_*.py). The phases, each runnable alone
from what the earlier ones saved in the work dir (default work_dirs/slim/<config name>/):

* ``train-supernet``: trains the supernet as tools/train.py would, into ``supernet/``
  (resumes from its last checkpoint when there is one: the expensive step runs once);
* ``build-lut``: measures the latency lookup table of the search space on ``--backend`` into
  ``lut_<backend>.json`` and checks its predictions against whole networks;
* ``search``: reads the supernet's importance, slims greedily from the full supernet until
  every budget is met (latency from the table, accuracy of each candidate from the supernet's
  weights on the validation split after BN recalibration on a few seeded training batches
  through the validation pipeline: the same images for every estimate and for the export), and
  writes ``search_<backend>/trajectory.{json,md,png}``, which records the supernet checkpoint,
  the table, the input size and the images it was searched with;
* ``export-subnet``: per budget, the whole subnet with its inherited weights
  (``search_<backend>/subnets/<name>.pth``), ready-to-train configs
  (``search_<backend>/configs/<name>_{in1k,mask_rcnn,fpn}.py``), an evaluation config
  (``<name>_eval.py``: ``tools/test.py`` prints the accuracy the search reported) and its
  measured latency in the report (flagged when over its budget). It refuses a work dir that
  changed since the search (newer supernet checkpoint, rebuilt table, other input size).

``--phase all`` (the default) checks every argument, then runs the four in order. Every phase
holds the work dir's lock; the search and the export also wait for no supernet training.
The phases are :mod:`mmeff.slimming.run`'s; this file turns the command line into its run.
"""
import argparse
import importlib.util
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402

from mmeff.slimming import run as slimming  # noqa: E402
from mmeff.slimming.run import PHASES, SlimRun  # noqa: E402


def parse_args(argv=None):
    from mmeff.slimming.lut import BACKENDS, COMPUTE_UNITS
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='supernet config, e.g. configs/slimming/supernet_l7space_in1k.py')
    p.add_argument('--budgets', nargs='+',
                   help="latency budgets (needed by search): ms on --backend ('2.5') or "
                        "fractions of the --relative-to network's predicted latency ('0.8x')")
    p.add_argument('--relative-to', default='supernet',
                   help="the network relative budgets refer to: 'supernet' (the full "
                        "supernet, default) or a variant of the space such as 'l1'")
    p.add_argument('--backend', choices=BACKENDS, default='torch-cpu',
                   help='where latencies are measured, a backend of mmeff.runtime (default '
                        'torch-cpu)')
    p.add_argument('--phase', choices=('all',) + PHASES, default='all')
    p.add_argument('--work-dir', help='default work_dirs/slim/<config name>')
    p.add_argument('--input-size', type=int,
                   help="square input size of the latency table (default: the config's "
                        'img_size, else 224)')
    p.add_argument('--calib-batches', type=int,
                   help='training batches (seeded, through the validation pipeline: the same '
                        'ones for every network) that recalibrate BN before each accuracy '
                        "estimate (default 4); the export uses the search's")
    p.add_argument('--eval-batches', type=int,
                   help='validation batches per accuracy estimate (default: all)')
    p.add_argument('--device', default='cpu', help='device of the accuracy estimates')
    p.add_argument('--threads', type=int, help='CPU threads of the latency measurements')
    p.add_argument('--warmup', type=int, default=5, help='untimed calls per measured piece')
    p.add_argument('--reps', type=int, default=30, help='timed calls per measured piece')
    p.add_argument('--compute-units', default='ALL',
                   choices=COMPUTE_UNITS,
                   help='Core ML compute units (coreml backend)')
    p.add_argument('--cfg-options', nargs='+', default=[],
                   help='override supernet config entries, e.g. train_cfg.max_epochs=1')
    p.add_argument('--launcher', choices=('none', 'pytorch', 'slurm'), default='none',
                   help='train-supernet on several processes (the supernet config\'s '
                        'SupernetDDP): start this tool with torchrun --nproc_per_node=N '
                        '(pytorch) or srun (slurm)')
    args = p.parse_args(argv)
    # kept as typed for tools/train.py (train-supernet), parsed for the other phases
    args.cfg_options_argv = args.cfg_options
    parsed = argparse.Namespace(cfg_options=None)
    if args.cfg_options:
        DictAction(option_strings=[], dest='cfg_options')(p, parsed, args.cfg_options)
    args.cfg_options = parsed.cfg_options
    if any(v is not None and v < 1 for v in (args.calib_batches, args.eval_batches)):
        p.error('--calib-batches and --eval-batches must be >= 1')
    if args.phase in ('all', 'search') and not args.budgets:
        p.error(f"--phase {args.phase} needs --budgets (ms on --backend, or fractions such "
                f"as 0.8x)")
    if args.budgets:
        from mmeff.slimming.budgets import parse_budgets
        try:
            parse_budgets(args.budgets)
        except ValueError as exc:
            p.error(f'--budgets: {exc}')
    return args


# The paths of one run, its checks and phases: mmeff.slimming.run
Run = SlimRun


def _tool(name: str):
    """A sibling tool as a module (tools/ is not a package)."""
    path = osp.join(osp.dirname(osp.abspath(__file__)), f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'mmeff_tools_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_supernet(run: Run) -> None:
    """Phase ``train-supernet``: tools/train.py on the run's supernet config."""
    slimming.train_supernet(run, _tool('train').main)


def main(argv=None) -> int:
    args = parse_args(argv)
    run = Run(args)
    phases = list(PHASES if args.phase == 'all' else (args.phase,))
    slimming.run_phases(run, phases, lambda train_argv: _tool('train').main(train_argv))
    print(f'Work dir: {osp.abspath(run.work_dir)}')
    return 0


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
