"""Cost of latency-driven slimming at ImageNet scale: the supernet's training step and one search
candidate's accuracy estimate, timed.

    python tools/benchmark_supernet.py [--device cpu|cuda] [--amp [on|both]]
        [--batch-size 128] [--input-size 224] [--warmup 2] [--reps 5]
        [--calib-batches 4] [--eval-batches 8] [--space l7space] [--no-recipe]
        [--threads N] [--out-dir benchmarks/]

What is timed, on synthetic random images (timing does not depend on the pixels):

* ``train_step``: one sandwich step of ``SlimmingSupernet`` as configs/slimming/
  supernet_l7space_in1k.py trains it, per process: mixup/cutmix and one pass of a
  RegNetY-16GF teacher (random weights) on the batch, three sampled passes (largest, smallest,
  random width) each back-propagated, one AdamW step of the weights and one Adam step of the
  architecture logits (``--no-recipe``: without mixup and teacher). No data loading and, on
  one process, no gradient all-reduce.
* ``estimate``: what the search runs for every candidate (``mmeff.slimming.calib``): BN
  recalibration of the network on ``--calib-batches`` batches, then top-1 over
  ``--eval-batches`` validation batches; the candidate is the largest network of the space,
  the search's first and dearest one.

``--amp``: mixed precision as ``tools/train.py --amp`` trains the supernet (fp16 with one loss
scaler on a GPU, bf16 autocast on a CPU); ``--amp both`` times fp32 and AMP side by side, their
repetitions interleaved. The 100-epoch ImageNet-1K cost is extrapolated from the step time
(labelled as such in the outputs).

Writes ``supernet_<device>_<size>px_b<batch>.json`` and ``.md`` to ``--out-dir``.

Needs torch, mmengine and timm; not mmdet, mmseg or mmcv's compiled ops (if even mmcv's Python
part is missing, the two layer builders the model uses are provided from torch.nn).
"""
import argparse
import importlib.util
import os
import os.path as osp
import sys
import types

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

