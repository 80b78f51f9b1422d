"""Reference rows that need no training: brightness alone.

A weakly supervised map is only worth its training time if it beats what needs none. Both rows work on
the same per-volume normalised image the networks see (0.5 / 99.5 brain percentiles to 0 / 1, zero
outside the brain), with the same brain mask, and are scored by the same slice and volume protocols
(with and without classifier gating) as the CAM rows:

* ``threshold``: tumour where the normalised intensity reaches ``THRESHOLD_LEVEL`` (0.5, the middle of
  the robust range; fixed in advance, not tuned on any evaluation data);
* ``otsu``: tumour above the per-volume Otsu threshold of the brain's intensities.

On T1 (``t1``) the tumour is darker than brain tissue, so that modality is inverted (``1 - x`` inside the
brain) first. With several modalities the rows use the mean of the (possibly inverted) channels.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["INVERTED_MODALITIES", "REFERENCE_METHODS", "THRESHOLD_LEVEL", "otsu_threshold", "reference_rows"]

REFERENCE_METHODS = ("threshold", "otsu")
THRESHOLD_LEVEL = 0.5
INVERTED_MODALITIES = ("t1",)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the cut that maximises the between-class variance."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or values.min() == values.max():
        return float(values.max()) if values.size else 0.0
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    mass = np.cumsum(counts * centres)
    total, total_mass = weight[-1], mass[-1]
    between = (total_mass * weight - mass * total) ** 2 / np.maximum(weight * (total - weight), 1e-12)
    between[weight == total] = 0  # no cut after the last bin
    return float(edges[int(np.argmax(between)) + 1])


def _brightness(prepared, modalities: tuple[str, ...]) -> np.ndarray:
    channels = []
    for channel, modality in zip(prepared.image, modalities):
        channels.append(np.where(prepared.brain, 1.0 - channel, 0.0) if modality in INVERTED_MODALITIES else channel)
    return np.mean(channels, axis=0) * prepared.brain


def reference_rows(modalities: tuple[str, ...], methods: tuple[str, ...] = REFERENCE_METHODS, *,
                   level: float = THRESHOLD_LEVEL) -> dict[str, Callable]:
    """Row providers for ``amecam_cli.evaluation.evaluate``: binary maps on the canonical grid."""
    rows: dict[str, Callable] = {}
    if "threshold" in methods:
        rows["threshold"] = lambda loaded, prepared: (_brightness(prepared, modalities) >= level).astype(np.float32) * prepared.brain
    if "otsu" in methods:

        def otsu(loaded, prepared):
            value = _brightness(prepared, modalities)
            return (value >= otsu_threshold(value[prepared.brain])).astype(np.float32) * prepared.brain

        rows["otsu"] = otsu
    return rows
