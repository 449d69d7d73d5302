"""Latency-driven slimming (paper, section 4): search space, supernet, latency lookup table and
the greedy slimming search that yields EfficientFormer variants for latency budgets.

Modules (data in, data out; the expensive steps are resumable):

* ``space``: :class:`SearchSpace` (width candidates, block positions, MB3D stages), choice
  dicts ``dict(blocks=[[...'mb4d'|'mb3d'|'id' per position] per stage], width_idx=[...])`` and
  their :class:`~mmeff.models.EfficientFormer` arch dicts.
* ``supernet``: the weight-sharing supernet trained with Gumbel-softmax MetaPaths and
  slimmable widths (sandwich rule, mixup/cutmix and hard distillation, ``--amp``); importance
  scores; subnet extraction with inherited weights.
* ``wrapper``: ``SupernetDDP``, the model wrapper that trains it on several processes
  (``tools/dist_train.sh``, ``tools/slurm_train.sh``, ``tools/slim.py --launcher``);
  ``hooks``: temperature annealing and the run state (sampler, random states, process count)
  that makes ``--resume`` bit-exact.
* ``lut``: per-piece latency tables measured on a named backend, prediction and its accuracy.
* ``search``: the greedy slimming trajectory over the budgets; ``report``: its outputs.
* ``budgets``: absolute (ms) and relative (``0.8x``) budgets, resolved against a table;
  ``calib``: the seeded calibration batches shared by every accuracy estimate and the export;
  ``run``: the work-dir layout and the phases behind ``tools/slim.py`` (locks, the identities a
  trajectory records, subnet export and evaluation configs).
"""
from .space import CHOICES, SearchSpace, default_space, get_space  # noqa: F401