IMAGENET_TRAIN_IMAGES = 1281167
IMAGENET_VAL_IMAGES = 50000
SCHEMA = 'mmeff.benchmark.supernet/1'


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description='Time the slimming supernet training step and one search candidate\'s '
                    'accuracy estimate', formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    p.add_argument('--amp', nargs='?', const='on', default='off', choices=('off', 'on', 'both'),
                   help='mixed precision: off, on (--amp alone) or both side by side')
    p.add_argument('--batch-size', type=int, default=128, help='images per process and step')
    p.add_argument('--input-size', type=int, default=224, help='square input size')
    p.add_argument('--warmup', type=int, default=2, help='untimed calls of each function')
    p.add_argument('--reps', type=int, default=5, help='timed calls of each function')
    p.add_argument('--calib-batches', type=int, default=4,
                   help='BN recalibration batches per estimate (tools/slim.py default)')
    p.add_argument('--eval-batches', type=int, default=8, help='validation batches per estimate')
    p.add_argument('--space', default='l7space', help='search space name')
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--no-recipe', action='store_true',
                   help='train step without mixup/cutmix and without the teacher pass')
    p.add_argument('--teacher', default='regnety_160', help='timm name of the teacher')
    p.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out-dir', default='benchmarks', help='where the JSON and Markdown go')
    args = p.parse_args(argv)
    for name in ('batch_size', 'input_size', 'reps', 'calib_batches', 'eval_batches',
                 'num_classes'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.warmup < 0:
        p.error(f'--warmup must be >= 0, got {args.warmup}')
    if args.input_size % 32:
        p.error(f'--input-size must be a multiple of 32 (the network\'s stride), got '
                f'{args.input_size}')
    if args.threads is not None and args.threads < 1:
        p.error(f'--threads must be >= 1, got {args.threads}')
    return args


def _light_imports() -> list:
    """Let ``mmeff.slimming`` import where only torch, mmengine and timm are installed.

    mmeff's layers build their norms and activations with ``mmcv.cnn``'s builders (pure Python,
    no compiled op), and ``mmeff.models`` checks that ``pkg_resources`` imports (mmengine needs
    it for ``mmdet::`` config bases, which nothing here reads). Where either is missing, a
    minimal stand-in is registered for this process only. Returns what was stood in for."""
    import torch.nn as nn
    stood_in = []
    if importlib.util.find_spec('mmcv') is None:
        norms = {'BN': nn.BatchNorm2d, 'BN2d': nn.BatchNorm2d, 'SyncBN': nn.BatchNorm2d,
                 'LN': nn.LayerNorm, 'GN': nn.GroupNorm}

        def build_norm_layer(cfg, num_features, postfix=''):
            cfg = dict(cfg)
            kind = cfg.pop('type')
            cfg.pop('requires_grad', None)
            if kind == 'GN':
                return f'gn{postfix}', nn.GroupNorm(num_channels=num_features, **cfg)
            return f'{kind.lower()}{postfix}', norms[kind](num_features, **cfg)

        def build_activation_layer(cfg):
            cfg = dict(cfg)
            return getattr(nn, cfg.pop('type'))(**cfg)

        mmcv = types.ModuleType('mmcv')
        mmcv.__path__ = []
        cnn = types.ModuleType('mmcv.cnn')
        cnn.build_norm_layer, cnn.build_activation_layer = build_norm_layer, build_activation_layer
        mmcv.cnn = cnn
        sys.modules.update({'mmcv': mmcv, 'mmcv.cnn': cnn})
        stood_in.append('mmcv.cnn norm/activation builders (mmcv not installed)')
    if importlib.util.find_spec('pkg_resources') is None:
        sys.modules['pkg_resources'] = types.ModuleType('pkg_resources')
        stood_in.append('pkg_resources (setuptools without it; unused here)')
    return stood_in


def _batch(n, size, num_classes, device, generator):
    import torch
    from mmengine.structures import BaseDataElement
    x = torch.randn(n, 3, size, size, generator=generator).to(device)
    y = torch.randint(0, num_classes, (n,), generator=generator)
    return dict(inputs=x, data_samples=[BaseDataElement(gt_label=int(v)) for v in y])


def build(args, amp: bool, device, teacher):
    """A supernet with its two optimisers as configs/slimming/supernet_l7space_in1k.py builds
    them (``amp``: as --amp on this device)."""
    from mmengine.optim import build_optim_wrapper

    from mmeff.slimming.supernet import SlimmingSupernet
    recipe = {} if args.no_recipe else dict(
        mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch'))
    model = SlimmingSupernet(args.space, num_classes=args.num_classes, label_smoothing=0.1,
                             **recipe).to(device)
    if teacher is not None:
        model.set_teacher(teacher, 'hard', alpha=0.5, tau=1.0)
    top = {}
    if amp:
        top = (dict(type='AmpOptimWrapper', loss_scale='dynamic') if device.type == 'cuda'
               else dict(type='mmeff.BF16AutocastOptimWrapper'))
    optim = build_optim_wrapper(model, dict(
        constructor='SupernetOptimWrapperConstructor', **top,
        weights=dict(optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                    weight_decay=0.025),
                     paramwise_cfg=dict(flat_decay_mult=0.)),
        arch=dict(optimizer=dict(type='Adam', lr=3e-4, betas=(0.5, 0.999), weight_decay=0.))))
    return model, optim


def measure(args) -> dict:
    stood_in = _light_imports()
    import contextlib

    import torch

    import mmeff.models  # noqa: F401  (registers the models and optimiser constructors)
    from mmeff.benchmark.latency import machine_info, summarize, time_interleaved
    from mmeff.engine.optim_wrappers import cpu_bf16_supported
    from mmeff.slimming.calib import accuracy_estimator
    from mmeff.slimming.supernet import SupernetOptimWrapperConstructor  # noqa: F401

    from mmengine.logging import MMLogger
    # mmengine logs every parameter's decay setting (thousands of lines) when it builds them
    MMLogger.get_instance('mmeff_benchmark_supernet', log_level='WARNING')
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device cuda: torch sees no GPU here (torch.cuda.is_available() is '
                         'False); use --device cpu')
    precisions = {'off': ['fp32'], 'on': ['amp'], 'both': ['fp32', 'amp']}[args.amp]
    if 'amp' in precisions and args.device == 'cpu' and not cpu_bf16_supported():
        raise ValueError('--amp on a CPU needs bf16 support (AVX512 or newer; this CPU lacks '
                         'it, so bf16 would be emulated, slower than fp32): run without --amp')
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    teacher = None
    if not args.no_recipe:
        import timm
        teacher = timm.create_model(args.teacher, pretrained=False,
                                    num_classes=args.num_classes).to(device).eval()
        teacher.requires_grad_(False)

    train_batch = _batch(args.batch_size, args.input_size, args.num_classes, device, gen)
    calib = [_batch(args.batch_size, args.input_size, args.num_classes, device, gen)
             for _ in range(args.calib_batches)]
    val = [_batch(args.batch_size, args.input_size, args.num_classes, device, gen)
           for _ in range(args.eval_batches)]
    sync = torch.cuda.synchronize if device.type == 'cuda' else None

    steps, estimates, memory, params = {}, {}, {}, None
    for prec in precisions:
        model, optim = build(args, prec == 'amp', device, teacher)
        params = sum(p.numel() for p in model.parameters())
        autocast = (contextlib.nullcontext() if prec == 'fp32' else torch.autocast(
            device.type, dtype=torch.float16 if device.type == 'cuda' else torch.bfloat16))
        estimate = accuracy_estimator(model, calib, val, args.eval_batches)
        choices = model.space.max_choices()

        def step(model=model, optim=optim):
            model.train()
            return model.train_step(train_batch, optim)

        def est(estimate=estimate, choices=choices, autocast=autocast):
            with autocast:
                return estimate(choices)

        steps[prec], estimates[prec] = step, est
        if device.type == 'cuda':  # peak memory of one call of each, alone
            for name, fn in (('train_step', step), ('estimate', est)):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                fn()
                torch.cuda.synchronize()
                memory[f'{name}_{prec}'] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        losses = step()
        if not all(torch.isfinite(v).all() for v in losses.values()):
            raise RuntimeError(f'the {prec} training step gave non-finite losses: {losses}')

    times = time_interleaved({f'train_step_{p}': f for p, f in steps.items()},
                             args.warmup, args.reps, sync)
    times.update(time_interleaved({f'estimate_{p}': f for p, f in estimates.items()},
                                  args.warmup, args.reps, sync))
    rows = {}
    for name, t in times.items():
        kind, prec = name.rsplit('_', 1)
        images = args.batch_size if kind == 'train_step' else \
            args.batch_size * (args.calib_batches + args.eval_batches)
        row = summarize(t, images)
        row.update(kind=kind, precision=prec, images_per_call=images)
        if name in memory:
            row['peak_memory_gib'] = memory[name]
        if kind == 'train_step':
            # Compute only: steps x step time, no data loading, no all-reduce; the same total
            # on N processes of this batch each (perfect scaling assumed).
            hours = IMAGENET_TRAIN_IMAGES / args.batch_size * 100 * row['median_ms'] / 3.6e6
            row['extrapolated_100_epochs_device_hours'] = round(hours, 2)
        else:
            # Recalibration batches as timed, the whole ImageNet validation split evaluated.
            per_img = row['median_ms'] / images
            row['extrapolated_full_val_estimate_s'] = round(
                per_img * (args.batch_size * args.calib_batches + IMAGENET_VAL_IMAGES) / 1e3, 1)
        rows[name] = row
    info = machine_info(args.device, args.threads)
    return dict(schema=SCHEMA, machine=info, settings=dict(
        space=args.space, params=params, batch_size=args.batch_size,
        input_size=args.input_size, warmup=args.warmup, reps=args.reps,
        calib_batches=args.calib_batches, eval_batches=args.eval_batches,
        recipe=None if args.no_recipe else dict(mixup='mixup 0.8 / cutmix 1.0',
                                                teacher=args.teacher),
        amp=('fp16 + one dynamic loss scaler' if args.device == 'cuda'
             else 'bf16 autocast') if 'amp' in precisions else None,
        data='synthetic random images on the device (no data loading)',
        stand_ins=stood_in), results=rows)


def to_markdown(result: dict) -> str:
    m, s = result['machine'], result['settings']
    where = f"GPU: {m['gpu']}" if m.get('gpu') else \
        f"CPU: {m['cpu']}, {m['torch_threads']} threads"
    recipe = 'no mixup, no teacher' if s['recipe'] is None else \
        f"{s['recipe']['mixup']}, {s['recipe']['teacher']} teacher pass (random weights)"
    lines = [
        f"# Slimming supernet cost: {s['space']} ({s['params'] / 1e6:.1f} M parameters)",
        '',
        f"{where}; torch {m['torch']}, timm {m['timm']}, Python {m['python']}; {m['date']}.",
        f"Batch {s['batch_size']} per process at {s['input_size']}x{s['input_size']}, "
        f"{s['warmup']} warm-up + {s['reps']} timed calls each (median); {s['data']}.",
        f"Training step: the sandwich (3 sampled passes, each back-propagated), {recipe}, "
        f"AdamW on the weights + Adam on the architecture logits; one process (no all-reduce).",
        f"Estimate: BN recalibration on {s['calib_batches']} batches + top-1 over "
        f"{s['eval_batches']} batches, the largest network of the space.",
        '',
        '| what | precision | median ms | images/s | peak GiB | extrapolated (not measured) |',
        '|---|---|---:|---:|---:|---|',
    ]
    for row in result['results'].values():
        if row['kind'] == 'train_step':
            extra = (f"100 epochs of ImageNet-1K: {row['extrapolated_100_epochs_device_hours']:.1f}"
                     f" device-hours (compute only)")
        else:
            extra = (f"with all 50,000 val images: {row['extrapolated_full_val_estimate_s']:.0f}"
                     f" s per candidate")
        prec = row['precision'] if row['precision'] == 'fp32' else f"AMP ({s['amp']})"
        lines.append(f"| {row['kind']} | {prec} | {row['median_ms']:.1f} | "
                     f"{row['throughput_img_s']:.1f} | {row.get('peak_memory_gib', '-')} | "
                     f"{extra} |")
    if s['stand_ins']:
        lines += ['', 'Stand-ins: ' + '; '.join(s['stand_ins']) + '.']
    return '\n'.join(lines) + '\n'


def main(argv=None):
    args = parse_args(argv)
    result = measure(args)
    import json

    from mmeff.engine.checkpointing import write_file_atomic
    os.makedirs(args.out_dir, exist_ok=True)
    stem = osp.join(args.out_dir, f'supernet_{args.device}_{args.input_size}px_b{args.batch_size}'
                    + ('' if args.amp == 'off' else f'_amp-{args.amp}'))

    def write_text(text):
        def write(tmp):
            with open(tmp, 'w') as f:
                f.write(text)
        return write

    write_file_atomic(stem + '.json', write_text(json.dumps(result, indent=2) + '\n'))
    markdown = to_markdown(result)
    write_file_atomic(stem + '.md', write_text(markdown))
    print(markdown)
    print(f'Wrote {stem}.json and {stem}.md')


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
