"""Loading a state dict with an error that says what is wrong, kept apart from the networks so that
inference with a TorchScript file imports no MONAI."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

__all__ = ["load_weights"]


def load_weights(network: nn.Module, path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """Load the state dict at ``path`` into ``network`` (strictly); returns ``network``.

    Raises:
        ValueError: one line naming the file and what is wrong with it: unreadable (truncated, not a
            state dict), or written by another network (tensors of other shapes, missing or unexpected
            names, with the first of each), where torch's own message names nothing on its first line.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise ValueError(f"{path}: not a readable PyTorch state dict, truncated or corrupt ({reason}); "
                         "copy models/model.pt again from the trained run") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors (a bundle's models/model.pt)")
    expected = network.state_dict()
    other_shape = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if other_shape or missing or unexpected:
        parts = []
        if other_shape:
            key = other_shape[0]
            parts.append(f"{len(other_shape)} tensor(s) of another shape, e.g. {key}: {list(state[key].shape)} in the file, "
                         f"{list(expected[key].shape)} in the network")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        raise ValueError(f"{path}: these weights belong to another network than the bundle's configs ({'; '.join(parts)}); "
                         "use the models/model.pt trained with these configs (same modalities and network_def)")
    network.load_state_dict(state)
    return network
