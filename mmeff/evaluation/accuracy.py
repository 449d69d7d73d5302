"""Top-k classification accuracy for mmengine's evaluator (ImageNet top-1/top-5)."""
from typing import Optional, Sequence, Union

import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from mmeff.registry import METRICS


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-k accuracy in percent, reported as ``accuracy/top1``, ``accuracy/top5``...

    Each data sample needs ``pred_score`` (class scores) and ``gt_label`` (what
    ``EfficientFormerClassifier.predict`` and ``PackClsInputs`` give). With fewer classes than
    ``k``, top-k is computed over all classes (so it is 100) and a warning says so.

    Args:
        topk (int | Sequence[int]): Which k to report. Defaults to ``(1, 5)``.
        collect_device (str): ``'cpu'`` or ``'gpu'``, where results are gathered across
            processes. Defaults to ``'cpu'``.
        prefix (str | None): Metric name prefix. Defaults to ``'accuracy'``.
    """

    default_prefix = 'accuracy'

    def __init__(self, topk: Union[int, Sequence[int]] = (1, 5), collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        topk = (topk,) if isinstance(topk, int) else tuple(topk)
        if not topk or not all(isinstance(k, int) and k >= 1 for k in topk):
            raise ValueError(f'topk must be positive ints, got {topk!r}')
        self.topk = topk
        self._warned = False

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        if not data_samples:
            return
        missing = [k for k in ('pred_score', 'gt_label') if k not in data_samples[0]]
        if missing:
            raise KeyError(f'Accuracy needs pred_score and gt_label in every data sample; '
                           f'missing {missing} (has {sorted(data_samples[0])})')
        scores = torch.stack([torch.as_tensor(s['pred_score']) for s in data_samples]).cpu()
        labels = torch.stack([torch.as_tensor(s['gt_label']).reshape(())
                              for s in data_samples]).cpu()
        num_classes = scores.shape[1]
        maxk = min(max(self.topk), num_classes)
        if max(self.topk) > num_classes and not self._warned:
            print_log(f'Accuracy: top-{max(self.topk)} asked with only {num_classes} classes: '
                      f'top-k uses k={num_classes}', logger='current', level=30)
            self._warned = True
        pred = scores.topk(maxk, dim=1).indices
        hit = pred == labels[:, None]
        for row in hit:
            # One result per sample: BaseMetric drops the duplicates a distributed sampler pads.
            self.results.append({k: bool(row[:min(k, num_classes)].any()) for k in self.topk})

    def compute_metrics(self, results: list) -> dict:
        n = len(results)
        return {f'top{k}': 100. * sum(r[k] for r in results) / n for k in self.topk}
