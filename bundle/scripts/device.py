"""Device choice, kept apart from the training code so that inference imports neither it nor MONAI."""

from __future__ import annotations

import torch

__all__ = ["DEVICE_CHOICES", "resolve_device"]

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Raises ValueError for unknown or unavailable devices."""
    if isinstance(name, torch.device):
        return name
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            msg = f"{text!r} was asked for but CUDA is not available here (use cpu or auto)"
            raise ValueError(msg)
        try:
            device = torch.device(text)
        except RuntimeError as exc:  # "cuda:x"
            msg = f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {name!r}"
            raise ValueError(msg) from exc
        if device.index is not None and device.index >= torch.cuda.device_count():
            msg = f"{text!r} was asked for but this machine has {torch.cuda.device_count()} GPU(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            raise ValueError(msg)
        return device
    msg = f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {name!r}"
    raise ValueError(msg)
