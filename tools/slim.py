"""Latency-driven slimming (paper, section 4): EfficientFormer variants for latency budgets.

    python tools/slim.py CONFIG --budgets B1 [B2 ...] [--relative-to supernet|l1|l3|l7]
        [--backend torch-cpu|torch-cuda|onnxruntime|coreml] [--work-dir DIR]
        [--phase all|train-supernet|build-lut|search|export-subnet]
        [--input-size N] [--threads N] [--warmup 5] [--reps 30] [--compute-units ALL]
        [--calib-batches 4] [--eval-batches N] [--device cpu|cuda] [--cfg-options k=v ...]

A budget is milliseconds on the machine that measured the latency table (``2.5``), or a
fraction of the latency the table predicts for a reference network (``0.8x``: of the full
supernet, or of ``--relative-to l1`` where the space contains L1), which travels between
machines.

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
"""
import argparse
import importlib.util
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402

from mmeff.slimming.run import SlimRun, export_subnets, search  # noqa: E402

PHASES = ('train-supernet', 'build-lut', 'search', 'export-subnet')


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
                   help='where latencies are measured (default torch-cpu)')
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


# The paths of one run, its checks, search and export: mmeff.slimming.run
Run = SlimRun


def _tool(name: str):
    """A sibling tool as a module (tools/ is not a package)."""
    path = osp.join(osp.dirname(osp.abspath(__file__)), f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'mmeff_tools_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- phases
def train_supernet(run: Run) -> None:
    argv = [run.config, '--work-dir', run.supernet_dir]
    if osp.isfile(osp.join(run.supernet_dir, 'last_checkpoint')):
        argv.append('--resume')
    if run.args.cfg_options_argv:
        argv += ['--cfg-options'] + run.args.cfg_options_argv
    # Under torchrun/srun every process trains its share (tools/train.py checks the launcher's
    # environment first: --launcher without torchrun is one line, before anything is written).
    argv += ['--launcher', getattr(run.args, 'launcher', 'none')]
    _tool('train').main(argv)
    print(f'Supernet: {run.supernet_checkpoint()}')


LUT_CHECK_NETWORKS = 20  # held-out networks the table is judged on (issue: at least 20)
_LUT_FLAGS = dict(threads='--threads', warmup='--warmup', reps='--reps',
                  compute_units='--compute-units')


def _resumable_table(run: Run):
    """The table ``build-lut`` left in the work dir (to complete), or ``None``; one that
    cannot be completed with these arguments is refused with the file to delete or the
    ``--work-dir`` to use."""
    from mmeff.slimming import lut
    args, path = run.args, run.lut_path
    if not osp.isfile(path):
        return None
    table = lut.load(path)  # unreadable or invalid: names the file to delete
    try:
        lut.check_extendable(table, args.backend, run.input_size, run.space,
                             threads=args.threads, warmup=args.warmup, reps=args.reps,
                             num_classes=run.num_classes, compute_units=args.compute_units,
                             path=path, keep='give another --work-dir to keep it')
    except lut.TableSettingsError as exc:
        if not all(k in _LUT_FLAGS for k in exc.differ):
            raise
        flags = ' '.join(f'{_LUT_FLAGS[k]} {t}' for k, (t, _) in exc.differ.items())
        had = ', '.join(f'{k}={t!r}' for k, (t, _) in exc.differ.items())
        asked = ', '.join(f'{k}={a!r}' for k, (_, a) in exc.differ.items())
        raise lut.TableSettingsError(
            f'{path} was measured with {had}, not {asked}: run build-lut with {flags} to '
            f'complete it (settings are not mixed in one table), or delete it to measure a new '
            f'table with the new settings, or give another --work-dir', exc.differ) from None
    return table


def _write_json_atomic(data: dict, path: str) -> None:
    from mmeff.engine.checkpointing import write_text_atomic
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1) + '\n')


def _unfinished_check(path: str):
    """The accuracy check an interrupted ``build-lut`` saved (its networks are not measured
    again), or ``None``."""
    if not osp.isfile(path):
        return None
    try:
        with open(path) as f:
            check = json.load(f)
    except (OSError, ValueError):
        print(f'warning: {path} is unreadable; the accuracy check is measured again',
              file=sys.stderr)
        return None
    return check if isinstance(check, dict) and check.get('complete') is False else None


