"""The phases of a slimming run (``tools/slim.py``): its work dir, the checks that keep its
outputs consistent, supernet training, the latency table, the search and the subnet export.

A work dir (default ``work_dirs/slim/<config name>/``) holds::

    supernet/                      # tools/train.py's work dir (its own lock while training)
    lut_<backend>.json             # the latency table, lut_<backend>_accuracy.json its check
    search_<backend>/
        importance.json
        trajectory.{json,md,png}   # the search, then the export's measurements and files
        subnets/<name>.pth         # per budget, the whole subnet (backbone and head)
        configs/<name>_{in1k,mask_rcnn,fpn}.py   # training recipes for it
        configs/<name>_eval.py     # tools/test.py <it> subnets/<name>.pth: its accuracy

Each phase is a function of a :class:`SlimRun` (:data:`PHASES`: :func:`train_supernet`,
:func:`build_lut`, :func:`search`, :func:`export_subnets`); :func:`run_phases` checks every
argument, takes the locks and runs them in order.

What keeps these consistent (each checked, each mismatch refused with the fix):

* every phase holds the work dir's lock (:mod:`mmeff.engine.workdir_lock`), and the search
  and the export also hold the supernet dir's: no search of a supernet still training;
* a latency table is completed only with the settings it was measured with
  (:func:`resumable_table`), and an interrupted accuracy check resumes where it stopped;
* the trajectory records what it was searched with: the supernet checkpoint (path and
  SHA-256), the latency table (path, SHA-256, device), the input size, the budgets as given,
  and the calibration and validation images (:mod:`mmeff.slimming.calib`). The export refuses
  a newer supernet checkpoint, a rebuilt table, another input size or other images;
* the export recalibrates BN on the very batches the search used, evaluates the exported
  weights as the classifier they are and records that top-1 beside the search's estimate;
  a measured latency over its budget is flagged in the output and the report.
"""
import contextlib
import hashlib
import json
import os
import os.path as osp
import sys
from typing import Callable, Iterator, List, Optional, Sequence

from .budgets import SUPERNET, parse_budgets, reference_names, resolve_budgets

DEFAULT_CALIB_BATCHES = 4
PHASES = ('train-supernet', 'build-lut', 'search', 'export-subnet')
# Held-out random networks of the space the latency table is judged on (at least 20 for a
# +-10 % rate that means something).
LUT_CHECK_NETWORKS = 20
# The table's measurement settings and the tools/slim.py flags that set them.
_LUT_FLAGS = dict(threads='--threads', warmup='--warmup', reps='--reps',
                  compute_units='--compute-units')


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (hex)."""
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


class SlimRun:
    """The paths of one slimming run and the config they come from.

    Args:
        args (argparse.Namespace): ``tools/slim.py``'s arguments (``config``, ``work_dir``,
            ``cfg_options``, ``backend``, ``input_size``, ``budgets``, ``relative_to``,
            ``calib_batches``, ``eval_batches``, ``device`` and the measurement settings).
    """

    def __init__(self, args):
        from mmeff.engine import prepare_config
        self.args = args
        self.config = args.config
        self.work_dir = args.work_dir or osp.join(
            'work_dirs', 'slim', osp.splitext(osp.basename(args.config))[0])
        # no launcher here: under torchrun, tools/train.py (train-supernet) sets up the
        # processes; the other phases run in rank 0 alone
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
        self.budgets = parse_budgets(args.budgets) if args.budgets else []
        self.relative_to = getattr(args, 'relative_to', None) or SUPERNET

    # ------------------------------------------------------------------ inputs
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

    def load_table(self) -> dict:
        """The work dir's latency table, checked against the run's backend, size and space."""
        from mmeff.slimming import lut
        if not osp.isfile(self.lut_path):
            raise FileNotFoundError(f'no latency table {self.lut_path}: run --phase build-lut '
                                    f'--backend {self.args.backend} first')
        table = lut.load(self.lut_path)
        lut.check_compatible(table, self.args.backend, self.input_size, self.space,
                             path=self.lut_path)
        return table

    def table_identity(self, table: dict) -> dict:
        from mmeff.slimming import lut
        return dict(path=osp.abspath(self.lut_path), sha256=file_sha256(self.lut_path),
                    device=lut.device_of(table), date=table.get('date'))

    def table_source(self, table: dict) -> str:
        """The table in words for messages: its file, where and when it was measured, and
        that it is kept until deleted."""
        from mmeff.slimming import lut
        when = f" on {table['date']}" if table.get('date') else ''
        return (f'{self.lut_path} (measured on {lut.device_of(table)}{when}; absolute budgets '
                f"are that machine's milliseconds under that load; the table is kept: to "
                f'measure it again, delete it or give another --work-dir)')

    def load_model(self, checkpoint: str):
        from mmeff.slimming.supernet import load_supernet
        return load_supernet(checkpoint, self.space).to(self.args.device).eval()

    def calib_batches(self) -> int:
        return self.args.calib_batches or DEFAULT_CALIB_BATCHES

    @contextlib.contextmanager
    def locked(self, phase: str) -> Iterator[None]:
        """The locks ``phase`` needs beyond the work dir's: the search and the export hold the
        supernet dir's (refusing a supernet still being trained)."""
        from mmeff.engine.workdir_lock import WorkDirBusyError, WorkDirLock
        if phase not in ('search', 'export-subnet') or not osp.isdir(self.supernet_dir):
            yield
            return
        lock = WorkDirLock(self.supernet_dir, activity=f'slimming {phase}')
        try:
            lock.acquire()
        except WorkDirBusyError as exc:
            from mmeff.engine.workdir_lock import _describe
            raise WorkDirBusyError(
                f'the supernet in {self.supernet_dir} is being trained right now '
                f'({_describe(exc.info)}): a {phase} now would read a half-trained supernet '
                f'whose final checkpoint does not give the reported accuracies. Wait for the '
                f'training to end (or stop it), then run --phase {phase} (lock file: '
                f'{exc.path})', exc.info, exc.path) from None
        try:
            yield
        finally:
            lock.release()


