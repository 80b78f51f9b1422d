"""One line, not a traceback, for bad input given to ``python -m monai.bundle run``.

MONAI wraps whatever a config expression raises in ``RuntimeError: Failed to evaluate ...`` and Python
prints both tracebacks (about 50 lines) with the one sentence that matters in the middle. The first
entry of each config's ``run`` list calls :func:`one_line_errors`, which, only in a ``python -m
monai.bundle`` process, prints that sentence alone when it comes from this bundle's own checks or names
a file it could not read or write (:func:`input_error`). Anything else, and any error at all when
``AMECAM_TRACEBACK=1``, keeps Python's full traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

_SCRIPTS = Path(__file__).resolve().parent
_INPUT_ERRORS = (ValueError, OSError, ImportError)


def _ours(tb) -> bool:
    return Path(tb.tb_frame.f_code.co_filename).resolve().parent == _SCRIPTS


def input_error(exc: BaseException | None) -> str | None:
    """The message of this bundle's own input checks behind ``exc`` (following causes and contexts), or None.

    That is a ``ValueError``, ``OSError`` or ``ImportError`` raised in ``scripts/``, or a file this bundle's code
    asked the system for that is missing or unreadable (an ``OSError`` naming a file, wherever it was raised).
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _INPUT_ERRORS) and exc.__traceback__ is not None:
            frames, tb = [], exc.__traceback__
            while tb is not None:
                frames.append(tb)
                tb = tb.tb_next
            if _ours(frames[-1]):  # raised here, not deep in a library
                return str(exc)
            if isinstance(exc, OSError) and exc.filename and exc.strerror and any(map(_ours, frames)):
                return f"{exc.filename}: {exc.strerror.lower()}"
        exc = exc.__cause__ or exc.__context__
    return None


_TRAINING_INTERRUPTED = "checkpoints are kept: --resume true continues"


def _hook(kind, exc, tb, *, fallback=sys.__excepthook__, interrupted: str = _TRAINING_INTERRUPTED):
    if issubclass(kind, KeyboardInterrupt) and not os.environ.get("AMECAM_TRACEBACK"):
        if "RANK" not in os.environ:  # under torchrun the launcher says it, once for all processes
            print(f"interrupted ({interrupted})", file=sys.stderr)
        return
    message = None if os.environ.get("AMECAM_TRACEBACK") else input_error(exc)
    if message is None:
        fallback(kind, exc, tb)
        return
    print(f"error: {message} (AMECAM_TRACEBACK=1 shows the traceback)", file=sys.stderr)


def one_line_errors(interrupted: str = _TRAINING_INTERRUPTED) -> None:
    """Install the one-line report in a ``python -m monai.bundle`` process; elsewhere (amecam, tests) do nothing.

    ``interrupted`` is what the config's Ctrl-C line says the interruption leaves behind (each config sets its own:
    only training has checkpoints and ``--resume``).
    """
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name in ("monai.bundle.__main__", "monai.bundle"):
        sys.excepthook = functools.partial(_hook, interrupted=interrupted)
