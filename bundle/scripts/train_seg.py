"""Training a 2-D U-Net on slice masks: AME-CAM pseudo-labels, or expert masks for the upper bound.

Pseudo-label refinement (Adiga et al., manifold-driven attention maps; Wu et al., ACAM, 2019): the
masks a weakly supervised map produces become the training labels of a segmentation network, which
usually smooths their errors out. Labels are read from the slice dataset: ``pseudo/<file>.npy`` maps
in [0, 1] (thresholded at 0.5 into the label; pixels whose map lies within ``uncertainty_margin`` of
the threshold get weight ``uncertainty_weight`` in the cross entropy) or ``masks/<file>.npy`` (expert
masks, only for the clearly marked fully supervised upper bound).

Loss: Dice (tumour channel) + pixel-weighted cross entropy. Every tumour slice and as many normal
slices (empty targets) per epoch; ambiguous slices are left out. The best epoch is chosen by the
validation Dice against the same kind of labels the network learns from -- never against expert masks
when training on pseudo-labels.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from .data import SliceSet, balanced_epoch
from .networks import SegmentationNet
from .options import number
from .train import _Stage, epochs_text, logger, set_determinism

__all__ = ["LABEL_SOURCES", "SegmentationTrainer", "weighted_dice_ce"]

LABEL_SOURCES = ("pseudo", "masks")


def weighted_dice_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft Dice of the tumour channel (per batch) plus pixel-weighted cross entropy.

    Args:
        logits: ``(B, 2, H, W)``.
        target: ``(B, H, W)`` of 0/1.
        weight: ``(B, H, W)`` cross-entropy weight per pixel.
    """
    ce = (F.cross_entropy(logits, target.long(), reduction="none") * weight).sum() / weight.sum().clamp_min(eps)
    probability = torch.softmax(logits, dim=1)[:, 1]
    intersection = (probability * target).sum()
    dice = 1 - (2 * intersection + eps) / (probability.sum() + target.sum() + eps)
    return ce + dice