# ---------------------------------------------------------------------------- checks
def preflight(run: SlimRun, phases: List[str]) -> None:
    """Check every argument the ``phases`` will use before the first one runs (an hour of
    supernet training must not end in a budget typo).

    Raises:
        ValueError, FileNotFoundError, LatencyTableError, BackendUnavailableError: the
            argument and its fix.
    """
    args = run.args
    if run.relative_to not in reference_names(run.space):
        from .budgets import reference_arch
        reference_arch(run.space, run.relative_to)  # raises, naming the valid ones
    if 'build-lut' in phases:
        from mmeff.slimming import lut
        for name in ('warmup', 'reps', 'threads'):
            value = getattr(args, name, None)
            least = 0 if name == 'warmup' else 1
            if value is not None and value < least:
                raise ValueError(f'--{name} must be >= {least}, got {value}')
        lut.check_backend(args.backend)
    if not isinstance(run.input_size, int) or run.input_size < 32:
        raise ValueError(f'--input-size must be an int >= 32 (the network downsamples by 32), '
                         f'got {run.input_size!r}')
    if 'search' in phases or 'export-subnet' in phases:
        _check_device(args.device)
        from mmeff.engine import check_data_paths
        check_data_paths(run.cfg, which=('train_dataloader', 'val_dataloader'))
    if 'search' in phases and osp.isfile(run.lut_path):
        # a kept table: its backend, size and space, and the budgets against it, now
        from mmeff.slimming import lut
        table = lut.load(run.lut_path)
        lut.check_compatible(table, args.backend, run.input_size, run.space, path=run.lut_path,
                             warn=False)
        try:
            _resolve(run, table)
        except lut.LatencyTableError:
            if 'build-lut' not in phases:  # else build-lut completes it first
                raise
    if phases == ['export-subnet'] and not osp.isfile(run.trajectory_path):
        raise FileNotFoundError(f'no search result {run.trajectory_path}: run --phase search '
                                f'first')


def _check_device(device: str) -> None:
    import torch
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device: use 'cpu' or 'cuda' "
                         f"(or 'cuda:N')") from None
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {device} asks for a GPU, but torch sees none here '
                         f'(torch.cuda.is_available() is False): use --device cpu')


def _resolve(run: SlimRun, table: dict):
    """Budgets in ms (relative ones from the table), checked against the smallest network."""
    from mmeff.slimming import lut
    from mmeff.slimming.search import check_budgets

    def predict(arch):
        return lut.predict(table, arch)
    ms, labels, reference = resolve_budgets(run.budgets, run.space, predict, run.relative_to)
    check_budgets(run.space, predict, ms, labels, table=run.table_source(table))
    return ms, labels, reference, predict


