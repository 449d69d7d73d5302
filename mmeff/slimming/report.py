"""The outputs of a slimming search: the trajectory as JSON and Markdown, its plot, and per
budget ready-to-train configs.

The trajectory is the plain dict of :func:`mmeff.slimming.search.greedy_slim`. Optional keys
the report shows when present (``tools/slim.py`` adds them):

* ``meta``: a flat dict about the run (backend, latency table, supernet checkpoint, input
  size...), listed as it is;
* ``lut_accuracy``: the latency table's predicted-vs-measured check (``mean_rel_err``,
  ``worst_rel_err``, ``num_networks``...), listed as it is;
* ``measured_ms`` in ``start``, a step or a result: the measured whole-network latency;
* ``checkpoint``, ``configs`` (``{kind: path}``) and ``eval_config`` in a result: what
  :func:`write_configs`, :func:`write_eval_config` and the subnet export wrote for it;
* ``budget`` in a result: the budget as given (``'0.8x'`` for a relative one);
* ``over_budget`` in a result: its measured latency exceeds its budget (flagged);
* ``exported_accuracy`` in a result: the top-1 of the exported subnet on the images of the
  accuracy estimate (shown beside it).

Generated configs are written next to the run's other outputs (``tools/slim.py`` uses
``<work-dir>/configs/``), not into the repository's ``configs/``: they belong to one search
(one backend, one supernet, one checkpoint path), and the repository stays as it was checked
out. Each inherits one of the project's recipes (``RECIPES``): through a relative ``_base_``
when the work dir is inside the project (moving both together keeps them working), else through
an absolute path. Every file is written atomically (a temporary file renamed over the old one:
a failure leaves the previous file as it was).
"""
import json
import os
import os.path as osp
import pprint
from typing import Dict, Optional

from mmeff.engine.checkpointing import write_file_atomic

# The recipes the generated configs inherit, relative to the project's configs/ directory.
RECIPES = dict(
    in1k='classification/effformer_l1_in1k.py',
    mask_rcnn='detection/mask_rcnn_effformer_l1.py',
    fpn='segmentation/fpn_effformer_l1_ade20k_40k.py',
)
CONFIGS_ROOT = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                        'configs')


def _ms(value) -> str:
    return '-' if value is None else f'{value:.3f}'


def _acc(value) -> str:
    return '-' if value is None else f'{value:.4g}'


def _arch(arch: dict) -> str:
    return (f"depths {arch['depths']}, widths {arch['widths']}, num_vit {arch['num_vit']}")


def _value(value) -> str:
    if isinstance(value, dict):
        return ', '.join(f'{k} {_value(v)}' for k, v in value.items())
    return str(value)


def _budget(result: dict) -> str:
    given = result.get('budget')
    ms = f"{result['budget_ms']:g}"
    return ms if given in (None, ms) else f'{given} ({ms})'


def _measured(result: dict) -> str:
    text = _ms(result.get('measured_ms'))
    return f'**{text} (over budget)**' if result.get('over_budget') else text


