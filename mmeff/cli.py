"""How the command-line tools end: a user's mistake is one line on stderr, a bug a traceback.

Every ``tools/*.py`` ends with::

    if __name__ == '__main__':
        from mmeff.cli import run
        sys.exit(run(main))

``run`` calls ``main()`` and turns its outcome into an exit status:

* ``main`` returns: its return value if it is an ``int``, else 0;
* a user's mistake (the exceptions of ``USER_ERRORS``: a missing or unreadable file, a bad value
  or type in the arguments or the config, a name no registry knows, a config that does not
  parse, a module that is not installed; and every exception class mmeff defines, such as a
  checkpoint that cannot be read): one line ``<tool>: error: <message>`` on stderr, exit
  status 1. The libraries' messages name the file, the value and the fix, so the traceback
  would only bury them;
* a ``TypeError``/``KeyError`` is a user's mistake only when it comes from building what the
  user's config or arguments describe (mmengine's registry and config code are on its
  traceback) or from a ``raise`` statement of the project's own code (its argument checks).
  One that Python raised in the middle of some code (``'str' object is not callable``,
  ``d['missing']``), or that a library raised at run time (torch's ``data should be a
  Tensor`` from a DDP broadcast), is a bug, as below;
* no CUDA device where the user asked for one (``--device cuda`` on a machine without a GPU or
  driver, or a CPU-only torch): one line saying so and how to run on the CPU;
* any other exception (``RuntimeError`` from torch, ``AttributeError``, ``AssertionError``...):
  most likely a bug in mmeff or in the stack, not something the user typed. Its traceback is
  printed, then one line saying so; exit status 1;
* Ctrl-C: one line, exit status 130.

With ``MMEFF_TRACEBACK=1`` in the environment every error shows its full traceback (the one-line
message says so). ``argparse`` keeps its own usage message and exit status 2.

This module imports nothing heavy: it runs before and after the tools' own imports.
"""
import os
import sys
import traceback
from typing import Callable, Optional, Sequence

TRACEBACK_ENV = 'MMEFF_TRACEBACK'

# A user's mistake: the message says what to change. OSError covers missing, unreadable and
# misplaced files (FileNotFoundError, IsADirectoryError, PermissionError) and full disks;
# ValueError covers bad values, files that do not parse (json.JSONDecodeError) and mmeff's data
# checks; TypeError and KeyError are what mmengine's registries raise for a config that gives a
# class an argument it does not take or names a type nobody registered (when raised by a
# ``raise`` statement: see ``is_user_error``); SyntaxError and
# ImportError come from config files (they are Python) and their ``custom_imports``.
USER_ERRORS = (OSError, ValueError, TypeError, KeyError, SyntaxError, ImportError)


# Python itself raises these for mistakes in code ("'str' object is not callable",
# ``d['missing']``), and libraries for mistakes of their callers: only those of
# :func:`raised_on_purpose` (building from a config, the project's argument checks) are taken
# for a user's mistake.
_RAISED_ON_PURPOSE_ONLY = (TypeError, KeyError)


# Code that builds what a config describes: an error raised below it is about the config.
_BUILDING = ('mmengine/registry/', 'mmengine/config/')
# Where installed libraries live: a ``raise`` there at run time is no argument check of ours.
_LIBRARIES = ('/site-packages/', '/dist-packages/')


def _path(frame) -> str:
    return frame.filename.replace('\\', '/')


def raised_on_purpose(exc: BaseException) -> bool:
    """Whether ``exc`` is a deliberate complaint about the user's input:

    * raised by mmengine's registry or config code itself (a class given an argument it does
      not take, a type nobody registered, a config that does not parse);
    * raised by a ``raise`` statement of a class mmengine's registry is building from the
      config (mmcv's ``Unrecognized norm type``), unless in torch: torch does not check
      configs, its ``TypeError`` while a DDP wrapper is built is a bug;
    * outside any building, raised by a ``raise`` statement of the project's own code (its
      argument checks), not of an installed library: a library raising ``TypeError`` in the
      middle of a run is a bug of whoever called it.

    ``True`` when the source cannot be read, so that a missing file never hides a message."""
    tb = exc.__traceback__
    if tb is None:
        return True
    frames = traceback.extract_tb(tb)
    path = _path(frames[-1])
    if any(part in path for part in _BUILDING):
        return True
    line = (frames[-1].line or '').lstrip()
    if line and not line.startswith('raise'):
        return False  # the interpreter's own TypeError/KeyError: a bug
    if any(part in _path(f) for f in frames[:-1] for part in _BUILDING):
        return '/torch/' not in path
    return '/mmeff/' in path or not any(part in path for part in _LIBRARIES)


