"""Convert an EfficientFormer (V1 or V2) checkpoint (authors', timm's, mmpretrain's) to mmeff's.

    python tools/convert_checkpoint.py SRC DST [--layout auto|authors|timm|mmpretrain]
    python tools/convert_checkpoint.py --timm NAME [--timm-file FILE] DST

The second form takes timm's published ImageNet weights by name
(``efficientformer_l1.snap_dist_in1k``, ``..._l3...``, ``..._l7...``,
``efficientformerv2_s0.snap_dist_in1k``, ``..._s1/_s2/_l...``): timm downloads them from the
Hugging Face hub (and caches them), or reads them from FILE when the machine is offline.

V1 (L1/L3/L7) and V2 (S0/S1/S2/L, e.g. the authors' ``eformer_s0_450.pth``) are told apart from
the keys; a file that is neither, or mixes both, is refused with a message naming what it
looks like.

DST is an mmengine checkpoint (``{'state_dict': ..., 'meta': ...}``) with ``backbone.*`` keys
(and ``head.*`` when SRC has a classifier head). Use it in detection/segmentation configs with
``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')`` or load it into the
classifier of configs/classification. The file is written beside DST, read back and checked,
then renamed: DST keeps its previous content if anything fails.

Every file is read safely: safetensors through safetensors, anything else with
``torch.load(weights_only=True)``; a file holding other Python objects is refused (unpickling it
could run code) unless you trust it and set ``MMEFF_ALLOW_UNSAFE_LOAD=1``. Offline, ``--timm``
asks the hub once (5 s) and then only looks in the Hugging Face cache (``HF_HUB_OFFLINE=1``
skips the question).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_checked(state_dict: dict, meta: dict, dst: str) -> None:
    """Write ``{'state_dict', 'meta'}`` to a temporary file beside ``dst``, read it back (as
    every reader of it will: weights only) and check that it holds those tensors, then rename
    it to ``dst``: ``dst`` keeps its previous content on any failure or kill."""
    import torch

    from mmeff.checkpoint import CheckpointError, read_checkpoint_file
    from mmeff.engine.checkpointing import write_file_atomic
    dst = os.path.abspath(os.path.expanduser(dst))
    os.makedirs(os.path.dirname(dst), exist_ok=True)

    def write(tmp):
        torch.save({'state_dict': state_dict, 'meta': meta}, tmp)
        back = read_checkpoint_file(tmp)['state_dict']
        if list(back) != list(state_dict) or any(
                not torch.equal(back[k], v) for k, v in state_dict.items()):
            raise CheckpointError(f'the converted checkpoint read back from {tmp!r} differs '
                                  f'from what was written; {dst!r} was not replaced')
    write_file_atomic(dst, write)


def main(argv=None):
    from mmeff.converters import (LAYOUTS, arch_name, convert_state_dict, detect_layout,
                                  family_name, load_checkpoint_file)
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', nargs='?',
                        help='source checkpoint (.pth/.pth.tar/.bin); omit with --timm')
    parser.add_argument('dst', help='where to write the mmeff checkpoint')
    parser.add_argument('--layout', default='auto', choices=('auto',) + LAYOUTS,
                        help='source layout (default: detect)')
    parser.add_argument('--timm', metavar='NAME',
                        help="timm's pretrained weights instead of SRC, e.g. "
                             'efficientformer_l1.snap_dist_in1k or efficientformerv2_s0 '
                             '(downloaded by timm)')
    parser.add_argument('--timm-file', metavar='FILE',
                        help='with --timm: read the weights from this local file (the hub '
                             "repo's model.safetensors) instead of downloading them")
    args = parser.parse_args(argv)
    if (args.src is None) == (args.timm is None):
        parser.error('give either SRC or --timm NAME (not both)')
    if args.timm_file is not None and args.timm is None:
        parser.error('--timm-file needs --timm NAME (to convert a local file, pass it as SRC)')
    if args.timm is not None and args.layout not in ('auto', 'timm'):
        parser.error(f'--timm weights have the timm layout, not {args.layout!r}')

    if args.timm is not None:
        from mmeff.converters.timm_hub import load_timm_pretrained
        sd = load_timm_pretrained(args.timm, args.timm_file, how='pass it with --timm-file PATH')
        source = f'timm:{args.timm}' + (f' ({args.timm_file})' if args.timm_file else '')
        converted_from = (f'timm:{args.timm}' if args.timm_file is None
                          else f'timm:{args.timm}:{os.path.abspath(args.timm_file)}')
    else:
        sd = load_checkpoint_file(args.src)
        source = converted_from = None
    if args.timm is None and args.layout != 'auto':
        detected = detect_layout(sd)
        if detected != args.layout:
            raise SystemExit(f'error: {args.src} looks like a {detected!r} checkpoint, not '
                             f'{args.layout!r}; drop --layout to auto-detect')
    out, layout = convert_state_dict(sd)
    arch, family = arch_name(out), family_name(out)
    heads = sorted({k.split('.')[1] for k in out if k.startswith('head.')})
    meta = dict(converted_from=converted_from or os.path.abspath(args.src),
                source_layout=layout, family=family, arch=arch, has_head=bool(heads))
    write_checked(out, meta, args.dst)
    n_bb = sum(k.startswith('backbone.') for k in out)
    print(f'{source or args.src} ({layout} layout, arch {arch}, {family}) -> {args.dst}: '
          f'{n_bb} backbone tensors'
          + (f', head parts {heads}' if heads else ', no classifier head'))
    return out


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
