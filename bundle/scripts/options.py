"""Config values as ``python -m monai.bundle run`` hands them over.

MONAI's command line (Fire) turns ``--crf True`` into a bool but ``--crf false`` into the *string*
``"false"``, which Python reads as true: ``--overwrite false`` once replaced an existing mask. Every
switch of the scripts goes through :func:`switch`, which reads the words and refuses anything else.
"""

from __future__ import annotations

__all__ = ["switch"]

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def switch(value: object, name: str) -> bool:
    """``value`` as a bool: a bool, 0 or 1, or one of the words true/false, yes/no, on/off (any case).

    Raises:
        ValueError: anything else, naming the option.
    """
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    msg = f"{name} must be true or false, got {value!r}"
    raise ValueError(msg)
