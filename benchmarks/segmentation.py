"""AME-CAM vs AME-CAM + U-Net (pseudo-labels) vs a fully supervised U-Net, on the same split.

    python benchmarks/segmentation.py --source bench_output/synthetic_flair     # after benchmarks/synthetic.py
    python benchmarks/segmentation.py --source bench_output/lgg                 # after benchmarks/lgg.py

Takes the AME-CAM bundle a Table-1 benchmark trained (``SOURCE/run``) and its case split
(``SOURCE/train.json``, ``SOURCE/test.json``), then, each an ``amecam`` command printed as it runs:

1. ``amecam train-seg`` on the training cases with AME-CAM pseudo-labels (the weakly supervised route);
2. ``amecam train-seg --supervised`` on the same training cases with their expert masks (upper bound);
3. ``amecam evaluate`` on the held-out cases with both U-Nets as extra rows beside AME-CAM.

Writes ``SOURCE/segmentation/summary.json`` (or ``--out``'s) and prints the table. A folder that already holds a
trained U-Net (``models/model.ts``) is reused, not trained again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import amecam, machine, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="output folder of benchmarks/synthetic.py or lgg.py")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--crf", action="store_true", help="refine the pseudo-labels with DenseCRF")
    parser.add_argument("--modality", default="flair")
    parser.add_argument("--seed", type=int, help="train-seg's --seed (default: the AME-CAM run's, as train-seg's own default); "
                        "another seed draws other initial weights and another validation split of the same training cases")
    parser.add_argument("--out", type=Path, help="folder for the U-Nets and the report (default SOURCE/segmentation); "
                        "a second schedule on the same source goes beside the first instead of over it")
    args = parser.parse_args()

    source = args.source
    run, train_list, test_list = source / "run", source / "train.json", source / "test.json"
    for needed in (run / "models" / "model.pt", train_list, test_list):
        if not needed.exists():
            raise SystemExit(f"{needed}: missing; run the Table-1 benchmark that writes {source} first")
    out = args.out or source / "segmentation"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    timings = {}
    runs = {"unet_pseudo": out / "unet_pseudo", "supervised": out / "unet_supervised"}
    for name, folder in runs.items():
        if (folder / "models" / "model.ts").is_file():
            print(f"reusing {folder}")
            continue
        extra = ["--supervised"] if name == "supervised" else (["--crf"] if args.crf else [])
        resume = ["--resume"] if (folder / "configs" / "amecam_train.json").is_file() else []
        timings[f"train_{name}"] = amecam("train-seg", "--bundle", run, "--data_dir", train_list, "--output_dir", folder,
                                          "--epochs", args.epochs, "--device", "cpu", *extra, *resume,
                                          *(["--seed", args.seed] if args.seed is not None and not resume else []), log=log)
    report_dir = out / "report"
    timings["evaluate"] = amecam("evaluate", "--data_dir", test_list, "--bundle", run, "-o", report_dir,
                                 "--methods", "amecam,threshold", "--extra_bundles", ",".join(map(str, runs.values())),
                                 "--device", "cpu", "--overwrite", log=log)
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    summary = {
        "source": str(source), "epochs": args.epochs, "seed": args.seed, "pseudo_label_crf": args.crf, "n_test_slices": report["n_slices"],
        "timings_s": timings, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
        "commands": [f"python benchmarks/segmentation.py {' '.join(sys.argv[1:])}".strip()], "table": table(report),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"\n{source.name}: {report['n_slices']} test tumour slices; {machine()}")
    print(summary["table"])


if __name__ == "__main__":
    main()