# ---------------------------------------------------------------------------- train-supernet
def supernet_train_argv(run: SlimRun) -> List[str]:
    """The ``tools/train.py`` arguments that train the run's supernet into ``supernet/``:
    resumed from its last checkpoint when there is one (the expensive step runs once), with
    the run's ``--cfg-options`` as typed and its launcher (under torchrun/srun every process
    trains its share)."""
    argv = [run.config, '--work-dir', run.supernet_dir]
    if osp.isfile(osp.join(run.supernet_dir, 'last_checkpoint')):
        argv.append('--resume')
    if run.args.cfg_options_argv:
        argv += ['--cfg-options'] + run.args.cfg_options_argv
    argv += ['--launcher', getattr(run.args, 'launcher', 'none')]
    return argv


def train_supernet(run: SlimRun, train_main: Callable[[List[str]], object]) -> None:
    """Phase ``train-supernet``: ``train_main`` (``tools/train.py``'s ``main``, which checks
    the launcher's environment before anything is written) on :func:`supernet_train_argv`."""
    train_main(supernet_train_argv(run))
    print(f'Supernet: {run.supernet_checkpoint()}')


# ---------------------------------------------------------------------------- build-lut
def resumable_table(run: SlimRun) -> Optional[dict]:
    """The table ``build-lut`` left in the work dir (to complete), or ``None``; one that
    cannot be completed with these arguments is refused with the file to delete or the
    ``--work-dir`` to use.

    Raises:
        LatencyTableError: an unreadable table, or one of another backend, size or space.
        TableSettingsError: a table measured with other ``--threads``/``--warmup``/``--reps``/
            ``--compute-units``, naming the flags that complete it.
    """
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


def _unfinished_check(path: str) -> Optional[dict]:
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


def build_lut(run: SlimRun) -> dict:
    """Phase ``build-lut``: measure (or complete) the latency table of the run's space into
    ``lut_<backend>.json``, saved after every chunk of pieces (a kill loses at most the chunk
    being measured), then check its predictions against :data:`LUT_CHECK_NETWORKS` held-out
    whole networks (``lut_<backend>_accuracy.json``, saved after every network). A table
    without a calibration gets one first (:func:`mmeff.slimming.lut.calibrate`: the scale of
    whole networks to the sum of their pieces, fitted on networks the check leaves out).
    Returns the table with the check's statistics."""
    from mmeff.slimming import lut
    args = run.args
    table = resumable_table(run)  # resume: measure only the missing pieces
    table = lut.build_lut(run.space, args.backend, run.input_size, table=table,
                          threads=args.threads, warmup=args.warmup, reps=args.reps,
                          num_classes=run.num_classes, compute_units=args.compute_units,
                          save_to=run.lut_path)
    print(f'Latency table: {run.lut_path} (measured on {lut.device_of(table)})')
    if not table.get('calibration'):  # kept when a table is only completed
        table = lut.calibrate(table, run.space)
        lut.save(table, run.lut_path)
    cal = table['calibration']
    print(f"Calibration: {cal['num_networks']} whole networks ran at {min(cal['ratios']):.3f}x to "
          f"{max(cal['ratios']):.3f}x the sum of their pieces; predictions are scaled by the "
          f"median, {cal['scale']:.3f} (the accuracy check leaves these networks out)")
    resume = _unfinished_check(run.lut_check_path)
    if resume:
        print(f"Resuming the accuracy check in {run.lut_check_path} "
              f"({len(resume.get('networks', []))} networks measured)")
    check = lut.lut_accuracy(table, run.space, n=LUT_CHECK_NETWORKS, seed=0, resume=resume,
                             on_network=lambda c: _write_json_atomic(c, run.lut_check_path))
    _write_json_atomic(check, run.lut_check_path)
    table = lut.with_accuracy(table, check, run.lut_check_path)
    lut.save(table, run.lut_path)
    _print_lut_check(run, check)
    return table


def _print_lut_check(run: SlimRun, check: dict) -> None:
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


