"""The one exception type for user mistakes: the CLI prints its message as one line and exits 2."""

from __future__ import annotations

__all__ = ["AmecamError", "one_line_reason"]


class AmecamError(Exception):
    """A problem with the user's input (file, option, folder) rather than a bug in amecam.

    The message must name the thing at fault and the problem, e.g.
    ``"case.nii.gz: volume is 2-D (shape 240x240); amecam needs a 3-D volume"``.
    """


def one_line_reason(exc: BaseException, limit: int = 200) -> str:
    """What went wrong, on one line: a YAML error's problem and where it is in the file (its own message
    spans several lines, the context first), else the first line of the message, cut after its last
    whole sentence within ``limit`` characters."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    line = lines[0] if lines else type(exc).__name__
    if len(line) > limit:  # whole sentences where there are any (torch's run to 300 characters)
        end = line.rfind(". ", 0, limit)
        line = line[: end + 1] if end > 0 else line[: limit - 3] + "..."
    return line
