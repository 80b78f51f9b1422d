"""Flip test-time augmentation (``--augment flip``, 0.5.21) on AME-CAM runs trained before it existed.

    python benchmarks/tta.py bench_output/lgg_cv_fold0 bench_output/lgg_cv_fold1 ...   # folders of benchmarks/lgg.py
    python benchmarks/lgg_cv.py bench_output/lgg_cv_fold0 ... bench_output/lgg_cv_fold3   # then prints the TTA rows too

A trained bundle runs with its own code, and a run trained before 0.5.21 cannot take ``--augment``. For each SOURCE this
script therefore makes ``SOURCE/run_tta``: the run's metadata, docs and weights (``models/model.pt``, copied, never
changed) with this toolkit's ``scripts/`` and ``configs/inference.yaml``. Before scoring, it checks that the copy
without augmentation gives *exactly* the run's own output (the same ``(B, 2, S, S)`` tensor on the first 16
slices of the first case in its slice folder), so the only difference in what follows is the augmentation. Then, printed as it runs:

    amecam evaluate --data_dir SOURCE/test.json --bundle SOURCE/run_tta -o SOURCE/report_crf_tta \\
        --methods amecam,attention --crf --augment flip

``SOURCE/report_crf_tta`` is what ``benchmarks/lgg_cv.py`` reads for its "flip TTA" rows. A folder whose
``run_tta`` and report exist is left as it is.

    python benchmarks/tta.py --copy RUN COPY   # only the checked copy of one bundle folder (for speed.py infer --augment)
    python benchmarks/tta.py --compare SOURCE ...   # per run: what --augment flip changed, from the two reports
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, amecam, read_json  # noqa: E402

REPORT = "report_crf_tta"


def make_copy(run: Path, copy: Path) -> None:
    """``copy``: ``run``'s metadata (``network_args.tta`` set to ``none``), docs, LICENSE and weights, this
    toolkit's scripts and inference config."""
    template = REPO / "bundle"
    tmp = copy.with_name(copy.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "configs").mkdir(parents=True)
    (tmp / "models").mkdir()
    shutil.copytree(template / "scripts", tmp / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(template / "configs" / "inference.yaml", tmp / "configs" / "inference.yaml")
    metadata = read_json(run / "configs" / "metadata.json")
    metadata.setdefault("network_args", {})["tta"] = "none"
    (tmp / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=4) + "\n", encoding="utf-8")
    for name in ("docs", "LICENSE"):
        if (run / name).is_dir():
            shutil.copytree(run / name, tmp / name)
        elif (run / name).is_file():
            shutil.copy2(run / name, tmp / name)
    shutil.copy2(run / "models" / "model.pt", tmp / "models" / "model.pt")
    tmp.rename(copy)