def build_lut(run: Run) -> None:
    from mmeff.slimming import lut
    args = run.args
    table = _resumable_table(run)  # resume: measure only the missing pieces
    # saved after every chunk of pieces: a kill loses at most the chunk being measured
    table = lut.build_lut(run.space, args.backend, run.input_size, table=table,
                          threads=args.threads, warmup=args.warmup, reps=args.reps,
                          num_classes=run.num_classes, compute_units=args.compute_units,
                          save_to=run.lut_path)
    print(f'Latency table: {run.lut_path} (measured on {lut.device_of(table)})')
    resume = _unfinished_check(run.lut_check_path)
    if resume:
        print(f"Resuming the accuracy check in {run.lut_check_path} "
              f"({len(resume.get('networks', []))} networks measured)")
    check = lut.lut_accuracy(table, run.space, n=LUT_CHECK_NETWORKS, seed=0, resume=resume,
                             on_network=lambda c: _write_json_atomic(c, run.lut_check_path))
    _write_json_atomic(check, run.lut_check_path)
    lut.save(lut.with_accuracy(table, check, run.lut_check_path), run.lut_path)
    print(f"Predicted vs measured latency of {check['num_networks']} held-out random networks "
          f"of the space: {check['within_10pct']:.0%} within +-10 %, {check['within_5pct']:.0%} "
          f"within +-5 %, mean |error| {check['mean_abs_rel_err']:.1%}, worst "
          f"{check['worst_rel_err']:+.1%}, RMSE {check['rmse_ms']:.4g} ms")
    print(f"Measurement noise (each network timed twice): mean "
          f"{check['noise_mean_abs_rel']:.1%}, worst {check['noise_worst_rel']:+.1%}")
    if 'mean_abs_rel_err_same_run' in check:
        drift = sorted(n['piece_drift'] for n in check['networks'])[len(check['networks']) // 2]
        print(f"Against its pieces timed again beside it: mean "
              f"{check['mean_abs_rel_err_same_run']:.1%}, worst "
              f"{check['worst_rel_err_same_run']:+.1%} (pieces now {drift:.2f}x their "
              f"time in the table)")
    print(f'Accuracy check: {run.lut_check_path} (its statistics also in {run.lut_path})')
    if check['within_10pct'] < 0.95:
        print(f"warning: only {check['within_10pct']:.0%} of the networks are predicted within "
              f"+-10 % (target 95 %; measurement noise {check['noise_mean_abs_rel']:.1%}): "
              f'other processes competing for the cores and few repetitions make timings '
              f'noisy; measure on an idle machine with more --reps: delete {run.lut_path} '
              f'(existing pieces are kept) or give another --work-dir, and run --phase '
              f'build-lut again', file=sys.stderr)


def main(argv=None) -> int:
    from mmeff.engine.workdir_lock import global_rank, lock_work_dir
    from mmeff.slimming.run import preflight
    args = parse_args(argv)
    run = Run(args)
    phases = list(PHASES if args.phase == 'all' else (args.phase,))
    preflight(run, phases)  # every argument, before an hour of training
    if 'build-lut' in phases:
        _resumable_table(run)  # a kept table these settings cannot complete: now, not later
    steps = dict(zip(PHASES, (train_supernet, build_lut, search, export_subnets)))
    # one slimming run per work dir: two searches or table builds would replace each other's
    # results (train-supernet's tools/train.py also locks supernet/ for itself)
    launcher = getattr(args, 'launcher', 'none')
    with lock_work_dir(run.work_dir, launcher, activity='slimming run',
                       harm="replace each other's latency tables, trajectories and subnets"):
        for phase in phases:
            if phase != 'train-supernet' and global_rank(launcher) != 0:
                continue  # under torchrun/srun, one process measures, searches and exports
            print(f'== {phase}')
            with run.locked(phase):
                steps[phase](run)
    print(f'Work dir: {osp.abspath(run.work_dir)}')
    return 0


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
