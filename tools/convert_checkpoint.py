"""Convert an EfficientFormer checkpoint (authors', timm's, mmpretrain's) to mmeff's layout.

    python tools/convert_checkpoint.py SRC DST [--layout auto|authors|timm|mmpretrain]

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
    from mmeff.converters import (CONVERTERS, LAYOUTS, arch_name, convert_state_dict,
                                  detect_layout, load_checkpoint_file, save_checkpoint_atomic)
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='source checkpoint (.pth/.pth.tar/.bin)')
    parser.add_argument('dst', help='where to write the mmeff checkpoint')
    parser.add_argument('--layout', default='auto', choices=('auto',) + LAYOUTS,
                        help='source layout (default: detect)')
    args = parser.parse_args(argv)

    sd = load_checkpoint_file(args.src)
    if args.layout == 'auto':
        out, layout = convert_state_dict(sd)
    else:
        detected = detect_layout(sd)
        if detected != args.layout:
            raise SystemExit(f'error: {args.src} looks like a {detected!r} checkpoint, not '
                             f'{args.layout!r}; drop --layout to auto-detect')
        out, layout = CONVERTERS[layout](sd), args.layout
    arch = arch_name(out)
    heads = sorted({k.split('.')[1] for k in out if k.startswith('head.')})
    meta = dict(converted_from=os.path.abspath(args.src), source_layout=layout, arch=arch,
                has_head=bool(heads))
    save_checkpoint_atomic({'state_dict': out, 'meta': meta}, args.dst)
    n_bb = sum(k.startswith('backbone.') for k in out)
    print(f'{args.src} ({layout} layout, arch {arch}) -> {args.dst}: {n_bb} backbone tensors'
          + (f', head parts {heads}' if heads else ', no classifier head'))
    return out


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
