"""Latency-driven slimming (paper, section 4): EfficientFormer variants for latency budgets.

    python tools/slim.py CONFIG --budgets B1 [B2 ...]
        [--backend torch-cpu|torch-cuda|onnxruntime|coreml] [--work-dir DIR]
        [--phase all|train-supernet|build-lut|search|export-subnet]
        [--input-size N] [--threads N] [--warmup 5] [--reps 30] [--compute-units ALL]
        [--calib-batches 4] [--eval-batches N] [--device cpu|cuda] [--cfg-options k=v ...]

CONFIG is a supernet config (configs/slimming/supernet_*.py). The phases, each runnable alone
from what the earlier ones saved in the work dir (default work_dirs/slim/<config name>/):

* ``train-supernet``: trains the supernet as tools/train.py would, into ``supernet/``
  (resumes from its last checkpoint when there is one: the expensive step runs once);
* ``build-lut``: measures the latency lookup table of the search space on ``--backend`` into
  ``lut_<backend>.json`` and checks its predictions against whole networks;
* ``search``: reads the supernet's importance, slims greedily from the full supernet until
  every budget is met (latency from the table, accuracy of each candidate from the supernet's
  weights on the validation split after BN recalibration on a few training batches), and
  writes ``search_<backend>/trajectory.{json,md,png}``;
* ``export-subnet``: per budget, the subnet's inherited weights
  (``search_<backend>/subnets/<name>.pth``), ready-to-train configs
  (``search_<backend>/configs/<name>_{in1k,mask_rcnn,fpn}.py``) and its measured latency in the
  report.

``--phase all`` (the default) runs the four in order.
"""
import argparse
import copy
import importlib.util
import itertools
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402

PHASES = ('train-supernet', 'build-lut', 'search', 'export-subnet')


def parse_args(argv=None):
    from mmeff.slimming.lut import BACKENDS, COMPUTE_UNITS
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='supernet config, e.g. configs/slimming/supernet_l7space_in1k.py')
    p.add_argument('--budgets', nargs='+', type=float,
                   help='latency budgets in ms on --backend (needed by search)')
    p.add_argument('--backend', choices=BACKENDS, default='torch-cpu',
                   help='where latencies are measured (default torch-cpu)')
    p.add_argument('--phase', choices=('all',) + PHASES, default='all')
    p.add_argument('--work-dir', help='default work_dirs/slim/<config name>')
    p.add_argument('--input-size', type=int,
                   help="square input size of the latency table (default: the config's "
                        'img_size, else 224)')
    p.add_argument('--calib-batches', type=int, default=4,
                   help='training batches (the same ones for every network) that '
                        'recalibrate BN before each accuracy estimate and export')
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
    args = p.parse_args(argv)
    # kept as typed for tools/train.py (train-supernet), parsed for the other phases
    args.cfg_options_argv = args.cfg_options
    parsed = argparse.Namespace(cfg_options=None)
    if args.cfg_options:
        DictAction(option_strings=[], dest='cfg_options')(p, parsed, args.cfg_options)
    args.cfg_options = parsed.cfg_options
    if args.calib_batches < 1 or (args.eval_batches is not None and args.eval_batches < 1):
        p.error('--calib-batches and --eval-batches must be >= 1')
    if args.phase in ('all', 'search') and not args.budgets:
        p.error(f'--phase {args.phase} needs --budgets (ms on --backend)')
    return args


class Run:
    """The paths of one slimming run and the config they come from."""

    def __init__(self, args):
        from mmeff.engine import prepare_config
        self.args = args
        self.config = args.config
        self.work_dir = args.work_dir or osp.join(
            'work_dirs', 'slim', osp.splitext(osp.basename(args.config))[0])
        self.cfg = prepare_config(args.config, osp.join(self.work_dir, 'supernet'),
                                  args.cfg_options)
        if self.cfg.model.get('type') != 'SlimmingSupernet':
            raise ValueError(f"{args.config} is not a supernet config (model.type "
                             f"{self.cfg.model.get('type')!r}, expected 'SlimmingSupernet'): "
                             f'use configs/slimming/supernet_*.py')
        from mmeff.slimming.space import get_space
        self.space = get_space(self.cfg.model.get('space', 'l7space'))
        self.input_size = args.input_size or int(self.cfg.get('img_size', 224))
        self.supernet_dir = osp.join(self.work_dir, 'supernet')
        self.num_classes = int(self.cfg.model.get('num_classes', 1000))
        self.lut_path = osp.join(self.work_dir, f'lut_{args.backend}.json')
        self.lut_check_path = osp.join(self.work_dir, f'lut_{args.backend}_accuracy.json')
        self.search_dir = osp.join(self.work_dir, f'search_{args.backend}')
        self.trajectory_path = osp.join(self.search_dir, 'trajectory.json')

    def supernet_checkpoint(self) -> str:
        """The last checkpoint of the supernet training (mmengine's ``last_checkpoint``)."""
        marker = osp.join(self.supernet_dir, 'last_checkpoint')
        if not osp.isfile(marker):
            raise FileNotFoundError(f'no supernet checkpoint in {self.supernet_dir}: run '
                                    f'--phase train-supernet first')
        with open(marker) as f:
            path = f.read().strip()
        if not osp.isfile(path):
            raise FileNotFoundError(f'{marker} names {path!r}, which does not exist: run '
                                    f'--phase train-supernet again')
        return path


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
    _tool('train').main(argv)
    print(f'Supernet: {run.supernet_checkpoint()}')


