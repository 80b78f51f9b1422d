"""Table-1 benchmark on the synthetic cohort: train on some cases, evaluate every method on other cases.

    python benchmarks/synthetic.py --modality flair            # 16 training cases, 6 test cases, seed 0

Steps (each an ``amecam`` command, printed as it runs): synthesise the cohort, split it by case
(seeded), train a bundle on the training cases, evaluate every method on the test cases with and
without DenseCRF. Prints the table and writes ``bench_output/synthetic_<modality>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUTPUT, amecam, machine, split_by_case, table, train_and_evaluate, write_datalist  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modality", default="flair")
    parser.add_argument("--n_train", type=int, default=16)
    parser.add_argument("--n_test", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--attention_epochs", type=int, default=6)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--stem_stride", type=int, default=None, help="amecam train --stem_stride (default: the code default)")
    parser.add_argument("--methods", default="all")
    parser.add_argument("--budget", type=int, default=32, help="ScoreCAM channels per slice")
    parser.add_argument("--no_crf", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from amecam_cli.cases import find_cases

    out = args.out or OUTPUT / f"synthetic_{args.modality.replace(',', '_')}"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    cohort = OUTPUT / f"cohort_seed{args.seed}_n{args.n_train + args.n_test}"
    timings = {}
    timings["synth"] = amecam("synth", cohort, "--n_cases", args.n_train + args.n_test, "--seed", args.seed, log=log)
    modalities = tuple(args.modality.split(","))
    cases = find_cases(cohort, modalities)
    train, test = split_by_case(cases, args.n_test, args.seed)
    train_list = write_datalist(out / "train.json", train, modalities)
    test_list = write_datalist(out / "test.json", test, modalities)
    report, more = train_and_evaluate(out, train_list, test_list, modality=args.modality, epochs=args.epochs,
                                      attention_epochs=args.attention_epochs, image_size=args.image_size, seed=args.seed,
                                      methods=args.methods, budget=args.budget, crf=not args.no_crf, stem_stride=args.stem_stride)
    timings.update(more)
    summary = {
        "modality": args.modality, "seed": args.seed, "train_cases": [c.case_id for c in train], "test_cases": [c.case_id for c in test],
        "n_test_slices": report["n_slices"], "classifier_slice_auc": report["classifier_slice_auc"], "timings_s": timings,
        "machine": machine(), "date": time.strftime("%Y-%m-%d"),
        "commands": [f"python benchmarks/synthetic.py {' '.join(sys.argv[1:])}".strip()],
        "table": table(report),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"\n{args.modality}: {len(train)} training cases, {len(test)} test cases, {report['n_slices']} test tumour slices, "
          f"classifier slice AUC {report['classifier_slice_auc']:.3f}; {machine()}")
    print(summary["table"])


if __name__ == "__main__":
    main()
