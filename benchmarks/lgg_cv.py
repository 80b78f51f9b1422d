"""LGG FLAIR 4-fold cross-validation: every one of the 80 patients held out once, the table of its folds.

    python benchmarks/lgg.py --seed 0 --fold K --out bench_output/lgg_cv_foldK ...   # K = 0..3, then for each:
    amecam evaluate --data_dir RUN_DIR/test.json --bundle RUN_DIR/run -o RUN_DIR/report_crf --methods amecam,attention --crf
    amecam evaluate --data_dir RUN_DIR/test.json --bundle RUN_DIR/run -o RUN_DIR/report_threshold --methods threshold
    python benchmarks/segmentation.py --source RUN_DIR --epochs 8 --crf   # optional: the two U-Net rows
    python benchmarks/lgg_cv.py bench_output/lgg_cv_fold0 bench_output/lgg_cv_fold1 ...
    python benchmarks/lgg_cv.py FOLD0 ... FOLD3 --repeat FOLD0_SEED1 ... FOLD3_SEED1   # the same folds, other training seeds

Reads each fold's ``summary.json`` (its test patients) and the ``report.json`` of ``report``, ``report_crf`` and
``report_threshold`` (and of ``report_crf_tta``, the same maps with flip test-time augmentation, where
benchmarks/tta.py ran, and of ``segmentation/report``, or ``--segmentation``'s, where benchmarks/segmentation.py
ran); checks that the folds' test patients are disjoint; prints one row per method with the slice Dice of each
fold, the slice Dice pooled over every tumour slice of every fold (each slice counts once), the mean volume Dice
over the patients, and on how many folds the slice Dice reaches ``--aim``.

With ``--repeat`` (once per further set of runs: the same folds trained again with ``lgg.py --train_seed``), it
prints that table for each set, then one table of the pooled slice Dice per set, their mean and their sample standard
deviation (how far one set of runs moves), so that a verdict on the aim rests on every training seed that was run, not
on one draw. Every set must hold out the same patients.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BadInput, read_json  # noqa: E402
from tta import REPORT as TTA_REPORT  # noqa: E402  (the same maps with --augment flip; the only report scored with it)
ROWS = [  # (label, report folder, method key)
    ("AME-CAM (mean of M1-M4 and Mf)", "report", "amecam"),
    ("Mf alone", "report", "attention"),
    ("Exit 1", "report", "exit1"),
    ("Exit 2", "report", "exit2"),
    ("Exit 3", "report", "exit3"),
    ("Exit 4", "report", "exit4"),
    ("AME-CAM + DenseCRF", "report_crf", "amecam+crf"),
    ("Mf + DenseCRF", "report_crf", "attention+crf"),
    ("AME-CAM, flip TTA", TTA_REPORT, "amecam"),
    ("Mf alone, flip TTA", TTA_REPORT, "attention"),
    ("AME-CAM + DenseCRF, flip TTA", TTA_REPORT, "amecam+crf"),
    ("Mf + DenseCRF, flip TTA", TTA_REPORT, "attention+crf"),
    ("brightness threshold (no training)", "report_threshold", "threshold"),
    ("U-Net on AME-CAM's pseudo-labels", "{segmentation}/report", "unet_pseudo"),
    ("supervised U-Net (expert masks; upper bound)", "{segmentation}/report", "supervised"),
]

PSEUDO_LABEL = next(label for label, _, key in ROWS if key == "unet_pseudo")


def _unet_settings(report: dict, key: str, run: Path) -> dict:
    """``amecam train-seg``'s settings recorded in the U-Net bundle that ``report`` scored as ``key``.

    Read from the bundle itself, not from benchmarks/segmentation.py's summary.json: a U-Net copied in from another
    run (as 2j and 2k reuse the supervised ones) keeps the seed and length it was trained with. The path the report
    recorded is tried first, then the folder of that name beside the report (where segmentation.py writes it)."""
    recorded = (report.get("extra_bundles") or {}).get(key)
    if not recorded:
        return {}
    for bundle in (Path(recorded), run / Path(recorded).name):
        metadata = bundle / "configs" / "metadata.json"
        if metadata.is_file():
            return read_json(metadata).get("amecam_training", {}).get("settings", {})
    return {}


def fold_scores(folder: Path, segmentation: str = "segmentation") -> dict:
    """Per method: (slice Dice, tumour slices, volume Dice, patients, index in ROWS) of one fold; absent reports are skipped.

    The pseudo-label U-Net's row names the fusion of the AME-CAM bundle that labelled it, and both U-Net rows the
    epochs and seed they trained with (from each U-Net bundle's metadata), so folds labelled by different maps or
    trained for different lengths or seeds land in different rows instead of being pooled."""
    scores = {}
    for row, (label, report, key) in enumerate(ROWS):
        path = folder / report.format(segmentation=segmentation) / "report.json"
        if not path.is_file():
            continue
        content = read_json(path, report=True)
        augmented = (content.get("tta") or "none") != "none"
        if augmented != (report == TTA_REPORT):  # a row's label says whether its maps were augmented: it must be so
            raise BadInput(f"{path}: scored {'with' if augmented else 'without'} --augment, but the rows of {report}/ are "
                           f"{'with --augment flip (benchmarks/tta.py)' if report == TTA_REPORT else 'without it'}")
        method = content["methods"].get(key)
        if method is not None:
            if key == "unet_pseudo":
                label = f"{label} (labelled by fusion {content.get('fusion') or 'mean'})"
            if key in ("unet_pseudo", "supervised"):
                settings = _unet_settings(content, key, path.parent.parent)
                label += f", {settings.get('epochs') or 'unknown'} epochs, seed {settings.get('seed', 'unknown')}"
            s, v = method["slice"], method["volume"]
            scores[label] = (s["dice"], s["n_dice"], v["dice"], v["n_dice"], row)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folds", type=Path, nargs="+", help="the folders of benchmarks/lgg.py, one per fold")
    parser.add_argument("--repeat", type=Path, nargs="+", action="append", default=[], metavar="FOLD",
                        help="the same folds trained again (lgg.py --train_seed); once per further set of runs")
    parser.add_argument("--aim", type=float, default=0.65, help="slice Dice the issue aims for (default 0.65)")
    parser.add_argument("--segmentation", default="segmentation",
                        help="each fold's folder of benchmarks/segmentation.py (its --out), relative to the fold (default segmentation)")
    args = parser.parse_args(argv)
    try:
        return _tables(args)
    except BadInput as error:
        print(error, file=sys.stderr)
        return 2


def _held_out(folds: list[Path]) -> tuple[dict[str, Path], list]:
    """Each held-out patient and its fold (refusing a patient held out twice), and the training seeds of the folds."""
    tested: dict[str, Path] = {}
    seeds = []
    for folder in folds:
        if not (folder / "summary.json").is_file():
            raise BadInput(f"{folder}: no summary.json; give the --out folders of benchmarks/lgg.py")
        summary = read_json(folder / "summary.json")
        cases = summary.get("test_cases")
        if not isinstance(cases, list):
            raise BadInput(f"{folder / 'summary.json'}: no list of test_cases; give the --out folders of benchmarks/lgg.py")
        for case in cases:
            if case in tested:
                raise BadInput(f"{case} is held out by both {tested[case]} and {folder}: not a cross-validation")
            tested[case] = folder
        seed = summary.get("train_seed", summary.get("seed"))  # lgg.py trains with --seed unless --train_seed is given
        if seed not in seeds:
            seeds.append(seed)
    return tested, seeds


def _seed_name(seeds: list) -> str:
    return "training seed" + ("s " if len(seeds) > 1 else " ") + "/".join("unknown" if s is None else str(s) for s in seeds)


def _across_sets(label: str, seeds: list) -> str:
    """``label`` as the table over the sets matches it: a pseudo-label U-Net trained with its AME-CAM run's own seed
    (``train-seg``'s default) is the same recipe in every set, whatever that seed is."""
    default = f", seed {seeds[0]}"
    if len(seeds) == 1 and label.startswith(PSEUDO_LABEL) and label.endswith(default):
        return label[: -len(default)] + ", seed of its AME-CAM run (train-seg's default)"
    return label


def _table(folds: list[Path], per_fold: list[dict], aim: float) -> dict[str, float | None]:
    """Print one set's table; return each row's slice Dice pooled over the folds (None where a fold lacks it)."""
    names = " | ".join(f"fold {i}" for i in range(len(folds)))
    print(f"| slice Dice | {names} | pooled over the folds' tumour slices | volume Dice, mean over patients | folds >= {aim} |")
    print("|---|" + "---|" * (len(folds) + 3))
    rank = {label: cells[4] for fold in per_fold for label, cells in fold.items()}
    pooled_rows: dict[str, float | None] = {}
    for label in sorted(rank, key=rank.get):  # ROWS' order, a row's fusion and length variants together (stable sort)
        cells = [fold.get(label) for fold in per_fold]
        shown = " | ".join("not run" if c is None else f"{c[0]:.3f}" for c in cells)
        done = [c for c in cells if c is not None]
        pooled_rows[label] = None
        if len(done) == len(cells):
            pooled = pooled_rows[label] = sum(c[0] * c[1] for c in done) / sum(c[1] for c in done)
            volume = sum(c[2] * c[3] for c in done) / sum(c[3] for c in done)
            summary = f"{pooled:.3f} ({sum(c[1] for c in done)} slices) | {volume:.3f} ({sum(c[3] for c in done)} patients)"
        else:
            summary = "not every fold | not every fold"
        reached = sum(c[0] >= aim for c in done)
        print(f"| {label} | {shown} | {summary} | {reached} of {len(done)} |")
    return pooled_rows


def _tables(args: argparse.Namespace) -> int:
    sets = [args.folds] + args.repeat
    held_out = [_held_out(folds) for folds in sets]
    for folds, (tested, _) in zip(sets[1:], held_out[1:]):
        if tested.keys() != held_out[0][0].keys():
            raise BadInput(f"--repeat {' '.join(map(str, folds))}: holds out other patients than the first set of "
                           "folds; a repeat must train the same folds again")
    pooled = []
    for folds, (tested, seeds) in zip(sets, held_out):
        heading = f" ({_seed_name(seeds)})" if len(sets) > 1 else ""
        print(f"{len(tested)} patients held out once each over {len(folds)} folds{heading}\n")
        rows = _table(folds, [fold_scores(folder, args.segmentation) for folder in folds], args.aim)
        pooled.append({_across_sets(label, seeds): value for label, value in rows.items()})
        if len(sets) > 1:
            print()
    if len(sets) > 1:
        print(f"Slice Dice pooled over the {len(held_out[0][0])} patients, per set of runs, and the mean over the sets\n")
        print("| slice Dice | " + " | ".join(_seed_name(seeds) for _, seeds in held_out)
              + f" | mean over the {len(sets)} sets | standard deviation over the sets | sets >= {args.aim} |")
        print("|---|" + "---|" * (len(sets) + 3))
        labels = list(dict.fromkeys(label for rows in pooled for label in rows))
        for label in labels:
            values = [rows.get(label) for rows in pooled]
            shown = " | ".join("not run" if label not in rows else "not every fold" if v is None else f"{v:.3f}"
                               for rows, v in zip(pooled, values))
            if any(v is None for v in values):
                print(f"| {label} | {shown} | not every set | not every set | not every set |")
            else:
                reached = sum(v >= args.aim for v in values)
                spread = statistics.stdev(values)  # sample standard deviation (n - 1): how far one set moves
                print(f"| {label} | {shown} | {statistics.mean(values):.3f} | {spread:.3f} | {reached} of {len(values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