def build_lut(run: Run) -> None:
    from mmeff.slimming import lut
    from mmeff.slimming.report import write_json
    args = run.args
    table = lut.load(run.lut_path) if osp.isfile(run.lut_path) else None  # resume: add missing
    table = lut.build_lut(run.space, args.backend, run.input_size, table=table,
                          threads=args.threads, warmup=args.warmup, reps=args.reps,
                          num_classes=run.num_classes, compute_units=args.compute_units)
    lut.save(table, run.lut_path)
    check = lut.lut_accuracy(table, run.space, n=8, seed=0)
    write_json(check, run.lut_check_path)
    same_run = ''
    if 'mean_abs_rel_err_same_run' in check:
        drift = sorted(n['piece_drift'] for n in check['networks'])[len(check['networks']) // 2]
        same_run = (f"; against its pieces timed again beside it: mean "
                    f"{check['mean_abs_rel_err_same_run']:.1%}, worst "
                    f"{check['worst_rel_err_same_run']:+.1%} (pieces now {drift:.2f}x their "
                    f"time in the table)")
    print(f'Latency table: {run.lut_path}. Predicted vs measured whole-network latency of '
          f"{len(check['networks'])} random networks of the space: mean |relative error| "
          f"{check['mean_abs_rel_err']:.1%}, worst {check['worst_rel_err']:+.1%}{same_run} "
          f'({run.lut_check_path})')
    if check['mean_abs_rel_err'] > 0.2:
        print(f"warning: the latency table predicts whole networks poorly here (mean error "
              f"{check['mean_abs_rel_err']:.0%}): other processes competing for the cores and "
              f'few repetitions make timings noisy; measure on an idle machine, with more '
              f'--reps, then run --phase build-lut again (delete {run.lut_path} first: '
              f'existing pieces are kept)', file=sys.stderr)


def _load_table(run: Run) -> dict:
    from mmeff.slimming import lut
    if not osp.isfile(run.lut_path):
        raise FileNotFoundError(f'no latency table {run.lut_path}: run --phase build-lut '
                                f'--backend {run.args.backend} first')
    table = lut.load(run.lut_path)
    lut.check_compatible(table, run.args.backend, run.input_size, run.space)
    return table


def _loaders(run: Run):
    """The first ``--calib-batches`` training batches (a list) and the validation loader."""
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    with DefaultScope.overwrite_default_scope('mmeff'):
        train = Runner.build_dataloader(copy.deepcopy(run.cfg.train_dataloader))
        val = Runner.build_dataloader(copy.deepcopy(run.cfg.val_dataloader))
    calib = list(itertools.islice(train, run.args.calib_batches))
    if not calib:
        raise ValueError(f'the training split of {run.config} gave no batch to recalibrate BN '
                         f'statistics with (fewer images than one batch with drop_last?)')
    return calib, val


def accuracy_estimator(model, calib: list, val_loader, eval_batches=None):
    """``choices -> top-1 (%)`` of the subnet with the supernet's weights on the validation
    split (the config's ``val_dataloader``), after recalibrating BN on the training batches
    ``calib``: the same batches for every network, so that the estimates differ by the
    networks only."""
    import torch

    from mmeff.slimming.supernet import recalibrate_bn

    def estimate(choices):
        recalibrate_bn(model, calib, choices)
        correct = total = 0
        with torch.no_grad():
            for batch in itertools.islice(val_loader, eval_batches):
                data = model.data_preprocessor(batch, False)
                logits = model.forward_choices(data['inputs'], choices)
                labels = torch.stack([torch.as_tensor(ds.gt_label).reshape(())
                                      for ds in data['data_samples']]).to(logits.device)
                correct += int((logits.argmax(dim=1) == labels).sum())
                total += labels.numel()
        if not total:
            raise ValueError('the validation split gave no images to estimate accuracy on')
        return 100. * correct / total
    return estimate


def _load_model(run: Run):
    from mmeff.slimming.supernet import load_supernet
    model = load_supernet(run.supernet_checkpoint(), run.space)
    return model.to(run.args.device).eval()


def search(run: Run) -> None:
    from mmeff.slimming import lut
    from mmeff.slimming.report import write_json, write_report
    from mmeff.slimming.search import check_budgets, greedy_slim
    from mmeff.slimming.supernet import importance
    table = _load_table(run)
    check_budgets(run.space, lambda arch: lut.predict(table, arch), run.args.budgets)  # early
    model = _load_model(run)
    scores = importance(model)
    write_json(scores, osp.join(run.search_dir, 'importance.json'))
    calib, val_loader = _loaders(run)
    trajectory = greedy_slim(
        run.space, run.space.max_choices(), scores,
        predict_latency=lambda arch: lut.predict(table, arch),
        estimate_accuracy=accuracy_estimator(model, calib, val_loader, run.args.eval_batches),
        budgets=run.args.budgets)
    trajectory['meta'] = dict(backend=run.args.backend, input_size=run.input_size,
                              config=run.config, supernet=run.supernet_checkpoint(),
                              latency_table=run.lut_path)
    if osp.isfile(run.lut_check_path):
        with open(run.lut_check_path) as f:
            check = json.load(f)
        trajectory['lut_accuracy'] = dict(
            networks=len(check['networks']), file=run.lut_check_path,
            **{k: v for k, v in check.items() if 'rel_err' in k})
    paths = write_report(trajectory, run.search_dir)
    for r in trajectory['results']:
        print(f"{r['budget_ms']:g} ms: {r['arch']} (predicted {r['latency_ms']:.3f} ms, "
              f"accuracy estimate {r['accuracy']:.2f})")
    print(f"Wrote {paths['json']}, {paths['markdown']} and {paths['plot']}")


def export_subnets(run: Run) -> None:
    from mmeff.engine.checkpointing import save_checkpoint_atomic
    from mmeff.slimming import lut
    from mmeff.slimming.report import write_configs, write_report
    from mmeff.slimming.search import load_trajectory
    from mmeff.slimming.supernet import extract_subnet, recalibrate_bn
    if not osp.isfile(run.trajectory_path):
        raise FileNotFoundError(f'no search result {run.trajectory_path}: run --phase search '
                                f'first')
    trajectory = load_trajectory(run.trajectory_path)
    asked = sorted(set(run.args.budgets or ()), reverse=True)
    if asked and asked != trajectory['budgets_ms']:
        raise ValueError(f"the search in {run.trajectory_path} was for the budgets "
                         f"{trajectory['budgets_ms']} ms, not {asked}: run --phase search "
                         f"--budgets {' '.join(f'{b:g}' for b in asked)} first (or leave "
                         f"--budgets out to export the searched ones)")
    table = _load_table(run)
    model = _load_model(run)
    calib, _ = _loaders(run)
    for r in trajectory['results']:
        # the BN statistics are shared by every network of the supernet: the subnet's own
        # are estimated before its weights are taken
        recalibrate_bn(model, calib, r['choices'])
        ckpt = osp.join(run.search_dir, 'subnets', f"{r['name']}.pth")
        os.makedirs(osp.dirname(ckpt), exist_ok=True)
        save_checkpoint_atomic(
            dict(state_dict=extract_subnet(model, r['choices']),
                 meta=dict(arch=r['arch'], space=trajectory['space'],
                           budget_ms=r['budget_ms'], backend=run.args.backend,
                           source=run.supernet_checkpoint())), ckpt)
        r['checkpoint'] = ckpt
        r['configs'] = write_configs(r, osp.join(run.search_dir, 'configs'), ckpt,
                                     meta=dict(backend=run.args.backend))
    # The start (full supernet) and every budget's network, measured together (interleaved)
    # with the table's settings; a table made elsewhere (a Mac's Core ML one searched on a
    # server) leaves the measurements to the machine it was made on.
    archs = [trajectory['start']['arch']] + [r['arch'] for r in trajectory['results']]
    try:
        measured = lut.measure_networks(
            archs, table['backend'], table['input_size'], table['batch'], table['threads'],
            table['warmup'], table['reps'], table['with_head'], table['num_classes'],
            table.get('compute_units') or 'ALL')
    except lut.BackendUnavailableError as exc:
        print(f'warning: no measured latencies in the report: {exc}', file=sys.stderr)
        measured = [dict(median_ms=None)] * len(archs)
    trajectory['start']['measured_ms'] = measured[0]['median_ms']
    steps = {s['step']: s for s in trajectory['steps']}
    for r, m in zip(trajectory['results'], measured[1:]):
        r['measured_ms'] = m['median_ms']
        if r['step'] in steps:
            steps[r['step']]['measured_ms'] = m['median_ms']
    paths = write_report(trajectory, run.search_dir)

    def measured_text(value):
        return 'not measured' if value is None else f'measured {value:.3f} ms'
    print(f"Full supernet: predicted {trajectory['start']['latency_ms']:.3f} ms, "
          f"{measured_text(trajectory['start']['measured_ms'])}")
    for r in trajectory['results']:
        print(f"{r['budget_ms']:g} ms: predicted {r['latency_ms']:.3f} ms, "
              f"{measured_text(r['measured_ms'])}; {r['checkpoint']}; "
              + ', '.join(r['configs'].values()))
    print(f"Wrote {paths['markdown']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    run = Run(args)
    steps = dict(zip(PHASES, (train_supernet, build_lut, search, export_subnets)))
    for phase in (PHASES if args.phase == 'all' else (args.phase,)):
        print(f'== {phase}')
        steps[phase](run)
    print(f'Work dir: {osp.abspath(run.work_dir)}')
    return 0


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
