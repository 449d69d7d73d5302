"""``--cfg-options`` keys that would change nothing.

mmengine's ``Config.merge_from_dict`` adds a key the config does not have without a word: a
misspelt ``--cfg-options data_rot=/data/coco/`` leaves every dataset where it was, and the run
goes on with the config's own data. A top-level key is only read by the Runner
(``RUNNER_VARIABLES``) or through the config's own entries, so a new top-level key that the
Runner does not read changes nothing; :func:`check_cfg_option_keys` refuses it, naming the
closest keys of the config.
"""
import difflib
import os.path as osp
from typing import Mapping, Optional

from .launch import RUNNER_VARIABLES


def check_cfg_option_keys(cfg: Mapping, cfg_options: Optional[Mapping]) -> None:
    """Raise ``ValueError`` for a key of ``cfg_options`` whose top-level name is neither in
    ``cfg`` (read before the options are merged) nor read by mmengine's Runner.

    Nested keys under an existing entry (``model.backbone.frozen_stages``) are not checked:
    adding an argument the config leaves at its default is how they are used.
    """
    for key in cfg_options or {}:
        top = key.split('.', 1)[0]
        if top in cfg or top in RUNNER_VARIABLES:
            continue
        known = sorted(set(cfg.keys()) | set(RUNNER_VARIABLES))
        close = difflib.get_close_matches(top, known, n=3, cutoff=0.6)
        hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close else
                f"the config's top-level keys are {', '.join(sorted(cfg.keys()))}")
        raise ValueError(
            f'--cfg-options {key}=...: the config has no top-level {top!r} and mmengine\'s '
            f'Runner reads no such entry, so it would change nothing; {hint}')


def check_cfg_options(config: str, cfg_options: Optional[Mapping]) -> None:
    """:func:`check_cfg_option_keys` against the config file ``config`` as written (before any
    option is merged); nothing to do without options or without the file (its own error comes
    later)."""
    if cfg_options and osp.isfile(config):
        from mmengine.config import Config
        check_cfg_option_keys(Config.fromfile(config), cfg_options)


__all__ = ['check_cfg_option_keys', 'check_cfg_options']