class SegmentationTrainer(_Stage):
    """Train a :class:`SegmentationNet` on a slice dataset's pseudo-labels or masks.

    Args:
        network: the U-Net wrapper.
        label_source: ``pseudo`` (``pseudo/*.npy`` maps) or ``masks`` (expert masks: full supervision).
        uncertainty_margin: pixels whose pseudo-label map lies within this distance of 0.5 are uncertain.
        uncertainty_weight: cross-entropy weight of uncertain pixels (1 disables the down-weighting).
        other arguments: see ``train._Stage``.
    """

    name = "seg"

    def __init__(self, network: SegmentationNet, *, label_source: str = "pseudo", uncertainty_margin: float = 0.1,
                 uncertainty_weight: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        if label_source not in LABEL_SOURCES:
            msg = f"label_source must be one of {', '.join(LABEL_SOURCES)}, got {label_source!r}"
            raise ValueError(msg)
        self.network = network.to(self.device)
        self.label_source = label_source
        self.uncertainty_margin = number(uncertainty_margin, "uncertainty_margin", 0.0, 0.5)
        if self.uncertainty_margin == 0.5:  # every pseudo-label would be uncertain
            msg = f"uncertainty_margin must be in [0, 0.5), got {uncertainty_margin!r}"
            raise ValueError(msg)
        self.uncertainty_weight = number(uncertainty_weight, "uncertainty_weight", 0.0, 1.0)
        self.model_path = self.output_dir / "model.pt"

    def _targets(self, data: SliceSet, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary targets and CE weights; normal slices have empty, certain targets."""
        labels = torch.from_numpy(data.labels[list(indices)])
        values = data.targets(self.label_source, indices)
        if self.label_source == "masks":
            target = (values > 0.5).float()
            weight = torch.ones_like(target)
        else:
            target = (values >= 0.5).float()
            uncertain = (values - 0.5).abs() < self.uncertainty_margin
            weight = torch.where(uncertain, torch.full_like(values, self.uncertainty_weight), torch.ones_like(values))
        normal = labels == 0
        target[normal] = 0
        weight[normal] = 1
        return target, weight

    @torch.no_grad()
    def validate(self, data: SliceSet) -> float:
        """Dice over all validation slices pooled (against the same kind of labels as training)."""
        self.network.eval()
        intersection, total = 0.0, 0.0
        for start in range(0, len(data), self.batch_size * 2):
            indices = list(range(start, min(start + self.batch_size * 2, len(data))))
            x, _ = data.batch(indices)
            target, _ = self._targets(data, indices)
            predicted = (self.network(self._to_device(x))[:, 0] >= 0.5).float().cpu()
            intersection += float((predicted * target).sum())
            total += float(predicted.sum() + target.sum())
        return 2 * intersection / total if total else math.nan

    def run(self) -> dict:
        set_determinism(self.seed)
        train, val = SliceSet(self.dataset_dir, "train"), SliceSet(self.dataset_dir, "val")
        if not (train.labels == 1).any():
            msg = f"{self.dataset_dir}: the training split has no tumour slices to learn masks from"
            raise ValueError(msg)
        if self.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        optimizer, scheduler, history, best, start, _ = self._optimiser(
            self.network.parameters(), {"network": self.network}, {"dice": -1.0, "epoch": -1})
        labels = "expert masks" if self.label_source == "masks" else "pseudo-labels"  # the log said "(masks labels)"
        logger.info("segmentation on %s: %d train / %d val slices, %s, device %s%s",
                    labels, len(train), len(val), epochs_text(self.epochs), self.device, self._processes_text())
        model = self.processes.wrap(self.network, "logits")
        for epoch in range(start, self.epochs):
            rng = np.random.default_rng([self.seed, 300 + epoch])
            generator = self._generator(300 + epoch)
            order = self.processes.shard(balanced_epoch(train.labels, rng))
            model.train()
            total, seen, started = torch.zeros((), device=self.device), 0, time.perf_counter()
            with self._bar(len(order), f"segmentation epoch {epoch + 1}/{self.epochs}") as bar:
                for begin in range(0, len(order), self.batch_size):
                    indices = order[begin : begin + self.batch_size]
                    x, _ = train.batch(indices)
                    target, weight = self._targets(train, indices)
                    x, pair = self._augment(x, generator, target=torch.stack([target, weight], dim=1))
                    target, weight = pair[:, 0].to(self.device), pair[:, 1].to(self.device)
                    with self._autocast():
                        logits = model(self._to_device(x))
                    loss = weighted_dice_ce(logits.float(), target, weight)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.detach() * len(indices)  # summed on the device: no host round-trip per batch
                    seen += len(indices)
                    bar.update(len(indices))
            total = float(self.processes.sum(total))
            seen *= self.processes.world_size
            elapsed = time.perf_counter() - started
            scheduler.step()
            val_dice = self.validate(val) if len(val) else math.nan
            record = {"epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_dice": val_dice,
                      "train_slices_per_s": seen / elapsed, "seconds": elapsed}
            history.append(record)
            score = val_dice if not math.isnan(val_dice) else -record["train_loss"]
            if score > best["dice"] or best["epoch"] < 0:
                best = {"dice": score, "epoch": epoch + 1}
                self._keep(self.network.state_dict(), self.model_path)
            logger.info("segmentation epoch %d/%d: loss %.4f, val Dice %.3f against the %s, %.1f slices/s%s",
                        epoch + 1, self.epochs, record["train_loss"], val_dice, labels,
                        record["train_slices_per_s"], " (best)" if best["epoch"] == epoch + 1 else "")
            self._keep({"epoch": epoch, "network": self.network.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "history": history, "best": best}, self.checkpoint_path)
        self.processes.check_in_step(self.network)
        if not self.model_path.exists():
            self._keep(self.network.state_dict(), self.model_path)
        self.processes.barrier()
        return self._write_summary({"best_epoch": best["epoch"], "best_val_dice": best["dice"], "label_source": self.label_source,
                                    "history": history, "n_train": len(train), "n_val": len(val)})
