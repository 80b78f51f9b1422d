"""Would another mask-free rule orient the exit maps better than the deletion-and-insertion test?

    python benchmarks/polarity_criteria.py bench_output/lgg_stem1/run bench_output/lgg/run ...

For every trained bundle given (its ``slices/`` folder must still be there), on up to 96 validation
tumour slices (cases the classifier did not train on, the slices ``amecam train`` itself orients
with): the raw deletion and insertion evidence of each exit map (``scripts.train.deletion_scores``,
the polarity as trained set to +1), summarised several ways, and the slice Dice of both orientations
against the expert masks stored beside the slices. Each candidate rule picks a sign from the evidence
alone; the masks only judge the pick. The shipped rule is ``mean erase + mean keep``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

#: mask-free rules: each maps the per-slice evidence of one exit to a number whose sign is the polarity
RULES = {
    "mean erase + mean keep (shipped)": lambda e, k: e.mean() + k.mean(),
    "mean erase only": lambda e, k: e.mean(),
    "mean keep only": lambda e, k: k.mean(),
    "median erase + median keep": lambda e, k: np.median(e) + np.median(k),
    "majority of slices, erase and keep": lambda e, k: (e > 0).mean() + (k > 0).mean() - 1.0,
}


def analyse(run: Path, max_slices: int) -> list[dict]:
    import torch

    from amecam_bundle.scripts.networks import brain_region, minmax_per_image

    from amecam_cli.bundle import open_bundle
    from amecam_cli.metrics import dice as slice_dice

    bundle = open_bundle(run, device="cpu")
    deletion_scores = bundle.module("train").deletion_scores
    slices = bundle.module("data").SliceSet(run / "slices", "val", labels=("tumor",))
    if not len(slices):
        raise SystemExit(f"{run}: no validation tumour slices in {run / 'slices'}")
    classifier = bundle.network.classifier.eval()
    trained = classifier.exit_polarity.clone()
    classifier.exit_polarity.fill_(1.0)
    indices = list(range(min(len(slices), max_slices)))
    erase, keep = [[] for _ in range(4)], [[] for _ in range(4)]
    dice = np.zeros((4, 2))
    with torch.no_grad():
        for start in range(0, len(indices), 32):
            batch = indices[start : start + 32]
            x, _ = slices.batch(batch)
            masks = slices.targets("masks", batch).numpy() > 0
            brain = brain_region(x)
            _, maps = classifier.exit_maps(x)
            for k in range(4):
                scores = deletion_scores(classifier, x, maps[:, k])
                erase[k].append((scores["erase_low"] - scores["erase_high"]).numpy())
                keep[k].append((scores["keep_high"] - scores["keep_low"]).numpy())
                versions = (maps[:, k : k + 1], minmax_per_image(1 - maps[:, k : k + 1], brain))
                for o, version in enumerate(versions):
                    predicted = (version[:, 0] >= 0.5).numpy() & brain[:, 0].numpy()
                    dice[k, o] += sum(slice_dice(predicted[b], masks[b]) for b in range(len(batch)))
    classifier.exit_polarity.copy_(trained)
    dice /= len(indices)
    rows = []
    for k in range(4):
        e, kp = np.concatenate(erase[k]), np.concatenate(keep[k])
        rows.append({
            "bundle": str(run), "exit": k + 1, "slices": len(indices), "trained_polarity": int(trained[k]),
            "dice_plus": float(dice[k, 0]), "dice_minus": float(dice[k, 1]),
            "right": 1 if dice[k, 0] >= dice[k, 1] else -1,
            "erase_mean": float(e.mean()), "keep_mean": float(kp.mean()),
            "picks": {name: 1 if rule(e, kp) >= 0 else -1 for name, rule in RULES.items()},
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="trained bundle folders that still hold slices/")
    parser.add_argument("--max_slices", type=int, default=96, help="validation tumour slices per bundle (training uses 96)")
    parser.add_argument("--out", type=Path, default=Path("bench_output/polarity_criteria.json"))
    args = parser.parse_args()

    rows = [row for run in args.runs for row in analyse(run, args.max_slices)]
    print("| Bundle | Exit | Dice +1 | Dice -1 | Right | mean erase | mean keep | " + " | ".join(RULES) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(RULES))
    for row in rows:
        picks = " | ".join(f"{row['picks'][name]:+d}" + ("" if row["picks"][name] == row["right"] else " (wrong)") for name in RULES)
        print(f"| {Path(row['bundle']).parent.name or row['bundle']} | {row['exit']} | {row['dice_plus']:.3f} | {row['dice_minus']:.3f} "
              f"| {row['right']:+d} | {row['erase_mean']:+.2f} | {row['keep_mean']:+.2f} | {picks} |")
    print()
    summary = {}
    for name in RULES:
        wrong = [f"{Path(r['bundle']).parent.name} exit {r['exit']}" for r in rows if r["picks"][name] != r["right"]]
        summary[name] = {"right": len(rows) - len(wrong), "of": len(rows), "wrong": wrong}
        print(f"- {name}: {len(rows) - len(wrong)}/{len(rows)} right" + (f"; wrong: {', '.join(wrong)}" if wrong else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "summary": summary,
                                    "command": "python benchmarks/polarity_criteria.py " + " ".join(sys.argv[1:])}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
