"""Config values as ``python -m monai.bundle run`` hands them over.

MONAI's command line (Fire) turns ``--crf True`` into a bool but ``--crf false`` into the *string*
``"false"``, which Python reads as true: ``--overwrite false`` once replaced an existing mask. Every
switch of the scripts goes through :func:`switch`, which reads the words and refuses anything else;
numbers go through :func:`number` and :func:`whole`, which name the option when a value is out of range.
"""

from __future__ import annotations

import numpy as np

__all__ = ["number", "switch", "whole"]

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def switch(value: object, name: str) -> bool:
    """``value`` as a bool: a bool, 0 or 1, or one of the words true/false, yes/no, on/off (any case).

    Raises:
        ValueError: anything else, naming the option.
    """
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    msg = f"{name} must be true or false, got {value!r}"
    raise ValueError(msg)


def number(value: object, name: str, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a float within ``[low, high]`` (either bound may be ``None``).

    Raises:
        ValueError: not a number, or out of range, naming the option and the range.
    """
    span = f" in [{low:g}, {high:g}]" if low is not None and high is not None else f" >= {low:g}" if low is not None else ""
    try:
        result = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        result = None
    if result is None or result != result or (low is not None and result < low) or (high is not None and result > high):
        msg = f"{name} must be a number{span}, got {value!r}"
        raise ValueError(msg)
    return result


def whole(value: object, name: str, minimum: int = 0, *, hint: str = "") -> int:
    """``value`` as an int ``>= minimum``; ``4.0`` and ``"4"`` count, ``2.5`` does not.

    Raises:
        ValueError: naming the option (``hint`` is added to the message, e.g. what ``null`` means).
    """
    try:
        result = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        result = None
    if result is None or not result.is_integer() or result < minimum:
        msg = f"{name} must be a whole number >= {minimum}{hint}, got {value!r}"
        raise ValueError(msg)
    return int(result)
