"""LGG FLAIR 4-fold cross-validation: every one of the 80 patients held out once, the table of its folds.

    python benchmarks/lgg.py --seed 0 --fold K --out bench_output/lgg_cv_foldK ...   # K = 0..3, then for each:
    amecam evaluate --data_dir RUN_DIR/test.json --bundle RUN_DIR/run -o RUN_DIR/report_crf --methods amecam,attention --crf
    amecam evaluate --data_dir RUN_DIR/test.json --bundle RUN_DIR/run -o RUN_DIR/report_threshold --methods threshold
    python benchmarks/segmentation.py --source RUN_DIR --epochs 8 --crf   # optional: the two U-Net rows
    python benchmarks/lgg_cv.py bench_output/lgg_cv_fold0 bench_output/lgg_cv_fold1 ...

Reads each fold's ``summary.json`` (its test patients) and the ``report.json`` of ``report``, ``report_crf`` and
``report_threshold`` (and of ``segmentation/report``, or ``--segmentation``'s, where benchmarks/segmentation.py ran); checks that the folds' test patients are disjoint; prints one row per method with the
slice Dice of each fold, the slice Dice pooled over every tumour slice of every fold (each slice counts once),
the mean volume Dice over the patients, and on how many folds the slice Dice reaches ``--aim``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BadInput, read_json  # noqa: E402

ROWS = [  # (label, report folder, method key)
    ("AME-CAM (mean of M1-M4 and Mf)", "report", "amecam"),
    ("Mf alone", "report", "attention"),
    ("Exit 1", "report", "exit1"),
    ("Exit 2", "report", "exit2"),
    ("Exit 3", "report", "exit3"),
    ("Exit 4", "report", "exit4"),
    ("AME-CAM + DenseCRF", "report_crf", "amecam+crf"),
    ("Mf + DenseCRF", "report_crf", "attention+crf"),
    ("brightness threshold (no training)", "report_threshold", "threshold"),
    ("U-Net on AME-CAM's pseudo-labels", "{segmentation}/report", "unet_pseudo"),
    ("supervised U-Net (expert masks; upper bound)", "{segmentation}/report", "supervised"),
]


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
    parser.add_argument("--aim", type=float, default=0.65, help="slice Dice the issue aims for (default 0.65)")
    parser.add_argument("--segmentation", default="segmentation",
                        help="each fold's folder of benchmarks/segmentation.py (its --out), relative to the fold (default segmentation)")
    args = parser.parse_args(argv)
    try:
        return _table(args)
    except BadInput as error:
        print(error, file=sys.stderr)
        return 2


def _table(args: argparse.Namespace) -> int:
    tested: dict[str, Path] = {}
    for folder in args.folds:
        if not (folder / "summary.json").is_file():
            raise BadInput(f"{folder}: no summary.json; give the --out folders of benchmarks/lgg.py")
        cases = read_json(folder / "summary.json").get("test_cases")
        if not isinstance(cases, list):
            raise BadInput(f"{folder / 'summary.json'}: no list of test_cases; give the --out folders of benchmarks/lgg.py")
        for case in cases:
            if case in tested:
                raise BadInput(f"{case} is held out by both {tested[case]} and {folder}: not a cross-validation")
            tested[case] = folder
    per_fold = [fold_scores(folder, args.segmentation) for folder in args.folds]
    names = " | ".join(f"fold {i}" for i in range(len(args.folds)))
    print(f"{len(tested)} patients held out once each over {len(args.folds)} folds\n")
    print(f"| slice Dice | {names} | pooled over the folds' tumour slices | volume Dice, mean over patients | folds >= {args.aim} |")
    print("|---|" + "---|" * (len(args.folds) + 3))
    rank = {label: cells[4] for fold in per_fold for label, cells in fold.items()}
    labels = sorted(rank, key=rank.get)  # ROWS' order, a row's fusion and length variants together (stable sort)
    for label in labels:
        cells = [fold.get(label) for fold in per_fold]
        shown = " | ".join("not run" if c is None else f"{c[0]:.3f}" for c in cells)
        done = [c for c in cells if c is not None]
        if len(done) == len(cells):
            pooled = sum(c[0] * c[1] for c in done) / sum(c[1] for c in done)
            volume = sum(c[2] * c[3] for c in done) / sum(c[3] for c in done)
            summary = f"{pooled:.3f} ({sum(c[1] for c in done)} slices) | {volume:.3f} ({sum(c[3] for c in done)} patients)"
        else:
            summary = "not every fold | not every fold"
        reached = sum(c[0] >= args.aim for c in done)
        print(f"| {label} | {shown} | {summary} | {reached} of {len(done)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
