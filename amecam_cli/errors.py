"""The one exception type for user mistakes: the CLI prints its message as one line and exits 2."""

from __future__ import annotations

__all__ = ["AmecamError"]


class AmecamError(Exception):
    """A problem with the user's input (file, option, folder) rather than a bug in amecam.

    The message must name the thing at fault and the problem, e.g.
    ``"case.nii.gz: volume is 2-D (shape 240x240); amecam needs a 3-D volume"``.
    """