def trajectory_markdown(trajectory: dict) -> str:
    """The Markdown report: the run, the budgets table (budget -> arch) and every step."""
    space = trajectory['space']
    lines = [f"# Latency-driven slimming of the search space `{space['name']}`", '']
    meta = trajectory.get('meta') or {}
    for key, value in meta.items():
        lines.append(f'- {key}: {_value(value)}')
    start, smallest = trajectory['start'], trajectory['smallest']
    lines += [f"- start (supernet): {_arch(start['arch'])}, predicted "
              f"{_ms(start['latency_ms'])} ms, measured {_ms(start.get('measured_ms'))} ms, "
              f"accuracy estimate {_acc(start['accuracy'])}",
              f"- smallest network of the space: {_arch(smallest['arch'])}, predicted "
              f"{_ms(smallest['latency_ms'])} ms"]
    lut = trajectory.get('lut_accuracy')
    if lut:
        lines.append('- latency table accuracy (predicted vs measured whole networks): '
                     + ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                                 for k, v in lut.items()))
    lines += ['', '## Budgets', '',
              '| budget (ms) | name | step | arch | predicted (ms) | measured (ms) | '
              'accuracy estimate | configs | checkpoint |',
              '|---|---|---|---|---|---|---|---|---|']
    for r in trajectory['results']:
        step = 'start' if r['met_by_start'] else str(r['step'])
        paths = list((r.get('configs') or {}).values()) + (
            [r['eval_config']] if r.get('eval_config') else [])
        configs = ', '.join(f'`{p}`' for p in paths) or '-'
        ckpt = f"`{r['checkpoint']}`" if r.get('checkpoint') else '-'
        exported = (f" (exported: {_acc(r['exported_accuracy'])})"
                    if r.get('exported_accuracy') is not None else '')
        lines.append(f"| {_budget(r)} | {r['name']} | {step} | `{json.dumps(r['arch'])}` "
                     f"| {_ms(r['latency_ms'])} | {_measured(r)} | "
                     f"{_acc(r['accuracy'])}{exported} | {configs} | {ckpt} |")
    over = [r for r in trajectory['results'] if r.get('over_budget')]
    if over:
        lines += ['', '**Measured over budget**: ' + '; '.join(
            f"{r['name']} measured {r['measured_ms']:.3f} ms for a {r['budget_ms']:g} ms "
            f"budget (predicted {r['latency_ms']:.3f} ms)" for r in over)
            + '. The latency table predicts these networks within their budgets, the '
            'measurement beside it does not: the machine was busier than when the table was '
            'measured, or the table predicts poorly here (see its accuracy above). Measure on '
            'an idle machine, or rebuild the table (--phase build-lut, after deleting it) and '
            'search again.']
    if any(r['met_by_start'] for r in trajectory['results']):
        lines += ['', 'A budget at or above the start network\'s predicted latency is met by the '
                  'start network itself (step "start").']
    lines += ['', '## Steps', '',
              'Each step applies the action with the smallest accuracy drop per millisecond '
              'saved among the candidates (actions saving nothing are skipped).', '',
              '| step | action | predicted (ms) | saved (ms) | measured (ms) | accuracy estimate '
              '| drop / ms | candidates (action: saved ms, drop) |',
              '|---|---|---|---|---|---|---|---|',
              f"| 0 | start | {_ms(start['latency_ms'])} | - | {_ms(start.get('measured_ms'))} | "
              f"{_acc(start['accuracy'])} | - | - |"]
    for s in trajectory['steps']:
        cands = '; '.join(f"{c['action']}: {c['saving_ms']:.3f}, {c['accuracy_drop']:.4g}"
                          + (' (skipped)' if c['skipped'] else '') for c in s['candidates'])
        ratio = '-' if s['ratio'] is None else f"{s['ratio']:.4g}"
        note = ' (no action saved latency)' if s.get('no_saving') else ''
        lines.append(f"| {s['step']} | {s['description']}{note} | {_ms(s['latency_ms'])} | "
                     f"{_ms(s['saving_ms'])} | {_ms(s.get('measured_ms'))} | "
                     f"{_acc(s['accuracy'])} | {ratio} | {cands} |")
    return '\n'.join(lines) + '\n'


def plot_trajectory(trajectory: dict, out_path: str, title: Optional[str] = None) -> str:
    """Accuracy estimate vs predicted latency along the trajectory, budgets marked; measured
    latencies, where taken, as hollow markers. Writes ``out_path`` (PNG) and returns it."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError('plotting needs matplotlib: pip install matplotlib') from exc
    points = [trajectory['start']] + list(trajectory['steps'])
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    ax.plot([p['latency_ms'] for p in points], [p['accuracy'] for p in points], '-o',
            color='steelblue', markersize=4, label='trajectory (predicted latency)')
    ax.annotate('start', (points[0]['latency_ms'], points[0]['accuracy']),
                textcoords='offset points', xytext=(6, 4), fontsize=8, color='steelblue')
    measured = [p for p in points if p.get('measured_ms') is not None]
    if measured:
        ax.plot([p['measured_ms'] for p in measured], [p['accuracy'] for p in measured], 'o',
                mfc='none', color='darkorange', label='measured latency')
    for i, r in enumerate(trajectory['results']):
        ax.axvline(r['budget_ms'], color='crimson', ls='--', lw=0.8, alpha=0.6,
                   label='budgets' if i == 0 else None)
        ax.plot([r['latency_ms']], [r['accuracy']], '*', color='crimson', markersize=12,
                label='network per budget' if i == 0 else None)
        ax.annotate(f"{r['budget_ms']:g} ms", (r['latency_ms'], r['accuracy']),
                    textcoords='offset points', xytext=(6, -12), color='crimson', fontsize=8)
    backend = (trajectory.get('meta') or {}).get('backend')
    ax.set_xlabel('latency (ms)' + (f' on {backend}' if backend else '')
                  + ': predicted by the latency table (filled), measured (hollow)')
    ax.set_ylabel('accuracy estimate (inherited supernet weights)')
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"Latency-driven slimming of {trajectory['space']['name']}")
    ax.legend(fontsize=7, loc='best')
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out_path)), exist_ok=True)
    try:
        write_file_atomic(out_path, lambda tmp: fig.savefig(tmp, format='png'))
    finally:
        plt.close(fig)
    return out_path


def write_text(text: str, path: str) -> str:
    """Write ``text`` to ``path`` atomically (see the module docstring); returns ``path``."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(text)
    write_file_atomic(path, write)
    return path


