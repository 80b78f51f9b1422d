"""Reading a slice dataset (written by ``amecam slice``) for training.

The dataset folder holds ``manifest.csv`` and per-case ``images/<file>.npy`` arrays of shape
``(n_slices, C, S, S)``; see ``amecam_cli.slicing``. Arrays are memory-mapped, so a split of any size
costs only the pages a batch touches.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

__all__ = ["SliceSet", "augment", "balanced_epoch", "random_affine", "read_manifest", "simclr_views"]

LABELS = {"tumor": 1, "normal": 0}


def read_manifest(root: str | Path) -> list[dict]:
    """Rows of ``manifest.csv``."""
    with open(Path(root) / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


class SliceSet:
    """The labelled slices of one split.

    Args:
        root: slice dataset folder.
        split: ``train`` or ``val`` (or ``all``).
        labels: which slice labels to keep (ambiguous and unlabelled slices are left out by default).
    """

    def __init__(self, root: str | Path, split: str = "train", labels: Sequence[str] = ("tumor", "normal")) -> None:
        self.root = Path(root)
        if not (self.root / "dataset.json").is_file():
            raise FileNotFoundError(f"{self.root}: not a slice dataset (no dataset.json; amecam slice writes one)")
        info = json.loads((self.root / "dataset.json").read_text(encoding="utf-8"))
        self.modalities = list(info["settings"]["modalities"])
        self.image_size = int(info["settings"]["image_size"])
        self.rows = [r for r in read_manifest(self.root) if (split == "all" or r["split"] == split) and r["label"] in labels]
        self.labels = np.array([LABELS.get(r["label"], -1) for r in self.rows], dtype=np.int64)
        self._arrays: dict[str, np.ndarray] = {}
        self._masks: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.root / "images" / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, C, S, S)`` float32 and labels ``(B,)`` for the given positions."""
        images = np.stack([self._array(self.rows[i]["file"])[int(self.rows[i]["row"])] for i in indices])
        return torch.from_numpy(images.astype(np.float32)), torch.from_numpy(self.labels[list(indices)])

    def targets(self, kind: str, indices: Sequence[int]) -> torch.Tensor:
        """Per-slice ``(B, S, S)`` arrays stored as ``<kind>/<file>.npy`` (``masks``: expert whole-tumour
        masks; ``pseudo``: pseudo-label maps written by ``amecam train-seg``).

        Raises:
            FileNotFoundError: the dataset has no such arrays for a case.
        """
        out = []
        for i in indices:
            name = self.rows[i]["file"]
            key = f"{kind}/{name}"
            if key not in self._masks:
                path = self.root / kind / f"{name}.npy"
                if not path.exists():
                    msg = f"{path}: no {kind} for case {self.rows[i]['case']}"
                    raise FileNotFoundError(msg)
                self._masks[key] = np.load(path, mmap_mode="r")
            out.append(self._masks[key][int(self.rows[i]["row"])])
        return torch.from_numpy(np.stack(out).astype(np.float32))

    def batches(self, order: Sequence[int], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive batches over ``order``."""
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])


def balanced_epoch(labels: np.ndarray, rng: np.random.Generator, *, balance: bool = True) -> np.ndarray:
    """Positions of one epoch, shuffled: every tumour slice plus as many normal slices, drawn anew.

    With ``balance=False`` every labelled slice is used once.
    """
    tumour = np.flatnonzero(labels == 1)
    normal = np.flatnonzero(labels == 0)
    if balance and len(tumour) and len(normal) > len(tumour):
        normal = rng.choice(normal, size=len(tumour), replace=False)
    elif balance and len(normal) and len(tumour) > len(normal):
        tumour = rng.choice(tumour, size=len(normal), replace=False)
    order = np.concatenate([tumour, normal])
    rng.shuffle(order)
    return order


def random_affine(x: torch.Tensor, generator: torch.Generator, *, degrees: float = 15.0, scale: float = 0.1,
                  translate: float = 0.06) -> torch.Tensor:
    """Rotate, scale and shift each image of a batch at random (bilinear, zero padding)."""
    b = x.shape[0]
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    angle = (rand(b) * 2 - 1) * degrees * torch.pi / 180
    zoom = 1 + (rand(b) * 2 - 1) * scale
    shift = (rand(b, 2) * 2 - 1) * translate * 2
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) / zoom, -torch.sin(angle) / zoom
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) / zoom, torch.cos(angle) / zoom
    theta[:, :, 2] = shift
    grid = torch.nn.functional.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, generator: torch.Generator, *, affine: bool = False, target: torch.Tensor | None = None):
    """Label-preserving augmentation of a batch: optional random affine, flips, intensity scale/shift.

    With ``target`` (``(B, ...spatial)`` masks or maps), the same flips are applied to it and
    ``(x, target)`` is returned; affine transforms are not combined with targets.
    """
    b = x.shape[0]
    rand = lambda *shape: torch.rand(*shape, generator=generator, device="cpu").to(x.device)  # noqa: E731
    if affine and target is None:
        x = random_affine(x, generator)
    flip_x = rand(b) < 0.5
    flip_y = rand(b) < 0.5
    x = torch.where(flip_x.view(-1, 1, 1, 1), x.flip(-2), x)
    x = torch.where(flip_y.view(-1, 1, 1, 1), x.flip(-1), x)
    if target is not None:
        shape = (-1,) + (1,) * (target.dim() - 1)
        target = torch.where(flip_x.view(shape), target.flip(-2), target)
        target = torch.where(flip_y.view(shape), target.flip(-1), target)
    scale = 0.9 + 0.2 * rand(b, 1, 1, 1)
    shift = 0.1 * (rand(b, 1, 1, 1) - 0.5)
    inside = (x.abs().sum(dim=1, keepdim=True) > 0).to(x.dtype)  # keep the background at zero
    x = (x * scale + shift * inside).clamp(0, 1)
    return x if target is None else (x, target)


def simclr_views(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two strongly augmented views per image for SimCLR: random resized crop, flips, intensity, noise."""

    def view(batch: torch.Tensor) -> torch.Tensor:
        b, _, h, w = batch.shape
        rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
        scale = 0.5 + 0.5 * rand(b)
        cx, cy = (rand(b) - 0.5) * (1 - scale), (rand(b) - 0.5) * (1 - scale)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = scale, scale
        theta[:, 0, 2], theta[:, 1, 2] = cx * 2, cy * 2
        grid = torch.nn.functional.affine_grid(theta.to(batch.device), list(batch.shape), align_corners=False)
        out = torch.nn.functional.grid_sample(batch, grid, align_corners=False)
        out = augment(out, generator)
        gamma = (0.7 + 0.6 * rand(b, 1, 1, 1)).to(batch.device)
        out = out.clamp_min(0) ** gamma
        return (out + 0.03 * torch.randn(out.shape, generator=generator).to(batch.device)).clamp(0, 1)

    return view(x), view(x)
