"""The search space of latency-driven slimming (paper, section 4): plain data, JSON in and out.

A network of the space is described at two levels:

* **choices** (what the supernet and the search work on): for every block position of every
  stage one of ``'mb4d'``, ``'mb3d'``, ``'id'`` (identity: the position is skipped), and for
  every stage the index of its width in ``widths[stage]``;
* **arch** (what :class:`~mmeff.models.EfficientFormer` takes): ``dict(depths, widths,
  num_vit, mlp_ratios)``, where ``num_vit`` counts the MB3D blocks at the *end of the
  network* (they may spill from the last stage into the one before it).

The dimension-consistent rule makes the two equivalent: there is one 4D -> 3D switch, so all
MB3D blocks come after all MB4D blocks of the network; MB3D is allowed only in
``mb3d_stages`` (stages 3 and 4, indices 2 and 3); if a stage before the last holds an MB3D
block, every real block after it is MB3D too. Every stage keeps at least one real block
(the backbone's outputs at strides 4..32 need every stage).
"""
import copy
import json
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional

CHOICES = ('mb4d', 'mb3d', 'id')


def _width_range(lo: int, hi: int, step: int) -> List[int]:
    return list(range(lo, hi + 1, step))


@dataclass
class SearchSpace:
    """Width candidates and block positions of the supernet.

    Args:
        widths: per stage, the candidate widths in increasing order (the last is the
            supernet's width).
        max_depths: per stage, the number of block positions.
        mb3d_stages: stages whose positions may hold an MB3D block.
        mlp_ratios: MLP expansion ratio per stage.
        name: a label carried into tables, checkpoints and reports.
    """
    widths: List[List[int]]
    max_depths: List[int]
    mb3d_stages: List[int] = field(default_factory=lambda: [2, 3])
    mlp_ratios: List[float] = field(default_factory=lambda: [4, 4, 4, 4])
    name: str = 'custom'

    num_stages = 4

    def __post_init__(self):
        if len(self.widths) != self.num_stages or len(self.max_depths) != self.num_stages:
            raise ValueError(f'a search space needs {self.num_stages} stages of widths and '
                             f'max_depths, got {len(self.widths)} and {len(self.max_depths)}')
        for i, cands in enumerate(self.widths):
            if not cands or list(cands) != sorted(set(cands)) or min(cands) < 8:
                raise ValueError(f'widths[{i}] must be increasing distinct ints >= 8, got {cands}')
        for i, d in enumerate(self.max_depths):
            if not isinstance(d, int) or d < 1:
                raise ValueError(f'max_depths[{i}] must be a positive int, got {d!r}')
        if not set(self.mb3d_stages) <= {2, 3}:
            raise ValueError(f'mb3d_stages must be a subset of [2, 3], got {self.mb3d_stages}')
        self.widths = [list(map(int, w)) for w in self.widths]
        self.max_depths = list(self.max_depths)
        self.mb3d_stages = sorted(self.mb3d_stages)
        self.mlp_ratios = list(self.mlp_ratios)

    # ---------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict:
        return dict(name=self.name, widths=self.widths, max_depths=self.max_depths,
                    mb3d_stages=self.mb3d_stages, mlp_ratios=self.mlp_ratios)

    @classmethod
    def from_dict(cls, d: dict) -> 'SearchSpace':
        known = {'name', 'widths', 'max_depths', 'mb3d_stages', 'mlp_ratios'}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f'unknown search space keys {sorted(unknown)} (known: '
                             f'{sorted(known)})')
        return cls(**copy.deepcopy(d))

    def fingerprint(self) -> str:
        """A stable string identifying the space (stored in supernet checkpoints and tables)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    # ---------------------------------------------------------------- choices
    def positions(self, stage: int) -> List[str]:
        """The choices allowed at every position of ``stage``."""
        return list(CHOICES) if stage in self.mb3d_stages else ['mb4d', 'id']

    def max_choices(self, num_mb3d: Optional[int] = None) -> dict:
        """The largest network: every position real, widest widths, ``num_mb3d`` MB3D blocks at
        the end (default: as many as the last stage has positions)."""
        if num_mb3d is None:
            num_mb3d = self.max_depths[-1] if 3 in self.mb3d_stages else 0
        blocks = [['mb4d'] * d for d in self.max_depths]
        left = num_mb3d
        for s in reversed(range(self.num_stages)):
            for j in reversed(range(self.max_depths[s])):
                if left and s in self.mb3d_stages:
                    blocks[s][j] = 'mb3d'
                    left -= 1
        return dict(blocks=blocks, width_idx=[len(w) - 1 for w in self.widths])

    def validate(self, choices: dict) -> None:
        """Raise ``ValueError`` naming the rule a choice dict breaks."""
        blocks, width_idx = choices.get('blocks'), choices.get('width_idx')
        if blocks is None or width_idx is None or len(blocks) != self.num_stages \
                or len(width_idx) != self.num_stages:
            raise ValueError(f'choices need blocks and width_idx for {self.num_stages} stages, '
                             f'got {choices!r}')
        seen_mb3d = False
        for s in range(self.num_stages):
            if len(blocks[s]) != self.max_depths[s]:
                raise ValueError(f'stage {s} has {self.max_depths[s]} positions, choices give '
                                 f'{len(blocks[s])}')
            if not 0 <= width_idx[s] < len(self.widths[s]):
                raise ValueError(f'width_idx[{s}]={width_idx[s]} outside 0..'
                                 f'{len(self.widths[s]) - 1}')
            for j, c in enumerate(blocks[s]):
                if c not in self.positions(s):
                    raise ValueError(f'stage {s} position {j}: {c!r} not allowed here '
                                     f'(allowed: {self.positions(s)})')
                if c == 'mb3d':
                    seen_mb3d = True
                elif c == 'mb4d' and seen_mb3d:
                    raise ValueError(f'stage {s} position {j}: an MB4D block after an MB3D block '
                                     f'breaks the single 4D->3D switch')
            if all(c == 'id' for c in blocks[s]):
                raise ValueError(f'stage {s} has no real block left (every stage keeps one)')

    def to_arch(self, choices: dict) -> dict:
        """The :class:`~mmeff.models.EfficientFormer` arch dict of a choice dict."""
        self.validate(choices)
        depths = [sum(c != 'id' for c in b) for b in choices['blocks']]
        num_vit = sum(c == 'mb3d' for b in choices['blocks'] for c in b)
        widths = [self.widths[s][i] for s, i in enumerate(choices['width_idx'])]
        return dict(depths=depths, widths=widths, num_vit=num_vit,
                    mlp_ratios=list(self.mlp_ratios))

    def contains_arch(self, arch: dict) -> bool:
        """Whether an arch dict (e.g. L1's) is a network of this space."""
        try:
            self.choices_for_arch(arch)
            return True
        except ValueError:
            return False

    def choices_for_arch(self, arch: dict) -> dict:
        """A choice dict giving ``arch``: real blocks first in each stage, identities after."""
        depths, widths, num_vit = arch['depths'], arch['widths'], arch['num_vit']
        blocks, width_idx = [], []
        for s in range(self.num_stages):
            if widths[s] not in self.widths[s]:
                raise ValueError(f'stage {s} width {widths[s]} is not a candidate '
                                 f'{self.widths[s]}')
            if depths[s] > self.max_depths[s]:
                raise ValueError(f'stage {s} depth {depths[s]} > {self.max_depths[s]} positions')
            width_idx.append(self.widths[s].index(widths[s]))
            blocks.append(['mb4d'] * depths[s] + ['id'] * (self.max_depths[s] - depths[s]))
        left = num_vit
        for s in reversed(range(self.num_stages)):
            for j in reversed(range(depths[s])):
                if left:
                    blocks[s][j] = 'mb3d'
                    left -= 1
        choices = dict(blocks=blocks, width_idx=width_idx)
        self.validate(choices)
        return choices

    def random_choices(self, rng: random.Random) -> dict:
        """A random valid network of the space (uniform depths, widths and MB3D count)."""
        depths = [rng.randint(1, d) for d in self.max_depths]
        width_idx = [rng.randrange(len(w)) for w in self.widths]
        cap = sum(depths[s] for s in self.mb3d_stages if s == 3)
        if 2 in self.mb3d_stages and 3 in self.mb3d_stages:
            cap = depths[2] + depths[3]
        num_vit = rng.randint(0, cap)
        arch = dict(depths=depths, widths=[self.widths[s][i] for s, i in enumerate(width_idx)],
                    num_vit=num_vit)
        return self.choices_for_arch(arch)


def default_space() -> SearchSpace:
    """L7's depths and widths as the maximum, L1's widths at or above the minimum: L1, L3 and
    L7 are networks of this space (checked in tests)."""
    return SearchSpace(
        name='l7space',
        widths=[_width_range(32, 96, 16), _width_range(64, 192, 32),
                _width_range(160, 384, 32), _width_range(320, 768, 64)],
        max_depths=[6, 6, 18, 8])


SPACES: Dict[str, SearchSpace] = {}


def get_space(space) -> SearchSpace:
    """A :class:`SearchSpace` from itself, a dict, or the name ``'l7space'``."""
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, dict):
        return SearchSpace.from_dict(space)
    if space == 'l7space':
        return default_space()
    raise ValueError(f"unknown search space {space!r}: use 'l7space' or a dict with widths, "
                     f'max_depths (and optional mb3d_stages, mlp_ratios, name)')


__all__ = ['CHOICES', 'SearchSpace', 'default_space', 'get_space']
