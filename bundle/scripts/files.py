"""Whole-or-nothing file writes for the bundle's outputs (masks, checkpoints, summaries)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def written_whole(path: str | os.PathLike, tmp_name: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it onto ``path`` only if the block succeeds.

    A failed or interrupted write (Ctrl-C) leaves the previous ``path`` as it was and no temporary file beside it.
    ``tmp_name`` keeps an extension a writer needs (nibabel compresses by name); by default ``.NAME.tmp``.
    """
    path = Path(path)
    tmp = path.with_name(tmp_name or f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
