"""``amecam demo``: the main job, end to end, on the built-in synthetic cohort.

Synthesise a cohort, hold out the last cases, train AME-CAM briefly on the others, segment the
held-out volumes with the trained bundle, report their Dice and write a figure of slices with the
ground-truth and predicted contours. Rerunning reuses what is already there.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from .errors import AmecamError

__all__ = ["run_demo"]

logger = logging.getLogger(__name__)

#: short training that fits the demo's time budget on a 2-core CPU
#: the fast variant (stride-2 stem) keeps ``make demo`` within minutes on two CPU cores; ``amecam train``
#: defaults to the full-resolution stem, which gives better maps at about three times the compute
DEMO_SETTINGS = {"epochs": 6, "attention_epochs": 3, "image_size": 128, "batch_size": 32, "stem_stride": 2}


def _figure(rows: list[dict], path: Path) -> None:
    """Held-out slices: image, ground truth (green), prediction (red) and the AME-CAM map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.4), squeeze=False)
    for column, row in enumerate(rows):
        for r, (show_cam, title) in enumerate(((False, "contours"), (True, "AME-CAM map"))):
            ax = axes[r, column]
            ax.imshow(row["image"].T, cmap="gray", origin="lower", vmin=0, vmax=1)
            if show_cam:
                ax.imshow(np.ma.masked_less(row["cam"].T, 0.05), cmap="jet", alpha=0.45, origin="lower", vmin=0, vmax=1)
            else:
                if row["truth"].any():
                    ax.contour(row["truth"].T, levels=[0.5], colors="lime", linewidths=1.0, origin="lower")
                if row["pred"].any():
                    ax.contour(row["pred"].T, levels=[0.5], colors="red", linewidths=1.0, origin="lower")
            ax.set_title(f"{row['case']} z={row['z']}\n{title}" + (f", Dice {row['dice']:.2f}" if not show_cam else ""), fontsize=7)
            ax.axis("off")
    fig.suptitle("amecam demo: green = ground truth, red = AME-CAM mask (synthetic phantoms)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# what the demo writes; a folder holding any of them is an earlier demo, which a new run reuses and updates
DEMO_ENTRIES = ("cohort", "train_datalist.json", "bundle", "masks", "demo.png", "demo_results.json")


def run_demo(output: Path, *, n_cases: int = 8, seed: int = 0, n_test: int = 2) -> dict:
    """Run the demo in ``output``; returns the Dice per held-out case and the paths written."""
    from .bundle import open_bundle
    from .cases import find_cases, load_case
    from .io import write_volume
    from .metrics import dice
    from .slicing import tumour_slice_indices
    from .synth import synthesize_cohort
    from .training import train_bundle

    if n_cases < n_test + 3:
        raise AmecamError(f"--n_cases must be >= {n_test + 3} for the demo (training, validation and {n_test} test cases), got {n_cases}")
    if output.exists() and not output.is_dir():
        raise AmecamError(f"{output}: is a file; the demo needs a folder")
    if output.is_dir() and any(output.iterdir()) and not any((output / name).exists() for name in DEMO_ENTRIES):
        raise AmecamError(f"{output}: folder is not empty and holds no earlier demo; give a new or empty --output_dir")
    output.mkdir(parents=True, exist_ok=True)
    cohort = output / "cohort"
    synthesize_cohort(cohort, n_cases=n_cases, seed=seed, workers=min(4, os.cpu_count() or 1))  # same cohort, made faster
    cases = find_cases(cohort, "flair")
    train_cases, test_cases = cases[:-n_test], cases[-n_test:]
    datalist = output / "train_datalist.json"
    datalist.write_text(json.dumps({"training": [
        {"case": c.case_id, "flair": str(c.images["flair"].resolve()), "label": str(c.label.resolve())} for c in train_cases
    ]}, indent=1), encoding="utf-8")
    run = output / "bundle"
    if (run / "models" / "model.ts").is_file():
        logger.info("demo: reusing the trained bundle in %s", run)
    else:
        resume = (run / "configs" / "amecam_train.json").is_file()
        train_bundle(datalist, run, settings={**DEMO_SETTINGS, "seed": seed}, resume=resume)
    bundle = open_bundle(run)
    predictor = bundle.predictor()
    from amecam_bundle.scripts.preprocess import from_canonical

    results, figure_rows, all_slice_dice = [], [], []
    for case in test_cases:
        loaded = load_case(case)
        prediction = predictor.predict_canonical(loaded.channels)
        mask_path = output / "masks" / f"{case.case_id}_mask.nii.gz"
        write_volume(mask_path, from_canonical(prediction.mask, loaded.orientation), loaded.props, overwrite=True)
        tumour_slices = tumour_slice_indices(loaded.label, range(loaded.label.shape[2]))
        slice_dice = [dice(prediction.cam[:, :, z] >= predictor.threshold, loaded.label[:, :, z]) for z in tumour_slices]
        all_slice_dice += slice_dice
        result = {"case": case.case_id, "volume_dice": dice(prediction.mask, loaded.label),
                  "slice_dice": float(np.mean(slice_dice)) if slice_dice else float("nan"), "n_tumour_slices": len(tumour_slices),
                  "mask": str(mask_path)}
        results.append(result)
        for z in tumour_slices[len(tumour_slices) // 4 :: max(len(tumour_slices) // 3, 1)][:3]:
            figure_rows.append({"case": case.case_id, "z": z, "image": prediction.image[0][:, :, z],
                                "truth": loaded.label[:, :, z], "pred": prediction.mask[:, :, z], "cam": prediction.cam[:, :, z],
                                "dice": dice(prediction.mask[:, :, z], loaded.label[:, :, z])})
    figure = output / "demo.png"
    _figure(figure_rows, figure)
    summary = {
        "held_out": results,
        "mean_volume_dice": float(np.mean([r["volume_dice"] for r in results])),
        # over every tumour slice of the held-out cases, as the benchmarks score (a case with few tumour slices
        # weighs by its slices, not as much as a case with many)
        "mean_slice_dice": float(np.mean(all_slice_dice)) if all_slice_dice else float("nan"),
        "n_tumour_slices": len(all_slice_dice),
        "bundle": str(run), "figure": str(figure),
    }
    (output / "demo_results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for r in results:
        print(f"{r['case']}: volume Dice {r['volume_dice']:.3f}, slice-level Dice {r['slice_dice']:.3f} over {r['n_tumour_slices']} tumour slices")
    print(f"mean volume Dice {summary['mean_volume_dice']:.3f} over {len(results)} case(s), "
          f"slice-level Dice {summary['mean_slice_dice']:.3f} over all {summary['n_tumour_slices']} tumour slices")
    print(f"bundle: {run}\nfigure: {figure}")
    return summary