def write_json(data: dict, path: str) -> str:
    """Write ``data`` as indented JSON atomically (never a truncated file)."""
    return write_text(json.dumps(data, indent=1) + '\n', path)


def write_report(trajectory: dict, out_dir: str, stem: str = 'trajectory') -> Dict[str, str]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``; returns the
    paths as ``dict(json=..., markdown=..., plot=...)``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = dict(json=osp.join(out_dir, f'{stem}.json'), markdown=osp.join(out_dir, f'{stem}.md'),
                 plot=osp.join(out_dir, f'{stem}.png'))
    # the plot and the Markdown first: the JSON (what the next phase reads) is replaced last
    plot_trajectory(trajectory, paths['plot'])
    write_text(trajectory_markdown(trajectory), paths['markdown'])
    write_json(trajectory, paths['json'])
    return paths


def config_text(kind: str, result: dict, base: str, checkpoint: str,
                meta: Optional[dict] = None) -> str:
    """The text of one generated config (``kind`` in ``RECIPES``) for a budget's ``result``.

    The arch, widths and checkpoint are written as top-level variables *and* into the entries
    that use them (``model.backbone.arch``, ``init_cfg.checkpoint``, the neck's
    ``in_channels``), as the project's L3/L7 configs do: the recipe's own entries were read with
    L1's values, and ``--cfg-options arch=...`` would change nothing.
    """
    if kind not in RECIPES:
        raise ValueError(f'unknown config kind {kind!r}: use one of {sorted(RECIPES)}')
    arch = result['arch']
    about = ', '.join(f'{k} {v}' for k, v in (meta or {}).items())
    lines = [
        f"# EfficientFormer slimmed to the {result['budget_ms']:g} ms budget by tools/slim.py "
        f"(predicted {result['latency_ms']:.3f} ms,",
        f"# accuracy estimate {result['accuracy']:.4g} with the inherited supernet weights"
        + (f'; {about}' if about else '') + ').',
        f'# The recipe is that of {RECIPES[kind]}; generated, edit freely.',
        f'_base_ = {base!r}',
        '',
    ]
    items = ''.join(f'\n    {k}={v!r},' for k, v in arch.items())
    if kind == 'in1k':
        # _delete_: the recipe's backbone arch is the string 'l1', which a dict cannot update
        lines += [f'arch = dict({items}\n)',
                  "# The subnet's weights inherited from the supernet (mmeff layout, "
                  "`backbone.*` keys).",
                  f'pretrained = {checkpoint!r}',
                  'model = dict(',
                  '    backbone=dict(',
                  '        arch=dict(_delete_=True, **arch),']
    else:
        # _delete_: the recipe's top-level arch is the string 'l1', which a dict cannot update
        lines += [f'arch = dict(\n    _delete_=True,{items}\n)',
                  f"widths = {list(arch['widths'])}  # arch['widths']: the neck's inputs",
                  "# The subnet's weights inherited from the supernet (mmeff layout, "
                  "`backbone.*` keys).",
                  f'pretrained = {checkpoint!r}',
                  'model = dict(',
                  '    backbone=dict(',
                  '        arch=arch,']
    lines.append("        init_cfg=dict(type='Pretrained', checkpoint=pretrained, "
                 "prefix='backbone.')),")
    if kind != 'in1k':
        lines.append('    neck=dict(in_channels=widths),')
    lines.append(')')
    return '\n'.join(lines) + '\n'


def _base_path(recipe_path: str, out_dir: str, configs_root: str) -> str:
    """Relative to ``out_dir`` inside the project (the work dir moves with the repository),
    absolute outside it."""
    project = osp.dirname(osp.abspath(configs_root))
    out = osp.abspath(out_dir)
    if osp.commonpath([project, out]) == project:
        return osp.relpath(osp.abspath(recipe_path), out)
    return osp.abspath(recipe_path)


def write_configs(result: dict, out_dir: str, checkpoint: str, meta: Optional[dict] = None,
                  configs_root: Optional[str] = None) -> Dict[str, str]:
    """Write ``<name>_{in1k,mask_rcnn,fpn}.py`` for a budget's ``result`` into ``out_dir``.

    Args:
        result (dict): One of the trajectory's ``results``.
        out_dir (str): Where the configs go (created).
        checkpoint (str): The subnet checkpoint the configs initialise the backbone from,
            written as given (relative paths are relative to where the tools run).
        meta (dict | None): Shown in the configs' header comment (backend...).
        configs_root (str | None): The project's ``configs/`` directory holding ``RECIPES``.
            Defaults to the one next to the mmeff package.

    Returns:
        dict[str, str]: ``{kind: path}``.
    """
    root = configs_root or CONFIGS_ROOT
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for kind, recipe in RECIPES.items():
        recipe_path = osp.join(root, recipe)
        if not osp.isfile(recipe_path):
            raise FileNotFoundError(f'the recipe {recipe_path} that generated configs inherit '
                                    f'does not exist; pass configs_root= the project\'s configs/')
        base = _base_path(recipe_path, out_dir, root)
        path = osp.join(out_dir, f"{result['name']}_{kind}.py")
        write_text(config_text(kind, result, base, checkpoint, meta), path)
        paths[kind] = path
    return paths