# What torch says when CUDA is asked for on a machine that has none.
_NO_CUDA = ('Found no NVIDIA driver', 'Torch not compiled with CUDA enabled',
            'No CUDA GPUs are available', 'no CUDA-capable device is detected',
            'CUDA driver initialization failed')


def no_cuda_message(exc: BaseException) -> Optional[str]:
    """The one-line message for an attempt to use CUDA without a CUDA device, else None."""
    if not isinstance(exc, (RuntimeError, AssertionError)):
        return None
    text = str(exc)
    if not any(s in text for s in _NO_CUDA):
        return None
    first = (text.strip().splitlines() or [''])[0].split('. ')[0]
    return (f'a CUDA device was asked for (e.g. --device cuda), but this machine has none '
            f'usable (torch: {first}); run on the CPU with --device cpu, or on a machine with '
            f'an NVIDIA GPU, its driver and a CUDA build of torch')


def check_device(device: str) -> str:
    """``device`` if torch can use it, else a ``ValueError`` naming the device and the fix
    (for tools' ``--device`` options, checked before any work starts)."""
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f'--device {device!r} is not a device torch knows ({exc}); use cpu, '
                         f'cuda or cuda:N') from None
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'--device {device!r}: this machine has no usable CUDA device '
                             f'(torch.cuda.is_available() is False); use --device cpu')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f'--device {device!r}: this machine has '
                             f'{torch.cuda.device_count()} CUDA device(s), cuda:0 to '
                             f'cuda:{torch.cuda.device_count() - 1}')
    return device


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a user's mistake: one of ``USER_ERRORS``, or an exception class that
    mmeff defines (``CheckpointError``, ``EmptyDatasetError``...). mmeff raises its own classes
    only on purpose, with a message that says what to fix, whatever builtin they derive from
    (``CheckpointError`` is a ``RuntimeError``); and no CUDA device where one was asked for.
    A ``TypeError`` or ``KeyError`` counts only when :func:`raised_on_purpose`."""
    if any(cls.__module__.split('.')[0] == 'mmeff' for cls in type(exc).__mro__):
        return True
    if no_cuda_message(exc) is not None:
        return True
    if not isinstance(exc, USER_ERRORS):
        return False
    if isinstance(exc, _RAISED_ON_PURPOSE_ONLY):
        return raised_on_purpose(exc)
    return True


def traceback_wanted() -> bool:
    """Whether ``MMEFF_TRACEBACK`` asks for full tracebacks (set and not ``0``/empty)."""
    return os.environ.get(TRACEBACK_ENV, '') not in ('', '0')


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line.

    A ``KeyError``'s message is its argument, not its quoted ``repr``. An error re-raised from a
    ``DataLoader`` worker carries the worker's whole traceback in its message; only the first
    line (which worker) and the last (the original error) are kept. Other multi-line messages
    are joined with spaces.
    """
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        msg = str(exc.args[0])
    else:
        msg = str(exc)
    lines = [line.strip() for line in msg.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if any(line.startswith('Original Traceback') for line in lines):
        return f'{lines[0].rstrip(".")}: {lines[-1]}'
    text = ' '.join(lines)
    if isinstance(exc, SyntaxError) and exc.filename and exc.filename not in text:
        text = f'{exc.filename}, line {exc.lineno}: {text}'
    return text


def run(main: Callable, argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Call ``main(argv)`` and return the tool's exit status (see the module docstring).

    Args:
        main: the tool's ``main(argv=None)``.
        argv: its arguments; ``None`` lets ``main`` read ``sys.argv``.
        prog: the tool's name in messages; defaults to the script's file name.

    Returns:
        int: 0 (or ``main``'s own ``int``) on success, 1 after an error, 130 after Ctrl-C.
    """
    prog = prog or os.path.basename(sys.argv[0]) or 'mmeff'
    try:
        status = main(argv) if argv is not None else main()
    except SystemExit:
        raise  # argparse's usage errors, and the tools' own ``raise SystemExit('error: ...')``
    except KeyboardInterrupt:
        if traceback_wanted():
            raise
        print(f'{prog}: interrupted', file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (sorted into user mistakes and bugs below)
        if traceback_wanted():
            raise
        if is_user_error(exc):
            message = no_cuda_message(exc) or one_line(exc)
            print(f'{prog}: error: {message} (set {TRACEBACK_ENV}=1 for the traceback)',
                  file=sys.stderr)
        else:
            traceback.print_exc()
            print(f'{prog}: unexpected {type(exc).__name__}: {one_line(exc)}. This is probably '
                  f'a bug in mmeff or its stack, not in your input: the traceback is above; '
                  f'please report it with the command you ran.', file=sys.stderr)
        return 1
    return status if isinstance(status, int) and not isinstance(status, bool) else 0
