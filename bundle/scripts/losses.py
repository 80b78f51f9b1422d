"""Losses of the three training stages.

* :class:`MultiExitBCELoss`: stage 1, BCE at every exit with weights 0.25/0.5/0.75/1.0 (AME-CAM).
* :class:`AttentionContrastiveLoss`: stage 2, the three similarity terms of AME-CAM (after C2AM,
  Xie et al., CVPR 2022) on embeddings of the foreground ``I * Mf`` and background ``I * (1 - Mf)``:
  foreground-foreground similarity maximised, foreground-background similarity minimised,
  background-background similarity maximised. The loss is symmetric in foreground and background.
* :class:`NTXentLoss`: stage 0, SimCLR's normalised temperature-scaled cross entropy (Chen et al.,
  ICML 2020) for self-supervised pretraining of the encoder.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .networks import EXIT_WEIGHTS

__all__ = ["AttentionContrastiveLoss", "MultiExitBCELoss", "NTXentLoss"]


class MultiExitBCELoss(nn.Module):
    """Weighted sum of the binary cross entropies of every exit.

    Args:
        weights: one weight per exit, shallowest first.
    """

    def __init__(self, weights: Sequence[float] = EXIT_WEIGHTS) -> None:
        super().__init__()
        self.register_buffer("weights", torch.as_tensor(list(weights), dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, n_exits), ``target`` (B,) of 0/1."""
        if logits.shape[1] != self.weights.numel():
            msg = f"logits must have one column per exit ({self.weights.numel()}), got shape {tuple(logits.shape)}"
            raise ValueError(msg)
        target = target.float().view(-1, 1).expand_as(logits)
        per_exit = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=0)
        return (per_exit * self.weights.to(per_exit)).sum()  # the loss may meet logits on another device (validation on the CPU)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).t()


class AttentionContrastiveLoss(nn.Module):
    """AME-CAM's foreground/background similarity losses on non-negative embeddings.

    With cosine similarities ``s`` in ``[0, 1]`` (the embeddings are pooled ReLU features):
    ``L = -mean log s(f_i, f_j) - mean log(1 - s(f_i, b_j)) - mean log s(b_i, b_j)``, pairs ``i != j``
    for the first and last term.

    Args:
        eps: keeps the logarithms finite.
    """

    def __init__(self, eps: float = 1e-4) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, foreground: torch.Tensor, background: torch.Tensor) -> dict[str, torch.Tensor]:
        """Embeddings ``(B, D)`` of the foreground and background images; returns the terms and ``loss``."""
        n = foreground.shape[0]
        if n < 2:
            msg = f"the contrastive losses need a batch of at least 2 images, got {n}"
            raise ValueError(msg)
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=foreground.device)
        sim_ff = _cosine(foreground, foreground).clamp(self.eps, 1 - self.eps)[off_diagonal]
        sim_bb = _cosine(background, background).clamp(self.eps, 1 - self.eps)[off_diagonal]
        sim_fb = _cosine(foreground, background).clamp(self.eps, 1 - self.eps)
        terms = {
            "ff": -torch.log(sim_ff).mean(),
            "fb": -torch.log(1 - sim_fb).mean(),
            "bb": -torch.log(sim_bb).mean(),
        }
        terms["loss"] = terms["ff"] + terms["fb"] + terms["bb"]
        return terms


class NTXentLoss(nn.Module):
    """SimCLR loss for two augmented views ``z1``, ``z2`` (B, D) of the same images.

    Args:
        temperature: softmax temperature.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
        n = z1.shape[0]
        logits = z @ z.t() / self.temperature
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(logits, target)