# ---------------------------------------------------------------------------- search
def search(run: SlimRun) -> dict:
    """Greedy slimming over the run's budgets; writes ``search_<backend>/trajectory.*`` and
    ``importance.json``; returns the trajectory."""
    from mmeff.slimming.calib import (accuracy_estimator, calibration_batches,
                                      validation_loader, validation_record)
    from mmeff.slimming.report import write_json, write_report
    from mmeff.slimming.search import greedy_slim
    from mmeff.slimming.supernet import importance
    if not run.budgets:
        raise ValueError('--phase search needs --budgets (ms on --backend, or fractions such '
                         'as 0.8x)')
    table = run.load_table()
    budgets_ms, labels, reference, predict = _resolve(run, table)  # before anything slow
    checkpoint = run.supernet_checkpoint()
    supernet = dict(path=osp.abspath(checkpoint), sha256=file_sha256(checkpoint))
    model = run.load_model(checkpoint)
    scores = importance(model)
    calib, calib_record = calibration_batches(run.cfg, run.calib_batches())
    val_loader = validation_loader(run.cfg)
    trajectory = greedy_slim(
        run.space, run.space.max_choices(), scores, predict_latency=predict,
        estimate_accuracy=accuracy_estimator(model, calib, val_loader, run.args.eval_batches),
        budgets=budgets_ms, labels=labels)
    trajectory['meta'] = dict(
        backend=run.args.backend, input_size=run.input_size, config=run.config,
        supernet=supernet, latency_table=run.table_identity(table),
        budgets=dict(given=[b.text for b in run.budgets], relative_to=run.relative_to,
                     **({'reference_ms': reference['latency_ms']} if reference else {})),
        calibration=calib_record,
        validation=validation_record(run.cfg, val_loader, run.args.eval_batches))
    if osp.isfile(run.lut_check_path):
        with open(run.lut_check_path) as f:
            check = json.load(f)
        trajectory['lut_accuracy'] = dict(
            networks=len(check['networks']), file=run.lut_check_path,
            **{k: v for k, v in check.items()
               if 'rel_err' in k or k.startswith(('within_', 'noise_')) or k == 'rmse_ms'})
    write_json(scores, osp.join(run.search_dir, 'importance.json'))
    paths = write_report(trajectory, run.search_dir)
    if reference:
        print(f"Relative budgets: of the {reference['name']}'s predicted "
              f"{reference['latency_ms']:.3f} ms")
    for r in trajectory['results']:
        print(f"{_budget_text(r)}: {r['arch']} (predicted {r['latency_ms']:.3f} ms, "
              f"accuracy estimate {r['accuracy']:.2f})")
    print(f"Wrote {paths['json']}, {paths['markdown']} and {paths['plot']}")
    return trajectory


def _budget_text(result: dict) -> str:
    given, ms = result.get('budget'), f"{result['budget_ms']:g}"
    return f'{ms} ms' if given in (None, ms) else f'{given} ({ms} ms)'


# ---------------------------------------------------------------------------- export
def check_trajectory(run: SlimRun, trajectory: dict, table: dict) -> dict:
    """Refuse to export from a trajectory that the work dir no longer matches: other budgets,
    another input size, a rebuilt latency table, a newer supernet checkpoint. Returns the
    trajectory's ``meta``."""
    path = run.trajectory_path
    again = 'run --phase search again (its budgets: --budgets {})'
    meta = trajectory.get('meta')
    needed = ('supernet', 'latency_table', 'input_size', 'budgets', 'calibration')
    if not isinstance(meta, dict) or any(k not in meta for k in needed) or not isinstance(
            meta.get('supernet'), dict):
        raise ValueError(f'{path} does not record what it was searched with (supernet '
                         f'checkpoint, latency table, input size, images: a trajectory of an '
                         f'older mmeff): run --phase search again')
    given = meta['budgets'].get('given') or [f'{b:g}' for b in trajectory['budgets_ms']]
    again = again.format(' '.join(given))
    if run.budgets:
        asked = sorted(b.text for b in run.budgets)
        if asked != sorted(given) or run.relative_to != meta['budgets'].get('relative_to'):
            raise ValueError(
                f"the search in {path} was for the budgets {' '.join(given)} (relative to "
                f"{meta['budgets'].get('relative_to')}), not {' '.join(asked)} (relative to "
                f"{run.relative_to}): run --phase search --budgets {' '.join(asked)} first (or "
                f'leave --budgets out to export the searched ones)')
    if meta['input_size'] != run.input_size:
        raise ValueError(f"the search in {path} was at input size {meta['input_size']}, this "
                         f'run is at {run.input_size}: give --input-size {meta["input_size"]}, '
                         f'or {again} at {run.input_size}')
    recorded = meta['latency_table']
    now = run.table_identity(table)
    if recorded.get('sha256') != now['sha256']:
        raise ValueError(
            f"the latency table {run.lut_path} changed since the search in {path} (measured "
            f"{recorded.get('date')} on {recorded.get('device')} then, {now['date']} on "
            f"{now['device']} now): its predictions and budgets are not the search's; "
            f'{again}')
    checkpoint = run.supernet_checkpoint()
    then = meta['supernet']
    if osp.abspath(checkpoint) != then.get('path'):
        raise ValueError(
            f"the supernet's last checkpoint is now {checkpoint}, not {then.get('path')} that "
            f'the search in {path} used (the supernet was trained further): the subnets and '
            f'their accuracies would not be those of the report; {again}')
    if file_sha256(checkpoint) != then.get('sha256'):
        raise ValueError(
            f'the supernet checkpoint {checkpoint} changed since the search in {path} (its '
            f'SHA-256 differs): the subnets and their accuracies would not be those of the '
            f'report; {again}')
    if run.args.calib_batches not in (None, meta['calibration'].get('batches')):
        raise ValueError(f"the search in {path} recalibrated BN on "
                         f"{meta['calibration'].get('batches')} batches, not "
                         f'{run.args.calib_batches}: leave --calib-batches out (the export '
                         f'uses the search\'s) or {again}')
    validation = meta.get('validation') or {}
    if run.args.eval_batches not in (None, validation.get('batches')):
        raise ValueError(f"the search in {path} estimated accuracy on "
                         f"{validation.get('batches') or 'all'} validation batches, not "
                         f'{run.args.eval_batches}: leave --eval-batches out or {again}')
    return meta


