"""Case-level work in several processes, for the commands that take ``--workers``."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from .errors import AmecamError


def check_workers(workers: object) -> int:
    """``--workers``: a whole number >= 1."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise AmecamError(f"--workers must be a whole number >= 1, got {workers!r}")
    return workers


def ordered_map(function: Callable[..., Any], columns: Sequence[Sequence[Any]], workers: int) -> Iterator[Any]:
    """``function(*args)`` for each row of ``columns`` (one sequence per argument), results in order.

    With ``workers`` > 1 and more than one row, the calls run in that many spawned processes (a fresh
    interpreter each, safe beside threads the caller may run); ``function`` and its arguments must
    pickle. An exception in a call is raised here, at its place in the order.
    """
    n = len(columns[0]) if columns else 0
    if workers <= 1 or n <= 1:
        for args in zip(*columns):
            yield function(*args)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, n), mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(function, *columns)
