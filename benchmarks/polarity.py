"""Does the automatic polarity pick the right orientation of every map? Checked against expert masks.

    python benchmarks/polarity.py --bundle bench_output/synthetic_flair/run --data bench_output/synthetic_flair/test.json

For each exit map and for Mf, compares the slice-level Dice (threshold 0.5, every tumour slice) of the
orientation the bundle chose without masks (the deletion-and-insertion test, see docs/method.md) with the opposite
orientation. The masks are used here only to judge the choice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder or datalist with masks")
    parser.add_argument("--pattern", default=None)
    args = parser.parse_args()

    import torch

    from amecam_bundle.scripts.networks import brain_region, minmax_per_image
    from amecam_bundle.scripts.preprocess import extract_slices, paste_slices, prepare_volume

    from amecam_cli.bundle import open_bundle
    from amecam_cli.cases import find_cases, load_case
    from amecam_cli.metrics import dice

    bundle = open_bundle(args.bundle, device="cpu")
    network = bundle.network
    chosen = {f"exit{k + 1}": float(network.classifier.exit_polarity[k]) for k in range(4)}
    chosen["attention"] = float(network.aggregator.polarity)
    scores: dict[str, dict[str, list[float]]] = {name: {"chosen": [], "opposite": []} for name in chosen}
    for case in find_cases(args.data, bundle.modalities, pattern=args.pattern):
        loaded = load_case(case)
        prepared = prepare_volume(loaded.channels, brain=loaded.brain)
        shape = loaded.label.shape
        zs = [z for z in prepared.brain_slices if loaded.label[:, :, z].sum() > 0.01 * shape[0] * shape[1]]
        if not zs:  # a held-out case without a tumour slice has nothing to judge
            continue
        x = extract_slices(prepared.image, prepared.box, zs, bundle.image_size)
        with torch.no_grad():
            maps = network.all_maps(x)
        brain = brain_region(x)
        per_map = {f"exit{k + 1}": maps["exits"][:, k : k + 1] for k in range(4)}
        per_map["attention"] = maps["attention"]
        for name, m in per_map.items():
            versions = {"chosen": m, "opposite": minmax_per_image(1 - m, brain)}
            for version, value in versions.items():
                full = paste_slices(value[:, 0], prepared.box, shape[:2]).numpy()
                for i, z in enumerate(zs):
                    scores[name][version].append(dice((full[i] >= 0.5) & prepared.brain[:, :, z], loaded.label[:, :, z]))
    rows = {}
    print("| Map | Polarity chosen without masks | Dice, chosen orientation | Dice, opposite orientation |")
    print("|---|---|---|---|")
    for name, polarity in chosen.items():
        kept, flipped = float(np.mean(scores[name]["chosen"])), float(np.mean(scores[name]["opposite"]))
        rows[name] = {"polarity": polarity, "dice_chosen": kept, "dice_opposite": flipped}
        print(f"| {name} | {polarity:+.0f} | {kept:.3f} | {flipped:.3f} |")
    out = args.bundle / "polarity_check.json"
    out.write_text(json.dumps({"rows": rows, "data": str(args.data), "command": "python benchmarks/polarity.py " + " ".join(sys.argv[1:])}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