def export_subnets(run: SlimRun) -> dict:
    """Per budget of the trajectory: the whole subnet with BN recalibrated on the search's
    batches (``subnets/<name>.pth``), its training configs and evaluation config, its top-1
    as exported, and the measured latency of every network; rewrites the report."""
    import itertools

    from mmeff.engine.checkpointing import save_checkpoint_atomic
    from mmeff.models import EfficientFormerClassifier
    from mmeff.slimming import lut
    from mmeff.slimming.calib import (calibration_batches, check_same_images, top1,
                                      validation_loader, validation_record)
    from mmeff.slimming.report import write_configs, write_eval_config, write_report
    from mmeff.slimming.search import load_trajectory
    from mmeff.slimming.supernet import extract_subnet, recalibrate_bn
    if not osp.isfile(run.trajectory_path):
        raise FileNotFoundError(f'no search result {run.trajectory_path}: run --phase search '
                                f'first')
    trajectory = load_trajectory(run.trajectory_path)
    table = run.load_table()
    meta = check_trajectory(run, trajectory, table)
    fix = f'run --phase search again ({run.trajectory_path} was made with the old ones)'
    calib_record = meta['calibration']
    calib, now = calibration_batches(run.cfg, calib_record['batches'], calib_record['seed'])
    check_same_images(calib_record, now, 'calibration', run.trajectory_path, fix)
    eval_batches = (meta.get('validation') or {}).get('batches')
    val_loader = validation_loader(run.cfg)
    check_same_images(meta.get('validation'), validation_record(run.cfg, val_loader,
                                                                eval_batches),
                      'validation', run.trajectory_path, fix)
    checkpoint = meta['supernet']['path']
    model = run.load_model(checkpoint)
    val_cfg = dict(run.cfg.val_dataloader, sampler=dict(type='DefaultSampler', shuffle=False))
    # the test split cut to the search's images where they are fewer than all
    cut = eval_batches if eval_batches is not None and \
        eval_batches * val_loader.batch_size < len(val_loader.dataset) else None
    evaluator = run.cfg.get('val_evaluator', dict(type='Accuracy', topk=(1, 5)))
    for r in trajectory['results']:
        # the BN statistics are shared by every network of the supernet: the subnet's own
        # are estimated, on the search's batches, before its weights are taken
        recalibrate_bn(model, calib, r['choices'])
        state_dict = extract_subnet(model, r['choices'])
        net = EfficientFormerClassifier(backbone=dict(arch=r['arch']),
                                        num_classes=run.num_classes)
        net.load_state_dict(state_dict, strict=True)
        net = net.to(run.args.device).eval()
        r['exported_accuracy'] = top1(lambda x: net(x), itertools.islice(val_loader,
                                                                         eval_batches),
                                      lambda b: net.data_preprocessor(b, False))
        ckpt = osp.join(run.search_dir, 'subnets', f"{r['name']}.pth")
        os.makedirs(osp.dirname(ckpt), exist_ok=True)
        save_checkpoint_atomic(
            dict(state_dict=state_dict,
                 meta=dict(arch=r['arch'], space=trajectory['space'], budget=r.get('budget'),
                           budget_ms=r['budget_ms'], backend=run.args.backend,
                           num_classes=run.num_classes, source=checkpoint,
                           source_sha256=meta['supernet']['sha256'],
                           accuracy=r['exported_accuracy'])), ckpt)
        r['checkpoint'] = ckpt
        r['configs'] = write_configs(r, osp.join(run.search_dir, 'configs'), ckpt,
                                     meta=dict(backend=run.args.backend))
        r['eval_config'] = write_eval_config(
            r, osp.join(run.search_dir, 'configs'), ckpt, run.num_classes, val_cfg, evaluator,
            cut, meta['validation'].get('images'))
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
        r['over_budget'] = m['median_ms'] is not None and m['median_ms'] > r['budget_ms']
        if r['step'] in steps:
            steps[r['step']]['measured_ms'] = m['median_ms']
    paths = write_report(trajectory, run.search_dir)
    _print_export(trajectory, paths)
    return trajectory


