"""What ``--skull_strip`` does to the brain mask, measured against the expert masks.

    python benchmarks/skull_strip.py

No training. For each LGG FLAIR patient of ../shared/data (not skull-stripped), with and without
stripping: the share of the tumour voxels inside the brain mask, and the slice Dice of the brightness
reference (normalised intensity >= 0.5 inside the mask, the ``threshold`` row of ``amecam evaluate``)
on every tumour slice (tumour > 1% of the slice), for all 80 patients and for the 20 held out by
``benchmarks/lgg.py`` (seed 0). For the skull-stripped BraTS 2021 and BRATS 2013 FLAIR volumes: the
share of the brain mask that stripping would remove (it is meant for volumes that are not stripped).
Writes ``bench_output/skull_strip/summary.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUTPUT, SHARED_DATA, machine, split_by_case  # noqa: E402


def _slice_dice(prepared, label: np.ndarray, tumour_zs: list[int]) -> list[float]:
    from amecam_cli.metrics import dice

    bright = (prepared.image.mean(axis=0) >= 0.5) & prepared.brain
    return [float(dice(bright[:, :, z], label[:, :, z])) for z in tumour_zs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUTPUT / "skull_strip")
    args = parser.parse_args()

    from amecam_bundle.scripts.preprocess import prepare_volume
    from amecam_cli.cases import find_cases, load_case
    from amecam_cli.slicing import tumour_slice_indices

    data = SHARED_DATA / "lgg-flair"
    if not data.is_dir():
        raise SystemExit(f"{data}: the LGG FLAIR data is not there (expected ../shared/data/lgg-flair)")
    cases = find_cases(data, "flair")
    _, test = split_by_case(cases, 20, 0)
    held_out = {c.case_id for c in test}
    rows, seconds = [], []
    for case in cases:
        loaded = load_case(case)
        label = loaded.label > 0
        zs = tumour_slice_indices(loaded.label, range(label.shape[2]))
        plain = prepare_volume(loaded.channels)
        started = time.perf_counter()
        stripped = prepare_volume(loaded.channels, strip_skull=True)
        seconds.append(time.perf_counter() - started)
        rows.append({
            "case": case.case_id, "held_out": case.case_id in held_out,
            "tumour_kept": {"off": float((label & plain.brain).sum() / max(label.sum(), 1)),
                            "on": float((label & stripped.brain).sum() / max(label.sum(), 1))},
            "brain_voxels": {"off": int(plain.brain.sum()), "on": int(stripped.brain.sum())},
            "slice_dice": {"off": _slice_dice(plain, label, zs), "on": _slice_dice(stripped, label, zs)},
        })
        print(f"{case.case_id}: tumour kept {rows[-1]['tumour_kept']['on']:.3f}, "
              f"brightness Dice {np.mean(rows[-1]['slice_dice']['off'] or [np.nan]):.3f} -> {np.mean(rows[-1]['slice_dice']['on'] or [np.nan]):.3f}",
              flush=True)

    stripped_sets = []
    brats = SHARED_DATA / "brats2021" / "BraTS2021_00006"
    if brats.is_dir():
        stripped_sets += [("BraTS2021_00006", c) for c in find_cases(brats.parent, "flair")]
    b13 = SHARED_DATA / "brats2013"
    if b13.is_dir():
        pattern = "flair={case}/Flair_subtrMeanDivStd.nii.gz;label={case}/OTMultiClass.nii.gz"
        stripped_sets += [(c.case_id, c) for c in find_cases(b13, "flair", pattern=pattern)]
    removed = {}
    for name, case in stripped_sets:
        loaded = load_case(case)
        plain = prepare_volume(loaded.channels)
        stripped = prepare_volume(loaded.channels, strip_skull=True)
        removed[name] = {"brain_removed": float(1 - stripped.brain.sum() / plain.brain.sum()),
                         "tumour_kept": float(((loaded.label > 0) & stripped.brain).sum() / max((loaded.label > 0).sum(), 1))}

    def summary(subset: list[dict]) -> dict:
        out = {"patients": len(subset)}
        for arm in ("off", "on"):
            dices = [d for r in subset for d in r["slice_dice"][arm]]
            kept = [r["tumour_kept"][arm] for r in subset]
            out[arm] = {"tumour_slices": len(dices), "brightness_slice_dice": float(np.mean(dices)),
                        "tumour_kept_mean": float(np.mean(kept)), "tumour_kept_min": float(np.min(kept)),
                        "brain_voxels_mean": float(np.mean([r["brain_voxels"][arm] for r in subset]))}
        return out

    result = {"lgg_all": summary(rows), "lgg_held_out": summary([r for r in rows if r["held_out"]]),
              "strip_seconds_per_volume": float(np.mean(seconds)), "skull_stripped_volumes": removed,
              "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "command": f"python benchmarks/skull_strip.py {' '.join(sys.argv[1:])}".strip(), "patients": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    print(f"\n{machine()}; stripping takes {result['strip_seconds_per_volume']:.2f} s per LGG volume (mean)\n")
    print("| LGG FLAIR | patients | tumour slices | brightness slice Dice | tumour voxels in the mask (mean / worst patient) | brain-mask voxels (mean) |")
    print("|---|---|---|---|---|---|")
    for key, title in (("lgg_all", "all"), ("lgg_held_out", "20 held out (lgg.py, seed 0)")):
        for arm in ("off", "on"):
            s = result[key][arm]
            print(f"| {title}, --skull_strip {arm} | {result[key]['patients']} | {s['tumour_slices']} | {s['brightness_slice_dice']:.3f} | "
                  f"{s['tumour_kept_mean']:.3f} / {s['tumour_kept_min']:.3f} | {s['brain_voxels_mean']:,.0f} |")
    if removed:
        print("\n| skull-stripped FLAIR volume | share of the brain mask stripping removes | tumour voxels kept |")
        print("|---|---|---|")
        for name, r in removed.items():
            print(f"| {name} | {r['brain_removed']:.3f} | {r['tumour_kept']:.3f} |")


if __name__ == "__main__":
    main()