def _plain(value):
    """``value`` as plain dicts, lists and tuples (mmengine's ``ConfigDict`` prints otherwise)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _literal(name: str, value) -> str:
    """``name = <value>`` as Python (plain data: dicts, lists, tuples, strings, numbers)."""
    return f'{name} = {pprint.pformat(value, indent=1, width=96, sort_dicts=False)}'


def eval_config_text(result: dict, base: str, checkpoint: str, num_classes: int,
                     val_dataloader: dict, val_evaluator, eval_batches: Optional[int] = None,
                     images: Optional[int] = None) -> str:
    """The text of a config that evaluates the whole exported subnet of ``result`` (backbone
    and head) with ``tools/test.py <config> <checkpoint>`` on the validation data the search
    estimated its accuracy on.

    Args:
        result (dict): One of the trajectory's ``results``.
        base (str): The ``_base_`` (the classification recipe, ``RECIPES['in1k']``).
        checkpoint (str): The exported subnet (the whole classifier's state dict).
        num_classes (int): Classes of the supernet's head.
        val_dataloader (dict): The run's validation loader, as resolved (plain data: data
            paths given on the command line are kept).
        val_evaluator (dict | list): Its evaluator.
        eval_batches (int | None): The search estimated accuracy on the first
            ``eval_batches`` batches only: the test data is cut to the same (mmengine's
            ``num_batch_per_epoch``). ``None``: all of it.
        images (int | None): How many images that is (shown in the header).
    """
    loader = dict(_delete_=True, **_plain(val_dataloader))
    if eval_batches is not None:
        loader['num_batch_per_epoch'] = int(eval_batches)
    evaluator = _plain(val_evaluator)
    if isinstance(evaluator, dict):
        evaluator = dict(_delete_=True, **evaluator)
    on = f' ({images} images)' if images is not None else ''
    given = result.get('budget') or f"{result['budget_ms']:g}"
    lines = [
        f"# Evaluates the whole EfficientFormer subnet (backbone and head) exported for the "
        f"budget {given}",
        f"# ({result['budget_ms']:g} ms), BN recalibrated on the search's calibration batches, "
        f'on the validation',
        f"# images{on} the search estimated its accuracy on ({result['accuracy']:.4g} top-1):",
        f'#   python tools/test.py <this file> {checkpoint}',
        '# prints that accuracy as accuracy/top1. Generated by tools/slim.py, edit freely.',
        f'_base_ = {base!r}',
        '',
        f'num_classes = {int(num_classes)}',
        'model = dict(',
        '    _delete_=True,',
        "    type='EfficientFormerClassifier',",
        f"    backbone=dict(arch={dict(result['arch'])!r}),",
        '    num_classes=num_classes)',
        "# the run's validation data (its data_root and pipeline)",
        _literal('val_dataloader', loader),
        'test_dataloader = val_dataloader',
        _literal('val_evaluator', evaluator),
        'test_evaluator = val_evaluator',
        '# no EMA hook: the exported weights are evaluated as they are',
        "custom_hooks = [dict(type='ClassNumCheckHook')]",
        f'load_from = {checkpoint!r}',
    ]
    return '\n'.join(lines) + '\n'


def write_eval_config(result: dict, out_dir: str, checkpoint: str, num_classes: int,
                      val_dataloader: dict, val_evaluator, eval_batches: Optional[int] = None,
                      images: Optional[int] = None,
                      configs_root: Optional[str] = None) -> str:
    """Write ``<name>_eval.py`` (:func:`eval_config_text`) into ``out_dir``; returns its path."""
    root = configs_root or CONFIGS_ROOT
    recipe_path = osp.join(root, RECIPES['in1k'])
    if not osp.isfile(recipe_path):
        raise FileNotFoundError(f'the recipe {recipe_path} that generated configs inherit '
                                f"does not exist; pass configs_root= the project's configs/")
    path = osp.join(out_dir, f"{result['name']}_eval.py")
    return write_text(eval_config_text(result, _base_path(recipe_path, out_dir, root),
                                       checkpoint, num_classes, val_dataloader, val_evaluator,
                                       eval_batches, images), path)


__all__ = ['RECIPES', 'trajectory_markdown', 'plot_trajectory', 'write_text', 'write_json',
           'write_report', 'config_text', 'write_configs', 'eval_config_text',
           'write_eval_config']