def _print_export(trajectory: dict, paths: dict) -> None:
    def measured_text(value):
        return 'not measured' if value is None else f'measured {value:.3f} ms'
    print(f"Full supernet: predicted {trajectory['start']['latency_ms']:.3f} ms, "
          f"{measured_text(trajectory['start']['measured_ms'])}")
    for r in trajectory['results']:
        flag = ' OVER BUDGET' if r['over_budget'] else ''
        print(f"{_budget_text(r)}: predicted {r['latency_ms']:.3f} ms, "
              f"{measured_text(r['measured_ms'])}{flag}; top-1 {r['exported_accuracy']:.2f} "
              f"(search: {r['accuracy']:.2f}); {r['checkpoint']}; "
              + ', '.join(list(r['configs'].values()) + [r['eval_config']]))
    for r in trajectory['results']:
        if r['over_budget']:
            print(f"warning: {r['name']} measured {r['measured_ms']:.3f} ms, over its "
                  f"{r['budget_ms']:g} ms budget (predicted {r['latency_ms']:.3f} ms): the "
                  f'machine is busier than when the table was measured, or the table predicts '
                  f'poorly here; measure on an idle machine, or rebuild the table and search '
                  f'again', file=sys.stderr)
        if abs(r['exported_accuracy'] - r['accuracy']) > 1e-9:
            print(f"warning: the exported {r['name']} scores {r['exported_accuracy']:.4g} "
                  f"top-1, the search estimated {r['accuracy']:.4g} on the same images: "
                  f'numerical differences between the supernet and the classifier changed '
                  f'some predictions', file=sys.stderr)
    print(f"Wrote {paths['markdown']}")


# ---------------------------------------------------------------------------- all phases
def run_phases(run: SlimRun, phases: Sequence[str],
               train_main: Callable[[List[str]], object]) -> None:
    """Run ``phases`` (in :data:`PHASES` order) of ``run``: every argument they use is checked
    first (an hour of supernet training must not end in a budget typo), then each runs under
    the work dir's lock (one slimming run per work dir: two searches or table builds would
    replace each other's results) and the locks it needs itself (:meth:`SlimRun.locked`).
    Under torchrun/srun (``--launcher``) every process trains its share of the supernet; the
    table, the search and the export are rank 0's.

    Args:
        run (SlimRun): the run.
        phases (Sequence[str]): names from :data:`PHASES`.
        train_main (callable): ``tools/train.py``'s ``main`` (see :func:`train_supernet`).
    """
    from mmeff.engine.workdir_lock import global_rank, lock_work_dir
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise ValueError(f'unknown slimming phase(s) {unknown}: choose from {list(PHASES)}')
    phases = [p for p in PHASES if p in phases]
    preflight(run, phases)
    if 'build-lut' in phases:
        resumable_table(run)  # a kept table these settings cannot complete: now, not later
    steps = {'train-supernet': lambda r: train_supernet(r, train_main), 'build-lut': build_lut,
             'search': search, 'export-subnet': export_subnets}
    launcher = getattr(run.args, 'launcher', 'none')
    # train-supernet's tools/train.py also locks supernet/ for itself
    with lock_work_dir(run.work_dir, launcher, activity='slimming run',
                       harm="replace each other's latency tables, trajectories and subnets"):
        for phase in phases:
            if phase != 'train-supernet' and global_rank(launcher) != 0:
                continue
            print(f'== {phase}')
            with run.locked(phase):
                steps[phase](run)


__all__ = ['PHASES', 'SlimRun', 'file_sha256', 'preflight', 'supernet_train_argv',
           'train_supernet', 'resumable_table', 'build_lut', 'search', 'check_trajectory',
           'export_subnets', 'run_phases']
