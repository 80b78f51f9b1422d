"""Diagnosis, not tuning: how the Dice of each map depends on the threshold, and how big its masks are.

    python benchmarks/threshold_sweep.py --bundle bench_output/lgg/run --data bench_output/lgg/test.json

For every tumour slice of the given cases, thresholds each map at 0.3 ... 0.9 and reports the mean
slice Dice and the mean ratio of predicted to true tumour area. It uses the held-out masks, so a
threshold picked from this table would be tuned on the test set: the shipped default stays 0.5. The
table only explains *why* a map scores as it does (masks too large, too small, or in the wrong place).
Writes ``threshold_sweep.json`` beside the bundle's reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder or datalist with masks")
    parser.add_argument("--methods", default="amecam,exit1,exit2,exit3,exit4,mean_exits,attention,gradcam")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from amecam_bundle.scripts.preprocess import extract_slices, paste_slices, prepare_volume

    from amecam_cli.bundle import open_bundle
    from amecam_cli.cams import compute_maps
    from amecam_cli.cases import find_cases, load_case
    from amecam_cli.metrics import dice

    bundle = open_bundle(args.bundle, device="cpu")
    methods = tuple(args.methods.split(","))
    dices = {m: {t: [] for t in THRESHOLDS} for m in methods}
    ratios = {m: {t: [] for t in THRESHOLDS} for m in methods}
    lesion_share = []  # tumour area / brain area per tumour slice: how small the targets are
    for case in find_cases(args.data, bundle.modalities):
        loaded = load_case(case)
        prepared = prepare_volume(loaded.channels, brain=loaded.brain)
        shape = loaded.label.shape
        zs = [z for z in prepared.brain_slices if loaded.label[:, :, z].sum() > 0.01 * shape[0] * shape[1]]
        if not zs:
            continue
        lesion_share += [float(loaded.label[:, :, z].sum() / max(prepared.brain[:, :, z].sum(), 1)) for z in zs]
        maps = compute_maps(bundle.network, extract_slices(prepared.image, prepared.box, zs, bundle.image_size), methods)
        for method in methods:
            full = paste_slices(maps[method], prepared.box, shape[:2]).numpy()
            for i, z in enumerate(zs):
                truth = loaded.label[:, :, z].astype(bool)
                for t in THRESHOLDS:
                    pred = (full[i] >= t) & prepared.brain[:, :, z]
                    dices[method][t].append(dice(pred, truth))
                    ratios[method][t].append(pred.sum() / max(truth.sum(), 1))
    rows = {m: {str(t): {"dice": float(np.mean(dices[m][t])), "area_ratio": float(np.median(ratios[m][t]))} for t in THRESHOLDS}
            for m in methods}
    print("Mean slice Dice (median predicted/true area) per threshold\n")
    print("| Map | " + " | ".join(f"{t:.1f}" for t in THRESHOLDS) + " |")
    print("|---|" + "---|" * len(THRESHOLDS))
    for m in methods:
        cells = [f"{rows[m][str(t)]['dice']:.3f} ({rows[m][str(t)]['area_ratio']:.1f}x)" for t in THRESHOLDS]
        print(f"| {m} | " + " | ".join(cells) + " |")
    n = len(next(iter(dices[methods[0]].values())))
    quartiles = [float(q) for q in np.percentile(lesion_share, [25, 50, 75])]
    print(f"\n{n} tumour slices; tumour / brain area per slice: quartiles {quartiles[0]:.3f}, {quartiles[1]:.3f}, {quartiles[2]:.3f}")
    out = args.out or args.bundle / "threshold_sweep.json"
    out.write_text(json.dumps({"rows": rows, "n_slices": n, "lesion_share_quartiles": quartiles, "data": str(args.data),
                               "command": "python benchmarks/threshold_sweep.py " + " ".join(sys.argv[1:])}, indent=2) + "\n",
                   encoding="utf-8")


if __name__ == "__main__":
    main()
