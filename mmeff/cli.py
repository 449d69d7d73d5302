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
  status 1. The libraries' messages name the file, the value and the fix (STYLE rule 12), so
  the traceback would only bury them;
* a ``TypeError``/``KeyError`` that Python raised in the middle of some code (``'str' object
  is not callable``, ``d['missing']``) rather than a ``raise`` statement: a bug, as below;
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
# ``d['missing']``): only a deliberate ``raise`` of them (a library's argument check, mmengine's
# registry wrapping a bad config entry) is taken for a user's mistake.
_RAISED_ON_PURPOSE_ONLY = (TypeError, KeyError)


def raised_on_purpose(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is a ``raise`` statement, or
    mmengine's registry calling a class with the arguments a config gave it (a config entry the
    class does not take: mmengine 0.10 no longer wraps that error). ``True`` when the source
    cannot be read, so that a missing file never hides a message."""
    tb = exc.__traceback__
    if tb is None:
        return True
    frame = traceback.extract_tb(tb)[-1]
    if frame.filename.replace('\\', '/').endswith('mmengine/registry/build_functions.py'):
        return True
    line = (frame.line or '').lstrip()
    return not line or line.startswith('raise')


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a user's mistake: one of ``USER_ERRORS``, or an exception class that
    mmeff defines (``CheckpointError``, ``EmptyDatasetError``...). mmeff raises its own classes
    only on purpose, with a message that says what to fix, whatever builtin they derive from
    (``CheckpointError`` is a ``RuntimeError``). A ``TypeError`` or ``KeyError`` that the
    interpreter raised in the middle of some code (not a ``raise`` statement) is a bug."""
    if any(cls.__module__.split('.')[0] == 'mmeff' for cls in type(exc).__mro__):
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
            print(f'{prog}: error: {one_line(exc)} (set {TRACEBACK_ENV}=1 for the traceback)',
                  file=sys.stderr)
        else:
            traceback.print_exc()
            print(f'{prog}: unexpected {type(exc).__name__}: {one_line(exc)}. This is probably '
                  f'a bug in mmeff or its stack, not in your input: the traceback is above; '
                  f'please report it with the command you ran.', file=sys.stderr)
        return 1
    return status if isinstance(status, int) and not isinstance(status, bool) else 0
