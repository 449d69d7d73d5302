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
classifier of configs/classification. The file is written atomically.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    from mmeff.converters import (LAYOUTS, arch_name, convert_state_dict, detect_layout,
                                  family_name, load_checkpoint_file, save_checkpoint_atomic)
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
        from mmeff.converters.timm_hub import WeightsDownloadError, load_timm_pretrained
        try:
            sd = load_timm_pretrained(args.timm, args.timm_file)
        except WeightsDownloadError as exc:  # say how to pass the file with this tool
            raise WeightsDownloadError(exc.name, exc.page, exc.reason,
                                       how='pass it with --timm-file PATH') from None
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
    save_checkpoint_atomic({'state_dict': out, 'meta': meta}, args.dst)
    n_bb = sum(k.startswith('backbone.') for k in out)
    print(f'{source or args.src} ({layout} layout, arch {arch}, {family}) -> {args.dst}: '
          f'{n_bb} backbone tensors'
          + (f', head parts {heads}' if heads else ', no classifier head'))
    return out


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
