"""``amecam demo``: the main job, end to end, on the built-in synthetic cohort."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from .errors import AmecamError

__all__ = ["run_demo"]

logger = logging.getLogger(__name__)


def _slice_figure(slices_dir: Path, path: Path) -> None:
    """A PNG of tumour and normal training slices with their masks, to show what slicing made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(slices_dir / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    picks = [r for r in rows if r["label"] == "tumor"][::17][:4] + [r for r in rows if r["label"] == "normal"][::29][:2]
    fig, axes = plt.subplots(1, len(picks), figsize=(2.4 * len(picks), 2.8))
    for ax, row in zip(np.atleast_1d(axes), picks):
        image = np.load(slices_dir / "images" / f"{row['file']}.npy", mmap_mode="r")[int(row["row"]), 0]
        mask = np.load(slices_dir / "masks" / f"{row['file']}.npy", mmap_mode="r")[int(row["row"])]
        ax.imshow(np.asarray(image, dtype=np.float32).T, cmap="gray", origin="lower", vmin=0, vmax=1)
        if mask.any():
            ax.contour(mask.T, levels=[0.5], colors="red", linewidths=0.8, origin="lower")
        ax.set_title(f"{row['case']} z={row['slice']}\n{row['label']}", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(output: Path, *, n_cases: int = 8, seed: int = 0, image_size: int = 128) -> dict:
    """Synthesise a cohort and slice it; returns what was made."""
    from .cases import find_cases
    from .slicing import SliceSettings, slice_dataset
    from .synth import synthesize_cohort

    if n_cases < 3:
        raise AmecamError(f"--n_cases must be >= 3 for the demo (train, validation and test cases), got {n_cases}")
    cohort = output / "cohort"
    synthesize_cohort(cohort, n_cases=n_cases, seed=seed)
    cases = find_cases(cohort, "flair")
    slices = output / "slices"
    counts = slice_dataset(cases, slices, SliceSettings(modalities=("flair",), image_size=image_size, seed=seed))
    figure = output / "slices.png"
    _slice_figure(slices, figure)
    logger.info("demo: cohort %s, slices %s (%s), figure %s", cohort, slices, counts["labels"], figure)
    return {"cohort": cohort, "slices": slices, "counts": counts, "figure": figure}
