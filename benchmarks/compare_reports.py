"""Several benchmark runs side by side: one markdown table, a row per method, a column per run.

    python benchmarks/compare_reports.py bench_output/lgg_s2_nostrip bench_output/lgg_s2_strip

Each argument is a benchmark output folder holding ``report/report.json`` (written by ``amecam
evaluate`` through ``benchmarks/lgg.py`` and the other scripts). Cells are slice Dice with volume Dice
in brackets; the last rows give the tumour slices scored and the classifier's slice AUC, so a reader
sees that the columns scored the same slices.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BadInput, read_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="benchmark output folders with report/report.json")
    args = parser.parse_args()

    from amecam_cli.evaluation import method_label

    reports = []
    for run in args.runs:
        path = run / "report" / "report.json"
        if not path.is_file():
            raise SystemExit(f"{run}: no report/report.json (run the benchmark first)")
        try:
            reports.append(read_json(path, report=True))
        except BadInput as error:
            raise SystemExit(str(error)) from None
    methods = [m for m in reports[0]["methods"] if all(m in r["methods"] for r in reports)]
    print("| slice Dice (volume Dice) | " + " | ".join(run.name for run in args.runs) + " |")
    print("|---|" + "---|" * len(reports))
    for name in methods:
        labels = {method_label(name, fusion=r.get("fusion")) for r in reports}
        label = " / ".join(sorted(labels))  # runs whose bundles fuse differently name both
        cells = [f"{r['methods'][name]['slice']['dice']:.3f} ({r['methods'][name]['volume']['dice']:.3f})" for r in reports]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("| tumour slices scored | " + " | ".join(str(r["n_slices"]) for r in reports) + " |")
    print("| classifier slice AUC | " + " | ".join(f"{r['classifier_slice_auc']:.3f}" for r in reports) + " |")


if __name__ == "__main__":
    sys.exit(main())
