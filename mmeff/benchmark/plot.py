"""Accuracy vs latency plot in the style of the paper's Figure 1.

The paper plots ImageNet-1K top-1 against iPhone 12 (Core ML) latency. Here the paper's
points (every registered family's: EfficientFormer L1/L3/L7, EfficientFormerV2 S0/S1/S2/L (V2
paper, authors' README), from ``mmeff.models.families``, one line per family in the family's
colour, and MobileNetV2 x1.0) are drawn together with
any measured latencies from results files (``mmeff.benchmark.latency`` JSON, written by
``tools/benchmark_latency.py`` or ``tools/coreml_latency.py``). A measured point is placed at the
paper's top-1 of its arch: the benchmarks time randomly initialised models, so only their
latency is measured; the legend says on which device and runtime. The latency axis is
logarithmic because desktop-CPU figures are tens of times the iPhone's.
"""
from typing import Dict, List, Optional, Sequence, Tuple

from .complexity import display_name
from .latency import device_label, load_results

# The paper's reference in the same setting (Table 1): MobileNetV2 x1.0.
PAPER_BASELINES = {'MobileNetV2 x1.0': dict(top1=71.8, iphone12_ms=1.7)}


def paper_lines() -> List[Tuple[str, str, Tuple[str, ...]]]:
    """One paper line per registered family: ``(legend name, colour, archs with figures)``."""
    from mmeff.models.families import FAMILIES
    return [(f.name, f.colour, tuple(f.paper)) for f in FAMILIES.values() if f.paper]


def _paper() -> Dict[str, dict]:
    from .complexity import PAPER
    return PAPER


def measured_series(results: Sequence[dict], input_size=(224, 224), batch_size: int = 1
                    ) -> Dict[str, List[Tuple[str, float]]]:
    """``{label: [(arch, median_ms), ...]}`` of the ok rows at ``input_size``/``batch_size``."""
    from mmeff.models.families import FAMILIES, family_of_arch
    first = next(iter(FAMILIES.values()))
    paper = _paper()
    series: Dict[str, List[Tuple[str, float]]] = {}
    for result in results:
        where = device_label(result['machine'])
        for row in result['results']:
            if (row.get('status') != 'ok' or row['arch'] not in paper
                    or list(row['input_size']) != list(input_size)
                    or row['batch_size'] != batch_size):
                continue
            label = f"{row['runtime']}, {row.get('task', 'classifier')} ({where})"
            family = family_of_arch(row['arch'])
            if family is not first:  # a line per family, as the paper points
                label = f'{family.name}: {label}'
            series.setdefault(label, []).append((row['arch'], row['median_ms']))
    for points in series.values():
        points.sort(key=lambda p: paper[p[0]]['top1'])
    return series


def plot_accuracy_latency(results_paths: Sequence[str], out_path: str,
                          input_size=(224, 224), batch_size: int = 1,
                          title: Optional[str] = None) -> str:
    """Draw the paper's points and the measured ones into ``out_path`` (PNG); returns it.

    Args:
        results_paths (Sequence[str]): Results JSON files (may be empty: paper points only).
        out_path (str): The PNG to write.
        input_size (tuple[int, int]): Which measured rows to use. Defaults to 224x224, the
            paper's setting.
        batch_size (int): Which measured rows to use. Defaults to 1.
        title (str | None): Figure title.
    """
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError('plotting needs matplotlib: pip install matplotlib') from exc
    import os
    results = [load_results(p) for p in results_paths]
    series = measured_series(results, input_size, batch_size)
    paper = _paper()

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    archs = sorted(paper, key=lambda a: paper[a]['top1'])
    for family, colour, members in paper_lines():
        members = sorted(members, key=lambda a: paper[a]['top1'])
        xs = [paper[a]['iphone12_ms'] for a in members]
        ys = [paper[a]['top1'] for a in members]
        ax.plot(xs, ys, '-*', color=colour, markersize=12,
                label=f'{family}, iPhone 12 Core ML (paper)')
        for a, x, y in zip(members, xs, ys):
            ax.annotate(display_name(a), (x, y), textcoords='offset points', xytext=(6, -12),
                        color=colour, fontsize=9)
    for name, p in PAPER_BASELINES.items():
        ax.plot([p['iphone12_ms']], [p['top1']], 'o', color='gray',
                label=f'{name}, iPhone 12 Core ML (paper)')
        ax.annotate(name, (p['iphone12_ms'], p['top1']), textcoords='offset points',
                    xytext=(6, 4), color='gray', fontsize=8)
    markers = 'osD^vP'
    for i, (label, points) in enumerate(sorted(series.items())):
        px = [ms for _, ms in points]
        py = [paper[a]['top1'] for a, _ in points]
        ax.plot(px, py, '--' + markers[i % len(markers)], label=f'{label} (measured)')
    for a in archs:  # measured series sit at the paper's top-1 of their arch
        ax.axhline(paper[a]['top1'], color='crimson', alpha=0.12, lw=0.8)
    ax.set_xscale('log')
    ax.set_xlabel(f'latency per image (ms, log scale), batch {batch_size}, '
                  f'{input_size[0]}x{input_size[1]}')
    ax.set_ylabel('ImageNet-1K top-1 (%) (paper)')
    ax.grid(True, which='both', alpha=0.3)
    ax.set_title(title or 'EfficientFormer V1/V2: accuracy vs latency (cf. paper Figure 1)')
    ax.legend(fontsize=7, loc='lower right')
    fig.text(0.01, 0.005, 'Top-1 is the paper\'s for every point; measured points time '
             'randomly initialised models (latency only). Only the paper\'s points are '
             'iPhone 12 figures.', fontsize=7, color='dimgray')
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
