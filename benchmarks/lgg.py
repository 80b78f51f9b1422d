"""Real-data benchmark: the 80 LGG FLAIR patients of ../shared/data, 60 for training and 20 held out.

    python benchmarks/lgg.py                      # seed 0: a seeded split by patient
    python benchmarks/lgg.py --fold 1             # folds 0-3 of one seed: 4-fold cross-validation
    python benchmarks/lgg.py --fold 1 --train_seed 1   # the same fold, AME-CAM trained with another seed

Trains with ``amecam train`` on the 60 training patients (slice labels derived from their masks, as a
weakly supervised user would have them) and evaluates every method on every tumour slice of the 20
held-out patients with ``amecam evaluate``. Writes ``bench_output/lgg/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUTPUT, SHARED_DATA, machine, split_by_case, train_and_evaluate, write_datalist, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_seed", type=int, default=None,
                        help="amecam train --seed (default: --seed); another value retrains on the same split and fold")
    parser.add_argument("--n_test", type=int, default=20)
    parser.add_argument("--fold", type=int, default=0,
                        help="hold out the FOLD-th block of n_test patients of the seeded order (0-3: 4-fold cross-validation)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--attention_epochs", type=int, default=6)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--stem_stride", type=int, default=None, help="amecam train --stem_stride (default: the code default)")
    parser.add_argument("--methods", default="all")
    parser.add_argument("--budget", type=int, default=32)
    parser.add_argument("--no_crf", action="store_true")
    parser.add_argument("--skull_strip", action="store_true",
                        help="amecam train --skull_strip: these volumes keep scalp and skull (the bundle then strips at inference too)")
    parser.add_argument("--out", type=Path, default=OUTPUT / "lgg")
    args = parser.parse_args()

    from amecam_cli.cases import find_cases

    data = SHARED_DATA / "lgg-flair"
    if not data.is_dir():
        raise SystemExit(f"{data}: the LGG FLAIR data is not there (expected ../shared/data/lgg-flair)")
    cases = find_cases(data, "flair")
    train, test = split_by_case(cases, args.n_test, args.seed, args.fold)
    train_seed = args.seed if args.train_seed is None else args.train_seed
    out = args.out
    train_list = write_datalist(out / "train.json", train, ("flair",))
    test_list = write_datalist(out / "test.json", test, ("flair",))
    report, timings = train_and_evaluate(out, train_list, test_list, modality="flair", epochs=args.epochs,
                                         attention_epochs=args.attention_epochs, image_size=args.image_size,
                                         seed=train_seed,
                                         methods=args.methods, budget=args.budget, crf=not args.no_crf, stem_stride=args.stem_stride,
                                         extra_train=["--skull_strip"] if args.skull_strip else None)
    summary = {
        "seed": args.seed, "train_seed": train_seed, "fold": args.fold,
        "train_cases": [c.case_id for c in train], "test_cases": [c.case_id for c in test],
        "n_test_slices": report["n_slices"], "classifier_slice_auc": report["classifier_slice_auc"], "timings_s": timings,
        "machine": machine(), "date": time.strftime("%Y-%m-%d"),
        "commands": [f"python benchmarks/lgg.py {' '.join(sys.argv[1:])}".strip()], "table": table(report),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"\nLGG FLAIR: {len(train)} training patients, {len(test)} test patients, {report['n_slices']} test tumour slices, "
          f"classifier slice AUC {report['classifier_slice_auc']:.3f}; {machine()}")
    print(summary["table"])


if __name__ == "__main__":
    main()