def check_same_output(run: Path, copy: Path) -> int:
    """The copy without augmentation computes exactly what the run does; returns the slices compared."""
    import numpy as np
    import torch

    from amecam_cli.bundle import open_bundle

    own = open_bundle(run, device="cpu")
    size, channels = own.image_size, len(own.modalities)
    stacks = sorted((run / "slices" / "images").glob("*.npy"))
    if stacks:  # the first case's slices (training or validation), as training prepared them
        x = torch.as_tensor(np.load(stacks[0])[:16].astype(np.float32))
    else:  # slices not kept: a seeded random batch with an empty border, as preprocessing leaves outside the brain
        x = torch.rand(8, channels, size, size, generator=torch.Generator().manual_seed(0))
        x[..., : size // 8, :] = 0
    with torch.no_grad():
        expected = own.network(x)
        got = open_bundle(copy, device="cpu", tta="none").network(x)
    if not torch.equal(expected, got):
        raise SystemExit(f"{copy}: without augmentation its output differs from {run}'s (largest difference "
                         f"{(expected - got).abs().max().item():.3g}); the run's code is not this toolkit's, so a "
                         "TTA score of the copy would not be the run's")
    return len(x)


COMPARED = ("amecam", "attention", "amecam+crf", "attention+crf")


def compare(sources: list[Path]) -> None:
    """Print, per SOURCE, --augment flip's change of slice Dice (points) of each map, of the paper's map + DenseCRF's
    volume Dice, of the classifier's slice AUC, and the seconds spent on the maps, from ``report_crf`` and
    ``report_crf_tta``."""
    print("| run | " + " | ".join(f"{m} slice Dice" for m in COMPARED) + " | amecam+crf volume Dice | slice AUC | maps (s) |")
    print("|---|" + "---|" * (len(COMPARED) + 3))
    ups = {m: 0 for m in COMPARED}
    for source in sources:
        paths = [source / name / "report.json" for name in ("report_crf", REPORT)]
        for path in paths:
            if not path.is_file():
                raise SystemExit(f"{path}: missing; run amecam evaluate (report_crf) and this script on {source} first")
        plain, flipped = (read_json(path, report=True) for path in paths)
        if (flipped.get("tta") or "none") != "flip" or (plain.get("tta") or "none") != "none":
            raise SystemExit(f"{source}: {REPORT} must be scored with --augment flip and report_crf without it")
        cells = []
        for method in COMPARED:
            change = flipped["methods"][method]["slice"]["dice"] - plain["methods"][method]["slice"]["dice"]
            ups[method] += change > 0
            cells.append(f"{100 * change:+.1f}")
        volume = flipped["methods"]["amecam+crf"]["volume"]["dice"] - plain["methods"]["amecam+crf"]["volume"]["dice"]
        auc = f"{plain['classifier_slice_auc']:.3f} -> {flipped['classifier_slice_auc']:.3f}"
        seconds = f"{plain['seconds']['maps']:.0f} -> {flipped['seconds']['maps']:.0f}"
        print(f"| {source.name} | " + " | ".join(cells) + f" | {100 * volume:+.1f} | {auc} | {seconds} |")
    print("| higher with flips | " + " | ".join(f"{ups[m]} of {len(sources)}" for m in COMPARED) + " | | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", type=Path, nargs="*", help="folders of benchmarks/lgg.py (SOURCE/run, SOURCE/test.json)")
    parser.add_argument("--copy", type=Path, nargs=2, metavar=("RUN", "COPY"), help="make and check COPY of the bundle RUN, nothing else")
    parser.add_argument("--compare", action="store_true", help="only print what the augmentation changed in each SOURCE's scores")
    args = parser.parse_args()
    if args.compare:
        if not args.sources:
            parser.error("--compare needs the folders of benchmarks/lgg.py")
        compare(args.sources)
        return
    if args.copy:
        run, copy = args.copy
        if not (run / "models" / "model.pt").is_file():
            raise SystemExit(f"{run}: not a trained bundle (no models/model.pt)")
        if copy.exists():
            raise SystemExit(f"{copy}: exists; remove it or name another folder")
        make_copy(run, copy)
        print(f"{copy}: without --augment the same output as {run} on {check_same_output(run, copy)} slices")
        return
    if not args.sources:
        parser.error("give the folders of benchmarks/lgg.py, or --copy RUN COPY")
    for source in args.sources:
        run, test_list = source / "run", source / "test.json"
        for needed in (run / "models" / "model.pt", test_list):
            if not needed.exists():
                raise SystemExit(f"{needed}: missing; {source} is not a finished run of benchmarks/lgg.py")
    for source in args.sources:
        run, test_list, copy, report = source / "run", source / "test.json", source / "run_tta", source / REPORT
        if (report / "report.json").is_file():
            print(f"{report}: exists, kept", flush=True)
            continue
        if not copy.is_dir():
            make_copy(run, copy)
        compared = check_same_output(run, copy)
        print(f"{copy}: without --augment the same output as {run} on {compared} slices", flush=True)
        seconds = amecam("evaluate", "--data_dir", test_list, "--bundle", copy, "-o", report, "--methods", "amecam,attention",
                         "--crf", "--augment", "flip", "--device", "cpu", log=source / "commands.log")
        print(f"{report}: {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
